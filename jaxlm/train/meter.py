"""Turns the train step's device metrics into logged rows: the mean train loss since the last row,
tokens/s with evaluation and checkpoint time excluded, MFU, and the training wall-clock."""

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
        self.last_loss = float("nan")
        self.last_row: dict = {}  # the latest row logged
        self.last_val: float | None = None  # the latest validation loss, shown on the progress bar

    def pause(self, seconds: float) -> None:
        self.paused += seconds
        self.paused_total += seconds

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

    def consume(self, step: int, metrics, evals: dict | None, guard: DivergenceGuard | None = None) -> bool:
        """Read one step's metrics, log a row when due; False when `guard` finds the run diverged. A row's
        `train_loss` is the mean over the steps since the previous row; the bar shows it with the latest
        validation loss."""
        c = self.c
        m = jax.device_get(metrics)
        self.last_loss = float(m["loss"])
        self.losses.append(self.last_loss)
        ok = guard is None or guard.check(step, self.last_loss, float(m["grad_norm"]))
        if ok and not (evals or step % c.log_interval == 0 or step == c.max_iterations):
            return True
        now = time.perf_counter()
        tok_s = (step - self.last_step) * c.tokens_per_step / max(now - self.last_time - self.paused, 1e-9)
        row = {
            "tokens": step * c.tokens_per_step,
            "wallclock_s": now - self.segment_start,
            "train_loss": float(np.mean(self.losses)),
            "learning_rate": float(self.schedule(step)),
            "grad_norm": float(m["grad_norm"]),
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
        return ok
