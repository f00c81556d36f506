"""The CS336 learning-rate schedule in plain Python, from a config dict.

The tracker plots the whole planned schedule without importing JAX, so it
cannot call `jaxlm.optim.cosine_schedule`; this is the same formula (a test
checks they agree at every step).
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def cs336_learning_rate(t: float, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int) -> float:
    """Linear warmup t/T_w * max_lr, cosine from max_lr to min_lr until T_c, then min_lr."""
    if t < warmup_iters:
        return max_lr * t / max(warmup_iters, 1)
    if t > cosine_cycle_iters:
        return min_lr
    span = max(cosine_cycle_iters - warmup_iters, 1)
    progress = min(max((t - warmup_iters) / span, 0.0), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def planned_schedule(config: Mapping[str, Any]) -> tuple[list[int], list[float]] | None:
    """(steps 0..max_iterations, lr at each) for the config, or None when it lacks the schedule keys."""
    try:
        max_lr = float(config["learning_rate"])
        total = int(config["max_iterations"])
    except (KeyError, TypeError, ValueError):
        return None
    min_lr = float(config.get("min_learning_rate") or 0.0)
    warmup = int(config.get("warmup_iters") or 0)
    cycle = config.get("cosine_cycle_iters")
    cycle = total if cycle is None else int(cycle)
    steps = list(range(total + 1))
    return steps, [cs336_learning_rate(t, max_lr, min_lr, warmup, cycle) for t in steps]
