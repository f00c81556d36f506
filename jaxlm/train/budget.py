"""The wall-clock budget: when time is up, and (`schedule_by: "wallclock"`) how many steps fit it.

Training time counts from the first step (compiles and data preparation excluded, the
recompile of a sized schedule too), evaluations, samples and checkpoints included.

A wall-clock schedule is planned twice, at steps that are the same on every process (process
0's numbers are used by all, see `agree_on_process_0`):

1. At `calibration_step`, from the warm steps before it (the first two after the start are not
   counted) and one warm evaluation and sample, timed by the loop.
2. Those steps carry none of what a checkpoint costs: the save's copy off the device, the wait
   for the previous asynchronous save, the share of the host a background save takes. So the
   loop times whole checkpoint intervals after the first plan, from checkpoint `k1` to checkpoint
   `k2`, at least WINDOW_STEPS steps later (each timed before its save, evaluations taken out, as
   they are paid for separately), and plans again at `k2` with that time per step. A run whose
   first plan ends before `k2` is planned once.

Each plan reserves the final evaluation (sampled or full) and, once one has been timed, two whole
checkpoint saves (`k1`'s, from its start until Orbax reports it finished): the last save first
waits for the one still being written, then writes its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jaxlm.config import Config

CALIBRATION_STEPS = 12  # steps timed before the schedule is first sized (the first two are not counted)
WINDOW_STEPS = 100  # the fewest steps timed for the second plan (whole checkpoint intervals)


def calibration_step(c: Config, start_step: int) -> int | None:
    """The step after which the schedule is first sized, or None when it needs no sizing."""
    if c.schedule_by != "wallclock" or c.cosine_cycle_iters is not None:
        return None
    return min(start_step + CALIBRATION_STEPS, c.max_iterations)


def planned_steps(
    c: Config, step: int, elapsed_s: float, step_s: float, eval_s: float, recompile_s: float, final_s: float = 0.0
) -> int:
    """Total steps that fit the budget: the time left pays for steps, the evals among them
    (one every eval_interval, plus the final one), `final_s` (what the end costs besides the final
    eval: a full evaluation, the last save) and `recompile_s` (the loop passes 0: it keeps its
    recompile off the budget's clock)."""
    assert c.max_wallclock_seconds is not None
    left = c.max_wallclock_seconds - elapsed_s - recompile_s - eval_s - final_s
    per_step = step_s + eval_s / c.eval_interval
    more = max(int(math.floor(left / per_step)), 0) if per_step > 0 else c.max_iterations
    return max(min(step + more, c.max_iterations), c.warmup_iters, step + 1)


def out_of_time(c: Config, elapsed_s: float) -> bool:
    return c.max_wallclock_seconds is not None and elapsed_s >= c.max_wallclock_seconds


@dataclass
class WallclockPlan:
    """What the loop measures for the budget, and the times it keeps in reserve for the run's end."""

    calibrate_at: int | None  # the first plan's step (None: the schedule is not sized)
    calibrate_from: int  # the first timed step (its end): the steps before it compile and warm up
    checkpoint_interval: int
    requested_steps: int  # max_iterations before any sizing
    step_times: dict[int, float] = field(default_factory=dict)  # step -> elapsed, pauses excluded
    window: dict[int, float] = field(default_factory=dict)  # k1, k2 -> elapsed, evaluations excluded
    eval_s: float = 0.0  # the latest evaluation + sample
    evals_s: float = 0.0  # every evaluation + sample so far
    final_s: float = 0.0  # reserved for a final full evaluation (final_eval "full")
    save_s: float = 0.0  # reserved for the last checkpoint: a whole save, once one was timed
    save_started: float | None = None  # k1's save is being timed (perf_counter at its start)

    @classmethod
    def start(cls, c: Config, step: int) -> WallclockPlan:
        return cls(calibration_step(c, step), step + 2, c.checkpoint_interval, c.max_iterations)

    def reserve(self) -> float:
        """Time the run's end needs after the last step: stop once elapsed + this reaches the budget."""
        return self.eval_s + self.final_s + 2 * self.save_s

    def times_step(self, step: int) -> bool:
        """A step the first plan times (the loop waits for the device there)."""
        at = self.calibrate_at
        return at is not None and step in (min(at, self.calibrate_from), at)

    def warm_step_s(self) -> float:
        first, last = min(self.step_times), max(self.step_times)
        return (self.step_times[last] - self.step_times[first]) / max(last - first, 1)

    def window_mark(self, step: int, max_iterations: int) -> int | None:
        """0 at checkpoint k1, 1 at k2 (the interval timed for the second plan), while the current plan
        runs past k2; None at every other step."""
        if self.calibrate_at is None:
            return None
        k1 = (self.calibrate_at // self.checkpoint_interval + 1) * self.checkpoint_interval
        k2 = k1 + self.checkpoint_interval * max(1, math.ceil(WINDOW_STEPS / self.checkpoint_interval))
        return None if max_iterations <= k2 or step not in (k1, k2) else int(step == k2)

    def evaluated(self, seconds: float) -> None:
        self.eval_s = seconds
        self.evals_s += seconds

    def poll_save(self, saving: bool, now: float) -> None:
        """Called after each step while k1's save is timed: its time is known once it is done."""
        if self.save_started is not None and not saving:
            self.save_s, self.save_started = max(now - self.save_started, 0.0), None

    def interval_step_s(self, now: float) -> float:
        """At k2: the time per step over the window, and k1's save time if it still runs (a lower bound)."""
        k1, k2 = sorted(self.window)
        if self.save_started is not None:
            self.save_s, self.save_started = now - self.save_started, None
        return (self.window[k2] - self.window[k1]) / (k2 - k1)
