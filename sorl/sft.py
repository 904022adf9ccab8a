"""Cold-start SFT: teaches the answer, critique and refinement formats before RL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.utils.data import DataLoader

from sorl.sampler import encode_prompts
from sorl.module import export_policy
from sorl.policy import DType, load_policy, load_tokenizer
from sorl.tokenizer import build_char_tokenizer


class DemonstrationTask(Protocol):
    def sft_examples(
        self, num: int, seed: int, critique_share: float = 0.5, refinement_share: float = 0.1
    ) -> list[tuple[str, str]]:
        """(prompt, target) pairs: critiques and refinements in these shares, solutions for the rest."""


class SFTModule(LightningModule):
    """Supervised fine-tuning on (prompt, target) pairs; the loss covers target tokens only.

    Args:
        model: a local transformers causal-LM folder to start from.
        model_config: build a fresh model from this config dict instead (``model_type`` required).
        tokenizer: tokenizer folder; defaults to ``model``'s, or the character-level arithmetic
            tokenizer when the model is built from a config.
        optimizer, scheduler: callables, set from YAML.
        export_dir: where the trained policy is saved at the end of fit (``None``: ``<log_dir>/hf``).
    """

    def __init__(
        self,
        model: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        dtype: DType = "float32",
        trust_remote_code: bool = False,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if model is None and model_config is None:
            raise ValueError("SFTModule needs a model folder or a model_config")
        self.model_path = model
        self.model_config = model_config
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.dtype_name = dtype
        self.trust_remote_code = trust_remote_code
        self.export_dir = export_dir
        if tokenizer is None and model is None:
            self.tokenizer = build_char_tokenizer()
        else:
            self.tokenizer = load_tokenizer(tokenizer or model, trust_remote_code=trust_remote_code)
        self.policy: torch.nn.Module | None = None

    def configure_model(self) -> None:
        if self.policy is None:
            config = self.model_config
            if config is not None:  # special ids follow the tokenizer the model is built for
                config = {
                    "vocab_size": len(self.tokenizer),
                    "pad_token_id": self.tokenizer.pad_token_id,
                    "eos_token_id": self.tokenizer.eos_token_id,
                    "bos_token_id": None,
                    **config,
                }
            self.policy = load_policy(self.model_path, config, self.dtype_name, self.trust_remote_code).train()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.policy.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.policy(**batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_end(self) -> None:
        export_policy(self.trainer, self.policy, self.tokenizer, self.export_dir)


class SFTDataModule(LightningDataModule):
    """(prompt, target) demonstrations from a task's ``sft_examples`` or a JSONL file.

    Args:
        task: makes demonstrations (e.g. :class:`~sorl.tasks.ArithmeticTask`); used when no file.
        examples_file: JSONL with ``prompt`` and ``target`` fields per line (and an optional
            ``kind``, as ``python -m sorl.cold_start`` writes: ``solution``, ``critique``, ``refinement``).
        repeats: how many times each example of a kind appears per epoch (a kind not named: once),
            e.g. ``{critique: 2}`` trains the critiques twice and the solutions once per epoch.
            Only with ``examples_file``; every kind named must occur in the file.
        num_examples: demonstrations drawn from ``task``.
        critique_share, refinement_share: shares of critique and refinement demonstrations.
        batch_size, max_length: batch shape; longer examples are truncated from the right.
        chat_template: put each prompt as a user turn of the tokenizer's chat template (the target
            is the assistant's reply), as :class:`~sorl.data.RolloutDataModule` does for rollouts;
            ``None`` does so when the tokenizer has a template.
        system_prompt: a system message before each prompt when the chat template is used.
        seed: demonstration and shuffling seed.
    """

    def __init__(
        self,
        task: DemonstrationTask | None = None,
        examples_file: str | None = None,
        repeats: dict[str, int] | None = None,
        num_examples: int = 20000,
        critique_share: float = 0.5,
        refinement_share: float = 0.1,
        batch_size: int = 64,
        max_length: int = 256,
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (task is None) == (examples_file is None):
            raise ValueError("give exactly one of task and examples_file")
        if repeats and examples_file is None:
            raise ValueError("repeats counts the kinds of an examples_file's rows; a task's demonstrations have none")
        if repeats and any(not isinstance(n, int) or n < 0 for n in repeats.values()):
            raise ValueError(f"repeats must map kinds to whole numbers >= 0, got {repeats}")
        self.task = task
        self.examples_file = examples_file
        self.repeats = repeats or {}
        self.num_examples = num_examples
        self.critique_share = critique_share
        self.refinement_share = refinement_share
        self.batch_size = batch_size
        self.max_length = max_length
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.seed = seed
        self.examples: list[tuple[str, str]] = []

    def setup(self, stage: str) -> None:
        if self.examples:
            return
        if self.examples_file is not None:
            self.examples = read_examples(self.examples_file, self.repeats)
        else:
            self.examples = self.task.sft_examples(
                self.num_examples, self.seed, self.critique_share, self.refinement_share
            )

    def train_dataloader(self) -> DataLoader:
        tokenizer = self.trainer.lightning_module.tokenizer
        generator = torch.Generator().manual_seed(self.seed + self.trainer.current_epoch)
        return DataLoader(
            self.examples,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=lambda pairs: collate_sft(pairs, tokenizer, self.max_length, self.chat_template, self.system_prompt),
        )


def read_examples(path: str, repeats: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """(prompt, target) pairs of a JSONL file, each row ``repeats[row["kind"]]`` times (default once)."""
    repeats = repeats or {}
    examples = []
    kinds: set[str | None] = set()
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, target = row["prompt"], row["target"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{line_number}: expected a JSON object with prompt and target ({error})") from error
            if not isinstance(prompt, str) or not isinstance(target, str) or not target:
                raise ValueError(f"{path}:{line_number}: prompt and target must be strings, target non-empty")
            kinds.add(row.get("kind"))
            examples += [(prompt, target)] * repeats.get(row.get("kind"), 1)
    missing = set(repeats) - kinds
    if missing:
        raise ValueError(f"{path}: repeats names kinds that no row has: {sorted(missing)} (the rows' kinds: {sorted(map(str, kinds))})")
    return examples


def collate_sft(
    pairs: list[tuple[str, str]],
    tokenizer: Any,
    max_length: int,
    chat_template: bool | None = False,
    system_prompt: str | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + target + EOS`` ids; labels are -100 outside the target. Prompts are
    encoded as rollouts encode them (:func:`~sorl.sampler.encode_prompts`)."""
    rows, labels = [], []
    all_prompt_ids = encode_prompts(tokenizer, [prompt for prompt, _ in pairs], chat_template, system_prompt)
    for (prompt, target), prompt_ids in zip(pairs, all_prompt_ids):
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt_ids + target_ids)[:max_length]
        rows.append(ids)
        labels.append(([-100] * len(prompt_ids) + target_ids)[:max_length])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, labels)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        label_ids[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


