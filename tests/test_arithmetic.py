import random

import pytest

from sorl.rewards import critique_reward, parse_verdict
from sorl.tasks.arithmetic import ArithmeticTask
from sorl.tasks.base import Question, Task

Q = Question("x", "12+34-56", "-10")


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return ArithmeticTask(num_operands=3, digits=2, ops="+-", num_train=2000, num_eval=100)


def test_is_a_task(task):
    assert isinstance(task, Task)


def test_generator_deterministic_and_seeded():
    a = ArithmeticTask(num_train=500, num_eval=50, seed=1)
    b = ArithmeticTask(num_train=500, num_eval=50, seed=1)
    c = ArithmeticTask(num_train=500, num_eval=50, seed=2)
    assert a.train_questions() == b.train_questions() and a.eval_questions() == b.eval_questions()
    assert a.train_questions() != c.train_questions() and a.eval_questions() != c.eval_questions()
    assert a.train_questions() is a.train_questions()  # cached


def test_smaller_pool_is_a_prefix_of_a_larger_one():
    # benchmarks/data_budget.py compares pools of num_train questions: nested, same held-out sets
    small, large = ArithmeticTask(num_train=32), ArithmeticTask(num_train=128)
    assert small.train_questions() == large.train_questions()[:32]
    assert small.eval_questions() == large.eval_questions()
    assert small.critique_eval_set() == large.critique_eval_set()


def test_questions_shape(task):
    train, evals = task.train_questions(), task.eval_questions()
    assert len(train) == 2000 and len(evals) == 100
    assert train[0].id == "train-0" and evals[5].id == "eval-5"
    for q in train + evals:
        terms = q.text.replace("+", " ").replace("-", " ").split()
        assert len(terms) == 3 and all(0 <= int(t) <= 99 for t in terms)
        assert int(q.gold) == task.evaluate(q.text)
    assert any(int(q.gold) < 0 for q in train)  # negative results occur


def test_train_eval_disjoint(task):
    train_texts = {q.text for q in task.train_questions()}
    eval_texts = [q.text for q in task.eval_questions()]
    assert len(set(eval_texts)) == len(eval_texts)
    assert not train_texts & set(eval_texts)


def test_small_space_disjoint_and_capacity():
    # 1-digit, 2 operands, one op: exactly 100 questions exist
    small = ArithmeticTask(num_operands=2, digits=1, ops="+", num_train=90, num_eval=10)
    texts = [q.text for q in small.train_questions() + small.eval_questions()]
    assert len(set(texts)) == 100
    with pytest.raises(ValueError):
        ArithmeticTask(num_operands=2, digits=1, ops="+", num_train=91, num_eval=10)


def test_min_operands():
    t = ArithmeticTask(num_operands=4, min_operands=2, num_train=300, num_eval=10)
    counts = {len(t.steps(q.text)) + 1 for q in t.train_questions()}
    assert counts == {2, 3, 4}


def test_left_to_right():
    assert ArithmeticTask.evaluate("2+3*4") == 20
    assert ArithmeticTask.evaluate("10-2*3") == 24
    assert ArithmeticTask.evaluate("3*4-20+1") == -7
    t = ArithmeticTask(ops="+*", num_train=300, num_eval=10)
    assert any("*" in q.text for q in t.train_questions())
    assert t.solution(Question("x", "2+3*4", "20")) == "2+3=5;5*4=20;A:20"


def test_prompts():
    assert ArithmeticTask().response_prompt(Q) == "Q:12+34-56\nS:"
    t = ArithmeticTask()
    assert t.critique_prompt(Q, "R") == "Q:12+34-56\nS:R\nC:"
    assert t.refinement_prompt(Q, "R", "K") == "Q:12+34-56\nS:R\nC:K\nF:"


def test_critique_prompt_hides_gold(task):
    q = Question("x", "17+25+30", "72")
    assert "72" not in task.critique_prompt(q, "17+25=41;41+30=71;A:71")
    checked = 0
    for e in task.critique_eval_set():
        if not e.is_right and e.question.gold not in e.question.text + e.response:
            assert e.question.gold not in task.critique_prompt(e.question, e.response)
            checked += 1
    assert checked > 10


