"""ReasoningGymTask (reasoning-gym datasets as sorl tasks) and the teacher-free cold start built on it."""

import json

import pytest

pytest.importorskip("reasoning_gym", reason="needs reasoning-gym: pip install 'sorl[reasoning]'")

from sorl.cold_start import SelfCritiqueTask, build_cold_start, demonstrations  # noqa: E402
from sorl.sft import collate_sft, read_examples  # noqa: E402
from sorl.tasks.base import Question, Task  # noqa: E402
from sorl.tasks.reasoning_gym import ReasoningGymTask  # noqa: E402

TWO_ONE_DIGIT_TERMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


@pytest.fixture(scope="module")
def task():
    task = ReasoningGymTask("chain_sum", TWO_ONE_DIGIT_TERMS, train_size=400, eval_size=40)
    yield task
    task.scorer.close()


def test_is_a_task(task):
    assert isinstance(task, Task) and isinstance(task, SelfCritiqueTask)


def test_train_and_eval_are_disjoint(task):
    train, eval_ = task.train_questions(), task.eval_questions()
    # 200 distinct questions exist: duplicates and held-out texts are dropped, so sizes are upper bounds
    assert 0 < len(eval_) <= 40 and 0 < len(train) <= 400
    assert len(train) + len(eval_) <= 200
    assert not {q.text for q in train} & {q.text for q in eval_}
    assert len({q.text for q in train}) == len(train) and len({q.text for q in eval_}) == len(eval_)
    assert not {q.id for q in train} & {q.id for q in eval_}
    assert {q.dataset for q in train + eval_} == {"chain_sum"}


def test_questions_and_entries_are_the_library_s(task):
    import reasoning_gym

    question = task.eval_questions()[3]
    split, index = question.id.split("/")[1:]
    expected = reasoning_gym.create_dataset("chain_sum", seed=task.eval_seed, size=task.eval_size, **TWO_ONE_DIGIT_TERMS)[int(index)]
    assert split == "eval"
    assert (question.text, question.gold) == (expected["question"], expected["answer"])
    assert task.entry(question) == expected


def test_scores_right_and_wrong_answers(task):
    question = task.eval_questions()[0]
    gold = int(question.gold)
    assert task.verify(question, f"{question.text}\nAnswer: {gold}") == 1.0
    assert task.verify(question, f"Answer: {gold:+d}.0") == 1.0  # the library tolerates sign and decimals
    assert task.verify(question, f"Answer: {gold + 1}") == 0.0
    assert task.verify(question, f"Answer: {gold}\nno wait\nAnswer: {gold + 1}") == 0.0  # the last one counts
    assert task.verify(question, "I do not know.") == 0.0
    # "7 apples" is partly right to reasoning-gym; a reward of 1 means right unless partial_credit
    assert task.verify(question, f"Answer: {gold} apples") == 0.0
    partial = ReasoningGymTask("chain_sum", TWO_ONE_DIGIT_TERMS, eval_size=40, partial_credit=True)
    try:
        assert 0.0 < partial.verify(partial.eval_questions()[0], f"Answer: {gold} apples") < 1.0
    finally:
        partial.scorer.close()


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Answer: 12", "12"),
        ("4 + 8 = 12\n**Answer:** 12.", "12"),
        ("final answer: $12$", "12"),
        ("Answer: \\boxed{12}", "12"),
        ("Answer: 3\nChecking again.\nAnswer: -4", "-4"),
        ("Answer:\n12", None),  # the answer belongs on the answer line
        ("The sum is 12.", None),  # no answer line, no fallback
        ("", None),
        ("Answer: " + "9" * 1000, "9" * 128),  # cut to max_answer_chars
        ("Answer: 5 " + "9" * 10_000, None),  # only the end of a long response is read
        ("Answer: 5\n" + "x" * 10_000, None),  # only the end of a long response is read
    ],
)
def test_answer_extraction(task, response, expected):
    assert task.extract_answer(response) == expected


