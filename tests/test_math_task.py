"""MathTask: gold extraction from every shared data file, math-verify rewards, prompts, verdicts."""

import json
import re

import pytest

from conftest import SHARED_DATA
from sorl.tasks.base import Question
from sorl.tasks.critique_sets import read_critique_set, write_critique_set
from sorl.tasks.math import MathTask
from sorl.tasks.math_data import MathDataset, extract_gold
from sorl.verify import last_boxed
from sorl.tasks.base import CritiqueExample

pytest.importorskip("math_verify", reason="MathTask verifies with math-verify: pip install -e '.[math]'")

DATA_FILES = [
    ("gsm8k/train.jsonl", "gsm8k"),
    ("gsm8k/test.jsonl", "gsm8k"),
    ("math500/test.jsonl", "math"),
    ("minerva_math/test.jsonl", "minerva"),
    ("amc23/test.jsonl", "amc"),
    ("olympiadbench/test.jsonl", "olympiadbench"),
]
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the shared maths data is not at {SHARED_DATA}")


@pytest.fixture(scope="module")
def task() -> MathTask:
    task = MathTask()
    yield task
    task.verifier.close()


def _same_answer(a: str, b: str) -> bool:
    """Golds written alike, or alike but for a leading assignment (``x=5`` is the answer ``5``)."""
    strip = lambda s: re.sub(r"^[A-Za-z]\s*=\s*", "", s.replace(" ", ""))  # noqa: E731
    return strip(a) == strip(b)


@needs_data
@pytest.mark.parametrize("relative, preset", DATA_FILES, ids=[f for f, _ in DATA_FILES])
def test_every_gold_parses_and_verifies_against_itself_only(task, relative, preset):
    path = SHARED_DATA / relative
    questions = MathDataset(str(path), preset=preset).questions()
    with path.open() as handle:
        assert len(questions) == sum(1 for line in handle if line.strip())
    assert all(q.gold and q.text for q in questions)
    self_failures, cross_failures = [], []
    for index, question in enumerate(questions):
        if task.verify(question, f"The final answer is \\boxed{{{question.gold}}}.") != 1.0:
            self_failures.append((index, question.gold))
        other = next(q for q in questions[index + 1 :] + questions[:index] if not _same_answer(q.gold, question.gold))
        if task.verify(question, f"\\boxed{{{other.gold}}}") != 0.0:
            cross_failures.append((index, question.gold, other.gold))
    assert self_failures == []
    assert cross_failures == []