@pytest.mark.parametrize(
    "response, reward",
    [
        ("12+34=46;46-56=-10;A:-10", 1.0),
        ("A:-10", 1.0),  # only the final answer counts
        ("A: -10\n", 1.0),
        ("A:-010", 1.0),  # compared as integers
        ("12+34=46;46-56=-11;A:-11", 0.0),
        ("A:-10;A:7", 0.0),  # last A: counts
        ("A:7;A:-10", 1.0),
        ("A:-100", 0.0),
        ("A:10", 0.0),
        ("", 0.0),
        ("garbage", 0.0),
        ("A:", 0.0),
        ("A:-", 0.0),
        ("-10", 0.0),
        ("A:" + "1" * 100, 0.0),
        ("x" * 5000 + "A:-10", 1.0),  # the end is read, however long the response
        ("A:-10" + "x" * 5000, 0.0),  # an answer further than the parse cap from the end
    ],
)
def test_verify(response, reward):
    assert ArithmeticTask().verify(Q, response) == reward


def test_verify_last_a():
    q = Question("x", "2+3", "5")
    assert ArithmeticTask().verify(q, "A:5;A:7") == 0.0
    assert ArithmeticTask().verify(q, "A:7;A:5") == 1.0


def test_verify_overlong_number_not_truncated():
    q = Question("x", "0+0", "1" * 64)  # hand-made gold at the parser's digit limit
    assert ArithmeticTask().verify(q, "A:" + "1" * 64) == 1.0
    assert ArithmeticTask().verify(q, "A:" + "1" * 65) == 0.0


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("", None),
        ("12+34=46|46 ok", None),
        ("V:right", True),
        ("V:wrong", False),
        ("A:1|1 ok;V:right", True),
        ("V:right;V:right", True),
        ("V:right;V:wrong", False),  # contradictory: last wins
        ("V:wrong;V:right", True),
        ("V:rightish", None),  # must end at a word boundary
        ("V:wrong;V:rightish", False),  # the malformed one is skipped
        ("V:right\n", True),
        ("V: wrong", False),
        ("V:Right", None),  # case-sensitive
        ("v:right", None),
        ("V:" + "x" * 5000 + "V:right", True),  # the end is read, however long the critique
        ("V:right " + "x " * 2500, None),  # a verdict further than the parse cap from the end
    ],
)
def test_parse_verdict_task(text, verdict):
    assert ArithmeticTask().parse_verdict(text) is verdict


def test_parse_verdict_generic():
    assert parse_verdict("I think... Verdict: right") is True
    assert parse_verdict("Verdict: right. Verdict: wrong") is False
    assert parse_verdict("Verdict: correct") is None
    assert parse_verdict("Verdict: yes", right="yes", wrong="no") is True
    assert parse_verdict("V:right") is None  # default prefix is Verdict:
    assert parse_verdict("[v] right", prefix="[v]") is True  # prefix is escaped


def test_parse_verdict_reads_the_end_of_a_long_critique():
    """The last verdict counts however long the critique: its end is read, not its first 4096 chars."""
    long_critique = "The response adds 3 and 4. " * 177 + "Verdict: wrong"
    assert len(long_critique) == 4793 and parse_verdict(long_critique) is False
    flip = "Verdict: right\n" + "Checking step 2 again. " * 180 + "\nVerdict: wrong"
    assert parse_verdict(flip) is False
    assert ArithmeticTask().parse_verdict("V:right;" + "x" * 4100 + ";V:wrong") is False


def test_arithmetic_answer_is_read_from_the_end():
    task = ArithmeticTask()
    q = Question("q", "1+2", "3")  # any question text; the task's own questions are not drawn
    assert task.verify(q, "A:5;" + "1+1=2;" * 800 + "A:3") == 1.0
    assert task.verify(q, "A:3;" + "1+1=2;" * 800 + "A:5") == 0.0
    # a correct prefix followed by a long tail is not a correct step-by-step response or critique
    assert not task.response_steps_correct(q, "1+2=3;A:3" + " " * 5000 + "junk")
    critique = task.critique(q, "1+2=3;A:3")
    assert not task.critique_analysis_correct(q, "1+2=3;A:3", critique + " " * 5000 + "junk")
    assert task.critique_analysis_correct(q, "1+2=3;A:3", critique + "\n")