def test_last_number_fallback():
    lenient = ReasoningGymTask("chain_sum", TWO_ONE_DIGIT_TERMS, answer_fallback="last_number")
    assert lenient.extract_answer("4 + 8 = 12, so it is 12.") == "12"
    assert lenient.extract_answer("Answer: 7 but 12") == "7 but 12"  # an answer line wins over the fallback
    assert lenient.extract_answer("no digits") is None


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="no dataset 'chain_sums'.*basic_arithmetic.*chain_sum"):
        ReasoningGymTask("chain_sums")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"min_term": 2}, "unknown config key 'min_term'.*max_terms, min_digits, min_terms"),
        ({"min_terms": 3, "max_terms": 2}, "max_terms must be >= min_terms"),
        ({"min_terms": "two"}, "invalid config"),
        ({"seed": 3}, "'seed'.*train_/eval_seed"),
        ({"size": 3}, "'size'"),
    ],
)
def test_bad_settings_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        ReasoningGymTask("chain_sum", config)


def test_bad_sizes_and_templates():
    with pytest.raises(ValueError, match="eval_size"):
        ReasoningGymTask("chain_sum", eval_size=0)
    with pytest.raises(ValueError, match="critique_template may only use"):
        ReasoningGymTask("chain_sum", critique_template="{question} {response} gold: {gold}")


def test_prompts_never_contain_the_gold(task):
    question = Question("chain_sum/eval/0", "What is 2 + 2?", "GOLD-4242", "chain_sum")
    response = "2 + 2 = 5\nAnswer: 5"
    critique = task.critique_demonstration("2 + 2 = 4\nAnswer: 4", response, False)
    for prompt in (
        task.response_prompt(question),
        task.critique_prompt(question, response),
        task.refinement_prompt(question, response, critique),
    ):
        assert question.text in prompt and "GOLD-4242" not in prompt
    assert response in task.critique_prompt(question, response)


def test_critique_demonstration_format_and_verdict(task):
    solution = "3 + 4 = 7.\nAnswer: 7"
    wrong = task.critique_demonstration(solution, "It is 8.\nAnswer: 8", False)
    assert wrong == "3 + 4 = 7.\nMy answer: 7\nResponse answer: 8\nVerdict: wrong"
    right = task.critique_demonstration(solution, "Answer: 7", True)
    assert right.endswith("My answer: 7\nResponse answer: 7\nVerdict: right")
    assert task.parse_verdict(wrong) is False and task.parse_verdict(right) is True
    assert task.critique_demonstration(solution, "no idea", False).endswith("Response answer: none\nVerdict: wrong")
    assert task.parse_verdict("Verdict: maybe") is None
    # a solution in the answer format stays as written; one read by the fallback gets an answer line
    assert task.solution_demonstration(solution) == solution
    lenient = ReasoningGymTask("chain_sum", TWO_ONE_DIGIT_TERMS, answer_fallback="last_number")
    assert lenient.solution_demonstration("3 + 4 = 7") == "3 + 4 = 7\nAnswer: 7"


def _right_and_wrong(task):
    """A training question, a right response and a wrong one (its gold answer plus one)."""
    question = task.train_questions()[0]
    gold = int(task.entry(question)["answer"])
    return question, gold, f"Answer: {gold}", f"Answer: {gold + 1}"


def test_critique_analysis_is_checked_line_by_line(task):
    """Own answer verified, the response's answer copied, the verdict the label: only then right."""
    from sorl.callbacks import StepOracleTask

    assert isinstance(task, StepOracleTask)
    question, gold, right, wrong = _right_and_wrong(task)
    check = task.critique_analysis_correct
    assert check(question, wrong, f"I add them.\nMy answer: {gold}\nResponse answer: {gold + 1}\nVerdict: wrong")
    assert check(question, right, f"My answer: **{gold}**\nResponse answer: {gold}\nVerdict: right")
    # the verdict is right but the analysis is not: the critic repeated the response's error
    assert not check(question, wrong, f"My answer: {gold + 1}\nResponse answer: {gold + 1}\nVerdict: wrong")
    # a miscopied response answer, and "none" for a response that answers
    assert not check(question, wrong, f"My answer: {gold}\nResponse answer: {gold + 2}\nVerdict: wrong")
    assert not check(question, wrong, f"My answer: {gold}\nResponse answer: none\nVerdict: wrong")
    # "none" is the copy of a response with no answer
    assert check(question, "no idea", f"My answer: {gold}\nResponse answer: none\nVerdict: wrong")
    # a wrong verdict, a missing line, a missing verdict
    assert not check(question, right, f"My answer: {gold}\nResponse answer: {gold}\nVerdict: wrong")
    assert not check(question, wrong, f"Response answer: {gold + 1}\nVerdict: wrong")
    assert not check(question, wrong, f"My answer: {gold}\nResponse answer: {gold + 1}")
    # the last line of each kind counts, as for answers
    assert check(question, wrong, f"My answer: {gold + 1}\nMy answer: {gold}\nResponse answer: {gold + 1}\nVerdict: wrong")
    assert task.critique_answers(f"My answer: {gold + 1}\nMy answer: **{gold}**\nResponse answer: none") == (str(gold), "none")
    assert task.critique_answers("Verdict: wrong") == (None, None)


