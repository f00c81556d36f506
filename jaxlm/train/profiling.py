"""`profile_steps: [start, stop]`: a `jax.profiler` trace of the updates after step `start` up to
step `stop`, written into `<run>/profile/` (TensorBoard profile plugin layout:
`plugins/profile/<timestamp>/<host>.xplane.pb`, plus a Perfetto `perfetto_trace.json.gz`).

Each traced update is wrapped in a `StepTraceAnnotation("train", step_num=...)`, which is what
TensorBoard's step view groups by. The trace stops only after the last traced step has finished on
the device (the loop runs ahead of it otherwise). Only the primary process writes a trace.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import jax

log = logging.getLogger(__name__)

PROFILE_DIR = "profile"


class StepProfiler:
    """Starts and stops one trace around a range of train steps."""

    def __init__(self, steps: tuple[int, int] | None, run_dir: Path, enabled: bool = True):
        self.steps = steps if enabled and run_dir.is_dir() else None
        self.dir = run_dir / PROFILE_DIR
        self.active = False

    def step(self, step: int):
        """Context for dispatching update `step + 1`: starts the trace at `start`, annotates traced steps."""
        if self.steps is None:
            return contextlib.nullcontext()
        start, stop = self.steps
        if not self.active and start <= step < stop:
            self.dir.mkdir(exist_ok=True)
            jax.profiler.start_trace(str(self.dir), create_perfetto_trace=True)
            self.active = True
            log.info("profiling steps %d..%d into %s", step + 1, stop, self.dir)
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step + 1)

    def after(self, step: int, outputs) -> None:
        """After update `step` was dispatched: at `stop`, wait for it and write the trace."""
        if self.active and step >= self.steps[1]:
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active, self.steps = False, None
            log.info("profile written to %s", self.dir)
