"""The training loop: set up data, model and compiled steps; train, evaluate, sample, log.

Metrics come to the host one step late: step s+1 is dispatched before step s's
loss is read, so the device never waits on Python.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxlm.config import Config
from jaxlm.data.sources import prepare
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.data.tokens import batch_at, eval_batches, open_tokens
from jaxlm.distributed import primary_first
from jaxlm.flops import flops_per_token, param_counts
from jaxlm.generate import generate_text, make_decode_step
from jaxlm.hardware import mfu, peak_flops_for
from jaxlm.optim import build_optimizer, schedule_for
from jaxlm.sharding import build_mesh, compile_eval_step, compile_train_step, describe_mesh, init_state
from jaxlm.tracking import ExperimentTracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    status: str
    summary: dict[str, Any]
    sample: str | None


class Trainer:
    """One run: owns params, optimizer state and the compiled steps."""

    def __init__(self, c: Config, tracker: ExperimentTracker, *, progress: bool = False):
        self.c, self.tracker, self.progress = c, tracker, progress
        self.mesh = build_mesh(c)  # all devices of all processes; see jaxlm/sharding.py
        self.device = self.mesh.local_devices[0]
        files = primary_first(lambda: prepare(c, progress=progress))  # one process fills a shared cache
        self.train_tokens = open_tokens(files.train, c.vocab_size, c.context_length).tokens
        val = open_tokens(files.val, c.vocab_size, c.context_length)
        self.val_set = eval_batches(val.tokens, c.eval_batches, c.batch_size, c.context_length)
        self.val_bytes_per_token = val.bytes_per_token
        self.tokenizer = load_tokenizer(files.tokenizer) if files.tokenizer else None
        self.schedule = schedule_for(c)
        tx = build_optimizer(c)
        self.graphdef, self.params, self.opt_state, self.layout = init_state(c, tx, self.mesh)
        self.rows = self.layout.local_rows(c.batch_size)  # this process's rows of every global batch
        self.val_set = [self.layout.put_batch(x[self.rows], y[self.rows], c.batch_size) for x, y in self.val_set]
        t0 = time.perf_counter()
        self.train_step = compile_train_step(c, self.graphdef, tx, self.layout, self.params, self.opt_state)
        self.eval_step = compile_eval_step(c, self.graphdef, self.layout, self.params)
        self.compile_s = time.perf_counter() - t0
        self.decode_step = None
        self.step = 0  # updates applied so far
        log.info("compiled in %.1fs", self.compile_s)

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """Global batch `step`, sharded over the mesh; this process reads only its own rows."""
        c = self.c
        x, y = batch_at(self.train_tokens, c.seed, step, c.batch_size, c.context_length, rows=self.rows)
        return self.layout.put_batch(x, y, c.batch_size)

    def evaluate(self) -> dict[str, float]:
        """Mean loss over the fixed validation batches, as nats/token, perplexity and bits/byte."""
        total = sum(self.eval_step(self.params, x, y) for x, y in self.val_set)
        loss = float(total) / len(self.val_set)
        out = {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}
        if self.val_bytes_per_token:
            out["val_bpb"] = loss / math.log(2) / self.val_bytes_per_token
        return out

    def sample(self, seed: int | None = None) -> str | None:
        c = self.c
        if self.tokenizer is None or c.sample_tokens == 0:
            return None
        if self.decode_step is None:
            self.decode_step = make_decode_step(self.graphdef, temperature=0.8, top_p=0.9)
        with jax.default_device(self.device):
            return generate_text(self.graphdef, self.params, self.tokenizer, c.sample_prompt,
                                 context_length=c.context_length, max_new_tokens=c.sample_tokens,
                                 seed=c.seed if seed is None else seed, decode_step=self.decode_step)

    def run(self) -> RunResult:
        from tqdm import tqdm

        c, tracker = self.c, self.tracker
        counts = param_counts(c)
        tracker.write_summary(compile_s=self.compile_s, params_total=counts["total"],
                              params_non_embedding=counts["non_embedding"], device_kind=self.device.device_kind,
                              **describe_mesh(self.mesh), jax_version=jax.__version__, max_iterations=c.max_iterations)
        bar = tqdm(total=c.max_iterations, initial=self.step, desc=tracker.name, disable=not self.progress, unit="step")
        meter = _Meter(c, self.schedule, tracker, bar, self.step, self.mesh.size, peak_flops_for(self.device, c.dtype))
        best = {"val_loss": math.inf, "step": None}
        sample = None
        pending = None  # (step, device metrics, eval results) not yet read back
        with jax.default_device(self.device):
            while self.step < c.max_iterations:
                x, y = self.batch(self.step)
                self.params, self.opt_state, metrics = self.train_step(self.params, self.opt_state, x, y)
                self.step += 1
                if pending is not None:
                    meter.consume(*pending)
                evals = None
                if self.step % c.eval_interval == 0 or self.step == c.max_iterations:
                    t_eval = time.perf_counter()
                    evals = self.evaluate()
                    sample = self.sample()
                    if sample is not None:
                        tracker.log_sample(self.step, c.sample_prompt, sample)
                    meter.pause(time.perf_counter() - t_eval)
                    if evals["val_loss"] < best["val_loss"]:
                        best.update(val_loss=evals["val_loss"], step=self.step)
                pending = (self.step, metrics, evals)
                bar.update(1)
            if pending is not None:
                meter.consume(*pending)
        bar.close()
        wallclock = meter.elapsed()
        last = tracker.rows[-1] if tracker.rows else {}
        summary = tracker.finalize(
            status="completed", steps=self.step, tokens=self.step * c.tokens_per_step, wallclock_s=wallclock,
            final_train_loss=meter.last_loss, final_val_loss=last.get("val_loss"),
            final_val_perplexity=last.get("val_perplexity"), final_val_bpb=last.get("val_bpb"),
            best_val_loss=best["val_loss"], best_val_step=best["step"],
            **meter.throughput(self.step * c.tokens_per_step / max(wallclock - meter.paused_total, 1e-9), "mean_"),
            flops_per_token=flops_per_token(c))
        return RunResult("completed", summary, sample)


class _Meter:
    """Turns per-step device metrics into logged rows: mean train loss, tokens/s (eval time excluded)."""

    def __init__(self, c: Config, schedule, tracker: ExperimentTracker, bar, start_step: int,
                 device_count: int = 1, peak_flops: float | None = None):
        self.c, self.schedule, self.tracker, self.bar = c, schedule, tracker, bar
        self.device_count, self.peak_flops, self.flops_per_token = device_count, peak_flops, flops_per_token(c)
        self.start = self.last_time = time.perf_counter()
        self.last_step = start_step
        self.paused = self.paused_total = 0.0
        self.losses: list[float] = []
        self.last_loss = float("nan")

    def pause(self, seconds: float) -> None:
        self.paused += seconds
        self.paused_total += seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def throughput(self, tok_s: float, prefix: str = "") -> dict[str, float | None]:
        """Global and per-device tokens/s and MFU (None on devices without a known peak)."""
        return {f"{prefix}tokens_per_sec": tok_s, f"{prefix}tokens_per_sec_per_device": tok_s / self.device_count,
                "mfu": mfu(tok_s, self.flops_per_token, self.device_count, self.peak_flops)}

    def consume(self, step: int, metrics, evals: dict | None) -> None:
        c = self.c
        m = jax.device_get(metrics)
        self.last_loss = float(m["loss"])
        self.losses.append(self.last_loss)
        if not (evals or step % c.log_interval == 0 or step == c.max_iterations):
            return
        now = time.perf_counter()
        tok_s = (step - self.last_step) * c.tokens_per_step / max(now - self.last_time - self.paused, 1e-9)
        row = {"tokens": step * c.tokens_per_step, "wallclock_s": now - self.start,
               "train_loss": float(np.mean(self.losses)), "learning_rate": float(self.schedule(step)),
               "grad_norm": float(m["grad_norm"]), **self.throughput(tok_s), **(evals or {})}
        self.tracker.log_step(step, **row)
        self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=f"{tok_s:,.0f}")
        self.losses.clear()
        self.last_time, self.last_step, self.paused = now, step, 0.0


def run(c: Config, tracker: ExperimentTracker, *, progress: bool = False) -> RunResult:
    """Train `c` to max_iterations, logging through `tracker`."""
    return Trainer(c, tracker, progress=progress).run()
