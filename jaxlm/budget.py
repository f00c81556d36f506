"""Wall-clock budgets: stop when the training time is spent, and optionally size the
cosine schedule so it ends with the budget (CS336's "race the clock" leaderboard).

Training time counts from the first step (compile and data preparation excluded),
evaluations and samples included.
"""

from __future__ import annotations

import math

from jaxlm.config import Config

CALIBRATION_STEPS = 12  # steps timed before the schedule is sized (the first two are not counted)


def calibration_step(c: Config, start_step: int) -> int | None:
    """The step after which the schedule is sized, or None when it needs no sizing."""
    if c.schedule_by != "wallclock" or c.cosine_cycle_iters is not None:
        return None
    return min(start_step + CALIBRATION_STEPS, c.max_iterations)


def planned_steps(c: Config, step: int, elapsed_s: float, step_s: float, eval_s: float, recompile_s: float) -> int:
    """Total steps that fit the budget: the time left pays for steps, the evals among them
    (one every eval_interval, plus the final one) and one recompile."""
    assert c.max_wallclock_seconds is not None
    left = c.max_wallclock_seconds - elapsed_s - recompile_s - eval_s
    per_step = step_s + eval_s / c.eval_interval
    more = max(int(math.floor(left / per_step)), 0) if per_step > 0 else c.max_iterations
    return max(min(step + more, c.max_iterations), c.warmup_iters, step + 1)


def out_of_time(c: Config, elapsed_s: float) -> bool:
    return c.max_wallclock_seconds is not None and elapsed_s >= c.max_wallclock_seconds
