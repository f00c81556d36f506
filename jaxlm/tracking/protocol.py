"""What a training loop may ask of a tracker, and the tracker that writes nothing.

`jaxlm.train` talks to tracking only through these methods, handing over plain
values. `ExperimentTracker` writes the run directory; `NullTracker` stands in on
processes other than 0 of a multi-process run, which must not write it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class RunTracker(Protocol):
    name: str
    run_dir: Path  # the shared run directory (collective Orbax checkpoints need it on every process)

    def log_step(self, step: int, **row: Any) -> dict[str, Any]: ...

    def log_sample(self, step: int, prompt: str, text: str) -> None: ...

    def plan_learning_rate(self, values: Sequence[float]) -> None: ...

    def update_config(self, **fields: Any) -> None: ...

    def write_summary(self, **fields: Any) -> None: ...

    def finalize(self, status: str = "completed", **fields: Any) -> dict[str, Any]: ...


class NullTracker:
    """A RunTracker that writes nothing; `finalize` returns the fields it was given."""

    def __init__(self, name: str, run_dir: str | Path):
        self.name = name
        self.run_dir = Path(run_dir)
        self.summary: dict[str, Any] = {"name": name, "status": "running"}

    def log_step(self, step: int, **row: Any) -> dict[str, Any]:
        return {"step": step, **row}

    def log_sample(self, step: int, prompt: str, text: str) -> None:
        pass

    def plan_learning_rate(self, values: Sequence[float]) -> None:
        pass

    def update_config(self, **fields: Any) -> None:
        pass

    def write_summary(self, **fields: Any) -> None:
        self.summary.update(fields)

    def finalize(self, status: str = "completed", **fields: Any) -> dict[str, Any]:
        self.summary.update(status=status, **fields)
        return self.summary
