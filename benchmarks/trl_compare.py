"""sorl (``g_rl`` mode) side by side with TRL's ``GRPOTrainer``: the same GRPO training run, timed.

Both train the embedded arithmetic policy (``sorl.policy.EMBEDDED_POLICY``, a transformers folder)
from the same start, on the same questions in the same order (the DataModule's seeded order, fed
to TRL unshuffled), with the settings of ``configs/quickstart.yaml``: 32 questions x 8 responses
per optimizer step, at most 48 new tokens, temperature 1 with top-k and top-p off, AdamW (lr 1e-4,
no weight decay, constant), clip 0.2 / 0.28, token-mean loss (TRL's ``dapo``), rewards scaled by
the group std, ``beta=0`` (no reference model), one pass per generation batch, no gradient
clipping, no gradient checkpointing (TRL's default is on), the same precision (fp32 by default), and the same reward: ``ArithmeticTask.verify``
(wrapped as a TRL reward function on the completion text). Both generate with transformers
``generate`` on the CPU.

The two alternate, sorl first, then TRL, ``--pairs`` times in one process. Each trial times the
``Trainer.fit`` / ``GRPOTrainer.train`` call and reports steady-state training questions per second
and generated (completion) tokens per second (steps 2..N: from the end of step 1 to the end of the
last, so sampling, rewards and updates but not start-up; whole-call figures beside them) and, as a check that both learned, greedy accuracy on the 200 held-out questions after
training (the same evaluation code for both). ``ratio`` is the median over pairs of
sorl q/s / TRL q/s.

Prints a table and, as its last line, a JSON object with ``sorl_qps``, ``trl_qps``, ``ratio``,
``sorl_acc``, ``trl_acc`` (medians / means over trials) and more; writes
``benchmarks/results/trl_compare[-quick].{json,md,png}``. Needs TRL (``pip install -e ".[bench]"``).

    python benchmarks/trl_compare.py [--quick] [--steps 12] [--pairs 3] [--precision fp32|bf16] [--lock PATH]

``--quick``: 4 steps, one pair.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from common import (
    QUICKSTART,
    add_lock_arg,
    cpu_lock,
    machine,
    sorl_source,
    machine_markdown,
    markdown_table,
    plain_table,
    plt,
    result_name,
    write_results,
)

QUESTIONS_PER_STEP = 32
RESPONSES_PER_QUESTION = 8
MAX_NEW_TOKENS = 48
TEMPERATURE = 1.0
LEARNING_RATE = 1e-4
EPS_LOW, EPS_HIGH = 0.2, 0.28
SEED = 0


def training_questions(steps: int) -> list[Any]:
    """The questions sorl's DataModule (seed ``SEED``, one rank) draws in its first ``steps`` rounds."""
    from sorl import ArithmeticTask

    pool = ArithmeticTask().train_questions()
    order = list(range(len(pool)))
    random.Random(SEED).shuffle(order)  # RolloutDataModule._round_questions
    return [pool[order[i % len(pool)]] for i in range(steps * QUESTIONS_PER_STEP)]


def greedy_accuracy(policy: torch.nn.Module, tokenizer: Any) -> float:
    """Greedy accuracy on the task's held-out questions (the Evaluation callback's gen_acc)."""
    from sorl import ArithmeticTask
    from sorl.sampler import encode_prompts
    from sorl.engines.base import SamplingParams
    from sorl.engines.hf import HFEngine

    task = ArithmeticTask()
    questions = list(task.eval_questions())
    engine = HFEngine()
    engine.setup(policy, tokenizer)
    prompts = encode_prompts(tokenizer, [task.response_prompt(q) for q in questions], chat_template=False)
    outputs = engine.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=MAX_NEW_TOKENS), seed=SEED)
    return sum(task.verify(q, out[0].text) for q, out in zip(questions, outputs)) / len(questions)


