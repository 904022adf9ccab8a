"""RolloutDataModule: each epoch, a round of rollouts from the current policy, as training batches.

The DataModule takes only the policy and the tokenizer from the LightningModule. The round's
phases are plain functions (:mod:`sorl.rollout`), batching is :mod:`sorl.batching`, sampling goes
through one :class:`~sorl.sampler.Sampler`, and evaluation items are scored here too
(:mod:`sorl.evaluation`): this file holds the Lightning hooks and the checkpoint state.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sorl.batching import RoundBatches, SampledOnIteration, round_batches
from sorl.budgets import check_template_lengths
from sorl.cache import CritiqueCache
from sorl.callbacks.base import RolloutCallback
from sorl.distributed import full_parameters, reduce, reduce_sums, rng_states, set_rng_states
from sorl.engines.base import RolloutEngine, SamplingParams
from sorl.engines.hf import HFEngine
from sorl.evaluation import evaluation_items
from sorl.rollout import Round, RolloutContext, Sample, assign_advantages, check_sizes, critique_candidates, right_share, round_sums
from sorl.rollout import sample_critiques, sample_responses
from sorl.sampler import Sampler, derive_seed
from sorl.tasks.base import Question, Task

Mode = Literal["g_rl", "c_rl", "gc_rl"]

# RoundBatches has an exact length (one process builds it); Lightning warns for any such dataset.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
# The DataModule's own state holds the rest of an interrupted round (see state_dict), so the
# dataloader does resume where it stopped; Lightning cannot see that and would warn otherwise.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class RolloutDataModule(LightningDataModule):
    """Generates first- and second-order rollouts each epoch with the LightningModule's policy.

    The LightningModule must expose ``policy`` (a transformers causal LM) and ``tokenizer``, as
    :class:`~sorl.module.GCRLModule` does. Needs ``Trainer(reload_dataloaders_every_n_epochs=1)``.

    Args:
        task: questions, prompts and verifier.
        engine: samples completions; defaults to :class:`~sorl.engines.HFEngine`.
        mode: what is trained: ``g_rl`` responses only (GRPO; no critique is sampled), ``c_rl``
            critiques only, ``gc_rl`` both.
        questions_per_round: questions each rank answers per round.
        responses_per_question: k, first-order samples per question (>= 2: advantages are relative).
        critique_pairs_per_round: P, (question, response) pairs drawn from the cache per rank and round.
        critiques_per_response: m, second-order samples per pair (>= 2 when critiques are trained).
        cache_size: bound of the question-response cache (oldest pairs leave first).
        critique_data: ``dynamic`` refreshes the cache from each round's responses; ``static``
            fills it from the first round that has pairs (the initial policy's responses) and keeps it.
        temperature, top_p: sampling parameters of both rollouts (logprobs use the same temperature).
        max_response_tokens, max_critique_tokens: generation bounds. Before the first rollout, the
            templates' own tokens plus these bounds are checked against the engine's
            ``max_model_len`` (default: the model's ``max_position_embeddings``); a config whose
            sequences cannot fit is refused with the numbers.
        max_embedded_response_tokens: the most response tokens a critique prompt embeds; longer
            responses are cut from the middle (head, ``[...]``, tail: the tail holds the final
            answer) and counted in ``rollout/critique_responses_cut``. ``None``: embedded whole.
        batch_size: samples per micro-batch (``Trainer(accumulate_grad_batches)`` groups them). The
            default holds a whole round of the default sizes (32 x 8 responses + 16 x 4 critiques), so
            a round is one on-policy optimizer step; several steps per round are correct too (later
            steps use an importance ratio) but, at the same learning rate, move the policy several
            times as far per round. Lower it, with accumulation, where memory is short.
        max_tokens_per_micro_batch: size micro-batches by padded tokens instead: at most
            ``batch_size`` samples whose rows x (longest prompt + longest completion) stay within
            this budget, grouped by kind and length (a longer sample goes alone). The step
            normalizers stay exact; the number of optimizer steps per round then follows the data.
        passes_per_round: optimizer passes over a round's data. Whenever a round holds more than
            one optimizer step, the micro-batches trained after the first are marked ``off_policy``
            and the module scores them with the round's sampling policy first (``old_logprobs``).
        critique_share: how a step's loss weighs the two kinds. ``None`` (default, the paper's and
            verl's plain mixed batch): one mean over all response and critique tokens, so each
            kind's weight is its share of the tokens (critiques, being longer, weigh more). A share
            ``s`` in [0, 1]: each kind its own mean, combined as ``(1 - s) * responses + s *
            critiques`` (a step holding one kind only gives it the whole weight).
        scale_rewards_by_std: divide advantages by the group's std (GRPO) or not (Dr. GRPO).
        drop_zero_std_groups: leave out groups whose rewards are all equal (DAPO's dynamic sampling).
        mask_truncated: leave responses that hit the token bound out of the loss.
        engine_logprobs: ask the engine for the sampled tokens' logprobs, which the loss's
            truncated importance sampling needs (``GRPOLoss(importance_sampling_cap=...)``).
        eval_samples: samples per evaluation question for mean accuracy (0: greedy only).
        eval_max_questions: cap on evaluation questions and critique examples (None: all); the
            critique examples kept are the first ``cap // 2`` right and ``cap // 2`` wrong ones, so
            the set stays label-balanced.
        chat_template: wrap each prompt as a user message in the tokenizer's chat template;
            ``None`` does so when the tokenizer has one (the embedded policy has none).
        system_prompt: a system message put before each prompt when the chat template is used.
        seed: seeds question order and sampling; every use derives its own seed from it.
    """

    def __init__(
        self,
        task: Task,
        engine: RolloutEngine | None = None,
        mode: Mode = "gc_rl",
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
        max_embedded_response_tokens: int | None = None,
        batch_size: int = 512,
        max_tokens_per_micro_batch: int | None = None,
        passes_per_round: int = 1,
        critique_share: float | None = None,
        scale_rewards_by_std: bool = True,
        drop_zero_std_groups: bool = False,
        mask_truncated: bool = False,
        engine_logprobs: bool = False,
        eval_samples: int = 4,
        eval_max_questions: int | None = None,
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(mode, questions_per_round, responses_per_question, critiques_per_response, batch_size, passes_per_round)
        self.task = task
        self.engine = engine if engine is not None else HFEngine()
        self.mode = mode
        self.questions_per_round = questions_per_round
        self.responses_per_question = responses_per_question
        self.critique_pairs_per_round = critique_pairs_per_round
        self.critiques_per_response = critiques_per_response
        self.max_embedded_response_tokens = max_embedded_response_tokens
        self.response_sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_response_tokens)
        self.critique_sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_critique_tokens)
        self.batch_size = batch_size
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.passes_per_round = passes_per_round
        if critique_share is not None and not 0.0 <= critique_share <= 1.0:
            raise ValueError(f"critique_share must be in [0, 1] (or None for one mixed mean), got {critique_share}")
        self.critique_share = critique_share
        self.scale_rewards_by_std = scale_rewards_by_std
        self.drop_zero_std_groups = drop_zero_std_groups
        self.mask_truncated = mask_truncated
        self.engine_logprobs = engine_logprobs
        self.eval_samples = eval_samples
        self.eval_max_questions = eval_max_questions
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.seed = seed
        self.sampler: Sampler | None = None  # built on first use, with the module's tokenizer
        # State that a checkpoint carries (see state_dict).
        self.round_index = 0
        self.cache = CritiqueCache(cache_size, static=critique_data == "static")
        self._question_order: list[int] | None = None  # a seeded permutation of the training pool
        self.last_round: Round | None = None
        # The current round's batch schedule; trained entries become None once a resume skips them.
        self._schedule: list[dict[str, Any] | None] = []
        self._resumed_round: tuple[list[dict[str, Any]], int] | None = None  # (remaining batches, skipped)

    # ------------------------------------------------------------------ Lightning hooks
    def train_dataloader(self) -> DataLoader:
        if self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "RolloutDataModule generates new data every epoch: set Trainer(reload_dataloaders_every_n_epochs=1)"
            )
        if self._resumed_round is not None:  # a checkpoint from inside a round: train the rest of it
            batches, skipped = self._resumed_round
            self._resumed_round = None
            self._schedule = [None] * skipped + batches
            return DataLoader(RoundBatches(batches, skipped), batch_size=None)
        # Whole parameters for the whole rollout, entered once by every rank: a rank may sample
        # less often (no critique pair, a callback's own sampling), so gathering per call would hang.
        with self.sampling_parameters():
            round_ = self.build_round(self.rollout_context())
        batches = self.make_batches(round_, self.trainer.lightning_module.tokenizer.pad_token_id)
        self.log_round(round_)
        self.last_round = round_
        self.round_index += 1
        self._schedule = list(batches)
        return DataLoader(RoundBatches(batches), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        """This rank's evaluation: one scored item of held-out questions and one of critique
        examples, on every rank (even with an empty shard). Sampled when the loop iterates it, so
        every evaluation sees the current policy whatever Lightning's reload policy; a sanity check
        scores two of each only."""

        def items() -> list[dict[str, Any]]:
            cap = 2 if self.trainer.sanity_checking else self.eval_max_questions
            with self.sampling_parameters():  # once per rank: an empty shard samples nothing
                return evaluation_items(self.rollout_context(), self.trainer.world_size, cap, self.eval_samples)

        return DataLoader(SampledOnIteration(items, length=2), batch_size=None, collate_fn=lambda item: item)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if "kind" in batch:  # scored evaluation items: the metrics move them
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs: the round counter and, per rank, the cache and whether it is
        frozen, the untrained rest of an interrupted round and the RNG states. Called on every
        rank when a checkpoint is saved."""
        rank_state = {
            **self.cache.state_dict(),  # each rank's own cache, frozen or not
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
        return {"round_index": self.round_index, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(state["ranks"]) != world:
            raise ValueError(
                f"the checkpoint was saved by {len(state['ranks'])} processes and is resumed by {world}: "
                "each rank's cache and round are its own, so resume with the same number of processes"
            )
        rank_state = state["ranks"][rank]
        self.round_index = state["round_index"]
        self.cache.load_state_dict(rank_state)
        if rank_state["pending_batches"]:
            self._resumed_round = (rank_state["pending_batches"], rank_state["pending_skipped"])
        set_rng_states(rank_state["rng"])

    # ------------------------------------------------------------------ the round
    def sampling_parameters(self) -> AbstractContextManager[None]:
        """Whole parameters while sampling when the engine runs the policy's own modules under
        FSDP2 (:func:`~sorl.distributed.full_parameters`); an engine with its own weights
        (``samples_policy_modules = False``) gathers them one at a time in ``sync_weights`` and
        needs nothing held."""
        if self.engine.samples_policy_modules:
            return full_parameters(self.trainer)
        return nullcontext()

    def rollout_context(self) -> RolloutContext:
        """The sampler with the policy's current weights, and what the round samples with."""
        module = self.trainer.lightning_module
        if self.sampler is None:
            self.engine.setup(module.policy, module.tokenizer)
            # no per-call gathering: the dataloaders hold whole parameters when the engine needs them
            self.sampler = Sampler(self.engine, module.tokenizer, self.chat_template, self.system_prompt, self.seed)
            check_template_lengths(
                self.task, self.sampler, self.response_sampling.max_new_tokens, self.critique_sampling.max_new_tokens if self.mode != "g_rl" else 0,
                self.engine.max_model_len or module.policy.config.max_position_embeddings, self.max_embedded_response_tokens,
            )  # fmt: skip
        # On every rank, whatever it then samples: the sync may be a collective (an FSDP2
        # gather; vLLM's start, which the first sync does, under its external_launcher).
        self.engine.sync_weights(module.policy)
        return RolloutContext(
            self.task, self.sampler, self.response_sampling, self.critique_sampling, self.trainer.global_rank,
            self.engine_logprobs, self.max_embedded_response_tokens,
        )

    def build_round(self, context: RolloutContext) -> Round:
        """Runs both rollouts and the rollout callbacks' hooks; returns the scored round."""
        trainer = self.trainer
        callbacks = [c for c in trainer.callbacks if isinstance(c, RolloutCallback)]
        round_ = Round(self.round_index, self.round_questions())
        progress = tqdm(
            total=1 if self.mode == "g_rl" else 2,
            desc=f"Round {self.round_index}",
            leave=False,
            disable=not trainer.is_global_zero or trainer.progress_bar_callback is None,
        )
        progress.set_postfix_str(f"{len(round_.questions)}x{self.responses_per_question} responses")
        started = time.perf_counter()
        sample_responses(context, round_, self.responses_per_question)
        round_.metrics["time/response_rollout"] = time.perf_counter() - started
        for callback in callbacks:
            callback.on_responses_scored(trainer, context, round_)
        progress.update()
        if self.mode != "g_rl":
            progress.set_postfix_str(f"{self.critique_pairs_per_round}x{self.critiques_per_response} critiques")
            self.update_cache(round_, context, callbacks)
            started = time.perf_counter()
            sample_critiques(context, round_, self.critiques_per_response)
            round_.metrics["time/critique_rollout"] = time.perf_counter() - started
            for callback in callbacks:
                callback.on_critiques_scored(trainer, context, round_)
            progress.update()
        progress.close()
        assign_advantages(round_, self.scale_rewards_by_std)
        for callback in callbacks:
            callback.on_advantages_assigned(trainer, context, round_)
        return round_

    def update_cache(self, round_: Round, context: RolloutContext, callbacks: Sequence[RolloutCallback]) -> None:
        """This round's scored responses enter the cache (label balancing filters them first),
        and the pairs to critique are drawn from it."""
        round_.candidates = critique_candidates(round_.responses)
        if round_.candidates:
            round_.metrics["rollout/right_share_before"] = right_share(round_.candidates)
        for callback in callbacks:
            callback.on_cache_update(self.trainer, context, round_)
        if round_.candidates:  # none left: nothing entered the cache, no share to log
            round_.metrics["rollout/right_share_after"] = right_share(round_.candidates)
        self.cache.add(round_.candidates)
        rng = random.Random(derive_seed(self.seed, "critique_pairs", self.round_index, context.rank))
        round_.critique_pairs = self.cache.draw(self.critique_pairs_per_round, rng)
        round_.metrics["rollout/critique_pairs"] = float(len(round_.critique_pairs))
        if not round_.critique_pairs:
            rank_zero_info(
                f"Round {self.round_index}: no critiques this round: the critique cache is empty because no "
                "question so far had both a right and a wrong response"
                + (" (responses are still trained on)" if self.mode == "gc_rl" else "")
            )

    def training_samples(self, round_: Round) -> list[Sample]:
        """The round's samples that this mode trains on, in this rank's seeded order."""
        samples = (round_.responses if self.mode != "c_rl" else []) + (round_.critiques if self.mode != "g_rl" else [])
        if self.drop_zero_std_groups:
            samples = [s for s in samples if s.group not in round_.zero_std_groups]
        random.Random(derive_seed(self.seed, "sample_order", self.round_index, self.trainer.global_rank)).shuffle(samples)
        return samples

    def make_batches(self, round_: Round, pad_id: int) -> list[dict[str, Any]]:
        """Micro-batches for this round in training order (see :func:`~sorl.batching.round_batches`)."""
        return round_batches(
            self.training_samples(round_),
            batch_size=self.batch_size,
            max_tokens_per_micro_batch=self.max_tokens_per_micro_batch,
            accumulation=self.trainer.accumulate_grad_batches,
            world=self.trainer.world_size,
            passes=self.passes_per_round,
            pad_id=pad_id,
            temperature=self.response_sampling.temperature,
            mask_truncated=self.mask_truncated,
            engine_logprobs=self.engine_logprobs,
            reduce=self._reduce,
            critique_share=self.critique_share,
            # no rank here: every rank must shuffle the steps of later passes alike
            order_rng=random.Random(derive_seed(self.seed, "step_order", self.round_index)),
            group_rng=random.Random(derive_seed(self.seed, "micro_batch_order", self.round_index, self.trainer.global_rank)),
        )

    def _reduce(self, tensor: torch.Tensor, op: Literal["sum", "max"]) -> torch.Tensor:
        return reduce(self.trainer, tensor, op)

    def log_round(self, round_: Round) -> None:
        """Round statistics (reduced over ranks) and text samples to the Trainer's loggers."""
        trainer = self.trainer
        metrics = reduce_sums(trainer, round_sums(round_))
        metrics["rollout/cache_size"] = float(len(self.cache))
        metrics["rollout/round"] = float(round_.index)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                for kind, samples in (("response", round_.responses), ("critique", round_.critiques)):
                    if samples:
                        s = samples[0]
                        text = f"**reward {s.reward:.2f}**\n\n    {s.question.text}\n    {s.completion.text}"
                        logger.experiment.add_text(f"samples/{kind}", text, global_step=trainer.global_step)

    def round_questions(self) -> list[Question]:
        """This rank's shard of the round's questions: no question twice in a round across ranks."""
        pool = self.task.train_questions()
        if self._question_order is None or len(self._question_order) != len(pool):
            self._question_order = list(range(len(pool)))
            random.Random(derive_seed(self.seed, "question_order")).shuffle(self._question_order)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        start = (self.round_index * world + rank) * self.questions_per_round
        return [pool[self._question_order[(start + i) % len(pool)]] for i in range(self.questions_per_round)]
