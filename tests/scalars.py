"""Reading the TensorBoard scalars a test run wrote (every event file below a folder)."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalar_series(root: Path) -> dict[str, list[float]]:
    """Tag -> logged values, in logging order, over every event file below ``root``."""
    series: dict[str, list[float]] = {}
    for event_file in sorted(root.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
    return series
