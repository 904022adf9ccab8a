"""Time of one maths verification (MathVerifier: math-verify in a forked, time-bounded worker).

Per evaluation file of ../shared/data: every gold answer verified against itself (boxed, "self")
and against the next row's different gold ("other"), one call at a time as the DataModule calls
it; then the hostile texts of tests/test_verify_fuzz.py. Prints the worst, median and
99th-percentile call times and the number of calls that hit the bound, and writes
results/verify_time.{json,md,png}.

    python benchmarks/verify_time.py --lock /tmp/sorl-cpu.lock
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import add_lock_arg, cpu_lock, machine, machine_markdown, markdown_table, plain_table, write_results  # noqa: E402
from test_verify_fuzz import fuzz_texts  # noqa: E402

from sorl.tasks.math_data import MathDataset  # noqa: E402
from sorl.verify import MathVerifier  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = [
    ("math500", "math500/test.jsonl", "math"),
    ("gsm8k", "gsm8k/test.jsonl", "gsm8k"),
    ("minerva_math", "minerva_math/test.jsonl", "minerva"),
    ("amc23", "amc23/test.jsonl", "amc"),
    ("olympiadbench", "olympiadbench/test.jsonl", "olympiadbench"),
]


def timed(verifier: MathVerifier, gold: str, response: str) -> tuple[float, float]:
    started = time.perf_counter()
    reward = verifier(gold, response)
    return reward, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=5.0, help="the verifier's bound per call (s)")
    add_lock_arg(parser)
    args = parser.parse_args()
    verifier = MathVerifier(timeout=args.timeout)
    rows, payload, all_seconds = [], {"machine": machine(), "timeout": args.timeout, "sets": {}}, {}
    with cpu_lock(args.lock):
        started = time.perf_counter()
        verifier("1", "\\boxed{1}")
        payload["startup_seconds"] = time.perf_counter() - started
        cases: dict[str, list[tuple[str, str]]] = {}
        for name, relative, preset in FILES:
            questions = MathDataset(str(DATA / relative), preset=preset).questions()
            cases[f"{name} self"] = [(q.gold, f"The final answer is \\boxed{{{q.gold}}}.") for q in questions]
            others = []
            for i, q in enumerate(questions):
                other = next(o for o in questions[i + 1 :] + questions[:i] if o.gold != q.gold)
                others.append((q.gold, f"\\boxed{{{other.gold}}}"))
            cases[f"{name} other"] = others
        cases["fuzz"] = [("2", text) for text in fuzz_texts("/nonexistent/sorl-fuzz-marker")]
        timeouts_before = 0
        for name, pairs in cases.items():
            seconds = []
            worst = (0.0, "")
            for gold, response in pairs:
                _, elapsed = timed(verifier, gold, response)
                seconds.append(elapsed)
                worst = max(worst, (elapsed, f"{gold[:40]!r} vs {response[:40]!r}"))
            timeouts = verifier.timeouts - timeouts_before
            timeouts_before = verifier.timeouts
            ordered = sorted(seconds)
            stats = {
                "calls": len(seconds),
                "median_ms": 1000 * statistics.median(seconds),
                "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
                "worst_s": worst[0],
                "worst_case": worst[1],
                "timeouts": timeouts,
                "total_s": sum(seconds),
            }
            payload["sets"][name] = stats
            all_seconds[name] = seconds
            rows.append([name, stats["calls"], f"{stats['median_ms']:.2f}", f"{stats['p99_ms']:.1f}", f"{stats['worst_s']:.3f}", timeouts])
            print(f"{name}: {json.dumps(stats)}", flush=True)
    verifier.close()
    headers = ["set", "calls", "median ms", "p99 ms", "worst s", "timeouts"]
    print(plain_table(headers, rows))
    markdown = (
        f"# Verifier time per call (bound {args.timeout} s)\n\n{markdown_table(headers, rows)}\n\n"
        f"Server start-up (once): {payload['startup_seconds']:.1f} s. {machine_markdown(payload['machine'])}\n"
    )
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.hist([all_seconds[n] for n in all_seconds], bins=50, log=True, label=list(all_seconds), stacked=True)
    axis.set_xlabel("seconds per verification call")
    axis.set_ylabel("calls")
    axis.legend()
    write_results("verify_time", payload, markdown, figure)
    print(json.dumps({name: {k: v for k, v in s.items() if k != "worst_case"} for name, s in payload["sets"].items()}))


if __name__ == "__main__":
    main()
