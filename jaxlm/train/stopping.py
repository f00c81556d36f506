"""What stops a run early and cleanly: divergence, SIGTERM/SIGINT/SIGHUP, and the wall-clock budget.

Each rule only *decides*; the training loop acts (skips the checkpoint, saves one,
writes the status), so no signal handler ever touches JAX or the run directory.

Wall-clock budgets (CS336's "race the clock" leaderboard): training time counts
from the first step (compiles and data preparation excluded, the recompile of a
sized schedule too), evaluations and samples included; with `schedule_by:
"wallclock"` the cosine schedule is sized from warm step and evaluation timings
so that it ends, final evaluation (sampled or full) included, with the budget.
"""

from __future__ import annotations

import logging
import math
import signal
import threading

from jaxlm.config import Config
from jaxlm.errors import STOP_SIGNALS

log = logging.getLogger(__name__)


class DivergenceGuard:
    """Trips on a NaN/inf loss or gradient norm, or, after warmup, a train or validation loss
    above factor x the initial loss.

    The initial loss is the first update's loss (the untrained model's); it is
    saved in checkpoints so a resumed run judges by the same baseline.
    """

    def __init__(self, factor: float, warmup_iters: int, initial_loss: float | None = None):
        self.factor, self.warmup_iters = factor, warmup_iters
        self.initial_loss = initial_loss
        self.tripped: dict | None = None  # {"step", "loss", "reason"} of the first divergence seen

    def check(self, step: int, loss: float, grad_norm: float) -> bool:
        """Judge one update's train loss; True while training may go on."""
        if math.isfinite(loss) and math.isfinite(grad_norm) and self.initial_loss is None:
            self.initial_loss = loss
        if not math.isfinite(grad_norm):
            return self._trip(step, loss, f"gradient norm is {grad_norm}")
        return self._judge(step, loss, "train loss")

    def check_val(self, step: int, val_loss: float) -> bool:
        """Judge a validation loss the same way (its params are about to be checkpointed)."""
        return self._judge(step, val_loss, "validation loss")

    def _judge(self, step: int, loss: float, what: str) -> bool:
        if not math.isfinite(loss):
            return self._trip(step, loss, f"{what} is {loss}")
        if self.initial_loss is not None and step > self.warmup_iters and loss > self.factor * self.initial_loss:
            return self._trip(step, loss, f"{what} {loss:.4g} > {self.factor:g} x initial loss {self.initial_loss:.4g}")
        return True

    def _trip(self, step: int, loss: float, reason: str) -> bool:
        if self.tripped is None:
            self.tripped = {"step": step, "loss": loss, "reason": reason}
            log.warning("diverged at step %d: %s", step, reason)
        return False


class StopSignals:
    """Context manager: the first SIGTERM/SIGINT/SIGHUP sets `requested`; a second raises KeyboardInterrupt at once.

    Handlers are installed only in the main thread (Python allows no other) and
    the previous ones are restored on exit.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self):
        self.requested: str | None = None  # name of the first signal received
        self.signum: int = 0  # its number (0: none), what the loop's agreement carries to the other processes
        self._previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second stop signal ({name})")
        self.requested, self.signum = name, signum
        log.warning(
            "%s received: finishing this step, saving a checkpoint, then stopping (send it again to abort at once)",
            name,
        )

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


CALIBRATION_STEPS = 12  # steps timed before the schedule is sized (the first two are not counted)


def calibration_step(c: Config, start_step: int) -> int | None:
    """The step after which the schedule is sized, or None when it needs no sizing."""
    if c.schedule_by != "wallclock" or c.cosine_cycle_iters is not None:
        return None
    return min(start_step + CALIBRATION_STEPS, c.max_iterations)


def planned_steps(
    c: Config, step: int, elapsed_s: float, step_s: float, eval_s: float, recompile_s: float, final_s: float = 0.0
) -> int:
    """Total steps that fit the budget: the time left pays for steps, the evals among them
    (one every eval_interval, plus the final one, plus `final_s` for a final full evaluation) and
    `recompile_s` (the loop passes 0: it keeps its recompile off the budget's clock)."""
    assert c.max_wallclock_seconds is not None
    left = c.max_wallclock_seconds - elapsed_s - recompile_s - eval_s - final_s
    per_step = step_s + eval_s / c.eval_interval
    more = max(int(math.floor(left / per_step)), 0) if per_step > 0 else c.max_iterations
    return max(min(step + more, c.max_iterations), c.warmup_iters, step + 1)


def out_of_time(c: Config, elapsed_s: float) -> bool:
    return c.max_wallclock_seconds is not None and elapsed_s >= c.max_wallclock_seconds
