"""RolloutDataModule: builds each round's training data from the current policy.

One round is one Lightning epoch. ``train_dataloader()`` (reloaded every epoch) runs:
first-order rollout -> verification -> question-response cache -> second-order rollout ->
critique rewards -> rollout callbacks -> group advantages -> micro-batches of token ids.
"""

from __future__ import annotations

import random
import time
import warnings
from collections import deque
from contextlib import contextmanager
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from sorl.callbacks.base import rollout_callbacks
from sorl.engines.base import Completion, RolloutEngine, SamplingParams
from sorl.engines.hf import HFEngine, left_pad
from sorl.loss import group_advantages
from sorl.rewards import critique_reward
from sorl.tasks.base import CritiqueExample, Question, Task

Kind = Literal["answer", "critique"]

# RoundBatches has an exact length (one process builds it); Lightning warns for any such dataset.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
# The DataModule's own state holds the rest of an interrupted round (see state_dict), so the
# dataloader does resume where it stopped; Lightning cannot see that and would warn otherwise.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


@dataclass
class Sample:
    """One sampled completion with its reward; ``pair`` is the critiqued pair for critiques."""

    kind: Kind
    group: int  # samples of one group share a prompt: advantages are relative within it
    question: Question
    prompt_ids: list[int]
    completion: Completion
    reward: float = 0.0
    advantage: float = 0.0
    pair: CritiqueExample | None = None
    verdict: bool | None = None  # for critiques: True if it judges the response right


@dataclass
class Round:
    """Everything one round produced; rollout callbacks read and change it in place."""

    index: int
    questions: list[Question]
    answers: list[Sample] = field(default_factory=list)
    candidates: list[CritiqueExample] = field(default_factory=list)
    critique_pairs: list[CritiqueExample] = field(default_factory=list)
    critiques: list[Sample] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # extra values to log, mean over ranks


class RoundBatches(IterableDataset):
    """A round's pre-built micro-batches. Iterable so Lightning adds no distributed sampler:
    each rank already holds its own shard."""

    def __init__(self, batches: list[dict[str, Any]], skipped: int = 0) -> None:
        self.batches = batches
        self.skipped = skipped  # batches of this round trained before a resume: counted, not yielded

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        # The round's full length: Lightning's restored batch position counts the skipped ones.
        return self.skipped + len(self.batches)


