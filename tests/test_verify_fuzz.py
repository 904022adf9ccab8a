"""Model text is untrusted: verifiers and verdict parsers return in bounded time, with no side effect.

Covers ArithmeticTask and MathTask (``verify`` and ``parse_verdict``) and ``sorl.rewards.parse_verdict``.
The only time check is the verifier's own bound (plus generous slack): a comparison that would run
for minutes must come back as 0 once the bound is spent, also when called off the main thread.
"""

import threading
import time

import pytest

from sorl.rewards import parse_verdict
from sorl.tasks.arithmetic import ArithmeticTask
from sorl.tasks.base import Question
from sorl.tasks.math import MathTask
from sorl.verify import SERVER_SLACK, MathVerifier

pytest.importorskip("math_verify", reason="MathTask verifies with math-verify: pip install -e '.[math]'")

SLACK = 10.0  # seconds beyond the bound: a loaded 2-core CI machine is slow, a hang is endless


def fuzz_texts(marker: str) -> list[str]:
    """Hostile responses and critiques; ``marker`` is a file path that must never be created."""
    injection = f"__import__('os').system('touch {marker}')"
    return [
        "9**9**9**9",
        "\\boxed{9**9**9**9}",
        "\\boxed{9^{9^{9^{9}}}}",
        "\\boxed{(10^{100})!}",
        "A:" + "9" * 100_000,
        "A:-" + "1" * 5000 + ";V:right",
        "x" * 1_000_000,
        "\\boxed{" * 100_000,
        "}" * 10_000 + "\\boxed{" + "{" * 10_000,
        "\\boxed{" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "}",
        injection,
        f"\\boxed{{{injection}}}",
        f"A:{injection};Verdict: right;V:right",
        "eval(compile('import os', 'x', 'exec'))",
        "\\boxed{\\input{/etc/passwd}}",
        "\x00\x01\ud800\udfff\u202e\ufeff Verdict:\u00a0right V:\u200bwrong",
        "\\boxed{\u0662\u0663} \\boxed{\uff12} \\boxed{\U0001d7d0}",
        "Verdict: right" * 50_000,
        "V:" * 200_000,
        "",
    ]


@pytest.fixture(scope="module")
def math_task():
    task = MathTask(verify_timeout=2.0)
    assert task.verify(Question("q", "?", "1"), "\\boxed{1}") == 1.0  # server start-up is not a call's time
    yield task
    task.verifier.close()


def test_all_verifiers_and_parsers_return_in_bounded_time_without_side_effects(math_task, tmp_path):
    marker = tmp_path / "pwned"
    arithmetic = ArithmeticTask(num_train=10, num_eval=10)
    arithmetic_question = arithmetic.eval_questions()[0]
    math_question = Question("q", "What is 2?", "2")
    bound = math_task.verifier.timeout + SERVER_SLACK + SLACK
    worst = (0.0, "")
    for text in fuzz_texts(str(marker)):
        for name, call in [
            ("arithmetic.verify", lambda: arithmetic.verify(arithmetic_question, text)),
            ("arithmetic.parse_verdict", lambda: arithmetic.parse_verdict(text)),
            ("math.verify", lambda: math_task.verify(math_question, text)),
            ("math.parse_verdict", lambda: math_task.parse_verdict(text)),
            ("rewards.parse_verdict", lambda: parse_verdict(text)),
        ]:
            started = time.perf_counter()
            result = call()
            seconds = time.perf_counter() - started
            worst = max(worst, (seconds, f"{name}({text[:30]!r}...)"))
            assert seconds < bound, f"{name} took {seconds:.1f} s on {text[:60]!r}"
            if name.endswith("verify"):
                assert result in (0.0, 1.0)
            else:
                assert result in (True, False, None)
    assert not marker.exists()
    print(f"worst fuzz case: {worst[0]:.3f} s, {worst[1]}; verifier timeouts: {math_task.verifier.timeouts}")


def test_a_hanging_comparison_scores_zero_within_the_bound_off_the_main_thread():
    verifier = MathVerifier(timeout=1.0)
    try:
        assert verifier("2", "\\boxed{2}") == 1.0  # starts the server outside the timed calls
        results = []

        def run() -> None:
            started = time.perf_counter()
            results.append((verifier("2", "\\boxed{9^{9^{9^{9}}}}"), time.perf_counter() - started))
            results.append((verifier("3", "so \\boxed{3}"), 0.0))  # a fresh worker took over

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive()
        (reward, seconds), (next_reward, _) = results
        assert reward == 0.0 and verifier.timeouts == 1
        assert seconds < verifier.timeout + SERVER_SLACK + SLACK
        assert next_reward == 1.0
    finally:
        verifier.close()


def test_a_killed_server_is_restarted():
    verifier = MathVerifier(timeout=5.0)
    try:
        assert verifier("4", "\\boxed{4}") == 1.0
        verifier.server._process.kill()
        verifier.server._process.wait()
        assert verifier("4", "\\boxed{4}") == 0.0  # the call that found it dead scores 0
        assert verifier("4", "\\boxed{4}") == 1.0
    finally:
        verifier.close()


def test_bad_gold_is_an_error_not_a_reward():
    verifier = MathVerifier()
    with pytest.raises(ValueError, match="longer than"):
        verifier("1" * 5000, "\\boxed{1}")
    with pytest.raises(TypeError):
        verifier(2, "\\boxed{2}")
