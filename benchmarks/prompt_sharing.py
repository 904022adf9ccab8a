"""HFEngine with and without ``share_prompts``: the RL config's two sampling calls, timed A/B.

``HFEngine(share_prompts=True)`` (the default) runs each prompt's prefill once and copies its KV
cache to the prompt's n samples; ``False`` lets transformers' ``generate`` repeat the prompt n
times. Both draw the same samples for the same seed (up to float rounding), so the tokens match and
the time is the only difference. The calls are those of one round of
``configs/smollm2_reasoning_gym.yaml``: 8 questions x 8 responses of at most 64 tokens (chat
template), then 4 critiques of at most 128 tokens of one sampled response per question (critique
prompts embed the response: ~170 tokens). The two settings alternate, the order flipping every
repeat; medians of the repeats.

``--model embedded`` runs the same shapes on the embedded policy (the arithmetic task).

Prints a table and, as its last line, a JSON object with ``responses_ratio`` and
``critiques_ratio`` (shared / unshared seconds); writes ``benchmarks/results/prompt_sharing[-embedded].{json,md,png}``.

    python benchmarks/prompt_sharing.py [--model smollm2|embedded] [--dtype float32|bfloat16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import add_lock_arg, cpu_lock, machine, machine_markdown, markdown_table, plain_table, plt, smollm2_policy, write_results
from sorl.engines import HFEngine, SamplingParams
from sorl.policy import load_policy, load_tokenizer
from sorl.sampler import encode_prompts
from sorl.tasks import ArithmeticTask, ReasoningGymTask

QUESTIONS = 8
# (samples per prompt, max new tokens) of the RL config's responses and critiques
CALLS = {"responses": (8, 64), "critiques": (4, 128)}
# the RL config's task (configs/smollm2_reasoning_gym.yaml)
BASIC_ARITHMETIC = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+", "-"],
                    "allow_parentheses": False, "allow_negation": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "embedded"), default="smollm2")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="HFEngine's sampling dtype")
    parser.add_argument("--repeats", type=int, default=3)
    add_lock_arg(parser)
    args = parser.parse_args()
    if args.model == "smollm2":
        path, chat = str(smollm2_policy()), True
        task = ReasoningGymTask("basic_arithmetic", config=BASIC_ARITHMETIC, train_size=200, eval_size=20)
    else:
        path, chat, task = None, False, ArithmeticTask()
    policy, tokenizer = load_policy(path).eval(), load_tokenizer(path)
    dtype = None if args.dtype == "float32" else args.dtype
    engines = {share: HFEngine(dtype=dtype, share_prompts=share) for share in (False, True)}
    for engine in engines.values():
        engine.setup(policy, tokenizer)
    questions = task.train_questions()[:QUESTIONS]
    prompts = {"responses": encode_prompts(tokenizer, [task.response_prompt(q) for q in questions], chat)}
    first = engines[True].generate(prompts["responses"], 1, SamplingParams(max_new_tokens=CALLS["responses"][1]), seed=0)
    critique_texts = [task.critique_prompt(q, group[0].text) for q, group in zip(questions, first)]
    prompts["critiques"] = encode_prompts(tokenizer, critique_texts, chat)

    seconds: dict[str, dict[bool, list[float]]] = {call: {False: [], True: []} for call in CALLS}
    tokens: dict[str, dict[bool, list[int]]] = {call: {False: [], True: []} for call in CALLS}
    with cpu_lock(args.lock):
        for repeat in range(args.repeats):
            for call, (n, max_tokens) in CALLS.items():
                for share in (False, True) if repeat % 2 == 0 else (True, False):
                    started = time.perf_counter()
                    groups = engines[share].generate(prompts[call], n, SamplingParams(max_new_tokens=max_tokens), seed=repeat)
                    seconds[call][share].append(time.perf_counter() - started)
                    tokens[call][share].append(sum(len(c.token_ids) for group in groups for c in group))
                    print(f"{call} share_prompts={share}: {seconds[call][share][-1]:.2f} s, {tokens[call][share][-1]} tokens", flush=True)

    headers = ["call", "prompts x n, max tokens", "mean prompt tokens", "unshared s", "shared s", "shared / unshared", "same tokens"]
    rows, final = [], {"model": args.model, "dtype": args.dtype, "repeats": args.repeats}
    for call, (n, max_tokens) in CALLS.items():
        unshared, shared = statistics.median(seconds[call][False]), statistics.median(seconds[call][True])
        final[f"{call}_ratio"] = shared / unshared
        rows.append([
            call, f"{QUESTIONS} x {n}, {max_tokens}", f"{statistics.mean(map(len, prompts[call])):.0f}",
            f"{unshared:.2f}", f"{shared:.2f}", f"{shared / unshared:.2f}", tokens[call][False] == tokens[call][True],
        ])
    print(plain_table(headers, rows))
    info = machine()
    name = "prompt_sharing" + ("" if args.model == "smollm2" else f"-{args.model}")
    markdown = "\n\n".join([
        f"# HFEngine share_prompts: {args.model}, {args.dtype} sampling",
        "One round's sampling calls of `configs/smollm2_reasoning_gym.yaml`, each timed with `share_prompts` off "
        f"and on, alternating ({args.repeats} repeats, medians; same seed per repeat, so the same samples).",
        markdown_table(headers, rows),
        machine_markdown(info),
        f"Command: `python benchmarks/prompt_sharing.py {' '.join(sys.argv[1:])}`",
    ])
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for offset, share in ((-0.2, False), (0.2, True)):
        axis.bar([i + offset for i in range(len(CALLS))], [statistics.median(seconds[c][share]) for c in CALLS], width=0.4,
                 label=f"share_prompts={share}")
    axis.set_xticks(range(len(CALLS)), list(CALLS))
    axis.set_ylabel("seconds per call (median)")
    axis.set_title(f"HFEngine prompt sharing, {args.model} {args.dtype}")
    axis.legend()
    payload = {**final, "seconds": {c: {str(s): v for s, v in by.items()} for c, by in seconds.items()},
               "tokens": {c: {str(s): v for s, v in by.items()} for c, by in tokens.items()}, "machine": info}
    for path in write_results(name, payload, markdown, figure):
        print(f"wrote {path}")
    print(json.dumps(final))


if __name__ == "__main__":
    main()
