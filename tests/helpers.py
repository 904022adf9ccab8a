"""What many tests share: the repository root and the command-line arguments of a small round."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gc_rl.yaml"

# A round small enough for a test: 8 questions x 4 responses, 4 pairs x 4 critiques, no sampled evaluation.
SMALL_ROUND = {
    "trainer.enable_progress_bar": "false",
    "trainer.check_val_every_n_epoch": "100",
    "data.questions_per_round": "8",
    "data.responses_per_question": "4",
    "data.critique_pairs_per_round": "4",
    "data.critiques_per_response": "4",
    "data.eval_max_questions": "4",
    "data.eval_samples": "0",
    "data.batch_size": "16",
}


def small_round(root: Path, **overrides: object) -> list[str]:
    """``--config configs/gc_rl.yaml``, the small round (keys with ``__`` for ``.``, e.g.
    ``data__batch_size=8``), a root folder and an export folder below it."""
    values = SMALL_ROUND | {key.replace("__", "."): str(value).lower() if isinstance(value, bool) else str(value) for key, value in overrides.items()}
    return [
        "--config", str(CONFIG), f"--trainer.default_root_dir={root}", f"--model.export_dir={root / 'hf'}",
        *(f"--{key}={value}" for key, value in values.items()),
    ]  # fmt: skip