def test_analysis_denoising_zeroes_right_verdicts_through_a_wrong_analysis(task):
    """RewardDenoising(strategy="analysis") with the reasoning-gym check, no sampling: the critique
    that repeats the error keeps no reward and so gets a negative advantage in its group."""
    from types import SimpleNamespace

    from sorl.callbacks import RewardDenoising, RewardNoise
    from sorl.engines import Completion
    from sorl.rollout import Round, Sample, assign_advantages
    from sorl.tasks.base import CritiqueExample

    question, gold, _, wrong = _right_and_wrong(task)
    pair = CritiqueExample(question, wrong, False)
    texts = [
        f"My answer: {gold}\nResponse answer: {gold + 1}\nVerdict: wrong",  # sound
        f"My answer: {gold + 1}\nResponse answer: {gold + 1}\nVerdict: wrong",  # right verdict, repeated error
        f"My answer: {gold + 1}\nResponse answer: {gold + 1}\nVerdict: right",  # wrong verdict
    ]
    critiques = [
        Sample("critique", 1, question, [0], Completion([0], text, "stop"), float(task.parse_verdict(text) is False), pair=pair)
        for text in texts
    ]
    round_ = Round(0, [question], critiques=critiques)

    def no_sampling(*args):
        raise AssertionError("the analysis check samples nothing")

    context = SimpleNamespace(task=task, rank=0, generate=no_sampling)
    RewardNoise().on_critiques_scored(None, context, round_)
    assert round_.metrics["rollout/critique_reward_noise"] == 0.5  # one of the two rewarded ones
    denoising = RewardDenoising(strategy="analysis")
    denoising.on_critiques_scored(None, context, round_)
    assert [s.reward for s in round_.critiques] == [1.0, 0.0, 0.0]
    assert round_.metrics["denoise/analysis_accuracy"] == 0.5 and round_.metrics["denoise/rewards_changed"] == 1.0
    assert denoising.totals["analyses_right"] == 1 and denoising.totals["refinements"] == 0
    assign_advantages(round_, scale_by_std=True)
    assert round_.critiques[1].advantage < 0 < round_.critiques[0].advantage


def test_question_of_another_task_is_refused(task):
    with pytest.raises(ValueError, match="not made by a ReasoningGymTask"):
        task.verify(Question("gsm8k-3", "q", "1"), "Answer: 1")


def test_runaway_scoring_is_bounded():
    # countdown's scorer runs sympy's parse_expr on the answer: 9**9**9**9 would compute for hours
    countdown = ReasoningGymTask("countdown", eval_size=4, verify_timeout=1.0)
    try:
        question = countdown.eval_questions()[0]
        assert countdown.verify(question, "Answer: 9**9**9**9") == 0.0
        assert countdown.scorer.timeouts == 1
        assert countdown.verify(question, f"Answer: {question.gold}") == 1.0  # a fresh server took over
    finally:
        countdown.scorer.close()


def test_demonstrations_of_one_question(task):
    question = task.train_questions()[0]
    gold = int(question.gold)
    long_right = f"Let me think about it at length. The result is {gold}.\nAnswer: {gold}"
    short_right = f"Answer: {gold}"
    wrong = f"Answer: {gold + 1}"
    rows = demonstrations(task, question, [(long_right, True), (wrong, False), (short_right, True)], refinement=True)
    assert [(r["kind"], r["label"]) for r in rows] == [("solution", None), ("critique", True), ("critique", False), ("refinement", None)]
    solution, right_critique, wrong_critique, refinement = rows
    assert solution == {"prompt": task.response_prompt(question), "target": short_right, "kind": "solution", "question_id": question.id, "label": None}
    # the critic's working is the shortest right sample; the right response it judges is the other one
    assert right_critique["prompt"] == task.critique_prompt(question, long_right)
    assert right_critique["target"] == f"My answer: {gold}\nResponse answer: {gold}\nVerdict: right"
    assert wrong_critique["prompt"] == task.critique_prompt(question, wrong)
    assert wrong_critique["target"] == f"My answer: {gold}\nResponse answer: {gold + 1}\nVerdict: wrong"
    assert refinement["prompt"] == task.refinement_prompt(question, wrong, wrong_critique["target"])
    assert refinement["target"] == short_right
    # all right: a solution only (no pair to balance); all wrong: nothing to learn from
    assert [r["kind"] for r in demonstrations(task, question, [(short_right, True)] * 2, refinement=True)] == ["solution"]
    assert demonstrations(task, question, [(wrong, False)] * 2, refinement=True) == []


