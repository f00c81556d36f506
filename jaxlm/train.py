"""The training loop: set up data, model and compiled steps; train, evaluate, sample, log.

Metrics come to the host one step late: step s+1 is dispatched before step s's
loss is read, so the device never waits on Python.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxlm.budget import calibration_step, out_of_time, planned_steps
from jaxlm.checkpoint import RunCheckpoints
from jaxlm.config import Config
from jaxlm.data.sources import prepare
from jaxlm.data.tokenizer import TOKENIZER_FILE, load_tokenizer
from jaxlm.data.tokens import batch_at, eval_batches, open_tokens
from jaxlm.distributed import is_primary, primary_first
from jaxlm.errors import ConfigError
from jaxlm.flops import flops_per_token, param_counts
from jaxlm.export import import_safetensors
from jaxlm.generate import generate_text, make_decode_step
from jaxlm.hardware import mfu, peak_flops_for
from jaxlm.optim import build_optimizer, schedule_for
from jaxlm.runguard import DivergenceGuard, StopSignals
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

    def __init__(self, c: Config, tracker: ExperimentTracker | None = None, *, progress: bool = False):
        self.c, self.tracker, self.progress = c, tracker, progress
        self.mesh = build_mesh(c)  # all devices of all processes; see jaxlm/sharding.py
        self.device = self.mesh.local_devices[0]
        files = primary_first(lambda: prepare(c, progress=progress))  # one process fills a shared cache
        self.train_tokens = open_tokens(files.train, c.vocab_size, c.context_length).tokens
        val = open_tokens(files.val, c.vocab_size, c.context_length)
        self.val_set = eval_batches(val.tokens, c.eval_batches, c.batch_size, c.context_length)
        self.val_bytes_per_token = val.bytes_per_token
        self.tokenizer_path = files.tokenizer
        self.tokenizer = load_tokenizer(files.tokenizer) if files.tokenizer else None
        self.schedule = schedule_for(c)
        tx = build_optimizer(c)
        self.graphdef, self.params, self.opt_state, self.layout = init_state(c, tx, self.mesh)
        if c.init_from:
            self.params = jax.device_put(import_safetensors(c.init_from, c)[0], self.layout.params)
        self.rows = self.layout.local_rows(c.batch_size)  # this process's rows of every global batch
        self.val_set = [self.layout.put_batch(x[self.rows], y[self.rows], c.batch_size) for x, y in self.val_set]
        t0 = time.perf_counter()
        self.train_step = compile_train_step(c, self.graphdef, tx, self.layout, self.params, self.opt_state)
        self.train_compile_s = time.perf_counter() - t0
        self.eval_step = compile_eval_step(c, self.graphdef, self.layout, self.params)
        self.compile_s = time.perf_counter() - t0
        self.decode_step = None
        self.step = 0  # updates applied so far
        self.checkpoints: RunCheckpoints | None = None
        self.resumed: dict = {}  # meta of the restored checkpoint, when resuming
        log.info("compiled in %.1fs", self.compile_s)

    def restore(self, run_dir, which: str | int = "latest") -> int:
        """Continue from a checkpoint of `run_dir` ("latest", "best" or a step); returns its step.

        Checkpoints newer than the restored one are deleted: the resumed run rewrites that future.
        """
        self.checkpoints = RunCheckpoints(run_dir, self.c.keep_checkpoints)
        self.params, self.opt_state, self.resumed = self.checkpoints.restore(which, self.params, self.opt_state)
        self.step = self.resumed["step"]
        if self.resumed.get("train_tokens", len(self.train_tokens)) != len(self.train_tokens):
            raise ConfigError(f"training data changed since the checkpoint ({self.resumed['train_tokens']} tokens, "
                              f"now {len(self.train_tokens)}): the data order would not continue")
        self.checkpoints.drop_after(self.step)
        return self.step

    def checkpoint_meta(self, meter: "_Meter", guard: DivergenceGuard, best: dict) -> dict:
        """Everything besides params/opt_state that continuing bit for bit needs (data order = seed + step)."""
        return {"seed": self.c.seed, "train_tokens": len(self.train_tokens), "wallclock_s": meter.elapsed(),
                "initial_loss": guard.initial_loss, "best_val_loss": best["val_loss"], "best_val_step": best["step"],
                "window_losses": list(meter.losses)}

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

    def _eval_and_sample(self) -> tuple[dict[str, float], str | None]:
        evals = self.evaluate()
        sample = self.sample()
        if sample is not None:
            self.tracker.log_sample(self.step, self.c.sample_prompt, sample)
        return evals, sample

    def _fit_schedule_to_budget(self, meter: "_Meter", step_times: dict[int, float], bar) -> float:
        """schedule_by=wallclock: from the measured step time, set cosine_cycle_iters (and the step
        count) so the schedule ends with the budget, then recompile the step with that schedule.
        Returns the measured eval + sample time."""
        first = min(step_times) + min(2, len(step_times) - 2)  # the first steps run slower
        step_s = (step_times[self.step] - step_times[first]) / max(self.step - first, 1)
        t0 = time.perf_counter()
        self.evaluate(), self.sample()  # timed once, so the plan leaves room for the evals
        eval_s = time.perf_counter() - t0
        meter.pause(eval_s)
        steps = planned_steps(self.c, self.step, meter.elapsed(), step_s, eval_s, self.train_compile_s)
        self.c = dataclasses.replace(self.c, cosine_cycle_iters=steps, max_iterations=steps)
        self.schedule = meter.schedule = schedule_for(self.c)
        meter.c = self.c
        t0 = time.perf_counter()
        self.train_step = compile_train_step(self.c, self.graphdef, build_optimizer(self.c), self.layout,
                                             self.params, self.opt_state)
        meter.pause(time.perf_counter() - t0)
        self.tracker.update_config(cosine_cycle_iters=steps, max_iterations=steps)
        bar.total = steps
        log.info("wall-clock budget: %.3fs/step, eval %.1fs -> schedule sized to %d steps", step_s, eval_s, steps)
        return eval_s

    def run(self, tracker: ExperimentTracker | None = None) -> RunResult:
        from tqdm import tqdm

        c, tracker = self.c, tracker or self.tracker
        self.tracker = tracker
        if self.tokenizer_path and is_primary() and tracker.run_dir.is_dir():  # a run directory is self-contained: generate/export find it there
            shutil.copyfile(self.tokenizer_path, tracker.run_dir / TOKENIZER_FILE)
        ckpts = self.checkpoints = self.checkpoints or RunCheckpoints(tracker.run_dir, c.keep_checkpoints)
        resumed = self.resumed
        counts = param_counts(c)
        tracker.write_summary(compile_s=self.compile_s, params_total=counts["total"],
                              params_non_embedding=counts["non_embedding"], device_kind=self.device.device_kind,
                              **describe_mesh(self.mesh), jax_version=jax.__version__, max_iterations=c.max_iterations,
                              peak_flops_per_device=peak_flops_for(self.device, c.dtype),
                              flops_per_token=flops_per_token(c))
        bar = tqdm(total=c.max_iterations, initial=self.step, desc=tracker.name, disable=not self.progress, unit="step")
        meter = _Meter(c, self.schedule, tracker, bar, self.step, resumed.get("wallclock_s", 0.0),
                       resumed.get("window_losses", []), self.mesh.size, tracker.summary.get("peak_flops_per_device"))
        best = {"val_loss": resumed.get("best_val_loss", math.inf), "step": resumed.get("best_val_step")}
        guard = DivergenceGuard(c.divergence_factor, c.warmup_iters, resumed.get("initial_loss"))
        sample, stopped_by = None, "max_iterations"
        calibrate_at = calibration_step(c, self.step)
        step_times: dict[int, float] = {}
        eval_s = 0.0  # duration of the latest eval + sample
        pending = None  # (step, device metrics, eval results) not yet read back
        with jax.default_device(self.device), StopSignals() as stop:
            while self.step < self.c.max_iterations:
                x, y = self.batch(self.step)
                self.params, self.opt_state, metrics = self.train_step(self.params, self.opt_state, x, y)
                self.step += 1
                if pending is not None and not meter.consume(*pending, guard=guard):
                    pending = None
                    break
                if calibrate_at is not None and self.step <= calibrate_at:
                    step_times[self.step] = meter.elapsed() - meter.paused_total
                    if self.step == calibrate_at:
                        eval_s = self._fit_schedule_to_budget(meter, step_times, bar)
                # stop early enough that the final eval still fits the budget
                out_of_budget = out_of_time(self.c, meter.elapsed() + eval_s)
                last = self.step == self.c.max_iterations or out_of_budget
                evals = None
                if self.step % self.c.eval_interval == 0 or last:
                    t_eval = time.perf_counter()
                    evals, sample = self._eval_and_sample()
                    eval_s = time.perf_counter() - t_eval
                    meter.pause(eval_s)
                pending = (self.step, metrics, evals)
                val_ok = evals is None or guard.check_val(self.step, evals["val_loss"])
                is_best = val_ok and evals is not None and evals["val_loss"] < best["val_loss"]
                if not val_ok or is_best or stop.requested or last or self.step % self.c.checkpoint_interval == 0:
                    # read this step's loss first: a diverged step's params are never saved
                    if not meter.consume(*pending, guard=guard) or not val_ok:
                        pending = None
                        break
                    pending = None
                    if is_best:
                        best.update(val_loss=evals["val_loss"], step=self.step)
                    t_save = time.perf_counter()
                    ckpts.save(self.step, self.params, self.opt_state, self.checkpoint_meta(meter, guard, best),
                               val_loss=evals and evals["val_loss"])
                    meter.pause(time.perf_counter() - t_save)
                bar.update(1)
                if stop.requested:
                    break
                if out_of_budget:
                    stopped_by = "wallclock"
                    break
            if pending is not None:
                meter.consume(*pending, guard=guard)
            ckpts.close()  # waits for the async saves
        bar.close()
        if calibrate_at is not None and self.c.max_iterations < c.max_iterations:
            stopped_by = "wallclock"  # the step count itself was sized to the budget
        status = "diverged" if guard.tripped else "interrupted" if stop.requested else "completed"
        stop_fields = ({"diverged_step": guard.tripped["step"], "divergence_reason": guard.tripped["reason"]}
                       if guard.tripped else {"interrupted_by": stop.requested} if stop.requested
                       else {"stopped_by": stopped_by})
        wallclock = meter.segment_elapsed()
        last_row = tracker.rows[-1] if tracker.rows else {}
        summary = tracker.finalize(
            status=status, **stop_fields, checkpoint_steps=ckpts.steps, best_checkpoint_step=ckpts.best_step(),
            steps=self.step, tokens=self.step * c.tokens_per_step, wallclock_s=wallclock,
            final_train_loss=meter.last_loss, final_val_loss=last_row.get("val_loss"),
            final_val_perplexity=last_row.get("val_perplexity"), final_val_bpb=last_row.get("val_bpb"),
            best_val_loss=best["val_loss"], best_val_step=best["step"],
            **meter.throughput(meter.mean_tokens_per_sec(self.step), "mean_"), flops_per_token=flops_per_token(c))
        return RunResult(status, summary, sample)


class _Meter:
    """Turns per-step device metrics into logged rows: mean train loss, tokens/s (eval time excluded)."""

    def __init__(self, c: Config, schedule, tracker: ExperimentTracker, bar, start_step: int,
                 elapsed_before: float = 0.0, window_losses: list[float] = (), device_count: int = 1,
                 peak_flops: float | None = None):
        self.c, self.schedule, self.tracker, self.bar = c, schedule, tracker, bar
        self.device_count, self.peak_flops, self.flops_per_token = device_count, peak_flops, flops_per_token(c)
        self.segment_start = self.last_time = time.perf_counter()
        self.start = self.last_time - elapsed_before  # wall-clock continues across resumes
        self.start_step = self.last_step = start_step
        self.paused = self.paused_total = 0.0
        self.losses: list[float] = list(window_losses)  # train losses since the last logged row
        self.last_loss = float("nan")

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
        return {f"{prefix}tokens_per_sec": tok_s, f"{prefix}tokens_per_sec_per_device": tok_s / self.device_count,
                "mfu": mfu(tok_s, self.flops_per_token, self.device_count, self.peak_flops)}

    def mean_tokens_per_sec(self, step: int) -> float:
        """Throughput of this process's share of the run, eval and checkpoint time excluded."""
        seconds = time.perf_counter() - self.segment_start - self.paused_total
        return (step - self.start_step) * self.c.tokens_per_step / max(seconds, 1e-9)

    def consume(self, step: int, metrics, evals: dict | None, guard: DivergenceGuard | None = None) -> bool:
        """Read one step's metrics, log a row when due; False when `guard` finds the run diverged."""
        c = self.c
        m = jax.device_get(metrics)
        self.last_loss = float(m["loss"])
        self.losses.append(self.last_loss)
        ok = guard is None or guard.check(step, self.last_loss, float(m["grad_norm"]))
        if ok and not (evals or step % c.log_interval == 0 or step == c.max_iterations):
            return True
        now = time.perf_counter()
        tok_s = (step - self.last_step) * c.tokens_per_step / max(now - self.last_time - self.paused, 1e-9)
        row = {"tokens": step * c.tokens_per_step, "wallclock_s": now - self.segment_start,
               "train_loss": float(np.mean(self.losses)), "learning_rate": float(self.schedule(step)),
               "grad_norm": float(m["grad_norm"]), **self.throughput(tok_s), **(evals or {})}
        self.tracker.log_step(step, **row)
        self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=f"{tok_s:,.0f}")
        self.losses.clear()
        self.last_time, self.last_step, self.paused = now, step, 0.0
        return ok


def run(c: Config, tracker: ExperimentTracker, *, progress: bool = False) -> RunResult:
    """Train `c` to max_iterations, logging through `tracker`."""
    return Trainer(c, tracker, progress=progress).run()