class RolloutDataModule(LightningDataModule):
    """Generates first- and second-order rollouts each epoch with the policy of the LightningModule.

    The LightningModule must expose ``policy`` (a transformers causal LM), ``tokenizer``, ``mode``
    (``g_rl``, ``c_rl`` or ``gc_rl``) and ``loss`` (a :class:`~sorl.loss.GRPOLoss`), as
    :class:`~sorl.module.GCRLModule` does. Needs ``Trainer(reload_dataloaders_every_n_epochs=1)``.

    Args:
        task: questions, prompts and verifier.
        engine: samples completions; defaults to :class:`~sorl.engines.HFEngine`.
        questions_per_round: questions each rank answers per round.
        responses_per_question: k, first-order samples per question.
        critique_pairs_per_round: P, (question, response) pairs drawn from the cache per rank and round.
        critiques_per_response: m, second-order samples per pair.
        cache_size: bound of the question-response cache (oldest pairs leave first).
        critique_data: ``dynamic`` refreshes the cache from each round's responses; ``static``
            fills it from the first round's (initial policy's) responses and keeps it.
        temperature, top_p: sampling parameters of both rollouts (logprobs use the same temperature).
        max_response_tokens, max_critique_tokens: generation bounds.
        batch_size: samples per micro-batch (``Trainer(accumulate_grad_batches)`` groups them).
        passes_per_round: optimizer passes over a round's data; > 1 computes ``old_logprobs``.
        scale_rewards_by_std: divide advantages by the group's std (GRPO) or not (Dr. GRPO).
        drop_zero_std_groups: drop groups whose rewards are all equal (DAPO's dynamic sampling).
        mask_truncated: leave responses that hit the token bound out of the loss.
        eval_samples: samples per evaluation question for mean accuracy (0: greedy only).
        eval_max_questions: cap on evaluation questions and critique examples (None: all).
        chat_template: wrap each prompt as a user message in the tokenizer's chat template;
            ``None`` does so when the tokenizer has one (the embedded policy has none).
        system_prompt: a system message put before each prompt when the chat template is used.
        seed: seeds question order and sampling; rounds and ranks derive their own seeds.
    """

    def __init__(
        self,
        task: Task,
        engine: RolloutEngine | None = None,
        questions_per_round: int = 32,
        responses_per_question: int = 8,
        critique_pairs_per_round: int = 16,
        critiques_per_response: int = 4,
        cache_size: int = 256,
        critique_data: Literal["dynamic", "static"] = "dynamic",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_response_tokens: int = 64,
        max_critique_tokens: int = 96,
        batch_size: int = 64,
        passes_per_round: int = 1,
        scale_rewards_by_std: bool = True,
        drop_zero_std_groups: bool = False,
        mask_truncated: bool = False,
        eval_samples: int = 4,
        eval_max_questions: int | None = None,
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("questions_per_round", questions_per_round),
            ("responses_per_question", responses_per_question),
            ("critiques_per_response", critiques_per_response),
            ("batch_size", batch_size),
            ("passes_per_round", passes_per_round),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if responses_per_question < 2:  # one response: no group spread, no right/wrong pair to critique
            raise ValueError(
                f"responses_per_question must be >= 2, got {responses_per_question}: advantages are relative to "
                "the other responses to the same question, so a single response always gets advantage 0 "
                "(and no question can give both a right and a wrong response to critique)"
            )
        self.task = task
        self.engine = engine if engine is not None else HFEngine()
        self.questions_per_round = questions_per_round
        self.responses_per_question = responses_per_question
        self.critique_pairs_per_round = critique_pairs_per_round
        self.critiques_per_response = critiques_per_response
        self.critique_data = critique_data
        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_response_tokens)
        self.critique_sampling = SamplingParams(
            temperature=temperature, top_p=top_p, max_new_tokens=max_critique_tokens
        )
        self.batch_size = batch_size
        self.passes_per_round = passes_per_round
        self.scale_rewards_by_std = scale_rewards_by_std
        self.drop_zero_std_groups = drop_zero_std_groups
        self.mask_truncated = mask_truncated
        self.eval_samples = eval_samples
        self.eval_max_questions = eval_max_questions
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.seed = seed
        # State that a checkpoint carries (see state_dict).
        self.round_index = 0
        self.cache: deque[CritiqueExample] = deque(maxlen=cache_size)
        self.cache_frozen = False
        self._engine_ready = False
        self.engine_logprobs = False  # set each round from module.loss.importance_sampling_cap
        self._question_order: list[int] | None = None  # a seeded permutation of the training pool
        self.last_round: Round | None = None
        # The current round's batch schedule; trained entries become None once a resume skips them.
        self._schedule: list[dict[str, Any] | None] = []
        self._resumed_round: tuple[list[dict[str, Any]], int] | None = None  # (remaining batches, skipped)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        # Checked here, where the module's mode is known: g_rl samples no critiques.
        if stage == "fit" and self.trainer.lightning_module.mode != "g_rl" and self.critiques_per_response < 2:
            raise ValueError(
                f"critiques_per_response must be >= 2 in mode {self.trainer.lightning_module.mode}, got "
                f"{self.critiques_per_response}: a critique's advantage is relative to the other critiques of "
                "the same response, so a single critique always gets advantage 0 (use mode g_rl to train no critiques)"
            )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "RolloutDataModule generates new data every epoch: "
                "set Trainer(reload_dataloaders_every_n_epochs=1)"
            )
        if self._resumed_round is not None:  # a checkpoint from inside a round: train the rest of it
            batches, skipped = self._resumed_round
            self._resumed_round = None
            self._schedule = [None] * skipped + batches
            return DataLoader(RoundBatches(batches, skipped), batch_size=None)
        module = trainer.lightning_module
        self.prepare_engine(module)
        # Truncated importance sampling needs the engine's logprobs of the sampled tokens.
        self.engine_logprobs = module.loss.importance_sampling_cap is not None
        round_ = self.build_round(module.mode)
        batches = self.make_batches(round_, module)
        self.log_round(round_)
        self.last_round = round_
        self.round_index += 1
        self._schedule = list(batches)
        return DataLoader(RoundBatches(batches), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        """Evaluation items for this rank: batches of held-out questions and of critique examples."""
        rank, world = self._rank_world()
        questions = list(self.task.eval_questions())[: self.eval_max_questions][rank::world]
        examples = list(self.task.critique_eval_set())[: self.eval_max_questions][rank::world]
        size = max(1, self.batch_size)
        items = [{"kind": "generation", "questions": questions[i : i + size]} for i in range(0, len(questions), size)]
        items += [{"kind": "critique", "examples": examples[i : i + size]} for i in range(0, len(examples), size)]
        return DataLoader(RoundBatches(items), batch_size=None, collate_fn=lambda item: item)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if "kind" in batch:  # evaluation items hold questions, not tensors
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs: the round counter and, per rank, the cache, the untrained rest of
        an interrupted round and the RNG states. Called on every rank when a checkpoint is saved."""
        rank_state = {
            "cache": [
                {"question": asdict(pair.question), "response": pair.response, "is_right": pair.is_right}
                for pair in self.cache
            ],
            "pending_batches": [],
            "pending_skipped": 0,
            "rng": rng_states(),
        }
        trained = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self._schedule else 0
        if 0 < trained < len(self._schedule):  # saved inside a round (preemption, every_n_train_steps)
            rank_state["pending_batches"] = self._schedule[trained:]
            rank_state["pending_skipped"] = trained
        ranks = [rank_state]
        if self.trainer.world_size > 1:
            ranks = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(ranks, rank_state)
        return {"round_index": self.round_index, "cache_frozen": self.cache_frozen, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rank, world = self._rank_world()
        if len(state["ranks"]) != world:
            raise ValueError(
                f"the checkpoint was saved by {len(state['ranks'])} processes and is resumed by {world}: "
                "each rank's cache and round are its own, so resume with the same number of processes"
            )
        rank_state = state["ranks"][rank]
        self.round_index = state["round_index"]
        self.cache_frozen = state["cache_frozen"]
        self.cache.clear()
        for pair in rank_state["cache"]:
            self.cache.append(CritiqueExample(Question(**pair["question"]), pair["response"], pair["is_right"]))
        if rank_state["pending_batches"]:
            self._resumed_round = (rank_state["pending_batches"], rank_state["pending_skipped"])
        set_rng_states(rank_state["rng"])

    # ------------------------------------------------------------------ the round
    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of prompt texts, through the chat template when it is used."""
        return encode_prompts(self.trainer.lightning_module.tokenizer, prompts, self.chat_template, self.system_prompt)

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams, phase: int) -> list[list[Completion]]:
        """``n`` completions for each prompt text, seeded by (seed, round, rank, phase)."""
        return self.generate_ids(self.encode(prompts), n, sampling, phase)

    def generate_ids(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams, phase: int
    ) -> list[list[Completion]]:
        rank, _ = self._rank_world()
        seed = (self.seed * 1_000_003 + self.round_index * 10_007 + rank * 101 + phase) % 2**31
        with full_parameters(self.trainer):
            return self.engine.generate(prompt_ids, n, sampling, seed=seed)

    def build_round(self, mode: str) -> Round:
        """Runs both rollouts and the callbacks' hooks; returns the scored round."""
        trainer = self.trainer
        callbacks = rollout_callbacks(trainer)
        round_ = Round(self.round_index, self._round_questions())
        phases = ["answers", "critiques"] if mode != "g_rl" else ["answers"]
        progress = tqdm(
            total=len(phases),
            desc=f"Round {self.round_index}",
            leave=False,
            disable=not trainer.is_global_zero or trainer.progress_bar_callback is None,
        )

        # 1. First-order rollout and verification.
        progress.set_postfix_str(f"{len(round_.questions)}x{self.responses_per_question} responses")
        started = time.perf_counter()
        prompt_ids = self.encode([self.task.answer_prompt(q) for q in round_.questions])
        sampling = replace(self.sampling, logprobs=self.engine_logprobs)
        completions = self.generate_ids(prompt_ids, self.responses_per_question, sampling, phase=0)
        for group, (question, group_completions) in enumerate(zip(round_.questions, completions)):
            for completion in group_completions:
                reward = self.task.verify(question, completion.text)
                round_.answers.append(Sample("answer", group, question, prompt_ids[group], completion, reward))
        round_.metrics["time/rollout"] = time.perf_counter() - started
        for callback in callbacks:
            callback.on_answers_scored(trainer, self, round_)
        progress.update()

        if mode != "g_rl":
            # 2. Cache update (LabelBalancing filters here), 3. second-order rollout, 4. critique reward.
            round_.candidates = [CritiqueExample(s.question, s.completion.text, s.reward >= 1.0) for s in round_.answers]
            if round_.candidates:
                round_.metrics["rollout/label_ratio_before"] = _right_share(round_.candidates)
            for callback in callbacks:
                callback.on_cache_update(trainer, self, round_)
            if round_.candidates:  # none left: nothing entered the cache, no ratio to log
                round_.metrics["rollout/label_ratio_after"] = _right_share(round_.candidates)
            if not self.cache_frozen:
                self.cache.extend(round_.candidates)
                self.cache_frozen = self.critique_data == "static" and len(self.cache) > 0
            progress.set_postfix_str(f"{self.critique_pairs_per_round}x{self.critiques_per_response} critiques")
            started = time.perf_counter()
            rng = random.Random(self.seed * 7_919 + self.round_index * 31 + self._rank_world()[0])
            round_.critique_pairs = rng.sample(list(self.cache), min(self.critique_pairs_per_round, len(self.cache)))
            if not round_.critique_pairs:
                rank_zero_info(
                    f"Round {self.round_index}: no critiques this round: the critique cache is empty because no "
                    "question so far had both a right and a wrong response"
                    + (" (responses are still trained on)" if mode == "gc_rl" else "")
                )
            round_.metrics["rollout/critique_pairs"] = float(len(round_.critique_pairs))
            prompt_ids = self.encode([self.task.critique_prompt(p.question, p.response) for p in round_.critique_pairs])
            sampling = replace(self.critique_sampling, logprobs=self.engine_logprobs)
            completions = self.generate_ids(prompt_ids, self.critiques_per_response, sampling, phase=1)
            offset = len(round_.questions)  # critique groups come after answer groups
            for index, (pair, group_completions) in enumerate(zip(round_.critique_pairs, completions)):
                for completion in group_completions:
                    verdict = self.task.parse_verdict(completion.text)
                    reward = critique_reward(verdict, pair.is_right)
                    round_.critiques.append(
                        Sample("critique", offset + index, pair.question, prompt_ids[index], completion, reward, pair=pair, verdict=verdict)
                    )
            round_.metrics["time/critique_rollout"] = time.perf_counter() - started
            for callback in callbacks:
                callback.on_critiques_scored(trainer, self, round_)
            progress.update()
        progress.close()

        # 5. Group-relative advantages, per kind.
        for kind, samples in (("answer", round_.answers), ("critique", round_.critiques)):
            if not samples:
                continue
            rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
            groups = torch.tensor([s.group for s in samples])
            advantages, zero_std = group_advantages(rewards, groups, scale_by_std=self.scale_rewards_by_std)
            for sample, advantage in zip(samples, advantages.tolist()):
                sample.advantage = advantage
            zero_std_groups = {g for g, z in zip(groups.tolist(), zero_std.tolist()) if z}
            round_.metrics[f"rollout/frac_zero_std_{kind}"] = len(zero_std_groups) / len(set(groups.tolist()))
        return round_

    def training_samples(self, round_: Round, mode: str) -> list[Sample]:
        samples = (round_.answers if mode in ("g_rl", "gc_rl") else []) + (
            round_.critiques if mode in ("c_rl", "gc_rl") else []
        )
        if self.drop_zero_std_groups:
            samples = [s for s in samples if s.advantage != 0.0]
        return samples

    def make_batches(self, round_: Round, module: Any) -> list[dict[str, Any]]:
        """Micro-batches for this round, the same count on every rank, with step normalizers.

        ``step_tokens`` / ``step_sequences`` are the global counts of the optimizer step a
        micro-batch belongs to, divided by (accumulation x world size): a loss summed over the
        micro-batch and divided by it gives the step's global mean once Lightning scales by
        1/accumulation and DDP averages over ranks.
        """
        trainer = self.trainer
        accumulation = trainer.accumulate_grad_batches
        rank, world = self._rank_world()
        samples = self.training_samples(round_, module.mode)
        rng = random.Random(self.seed * 104_729 + self.round_index * 131 + rank)
        rng.shuffle(samples)
        pad_id = module.tokenizer.pad_token_id
        batches = [
            collate(samples[i : i + self.batch_size], pad_id, self.sampling.temperature, self.mask_truncated, self.engine_logprobs)
            for i in range(0, len(samples), self.batch_size)
        ]
        # Every rank runs the same number of whole optimizer steps, or DDP waits forever.
        steps = -(-len(batches) // accumulation)
        steps = int(self._reduce(torch.tensor(float(steps)), "max").item())
        steps = max(steps, 1)
        while len(batches) < steps * accumulation:
            batches.append(empty_batch(pad_id, self.sampling.temperature, self.engine_logprobs))
        counts = torch.tensor(
            [[b["completion_mask"].sum().item(), (b["completion_mask"].sum(-1) > 0).sum().item()] for b in batches]
        ).view(steps, accumulation, 2).sum(1)
        counts = self._reduce(counts, "sum") / (accumulation * world)
        for index, batch in enumerate(batches):
            batch["step_tokens"] = counts[index // accumulation, 0].clamp(min=1e-8)
            batch["step_sequences"] = counts[index // accumulation, 1].clamp(min=1e-8)
        if self.passes_per_round > 1:
            with torch.no_grad():
                for batch in batches:
                    batch["old_logprobs"] = module.completion_logprobs(batch)[0].detach()
        steps_of_batches = [batches[s * accumulation : (s + 1) * accumulation] for s in range(steps)]
        schedule = list(batches)
        for _ in range(self.passes_per_round - 1):
            rng.shuffle(steps_of_batches)
            schedule += [batch for step in steps_of_batches for batch in step]
        return schedule

    def log_round(self, round_: Round) -> None:
        """Round statistics (reduced over ranks) and text samples to the Trainer's loggers."""
        trainer = self.trainer
        answers, critiques = round_.answers, round_.critiques
        completions = [s.completion for s in answers + critiques]
        # (sum, count) pairs, so that ranks with different amounts of data reduce exactly
        sums = {
            "rollout/answer_reward": (sum(s.reward for s in answers), len(answers)),
            "rollout/response_len": (sum(len(s.completion.token_ids) for s in answers), len(answers)),
            "rollout/truncated": (sum(c.finish_reason == "length" for c in completions), len(completions)),
        }
        if critiques:
            sums["rollout/critique_reward"] = (sum(s.reward for s in critiques), len(critiques))
            sums["rollout/critique_len"] = (sum(len(s.completion.token_ids) for s in critiques), len(critiques))
            sums["rollout/verdict_parse_failures"] = (sum(s.verdict is None for s in critiques), len(critiques))
        sums.update({name: (value, 1) for name, value in round_.metrics.items()})  # mean over ranks
        metrics = reduce_sums(trainer, sums)
        metrics["rollout/cache_size"] = float(len(self.cache))
        metrics["rollout/round"] = float(round_.index)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                for kind, samples in (("response", answers), ("critique", critiques)):
                    if samples:
                        s = samples[0]
                        text = f"**reward {s.reward:.2f}**\n\n    {s.question.text}\n    {s.completion.text}"
                        logger.experiment.add_text(f"samples/{kind}", text, global_step=trainer.global_step)

    # ------------------------------------------------------------------ helpers
    def prepare_engine(self, module: Any) -> None:
        """Hands the policy to the engine once, and its current weights every call."""
        if not self._engine_ready:
            self.engine.setup(module.policy, module.tokenizer)
            self._engine_ready = True
        with full_parameters(self.trainer):
            self.engine.sync_weights(module.policy)

    def _round_questions(self) -> list[Question]:
        """This rank's shard of the round's questions: no question twice in a round across ranks."""
        pool = self.task.train_questions()
        if self._question_order is None or len(self._question_order) != len(pool):
            self._question_order = list(range(len(pool)))
            random.Random(self.seed).shuffle(self._question_order)
        order = self._question_order
        rank, world = self._rank_world()
        start = (self.round_index * world + rank) * self.questions_per_round
        return [pool[order[(start + i) % len(pool)]] for i in range(self.questions_per_round)]

    def _rank_world(self) -> tuple[int, int]:
        return self.trainer.global_rank, self.trainer.world_size

    def _reduce(self, tensor: torch.Tensor, op: Literal["sum", "max"]) -> torch.Tensor:
        trainer = self.trainer
        if trainer.world_size == 1:
            return tensor
        strategy = trainer.strategy
        device_tensor = tensor.to(strategy.root_device)
        if op == "max":
            gathered = strategy.all_gather(device_tensor)
            return gathered.max(dim=0).values.cpu()
        return strategy.reduce(device_tensor, reduce_op=op).cpu()


def reduce_sums(trainer: Any, sums: dict[str, Sequence[float]]) -> dict[str, float]:
    """Global ``sum / count`` per name over all ranks, from each rank's ``name -> (sum, count)``;
    a name some ranks lack (no critiques there, no question of some set) still lines up."""
    names = sorted(sums)
    if trainer.world_size > 1:
        gathered: list[list[str]] = [[] for _ in range(trainer.world_size)]
        torch.distributed.all_gather_object(gathered, names)
        names = sorted(set().union(*gathered))
    totals = torch.tensor([[float(v) for v in sums.get(n, (0.0, 0.0))] for n in names], dtype=torch.float64)
    if trainer.world_size > 1:
        strategy = trainer.strategy
        totals = strategy.reduce(totals.to(strategy.root_device), reduce_op="sum").cpu()
    return {n: (t[0] / t[1]).item() for n, t in zip(names, totals) if t[1] > 0}


@contextmanager
def full_parameters(trainer: Any) -> Iterator[None]:
    """Whole parameters on every rank while sampling or syncing an engine, when the strategy
    shards them (Lightning's ``FSDPStrategy``); nothing to do for other strategies. Like TRL's
    ``unwrap_model_for_generation``: each rank then needs memory for the full policy."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False, recurse=True):
        yield


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], chat_template: bool | None = None, system_prompt: str | None = None
) -> list[list[int]]:
    """Token ids of each prompt; as a user turn of the chat template when ``chat_template`` is
    true, or ``None`` and the tokenizer has a template. The template adds its own special tokens."""
    if chat_template is None:
        chat_template = tokenizer.chat_template is not None
    if not chat_template:
        return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if tokenizer.chat_template is None:
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    texts = [
        tokenizer.apply_chat_template(system + [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def collate(
    samples: Sequence[Sample], pad_id: int, temperature: float, mask_truncated: bool, engine_logprobs: bool = False
) -> dict[str, Any]:
    """Token ids of prompts (left-padded) followed by completions (right-padded), with masks, and
    with ``engine_logprobs`` the engine's logprobs of the completion tokens.

    Training uses the generated ids as they are, never re-tokenized text.
    """
    prompt_ids, prompt_mask = left_pad([s.prompt_ids for s in samples], pad_id)
    width = max(1, max(len(s.completion.token_ids) for s in samples))
    completion_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(samples), width), dtype=torch.float32)
    for row, sample in enumerate(samples):
        tokens = sample.completion.token_ids
        completion_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        keep = not (mask_truncated and sample.completion.finish_reason == "length")
        completion_mask[row, : len(tokens)] = float(keep)
    batch = {
        "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
        "attention_mask": torch.cat([prompt_mask, _lengths_mask(samples, width)], dim=1),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        "is_critique": torch.tensor([s.kind == "critique" for s in samples]),
        "temperature": temperature,
    }
    if engine_logprobs:
        batch["engine_logprobs"] = torch.zeros((len(samples), width), dtype=torch.float32)
        for row, sample in enumerate(samples):
            if sample.completion.logprobs is None:
                raise ValueError("importance sampling needs logprobs from the engine, which returned none")
            values = sample.completion.logprobs
            batch["engine_logprobs"][row, : len(values)] = torch.tensor(values, dtype=torch.float32)
    return batch


def _lengths_mask(samples: Sequence[Sample], width: int) -> torch.Tensor:
    lengths = torch.tensor([len(s.completion.token_ids) for s in samples])
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def empty_batch(pad_id: int, temperature: float, engine_logprobs: bool = False) -> dict[str, Any]:
    """A batch that contributes nothing to the loss, to even out ranks' step counts."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_ids": ids[:, 1:],
        "completion_mask": torch.zeros((1, 1)),
        "advantages": torch.zeros(1),
        "is_critique": torch.zeros(1, dtype=torch.bool),
        "temperature": temperature,
    }
    if engine_logprobs:
        batch["engine_logprobs"] = torch.zeros((1, 1))
    return batch


def _right_share(pairs: Sequence[CritiqueExample]) -> float:
    return sum(p.is_right for p in pairs) / len(pairs)


def rng_states() -> dict[str, Any]:
    """This process's Python, NumPy and torch RNG states, as plain data (loadable with weights_only)."""
    version, state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