def test_cold_start_from_the_policy_itself(tiny_policy_dir, tmp_path):
    """The real sampling path on a random tiny policy: one-term sums have ten answers, so with the
    lenient fallback some of its samples are right by chance, and the assembly is checked on them."""
    task = ReasoningGymTask(
        "chain_sum",
        {"min_terms": 1, "max_terms": 1, "min_digits": 1, "max_digits": 1},
        train_size=200,
        eval_size=2,
        answer_fallback="last_number",
    )
    output = tmp_path / "cold_start.jsonl"
    try:
        counts = build_cold_start(
            task, tiny_policy_dir, str(output), num_questions=8, samples_per_question=16, max_new_tokens=12, seed=0
        )
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        questions = {q.id: q for q in task.train_questions()}
        critiques = [r for r in rows if r["kind"] == "critique"]
        assert counts["questions"] == 8 and counts["responses"] == 128
        assert counts["pairs"] > 0, counts  # deterministic for this seed; the checks below need pairs
        assert counts["right_responses"] >= counts["solutions"] > 0
        assert sum(r["label"] for r in critiques) == len(critiques) / 2 == counts["pairs"]  # label-balanced
        for row in rows:
            question = questions[row["question_id"]]
            if row["kind"] == "critique":
                assert task.parse_verdict(row["target"]) is row["label"]
                assert row["target"].splitlines()[-3].startswith("My answer: ")
                assert row["prompt"].startswith(task.critique_prompt(question, "")[:40])
                # the critic's own answer is verified right
                assert task.verify(question, "Answer: " + row["target"].splitlines()[-3][len("My answer: ") :]) == 1.0
            else:  # solutions and refinements end with a verified-right answer line
                assert task.verify(question, row["target"]) == 1.0
                assert row["target"].splitlines()[-1].startswith("Answer: ")
        assert counts["refinements"] == counts["pairs"]
        # the SFT stage reads the file as it is
        examples = read_examples(str(output))
        assert len(examples) == len(rows)
        from sorl.policy import load_tokenizer

        batch = collate_sft(examples[:4], load_tokenizer(tiny_policy_dir), max_length=512)
        assert (batch["labels"] != -100).any()
    finally:
        task.scorer.close()


@pytest.mark.parametrize(
    ("config", "function"),
    [
        ("cold_start_data/smollm2_reasoning_gym.yaml", build_cold_start),
        ("critique_set/smollm2_reasoning_gym.yaml", "sorl.critique_set.build_critique_set"),
    ],
)
def test_data_configs_parse(config, function):
    """The configs of python -m sorl.cold_start and python -m sorl.critique_set parse, and their task
    is the one the RL config trains on."""
    from pathlib import Path

    import yaml
    from jsonargparse import ArgumentParser

    if isinstance(function, str):
        from sorl.critique_set import build_critique_set as function
    root = Path(__file__).resolve().parents[1]
    parser = ArgumentParser()
    parser.add_function_arguments(function)
    parsed = parser.parse_path(str(root / "configs" / config))
    task = parser.instantiate_classes(parsed).task
    assert isinstance(task, ReasoningGymTask)
    rl = yaml.safe_load((root / "configs" / "smollm2_reasoning_gym.yaml").read_text())["data"]["init_args"]["task"]["init_args"]
    assert (task.dataset, task.config, task.eval_size, task.answer_fallback) == (
        rl["dataset"],
        rl["config"],
        rl["eval_size"],
        rl["answer_fallback"],
    )


def test_sorl_imports_without_reasoning_gym():
    """reasoning-gym is an optional extra: sorl imports without it, and building the task says what to install."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['reasoning_gym'] = None\n"  # None in sys.modules makes the import fail
        "import sorl\n"
        "try:\n    sorl.ReasoningGymTask('chain_sum')\nexcept ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pip install 'sorl[reasoning]'" in result.stdout
