"""GCRLModule: one policy trained on responses and critiques with one clipped policy-gradient loss."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from sorl.batching import bucket_rows
from sorl.distributed import load_from_rank_zero, meta_copy, shard_policy
from sorl.evaluation import EvalMetrics
from sorl.loss import GRPOLoss
from sorl.policy import LOGPROB_CHUNK_SIZE, DType, completion_logprobs, load_policy, load_tokenizer


def export_policy(trainer: Any, policy: Any, tokenizer: Any, export_dir: str | None) -> Path:
    """``save_pretrained`` of policy and tokenizer, by rank zero, to ``export_dir`` or ``<log_dir>/hf``.

    A policy sharded with FSDP2 is first gathered whole by all ranks together (a collective; with
    ``cpu_offload`` only rank zero keeps the tensors, on the CPU), and rank zero writes those.
    """
    target = Path(export_dir) if export_dir else Path(trainer.log_dir or trainer.default_root_dir) / "hf"
    state_dict = None
    if isinstance(policy, FSDPModule):
        state_dict = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        policy.save_pretrained(target, state_dict=state_dict)
        tokenizer.save_pretrained(target)
        rank_zero_info(f"Exported the trained policy to {target}")
    trainer.strategy.barrier()
    return target


class GCRLModule(LightningModule):
    """Holds the policy (and a frozen reference when ``loss.beta > 0``) and the joint loss.

    Pair it with :class:`~sorl.data.RolloutDataModule`, which builds each round's batches (and
    decides what is trained: responses, critiques or both) and scores the evaluation items.

    Args:
        model: a local transformers causal-LM folder; ``None`` uses the embedded arithmetic policy.
        model_config: build a fresh model from this config dict (``model_type`` required) instead.
        tokenizer: tokenizer folder; defaults to ``model`` (or the embedded policy's).
        loss: the policy-gradient loss; defaults to ``GRPOLoss()``.
        optimizer, scheduler: callables taking parameters (and the optimizer), set from YAML.
        dtype: parameter dtype of the policy.
        trust_remote_code: allow code shipped with a model folder to run. Off unless you trust it.
        gradient_checkpointing: trade compute for memory on large policies.
        share_prompts: run each distinct prompt of a micro-batch once in the update (the k responses
            of a question and the m critiques of a pair share theirs) and the completions on its KV
            cache: the same logprobs up to rounding, for fewer positions (see
            :func:`~sorl.policy.completion_logprobs`). Off under FSDP2 and with gradient checkpointing.
        logprob_chunk_size: completion positions per chunk through the output projection, so that
            no [B, T, vocabulary] float32 logits are kept for backward (see
            :func:`~sorl.policy.completion_logprobs`); ``None`` uses the model's own head at once.
        length_buckets: at most this many forwards per kind (responses, critiques) in the update,
            rows of similar completion length together, each trimmed to its own longest row, so
            short completions are not padded to the longest (:func:`~sorl.batching.bucket_rows`:
            the cut that runs the fewest positions). 1: one forward per kind. Off under FSDP2.
        export_dir: where ``save_pretrained`` writes the trained policy at the end of fit;
            ``None`` gives ``<log_dir>/hf``.
    """

    def __init__(
        self,
        model: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        loss: GRPOLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        dtype: DType = "float32",
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        share_prompts: bool = True,
        logprob_chunk_size: int | None = LOGPROB_CHUNK_SIZE,
        length_buckets: int = 4,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.model_path = model
        self.model_config = model_config
        self.loss = loss if loss is not None else GRPOLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.dtype_name = dtype
        self.trust_remote_code = trust_remote_code
        self.gradient_checkpointing = gradient_checkpointing
        self.share_prompts = share_prompts
        self.logprob_chunk_size = logprob_chunk_size
        self.length_buckets = length_buckets
        self.export_dir = export_dir
        self.tokenizer = load_tokenizer(tokenizer or model, trust_remote_code=trust_remote_code)
        self.policy: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self.eval_metrics = EvalMetrics()
        self._epoch_started = 0.0
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite gradient
        self._step_loss = torch.zeros(())  # sum of this optimizer step's micro-batch losses on this rank

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Loads the policy (and the reference); under Lightning's ``ModelParallelStrategy``
        (which sets ``self.device_mesh``) shards both with FSDP2 per decoder layer over the
        mesh's ``data_parallel`` dimension (:func:`~sorl.distributed.shard_policy`).

        With ``precision: bf16-mixed`` the sharded layers compute in bfloat16 and reduce
        gradients in float32 (FSDP2's ``MixedPrecisionPolicy``; the float32 shards stay the
        optimizer's master weights); bfloat16 runs on CPUs too, so no device is excluded here.
        """
        if self.policy is not None:
            return
        # outside a Trainer (a module built and configured by hand) nothing is sharded
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError(
                "sorl shards with FSDP2 through Lightning's ModelParallelStrategy (configs/strategy/fsdp.yaml); "
                "FSDPStrategy (FSDP1) would gather parameters layer by layer inside generate, where ranks "
                "run different numbers of decode steps"
            )
        mesh = self.device_mesh
        if mesh is not None and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                "sorl applies no tensor parallelism: set ModelParallelStrategy(data_parallel_size=<number of "
                f"processes>, tensor_parallel_size=1) (got the mesh {mesh})"
            )
        # Sharded: only rank zero loads the model; the others build it without storage and receive
        # their shards from rank zero (no whole copy on every rank).
        full = None
        if mesh is None or self.trainer.is_global_zero:
            # from_pretrained returns eval mode, and Lightning keeps the modes it finds
            full = load_policy(self.model_path, self.model_config, self.dtype_name, self.trust_remote_code).train()
        self.policy = full if mesh is None else meta_copy(self.trainer, full, self.trust_remote_code)
        if self.gradient_checkpointing:
            # non-reentrant: the variant that composes with FSDP2's hooks (and is torch's recommendation)
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.loss.beta > 0:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if mesh is None:
            return
        mp_policy = MixedPrecisionPolicy()
        if self.trainer.precision == "bf16-mixed":
            mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for model in (self.policy, self.reference):
            if model is not None:
                shard_policy(model, mesh["data_parallel"], mp_policy)
                load_from_rank_zero(self.trainer, model, full)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(p for p in self.policy.parameters() if p.requires_grad)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def completion_logprobs(self, batch: dict[str, Any], model: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logprobs and entropy [B, C] of the batch's completion tokens under ``model`` (default: policy).

        Responses and critiques have very different prompt and completion lengths, so each kind
        gets its own forwards, and within a kind rows of similar completion length go together
        (at most ``length_buckets`` forwards per kind, :func:`~sorl.batching.bucket_rows`),
        each forward trimmed to its own padding: padding responses to the width of critique
        prompts made a GC-RL update cost several times a G-RL one. Not under FSDP2: each forward
        all-gathers every layer, so every rank must run the same number of forwards, and ranks'
        micro-batches differ; there one forward covers the whole micro-batch.
        """
        model = model if model is not None else self.policy
        input_ids, attention_mask, completion_ids = batch["input_ids"], batch["attention_mask"], batch["completion_ids"]
        if isinstance(model, FSDPModule):
            return completion_logprobs(model, input_ids, attention_mask, completion_ids, batch["temperature"], self.logprob_chunk_size)
        # transformers drops the KV cache that shared prompts run on under gradient checkpointing
        share = self.share_prompts and not self.gradient_checkpointing
        num_rows, width = completion_ids.shape
        buckets = bucket_rows(input_ids, attention_mask, width, batch["is_critique"], share, self.length_buckets)
        if len(buckets) == 1:
            return completion_logprobs(
                model, input_ids, attention_mask, completion_ids, batch["temperature"], self.logprob_chunk_size, share
            )
        prompt_width = input_ids.shape[1] - width
        logprobs = torch.zeros((num_rows, width), dtype=torch.float32, device=input_ids.device)
        entropy = torch.zeros_like(logprobs)
        for index in buckets:
            mask = attention_mask[index]  # [R, P + C]
            # left padding: the first column any row of this bucket uses (0 if none: nothing trimmed)
            first = int(mask[:, :prompt_width].any(0).long().argmax())
            kept = max(1, int(mask[:, prompt_width:].sum(-1).max()))  # the bucket's longest completion
            end = prompt_width + kept
            bucket_logprobs, bucket_entropy = completion_logprobs(
                model, input_ids[index, first:end], mask[:, first:end], completion_ids[index, :kept], batch["temperature"],
                self.logprob_chunk_size, share,
            )
            logprobs[index, :kept] = bucket_logprobs
            entropy[index, :kept] = bucket_entropy
        return logprobs, entropy

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        self.score_off_policy_batches(self.trainer.train_dataloader.dataset)

    @torch.no_grad()
    def score_off_policy_batches(self, batches: Any) -> None:
        """``old_logprobs`` of every micro-batch marked ``off_policy`` (trained after the round's
        first optimizer step), under the policy that sampled it, i.e. before the round's first
        update. Computed exactly as the training step computes logprobs: on the module's device,
        under the Trainer's precision (autocast) and through the same modules, so that the first
        step's ratio is 1. Batches that already hold them (a resumed round) are left as they are.
        """
        for batch in batches:
            if batch.get("off_policy") and "old_logprobs" not in batch:
                on_device = self.trainer.strategy.batch_to_device(batch)
                with self.trainer.precision_plugin.train_step_context():
                    batch["old_logprobs"] = self.completion_logprobs(on_device)[0].cpu()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logprobs, entropy = self.completion_logprobs(batch)
        if batch.get("off_policy"):
            old_logprobs = batch["old_logprobs"]
        else:  # trained only in the round's first optimizer step: still the sampling policy, ratio 1
            old_logprobs = logprobs.detach()
        ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logprobs = self.completion_logprobs(batch, self.reference)[0]
        if self.loss.importance_sampling_cap is not None and "engine_logprobs" not in batch:
            raise ValueError(
                "GRPOLoss(importance_sampling_cap=...) needs the engine's logprobs of the sampled tokens: "
                "set the DataModule's engine_logprobs: true"
            )
        normalizer = batch["step_tokens"] if self.loss.aggregation == "token_mean" else batch["step_sequences"]
        loss, diagnostics = self.loss(
            logprobs, old_logprobs, batch["advantages"], batch["completion_mask"], ref_logprobs, entropy, normalizer,
            engine_logprobs=batch.get("engine_logprobs"),
        )
        # The loss is scaled for the step's global normalizer; summed over the step's micro-batches
        # and ranks and divided by their count it is the step's mean loss (logged at the step).
        self._step_loss = self._step_loss + loss.detach()
        batch_size = batch["input_ids"].shape[0]
        for name, value in diagnostics.items():
            if name != "num_tokens":
                self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skips an optimizer step whose gradient is not finite, so NaN/inf never reach the weights.

        A non-finite loss shows up here as a non-finite gradient: checking once per step, not per
        micro-batch, keeps a device sync out of the training step.
        """
        # under FSDP2 each rank checks its own shard of every gradient
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in self.policy.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)).item()) if grads else True
        # Every rank must agree (FSDP shards differ); a step is taken only if all are finite.
        finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            optimizer.zero_grad(set_to_none=True)  # AdamW and SGD leave parameters without grad as they are
            self.skipped_steps += 1
            rank_zero_warn(
                f"non-finite gradient at step {self.global_step}: optimizer step skipped "
                f"({self.skipped_steps} skipped so far, logged as train/skipped_steps)"
            )
        self.log("train/skipped_steps", float(self.skipped_steps))
        micro_batches = self.trainer.accumulate_grad_batches * self.trainer.world_size
        self.log("train/loss", self._step_loss / micro_batches, reduce_fx="sum", sync_dist=True, prog_bar=True)
        self._step_loss = torch.zeros((), device=self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = checkpoint["skipped_steps"]

    def on_train_epoch_end(self) -> None:
        self.log("time/train", time.perf_counter() - self._epoch_started)

    def on_train_end(self) -> None:
        export_policy(self.trainer, self.policy, self.tokenizer, self.export_dir)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Adds a scored evaluation item (the DataModule samples and scores them) to the metrics."""
        self.eval_metrics.update(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_metrics.update(batch)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.eval_metrics.compute(self.trainer), sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.eval_metrics.compute(self.trainer), sync_dist=False)