@pytest.mark.parametrize(
    "gold, response",
    [
        ("0.5", "so \\boxed{\\frac{1}{2}}"),
        ("\\frac{1}{2}", "\\boxed{0.5}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "The point is \\boxed{(3,\\pi/2)}."),
        ("27.0", "\\boxed{27}"),
        ("27", "\\boxed{27.0}"),
        ("1000", "\\boxed{1,000}"),
        ("\\dfrac{3}{56}", "\\boxed{\\frac{3}{56}}"),
    ],
)
def test_equivalent_forms_score_one(task, gold, response):
    assert task.verify(Question("q", "?", gold), response) == 1.0


@pytest.mark.parametrize(
    "gold, response",
    [
        ("27", "\\boxed{28}"),
        ("27", "The answer is 27."),  # not boxed: no final answer
        ("27", "\\boxed{27"),  # unbalanced
        ("(3, \\pi/2)", "\\boxed{(3, \\pi)}"),
        ("27", ""),
    ],
)
def test_wrong_or_missing_answers_score_zero(task, gold, response):
    assert task.verify(Question("q", "?", gold), response) == 0.0


def test_the_last_boxed_answer_counts(task):
    question = Question("q", "?", "5")
    assert task.verify(question, "first \\boxed{4}, no wait: \\boxed{5}") == 1.0
    assert task.verify(question, "first \\boxed{5}, no wait: \\boxed{4}") == 0.0


def test_gold_formats():
    assert extract_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072", "gsm8k") == "1072"
    assert extract_gold("no marker 5", "gsm8k") is None
    assert extract_gold(27.0, "plain") == "27.0"
    assert extract_gold("so $\\boxed{\\frac{a}{b_{1}}}$ and \\boxed{x^{2}}.", "last_boxed") == "x^{2}"
    assert extract_gold("\\boxed{1} then \\boxed{2", "last_boxed") == "1"  # an unbalanced last one
    assert extract_gold(["$69$", "$84$"], "list") == "69, 84"
    assert extract_gold("['$(1,8,19), (2,7,13)$']", "list") == "(1,8,19), (2,7,13)"
    assert extract_gold('["2"]', "list") == "2"
    # A string that is no literal stays text: parsed as data, never run.
    assert extract_gold("__import__('os').system('echo hi')", "list") == "__import__('os').system('echo hi')"
    assert last_boxed("\\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("no box") is None


def test_dataset_fields_and_errors(tmp_path):
    path = tmp_path / "mine" / "data.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"q": "What is 2+2?", "sol": "It is \\boxed{4}."}) + "\n\n" + json.dumps({"q": "1+1?", "sol": "\\boxed{2}"}) + "\n")
    dataset = MathDataset(str(path), question_field="q", answer_field="sol", answer_format="last_boxed")
    assert dataset.name == "mine"
    assert [(q.text, q.gold, q.dataset) for q in dataset.questions()] == [("What is 2+2?", "4", "mine"), ("1+1?", "2", "mine")]
    assert len(MathDataset(str(path), question_field="q", answer_field="sol", answer_format="last_boxed", limit=1).questions()) == 1
    with pytest.raises(ValueError, match=r"data.jsonl:1: needs fields"):
        MathDataset(str(path), preset="gsm8k").questions()
    path.write_text(json.dumps({"question": "x?", "answer": "no marker"}) + "\n")
    with pytest.raises(ValueError, match="no gold answer"):
        MathDataset(str(path), preset="gsm8k").questions()
    with pytest.raises(ValueError, match="answer_format"):
        MathDataset(str(path), answer_format="latex")


def test_malformed_rows_name_file_and_line_or_are_skipped_and_counted(tmp_path):
    path = tmp_path / "gsm" / "train.jsonl"
    path.parent.mkdir()
    good = {"question": "2+2?", "answer": "so #### 4"}
    rows = [
        json.dumps(good),
        "{not json",
        json.dumps({"question": "3+3?"}),  # missing field
        json.dumps({"question": 7, "answer": "#### 7"}),  # wrong type
        json.dumps({"question": "   ", "answer": "#### 1"}),  # empty
        json.dumps({"question": "x" * 9000, "answer": "#### 1"}),  # overlong
        json.dumps({"question": "5+5?", "answer": ["#### 10"]}),  # wrong type of answer
        "",
        json.dumps(good),
    ]
    path.write_text("\n".join(rows) + "\n")
    expected = [
        (2, "not a JSON object"), (3, "needs fields"), (4, "empty or non-text question"),
        (5, "empty or non-text question"), (6, "over max_question_chars"), (7, "no gold answer"),
    ]  # fmt: skip
    for line, message in expected:
        path.write_text("\n".join([json.dumps(good)] * (line - 1) + [rows[line - 1]]) + "\n")
        with pytest.raises(ValueError, match=rf"train.jsonl:{line}: .*{message}"):
            MathDataset(str(path), preset="gsm8k").questions()
    path.write_text("\n".join(rows) + "\n")
    dataset = MathDataset(str(path), preset="gsm8k", bad_rows="skip")
    with pytest.warns(UserWarning, match="skipped 6 malformed rows"):
        questions = dataset.questions()
    assert [q.gold for q in questions] == ["4", "4"]
    assert [entry.split(": ")[0].rsplit(":", 1)[1] for entry in dataset.skipped_rows] == ["2", "3", "4", "5", "6", "7"]


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets", reason="reading non-JSONL data needs the datasets package")
    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"problem": "1+2?", "answer": "3"}]).save_to_disk(str(folder))
    questions = MathDataset(str(folder), preset="math").questions()
    assert [(q.text, q.gold, q.dataset) for q in questions] == [("1+2?", "3", "saved")]


def test_critique_prompt_never_holds_the_gold():
    task = MathTask()
    question = Question("q", "Compute the ratio of the two areas.", "\\frac{991}{17}")
    for response in ["The ratio is \\boxed{\\frac{990}{17}}.", "I do not know.", ""]:
        prompt = task.critique_prompt(question, response)
        assert question.gold not in prompt and "991" not in prompt
        assert question.text in prompt and response in prompt
        refinement = task.refinement_prompt(question, response, "Verdict: wrong")
        assert "991" not in refinement
    with pytest.raises(ValueError, match="gold"):
        MathTask(critique_template="{question} {response} (gold: {gold})")
    with pytest.raises(ValueError, match="response"):
        MathTask(critique_template="Check: {question}")


@needs_data
def test_critique_prompts_of_real_questions_hold_no_gold_beyond_question_and_response():
    task = MathTask()
    questions = MathDataset(str(SHARED_DATA / "math500" / "test.jsonl"), preset="math").questions()
    checked = 0
    for question in questions:
        response = "Let me think. The answer is \\boxed{42}."
        if question.gold in question.text or question.gold in response or question.gold in task.critique_template:
            continue  # e.g. a gold of "2" already appears in the question
        assert question.gold not in task.critique_prompt(question, response)
        checked += 1
    assert checked > 300


def test_templates_are_editable_and_filled_once():
    task = MathTask(
        answer_template="Q: {question}\nA:",
        critique_template="Q: {question}\nS: {response}\nCheck it; end with Verdict: right or Verdict: wrong.",
        refinement_template="Q: {question}\nS: {response}\nC: {critique}\nFix:",
    )
    question = Question("q", "What is {response} in \\frac{1}{2}?", "1")
    assert task.response_prompt(question) == "Q: What is {response} in \\frac{1}{2}?\nA:"
    assert task.critique_prompt(question, "r {critique}").startswith("Q: What is {response} in \\frac{1}{2}?\nS: r {critique}\n")
    assert task.refinement_prompt(question, "r", "c").endswith("C: c\nFix:")


