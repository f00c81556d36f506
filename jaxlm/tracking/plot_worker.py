"""Draws a run's two plots in a child process, so that matplotlib never holds the training loop's GIL.

Drawing `loss_curves.png` and `lr_schedule.png` is Python for the most part (~0.3 s a refresh on a
2-core CPU) and holds the GIL meanwhile. On a thread of the training process that still stalls the
loop: each step gives the GIL up while it waits for JAX and must then wait for the drawing thread to
let it go again (scripts/bench_records.py measures it; numbers in docs/performance.md).

`PlotProcess` starts `python -m jaxlm.tracking.plot_worker` with the tracker and hands it one job
per line of JSON on its stdin: `{"new_rows": [...], "planned": [...] or null, "loss_png": path,
"loss_title": str, "lr_png": path, "lr_title": str}`. Only the rows since the previous job travel
(the child keeps them all), so a job costs the training process the same at row 100 and at row
100,000. The child answers one line, `{"errors": [...]}` (one "file: Type: message" per plot it
could not write). It ignores stop signals (a Ctrl-C reaches the whole terminal's process group; its
parent decides when it ends) and exits when its stdin ends: when the tracker closes it, or when the
parent dies, even by `kill -9`, so it never outlives the run.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def draw(rows: Sequence[dict], job: dict[str, Any]) -> list[str]:
    """Draw the two plots of `job` from `rows`; the errors, one line each (a plot never raises)."""
    from jaxlm.tracking import plots

    errors = []
    for key, fn in (
        ("loss_png", lambda: plots.plot_loss_curves(rows, Path(job["loss_png"]), job["loss_title"])),
        ("lr_png", lambda: plots.plot_lr_schedule(job["planned"], rows, Path(job["lr_png"]), job["lr_title"])),
    ):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{Path(job[key]).name}: {type(e).__name__}: {e}")
    return errors


class PlotProcess:
    """The parent's side. `draw(rows, job)` (called from one thread at a time) sends the rows the child
    has not seen yet and waits for its answer. If the child cannot be started or dies: one warning
    line, and from then on the plots are drawn in this process."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.sent = 0  # rows the child holds
        self.failed = False

    def start(self) -> None:
        """Start the child now (it imports matplotlib before its first job, while the model compiles)."""
        if self.proc is not None or self.failed:
            return
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jaxlm.tracking.plot_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as e:
            self._give_up(e)

    def draw(self, rows: Sequence[dict], job: dict[str, Any]) -> list[str]:
        self.start()
        if not self.failed:
            try:
                line = json.dumps({**job, "new_rows": list(rows[self.sent :])}, allow_nan=False)
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
                self.sent = len(rows)
                reply = self.proc.stdout.readline()
                if not reply:
                    raise OSError("the plot process ended")
                return json.loads(reply)["errors"]
            except (OSError, ValueError) as e:
                self._give_up(e)
        return draw(rows, job)

    def _give_up(self, e: Exception) -> None:
        log.warning("plots drawn in the training process from now on: %s: %s", type(e).__name__, e)
        self.failed = True
        self.close()

    def close(self) -> None:
        """End the child (its stdin closed) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    from jaxlm.tracking import plots

    plots.preload()
    rows: list[dict] = []
    for line in sys.stdin:
        job = json.loads(line)
        rows.extend(job.pop("new_rows"))
        sys.stdout.write(json.dumps({"errors": draw(rows, job)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