def test_critique_reward():
    assert critique_reward(True, True) == 1.0
    assert critique_reward(False, False) == 1.0
    assert critique_reward(True, False) == 0.0
    assert critique_reward(False, True) == 0.0
    assert critique_reward(None, True) == 0.0
    assert critique_reward(None, False) == 0.0


@pytest.mark.parametrize(
    "response, expected",
    [
        ("12+34=46;46-56=-10;A:-10", "12+34=46|46 ok;46-56=-10|-10 ok;A:-10|-10 ok;V:right"),
        ("12+34=46;46-56=-11;A:-11", "12+34=46|46 ok;46-56=-10|-11 no;A:-10|-11 no;V:wrong"),
        ("12+34=47;47-56=-9;A:-9", "12+34=46|47 no;46-56=-10|-9 no;A:-10|-9 no;V:wrong"),
        ("12+34=46;46-56=-10;A:-12", "12+34=46|46 ok;46-56=-10|-10 ok;A:-10|-12 no;V:wrong"),
        ("A:-10", "12+34=46|? no;46-56=-10|? no;A:-10|-10 ok;V:right"),
        ("12+34=46;A:-10", "12+34=46|46 ok;46-56=-10|? no;A:-10|-10 ok;V:right"),
        ("12+34=046;46-56=-10;A:-010", "12+34=46|46 ok;46-56=-10|-10 ok;A:-10|-10 ok;V:right"),
        ("", "12+34=46|? no;46-56=-10|? no;A:-10|? no;V:wrong"),
        ("garbage", "12+34=46|? no;46-56=-10|? no;A:-10|? no;V:wrong"),
        ("12+34=x;;A:", "12+34=46|? no;46-56=-10|? no;A:-10|? no;V:wrong"),
    ],
)
def test_critique_exact(response, expected):
    assert ArithmeticTask().critique(Q, response) == expected


def test_solution():
    assert ArithmeticTask().solution(Q) == "12+34=46;46-56=-10;A:-10"
    assert ArithmeticTask().solution(Question("x", "5*0-3", "-3")) == "5*0=0;0-3=-3;A:-3"


def _responses(task, n, seed):
    rng = random.Random(seed)
    for _ in range(n):
        q = rng.choice(task.train_questions())
        yield q, task.solution(q), True
        yield q, task.inject_error(q, rng), False


@pytest.mark.parametrize("ops", ["+-", "+-*"])
def test_critique_verdict_matches_verify(ops):
    task = ArithmeticTask(ops=ops, num_train=1000, num_eval=10)
    for q, response, is_right in _responses(task, 250, 0):
        verdict = task.parse_verdict(task.critique(q, response))
        assert verdict is is_right
        assert verdict is (task.verify(q, response) == 1.0)


def test_inject_error_always_wrong_and_deterministic():
    task = ArithmeticTask(ops="+-*", num_operands=4, num_train=1000, num_eval=10)
    final_only = 0
    for q, response, is_right in _responses(task, 1000, 1):
        if is_right:
            continue
        assert task.verify(q, response) == 0.0
        assert not task.response_steps_correct(q, response)
        assert response.count(";") == len(task.steps(q.text))
        final_only += response.rsplit(";", 1)[0] == task.solution(q).rsplit(";", 1)[0]
    assert 100 < final_only < 400  # both error kinds occur
    q = task.train_questions()[0]
    assert task.inject_error(q, random.Random(5)) == task.inject_error(q, random.Random(5))


def test_inject_error_survives_times_zero():
    # every step error before "*0" is erased, so the last step must carry it
    task = ArithmeticTask(ops="+*", num_train=10, num_eval=10)
    q = Question("x", "3+4*0", "0")
    rng = random.Random(0)
    for _ in range(200):
        assert task.verify(q, task.inject_error(q, rng)) == 0.0