def test_parse_verdict():
    task = MathTask()
    assert task.parse_verdict("Step 1 is fine.\nVerdict: right") is True
    assert task.parse_verdict("Verdict: right ... on reflection Verdict: wrong") is False
    assert task.parse_verdict("Verdict: rightish") is None
    assert task.parse_verdict("no verdict") is None
    custom = MathTask(verdict_prefix="Judgement:", verdict_right="correct", verdict_wrong="incorrect")
    assert custom.parse_verdict("Judgement: incorrect") is False


def test_train_questions_leave_out_eval_questions(tmp_path):
    train = tmp_path / "train" / "data.jsonl"
    test = tmp_path / "test" / "data.jsonl"
    for path, texts in ((train, ["a?", "b?", "c?"]), (test, ["b?"])):
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"question": t, "answer": "#### 1"}) + "\n" for t in texts))
    task = MathTask(train=[MathDataset(str(train), preset="gsm8k")], eval=[MathDataset(str(test), preset="gsm8k")])
    assert [q.text for q in task.train_questions()] == ["a?", "c?"]
    assert [(q.text, q.dataset) for q in task.eval_questions()] == [("b?", "test")]
    with pytest.raises(ValueError, match="distinct names"):
        MathTask(eval=[MathDataset(str(test), preset="gsm8k"), MathDataset(str(test), preset="gsm8k")])


def test_critique_set_round_trip(tmp_path):
    examples = [
        CritiqueExample(Question("gsm8k-3", "How many?", "4", "gsm8k"), "\\boxed{4}", True),
        CritiqueExample(Question("gsm8k-3", "How many?", "4", "gsm8k"), "\\boxed{5}", False),
    ]
    path = tmp_path / "sets" / "critique.jsonl"
    write_critique_set(str(path), examples)
    assert read_critique_set(str(path)) == examples
    assert MathTask(critique_set=str(path)).critique_eval_set() == examples


@pytest.mark.parametrize(
    "fallback, response, reward",
    [
        ("none", "The final answer is 1,000.", 0.0),
        ("none", "The final answer is $1000$.", 1.0),  # math-verify's own anchor
        ("latex", "we get $1000$ in the end", 1.0),
        ("latex", "The final answer is 1,000.", 0.0),
        ("last_number", "3 + 997 = 1,000.", 1.0),
        ("last_number", "1000 was wrong, it is 999", 0.0),
        ("last_number", "\\boxed{999} and 1000", 0.0),  # a boxed answer always wins
        ("last_number", "no number", 0.0),
    ],
)
def test_answer_fallback_when_nothing_is_boxed(tasks_by_fallback, fallback, response, reward):
    if fallback not in tasks_by_fallback:
        tasks_by_fallback[fallback] = MathTask(answer_fallback=fallback)
    assert tasks_by_fallback[fallback].verify(Question("q", "?", "1000"), response) == reward


@pytest.fixture(scope="module")
def tasks_by_fallback():
    tasks = {}
    yield tasks
    for task in tasks.values():
        task.verifier.close()


def test_max_steps_keeps_gsm8k_rows_of_few_calculator_steps(tmp_path):
    answers = [
        "Half of 48 is <<48/2=24>>24.\n#### 24",
        "<<3*4=12>>12 then <<12+1=13>>13\n#### 13",
        "<<1+1=2>>2, <<2+2=4>>4, <<4+4=8>>8\n#### 8",
        "No annotation here.\n#### 5",
    ]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": a}) + "\n" for i, a in enumerate(answers)))
    assert [q.gold for q in MathDataset(str(path), preset="gsm8k", max_steps=2).questions()] == ["24", "13", "5"]
    assert [q.gold for q in MathDataset(str(path), preset="gsm8k", max_steps=1).questions()] == ["24", "5"]
    # limit counts the rows that max_steps keeps
    assert [q.gold for q in MathDataset(str(path), preset="gsm8k", max_steps=1, limit=2).questions()] == ["24", "5"]
    with pytest.raises(ValueError, match="answer_format gsm8k"):
        MathDataset(str(path), preset="math", max_steps=2)
    with pytest.raises(ValueError, match=">= 1"):
        MathDataset(str(path), preset="gsm8k", max_steps=0)


def test_max_steps_on_a_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets", reason="reading non-JSONL data needs the datasets package")
    folder = tmp_path / "saved"
    rows = {"question": ["a", "b"], "answer": ["<<1+1=2>>2\n#### 2", "<<1+1=2>>2 <<2*3=6>>6\n#### 6"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    assert [q.gold for q in MathDataset(str(folder), preset="gsm8k", max_steps=1).questions()] == ["2"]
