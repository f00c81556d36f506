"""Turns the train step's device metrics into logged rows: the mean train loss since the last row,
tokens/s with evaluation and checkpoint time excluded, MFU, and the training wall-clock.

The loop runs ahead of the device: `record` keeps each step's metrics on the device, unread, and
`drain` fetches all of them in one transfer at the steps where the loop must know them (log,
evaluation, checkpoint and stop steps), judging every step's loss, so a divergence is reported
with the step it happened at, at most `log_interval` steps late.

With a z-loss (`z_loss` > 0) each row also carries `z_loss`: the unscaled mean logsumexp^2 of the row's
step, like `grad_norm` the latest step's value (it needs no window carried over a resume)."""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxlm.config import Config
from jaxlm.tracking.protocol import RunTracker
from jaxlm.tracking.records import mfu
from jaxlm.train.flops import flops_per_token
from jaxlm.train.stopping import DivergenceGuard


class Meter:
    """Turns per-step device metrics into logged rows: mean train loss, tokens/s (eval time excluded)."""

    def __init__(
        self,
        c: Config,
        schedule,
        tracker: RunTracker,
        bar,
        start_step: int,
        elapsed_before: float = 0.0,
        window_losses: list[float] = (),
        device_count: int = 1,
        peak_flops: float | None = None,
    ):
        self.c, self.schedule, self.tracker, self.bar = c, schedule, tracker, bar
        self.device_count, self.peak_flops, self.flops_per_token = device_count, peak_flops, flops_per_token(c)
        self.segment_start = self.last_time = time.perf_counter()
        self.start = self.last_time - elapsed_before  # wall-clock continues across resumes
        self.start_step = self.last_step = start_step
        self.paused = self.paused_total = 0.0
        self.losses: list[float] = list(window_losses)  # train losses since the last logged row
        self.unread: list[tuple[int, dict]] = []  # (step, device metrics) recorded but not yet fetched
        self.grad_norm = float("nan")  # the latest fetched step's
        self.z_loss = float("nan")  # the latest fetched step's, when the objective has a z-loss
        self.planned_lr: list[float] = []  # the schedule at steps 0, 1, ..., max_iterations (set by the loop)
        self.last_loss = float("nan")
        self.last_row: dict = {}  # the latest row logged
        self.last_val: float | None = None  # the latest validation loss, shown on the progress bar

    def pause(self, seconds: float) -> None:
        self.paused += seconds
        self.paused_total += seconds

    def exclude(self, seconds: float) -> None:
        """Take `seconds` (a compile inside the loop) off every clock: the run's, the segment's, the row's."""
        self.start += seconds
        self.segment_start += seconds
        self.last_time += seconds

    def elapsed(self) -> float:
        """Training wall-clock of the whole run, earlier segments (before a resume) included."""
        return time.perf_counter() - self.start

    def segment_elapsed(self) -> float:
        """Wall-clock of this process's segment (the tracker adds the earlier segments itself)."""
        return time.perf_counter() - self.segment_start

    def throughput(self, tok_s: float, prefix: str = "") -> dict[str, float | None]:
        """Global and per-device tokens/s and MFU (None on devices without a known peak)."""
        return {
            f"{prefix}tokens_per_sec": tok_s,
            f"{prefix}tokens_per_sec_per_device": tok_s / self.device_count,
            "mfu": mfu(tok_s, self.flops_per_token, self.device_count, self.peak_flops),
        }

    def mean_tokens_per_sec(self, step: int) -> float:
        """Throughput of this process's share of the run, eval and checkpoint time excluded."""
        seconds = time.perf_counter() - self.segment_start - self.paused_total
        return (step - self.start_step) * self.c.tokens_per_step / max(seconds, 1e-9)

    def record(self, step: int, metrics) -> None:
        """Keep step `step`'s metrics (device arrays) for the next `drain`; no host wait."""
        self.unread.append((step, metrics))

    def drain(self, guard: DivergenceGuard | None = None) -> bool:
        """Fetch every recorded step's metrics in one transfer and judge each in order; False when
        `guard` finds a step diverged (its row is logged at that step and later steps are dropped)."""
        if not self.unread:
            return True
        unread, self.unread = self.unread, []
        fetched = jax.device_get([m for _, m in unread])
        for (step, _), m in zip(unread, fetched, strict=True):
            self.last_loss, self.grad_norm = float(m["loss"]), float(m["grad_norm"])
            if "z_loss" in m:
                self.z_loss = float(m["z_loss"])
            self.losses.append(self.last_loss)
            if guard is not None and not guard.check(step, self.last_loss, self.grad_norm):
                self.log_row(step, None)
                return False
        return True

    def learning_rate(self, step: int) -> float:
        """The planned rate at `step` (host-side numbers; no JAX call at a log row)."""
        return self.planned_lr[step] if step < len(self.planned_lr) else float(self.schedule(step))

    def row_due(self, step: int, evals: dict | None) -> bool:
        return bool(evals) or step % self.c.log_interval == 0 or step == self.c.max_iterations

    def log_row(self, step: int, evals: dict | None) -> None:
        """Log the row of `step` (everything recorded up to it must be drained) through the tracker. A row's
        `train_loss` is the mean over the steps since the previous row; the bar shows it with the latest
        validation loss."""
        c = self.c
        now = time.perf_counter()
        tok_s = (step - self.last_step) * c.tokens_per_step / max(now - self.last_time - self.paused, 1e-9)
        row = {
            "tokens": step * c.tokens_per_step,
            "wallclock_s": now - self.segment_start,
            "train_loss": float(np.mean(self.losses)) if self.losses else float("nan"),
            "learning_rate": self.learning_rate(step),
            "grad_norm": self.grad_norm,
            **({"z_loss": self.z_loss} if c.z_loss > 0 else {}),
            **self.throughput(tok_s),
            **(evals or {}),
        }
        self.tracker.log_step(step, **row)
        self.last_row = {"step": step, **row}
        self.last_val = row.get("val_loss", self.last_val)
        val = {} if self.last_val is None else {"val": f"{self.last_val:.3f}"}
        self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", **val, tok_s=f"{tok_s:,.0f}")
        self.losses.clear()
        self.last_time, self.last_step, self.paused = now, step, 0.0