@pytest.mark.parametrize(
    "response, correct",
    [
        ("12+34=46;46-56=-10;A:-10", True),
        ("12+34=46;46-56=-10;A:-10\n", True),
        ("12+34=046;46-56=-10;A:-10", True),  # integers, not strings
        ("12+34=46;46-56=-10;A:-11", False),  # final not the last result
        ("12+34=47;47-56=-9;A:-9", False),  # arithmetic wrong
        ("12+34=46;45-56=-11;A:-11", False),  # not chained from the previous result
        ("12+35=47;47-56=-9;A:-9", False),  # operand not from the question
        ("12-34=-22;-22-56=-78;A:-78", False),  # operator not from the question
        ("12+34=46;A:-10", False),  # missing step
        ("12+34=46;46-56=-10;46-56=-10;A:-10", False),  # extra step
        ("A:-10", False),
        ("12+34=46;46-56=-10", False),
        ("", False),
        ("garbage", False),
    ],
)
def test_response_steps_correct(response, correct):
    assert ArithmeticTask().response_steps_correct(Q, response) is correct


def test_critique_analysis_correct():
    task = ArithmeticTask()
    wrong = "12+34=46;46-56=-11;A:-11"
    good = "12+34=46|46 ok;46-56=-10|-11 no;A:-10|-11 no;V:wrong"
    assert task.critique_analysis_correct(Q, wrong, good)
    assert task.critique_analysis_correct(Q, wrong, good + "\n")
    assert not task.critique_analysis_correct(Q, wrong, good.replace("-10|-11 no;A", "-10|-11 ok;A"))  # mark
    assert not task.critique_analysis_correct(Q, wrong, good.replace("46-56=-10", "46-56=-12"))  # re-derived
    assert not task.critique_analysis_correct(Q, wrong, good.replace("|46 ok", "|45 ok"))  # copied
    assert not task.critique_analysis_correct(Q, wrong, "V:wrong")  # verdict right, analysis missing
    right = task.solution(Q)
    assert task.critique_analysis_correct(Q, right, task.critique(Q, right))
    assert not task.critique_analysis_correct(Q, right, task.critique(Q, wrong))


def test_critique_eval_set(task):
    examples = task.critique_eval_set()
    assert len(examples) == 2 * len(task.eval_questions())
    assert sum(e.is_right for e in examples) == len(task.eval_questions())
    eval_ids = {q.id for q in task.eval_questions()}
    for e in examples:
        assert e.question.id in eval_ids
        assert (task.verify(e.question, e.response) == 1.0) is e.is_right
    again = ArithmeticTask(num_operands=3, digits=2, ops="+-", num_train=2000, num_eval=100).critique_eval_set()
    assert again == examples


def test_sft_examples(task):
    examples = task.sft_examples(1000, seed=3, critique_share=0.4, refinement_share=0.2)
    assert examples == task.sft_examples(1000, seed=3, critique_share=0.4, refinement_share=0.2)
    assert examples != task.sft_examples(1000, seed=4, critique_share=0.4, refinement_share=0.2)
    critiques = [(p, t) for p, t in examples if p.endswith("\nC:")]
    refinements = [(p, t) for p, t in examples if p.endswith("\nF:")]
    solutions = [(p, t) for p, t in examples if p.endswith("\nS:")]
    assert (len(critiques), len(refinements), len(solutions)) == (400, 200, 400)
    assert sum(t.endswith("V:right") for _, t in critiques) == 200
    train_texts = {q.text for q in task.train_questions()}
    by_text = {q.text: q for q in task.train_questions()}
    for prompt, target in examples:
        text = prompt[2 : prompt.index("\n")]
        assert text in train_texts
        q = by_text[text]
        if prompt.endswith("\nC:"):
            response = prompt[prompt.index("\nS:") + 3 : -3]
            assert target == task.critique(q, response)
        else:
            assert target == task.solution(q)
        if prompt.endswith("\nF:"):
            assert "V:wrong\nF:" in prompt
    assert len(task.sft_examples(10, seed=0)) == 10
    with pytest.raises(ValueError):
        task.sft_examples(10, seed=0, critique_share=0.8, refinement_share=0.3)
