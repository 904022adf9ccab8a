"""Where a solve-it-yourself critic's verdicts come from: greedy critiques of a balanced critique set,
each split into the steps of its analysis.

For every pair of the set (a question and a right or a wrong response) each policy writes one
greedy critique in the format of ``ReasoningGymTask`` ("solve it yourself, then compare"), which
states ``My answer:``, ``Response answer:`` and the verdict. The script reports, as shares of the
critiques:

- ``crit_acc``: the verdict is the verifier's label (also on right and on wrong responses alone);
- ``own_right``: the critic's own answer scores right;
- ``copy_right``: the response's answer it states is the response's (``none`` when it has none);
- ``consistent``: the verdict follows its own comparison (``right`` exactly when the two answers
  it states are equal); a critic whose verdicts do not is guessing, whatever its accuracy;
- ``sound``: all of it at once (``ReasoningGymTask.critique_analysis_correct``).

    python benchmarks/critic_diagnosis.py --policy cold_start=runs/real_model_vllm/cold_start_policy \\
        --policy gc_rl_seed0=runs/real_model_vllm/rl/gc_rl-seed0/lightning_logs/version_0/hf \\
        --critique-set runs/real_model_vllm/critique_set.jsonl [--engine hf|vllm] [--lock PATH]

The task, prompts and critique length are the RL config's (``configs/smollm2_reasoning_gym.yaml``,
``--config``). The policies share one engine (loaded once; each next policy's weights are synced into it), so they
must share an architecture and tokenizer. Prints a table and, as its last line, one JSON object
per policy name; writes ``benchmarks/results/<name>.{json,md,png}`` (``--name``, default
``critic_diagnosis``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from common import REPO_ROOT, RESULTS_DIR, add_lock_arg, cpu_lock, machine, machine_markdown, markdown_table, plain_table, plt, write_results
from real_model import VLLM_ENGINE  # sample as the real-model run does, so that crit_acc is its evaluation's

SHARES = ("crit_acc", "crit_acc_right", "crit_acc_wrong", "own_right", "copy_right", "consistent", "sound")


def analyse(task: Any, example: Any, critique: str) -> dict[str, bool]:
    """The steps of one critique of ``example`` (a ``CritiqueExample``) that are right."""
    verdict = task.parse_verdict(critique)
    own, theirs = task.critique_answers(critique)
    return {
        "crit_acc": verdict == example.is_right,
        "own_right": own is not None and task.score_answer(example.question, own) >= 1.0,
        "copy_right": theirs == (task.extract_answer(example.response) or "none"),
        "consistent": verdict is not None and own is not None and theirs is not None and verdict == (own == theirs),
        "sound": task.critique_analysis_correct(example.question, example.response, critique),
    }


def shares(task: Any, examples: list[Any], critiques: list[str]) -> dict[str, float]:
    """Each step's share over the critiques, and the verdict's accuracy per label."""
    steps = [analyse(task, example, critique) for example, critique in zip(examples, critiques, strict=True)]
    result = {key: sum(s[key] for s in steps) / len(steps) for key in steps[0]}
    for label, name in ((True, "crit_acc_right"), (False, "crit_acc_wrong")):
        kept = [s["crit_acc"] for s, e in zip(steps, examples) if e.is_right is label]
        result[name] = sum(kept) / max(1, len(kept))
    return {key: result[key] for key in SHARES} | {"critiques": len(steps)}


def task_from_config(data: dict[str, Any], critique_set: Path) -> Any:
    """The RL config's task (``data``: its DataModule's init_args), reading ``critique_set``."""
    from sorl.tasks.reasoning_gym import ReasoningGymTask

    task = data["task"]
    if task["class_path"] != "sorl.ReasoningGymTask":
        raise ValueError(f"the critic diagnosis reads ReasoningGymTask's critique format, not {task['class_path']}")
    return ReasoningGymTask(**(task["init_args"] | {"critique_set": str(critique_set)}))


def critiques_of(policies: dict[str, str], task: Any, data: dict[str, Any], engine_name: str) -> dict[str, list[str]]:
    """Each policy's greedy critique of every pair, prompted and as long as the RL config's evaluation."""
    from sorl.engines import HFEngine, SamplingParams
    from sorl.policy import load_policy
    from sorl.sampler import model_sampler

    examples = task.critique_eval_set()
    prompts = [task.critique_prompt(e.question, e.response) for e in examples]
    if engine_name == "vllm":
        from sorl.engines import VLLMEngine

        engine, dtype = VLLMEngine(**VLLM_ENGINE["init_args"]), VLLM_ENGINE["init_args"]["dtype"]
    else:
        engine, dtype = HFEngine(), "float32"
    sampler = None
    texts = {}
    for name, folder in policies.items():
        if sampler is None:
            sampler = model_sampler(folder, engine, dtype, chat_template=data["chat_template"], system_prompt=data["system_prompt"])
        else:
            engine.sync_weights(load_policy(folder, dtype=dtype).eval())
        completions = sampler.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=data["max_critique_tokens"]), "critic_diagnosis")
        texts[name] = [group[0].text for group in completions]
        print(f"{name}: {len(prompts)} critiques", flush=True)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", action="append", required=True, metavar="NAME=FOLDER", help="a policy to diagnose (repeatable)")
    parser.add_argument("--critique-set", type=Path, required=True, help="the balanced critique set (python -m sorl.critique_set)")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs/smollm2_reasoning_gym.yaml", help="the RL config giving the task, prompts and critique length")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="transformers generate (float32) or vLLM (bf16)")
    parser.add_argument("--name", default="critic_diagnosis", help="results file name")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    add_lock_arg(parser)
    args = parser.parse_args()
    policies = dict(item.split("=", 1) for item in args.policy)
    data = yaml.safe_load(args.config.read_text())["data"]["init_args"]
    task = task_from_config(data, args.critique_set)
    examples = task.critique_eval_set()
    if not examples:
        raise SystemExit(f"{args.critique_set} holds no critique pairs")
    with cpu_lock(args.lock):
        texts = critiques_of(policies, task, data, args.engine)
    results = {name: shares(task, examples, critiques) for name, critiques in texts.items()}

    headers = ["policy", *SHARES]
    rows = [[name, *(f"{r[key]:.3f}" for key in SHARES)] for name, r in results.items()]
    print(plain_table(headers, rows))
    info = machine()
    markdown = (
        f"# Critic diagnosis: greedy critiques of {len(examples)} balanced pairs ({args.critique_set.name}), {args.engine}\n\n"
        "Shares of the critiques: verdict right (all, on right responses, on wrong ones), own answer right, "
        "the response's answer copied right, verdict consistent with the critic's own comparison, all of it (sound).\n\n"
        + markdown_table(headers, rows) + "\n\n" + machine_markdown(info)
    )
    figure, axis = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(results)
    for index, (name, r) in enumerate(results.items()):
        axis.bar([i + index * width for i in range(len(SHARES))], [r[key] for key in SHARES], width, label=name)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(SHARES))], SHARES, rotation=20)
    axis.set_ylim(0, 1)
    axis.set_ylabel("share of critiques")
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: the bars reach 1
    payload = {"policies": policies, "critique_set": str(args.critique_set), "engine": args.engine, "results": results, "machine": info}
    for path in write_results(args.name, payload, markdown, figure, args.results_dir):
        print(f"wrote {path}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