# ---------------------------------------------------------------------------- sorl
class StepClock(Callback):
    """Per round (= one optimizer step here): generated completion tokens, and when it ended."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.ended: list[float] = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.tokens.append(sum(len(s.completion.token_ids) for s in trainer.datamodule.last_round.responses))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.ended.append(time.perf_counter())


def timing(seconds: float, tokens: list[int], ended: list[float], steps: int) -> dict[str, Any]:
    """Whole-call figures, and steady-state ones: steps 2..N, from the end of step 1 to the end
    of step N, which leaves out one-time costs (model loading, set-up, the first step's warm-up,
    the final export)."""
    if len(tokens) != steps or len(ended) != steps:
        raise RuntimeError(f"expected {steps} steps, got {len(tokens)} token counts and {len(ended)} step ends")
    result = {"seconds": seconds, "tokens": sum(tokens), "tokens_per_step": tokens}
    if steps > 1:
        result["steady_seconds"] = ended[-1] - ended[0]
        result["steady_tokens"] = sum(tokens[1:])
    return result


def run_sorl(steps: int, precision: str, workdir: Path) -> dict[str, Any]:
    from sorl.cli import build_cli

    cli = build_cli(
        [
            "--config", QUICKSTART,
            f"--trainer.max_epochs={steps}",
            f"--trainer.precision={'32-true' if precision == 'fp32' else 'bf16-mixed'}",
            f"--trainer.default_root_dir={workdir}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_model_summary=false",
            "--trainer.logger=false",
            "--trainer.check_val_every_n_epoch=100000",
            "--trainer.callbacks=[]",
            "--data.init_args.mode=g_rl",
            f"--model.init_args.optimizer.init_args.lr={LEARNING_RATE}",
            f"--model.init_args.loss.init_args.eps_low={EPS_LOW}",
            f"--model.init_args.loss.init_args.eps_high={EPS_HIGH}",
            "--model.init_args.loss.init_args.beta=0.0",
            "--model.init_args.loss.init_args.aggregation=token_mean",
            f"--data.init_args.questions_per_round={QUESTIONS_PER_STEP}",
            f"--data.init_args.responses_per_question={RESPONSES_PER_QUESTION}",
            f"--data.init_args.max_response_tokens={MAX_NEW_TOKENS}",
            f"--data.init_args.temperature={TEMPERATURE}",
            "--data.init_args.top_p=1.0",
            f"--data.init_args.batch_size={QUESTIONS_PER_STEP * RESPONSES_PER_QUESTION}",
            "--data.init_args.passes_per_round=1",
            f"--data.init_args.seed={SEED}",
            f"--seed_everything={SEED}",
        ],
        run=False,
    )
    clock = StepClock()
    cli.trainer.callbacks.append(clock)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - started
    if cli.trainer.global_step != steps:
        raise RuntimeError(f"sorl made {cli.trainer.global_step} optimizer steps, expected {steps}")
    return {**timing(seconds, clock.tokens, clock.ended, steps), "acc": greedy_accuracy(cli.model.policy, cli.model.tokenizer)}


# ---------------------------------------------------------------------------- TRL
def run_trl(steps: int, precision: str, workdir: Path) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sorl import ArithmeticTask
    from sorl.policy import EMBEDDED_POLICY, load_tokenizer

    task = ArithmeticTask()
    questions = training_questions(steps)
    dataset = Dataset.from_dict({
        "prompt": [task.response_prompt(q) for q in questions],  # plain text: the policy has no chat template
        "question_index": list(range(len(questions))),
    })
    tokens: list[int] = []  # per generation batch = per optimizer step
    ended: list[float] = []

    class StepEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ended.append(time.perf_counter())

    def arithmetic_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                          question_index: list[int], **kwargs: Any) -> list[float]:
        """ArithmeticTask.verify on each completion (1.0 right, 0.0 wrong)."""
        tokens.append(sum(len(ids) for ids in completion_ids))
        return [task.verify(questions[i], completion) for i, completion in zip(question_index, completions)]

    config = GRPOConfig(
        output_dir=str(workdir),
        use_cpu=True,
        report_to=[],
        bf16=precision == "bf16",
        seed=SEED,
        max_steps=steps,
        per_device_train_batch_size=QUESTIONS_PER_STEP * RESPONSES_PER_QUESTION,  # completions per micro-batch
        gradient_accumulation_steps=1,
        steps_per_generation=1,  # one optimizer step per generation batch
        num_iterations=1,
        num_generations=RESPONSES_PER_QUESTION,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        top_k=0,
        top_p=1.0,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=0.0,  # sorl's Trainer does not clip gradients
        gradient_checkpointing=False,  # TRL's default is on; sorl's is off
        beta=0.0,
        epsilon=EPS_LOW,
        epsilon_high=EPS_HIGH,
        loss_type="dapo",  # sum over the step's tokens / their count: sorl's token_mean
        scale_rewards="group",
        mask_truncated_completions=False,
        shuffle_dataset=False,  # sorl's order
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    tokenizer = load_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_POLICY, dtype=torch.float32)
    trainer = GRPOTrainer(
        model=model, reward_funcs=arithmetic_reward, args=config, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[StepEnd()],
    )
    if trainer.model.is_gradient_checkpointing:
        raise RuntimeError("TRL's policy has gradient checkpointing on; sorl's does not")
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    if trainer.state.global_step != steps:
        raise RuntimeError(f"TRL made {trainer.state.global_step} optimizer steps, expected {steps}")
    return {**timing(seconds, tokens, ended, steps), "acc": greedy_accuracy(trainer.model, tokenizer)}


# ---------------------------------------------------------------------------- report
def plot(trials: list[dict[str, Any]], title: str) -> Any:
    figure, (ax_qps, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for system, color in (("sorl", "tab:blue"), ("trl", "tab:orange")):
        points = [(t["pair"], t["qps"]) for t in trials if t["system"] == system]
        ax_qps.plot([p for p, _ in points], [q for _, q in points], marker="o", color=color, label=system)
    ax_qps.set_xlabel("pair")
    ax_qps.set_ylabel("training questions / s")
    ax_qps.set_ylim(bottom=0)
    ax_qps.legend()
    systems = ["sorl", "trl"]
    accs = [statistics.fmean(t["acc"] for t in trials if t["system"] == s) for s in systems]
    ax_acc.bar(systems, accs, color=["tab:blue", "tab:orange"])
    ax_acc.axhline(trials[0]["acc_before"], color="black", linestyle="--", label="before training")
    ax_acc.set_ylabel("greedy accuracy after training")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend()
    figure.suptitle(title)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 steps, one pair; results get a -quick suffix")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial, >= 2 (default: 12; --quick: 4)")
    parser.add_argument("--pairs", type=int, help="sorl, TRL pairs (default: 3; --quick: 1)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--suffix", help="appended to the results' name, e.g. a code variant under test")
    parser.add_argument("--note", default="", help="free text saved with the results, e.g. which sorl code ran")
    add_lock_arg(parser)
    args = parser.parse_args()
    steps = args.steps if args.steps is not None else (4 if args.quick else 12)
    pairs = args.pairs if args.pairs is not None else (1 if args.quick else 3)
    if steps < 2:
        raise SystemExit(f"--steps must be >= 2 (step 1 is a warm-up), got {steps}")
    name = result_name("trl_compare", args.quick) + (f"-{args.suffix}" if args.suffix else "")
    info = {**machine(), "sorl": {**sorl_source(), "note": args.note}}
    started = time.perf_counter()

    from sorl.policy import EMBEDDED_POLICY, load_policy, load_tokenizer

    acc_before = greedy_accuracy(load_policy(EMBEDDED_POLICY).eval(), load_tokenizer())
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sorl-trl-compare-") as workdir:
        for pair in range(pairs):
            for system, run in (("sorl", run_sorl), ("trl", run_trl)):
                with cpu_lock(args.lock):
                    torch.manual_seed(SEED)
                    result = run(steps, args.precision, Path(workdir) / f"{system}-{pair}")
                trial = {
                    "system": system, "pair": pair, **result, "acc_before": acc_before,
                    "qps": (steps - 1) * QUESTIONS_PER_STEP / result["steady_seconds"],
                    "tokens_per_s": result["steady_tokens"] / result["steady_seconds"],
                    "whole_qps": steps * QUESTIONS_PER_STEP / result["seconds"],
                    "whole_tokens_per_s": result["tokens"] / result["seconds"],
                }
                trials.append(trial)
                print(
                    f"pair {pair} {system:<4}: {trial['qps']:.2f} questions/s  {trial['tokens_per_s']:.0f} tokens/s "
                    f"(steady, steps 2-{steps}); whole call {result['seconds']:.1f}s = {trial['whole_qps']:.2f} questions/s; "
                    f"acc {result['acc']:.3f}",
                    flush=True,
                )
    wall = time.perf_counter() - started

    def median(system: str, key: str) -> float:
        return statistics.median(t[key] for t in trials if t["system"] == system)

    ratios = [
        next(t for t in trials if t["system"] == "sorl" and t["pair"] == p)["qps"]
        / next(t for t in trials if t["system"] == "trl" and t["pair"] == p)["qps"]
        for p in range(pairs)
    ]
    headers = ["system", "questions/s", "tokens/s", "whole-call questions/s", "whole-call tokens/s", "seconds per call", "acc after (mean)"]
    rows = [
        [s, f"{median(s, 'qps'):.2f}", f"{median(s, 'tokens_per_s'):.0f}", f"{median(s, 'whole_qps'):.2f}",
         f"{median(s, 'whole_tokens_per_s'):.0f}", f"{median(s, 'seconds'):.1f}",
         f"{statistics.fmean(t['acc'] for t in trials if t['system'] == s):.3f}"]
        for s in ("sorl", "trl")
    ]
    print(plain_table(headers, rows))
    final = {
        "sorl_qps": median("sorl", "qps"),
        "trl_qps": median("trl", "qps"),
        "ratio": statistics.median(ratios),
        "sorl_acc": statistics.fmean(t["acc"] for t in trials if t["system"] == "sorl"),
        "trl_acc": statistics.fmean(t["acc"] for t in trials if t["system"] == "trl"),
        "acc_before": acc_before,
        "sorl_tokens_per_s": median("sorl", "tokens_per_s"),
        "trl_tokens_per_s": median("trl", "tokens_per_s"),
        "sorl_whole_qps": median("sorl", "whole_qps"),
        "trl_whole_qps": median("trl", "whole_qps"),
        "steps": steps,
        "pairs": pairs,
        "precision": args.precision,
    }
    title = f"sorl g_rl vs TRL GRPOTrainer ({steps} steps x {QUESTIONS_PER_STEP} questions x {RESPONSES_PER_QUESTION}, {args.precision}, {pairs} pairs)"
    markdown = "\n\n".join([
        f"# {title}",
        "Each trial is a `Trainer.fit` (sorl) or `GRPOTrainer.train` (TRL) call from the embedded policy. "
        "questions/s and tokens/s (generated completion tokens) are steady-state: steps 2 to N, from the end of "
        "step 1 to the end of the last step; the whole-call figures include start-up, the first step and the "
        f"final export. Medians over trials. Ratio sorl/TRL (median of pairs): {statistics.median(ratios):.2f} "
        f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)}). Accuracy: greedy, 200 held-out questions "
        f"(before training: {acc_before:.3f}).",
        markdown_table(headers, rows),
        machine_markdown(info) + f" Wall time of this invocation: {wall:.0f} s." + (f" sorl: {args.note}" if args.note else ""),
    ])
    payload = {
        "benchmark": "trl_compare",
        "config": QUICKSTART,
        "settings": {
            "questions_per_step": QUESTIONS_PER_STEP, "responses_per_question": RESPONSES_PER_QUESTION,
            "max_new_tokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE, "learning_rate": LEARNING_RATE,
            "eps_low": EPS_LOW, "eps_high": EPS_HIGH, "beta": 0.0, "precision": args.precision, "seed": SEED,
        },
        "machine": info,
        "wall_seconds": wall,
        "ratios": ratios,
        "trials": trials,
        "final": final,
    }
    for path in write_results(name, payload, markdown, plot(trials, title)):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
