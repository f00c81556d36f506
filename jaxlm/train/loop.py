"""The training loop, phase by phase: open the run, step, evaluate, checkpoint, finish.

Metrics come to the host one step late: step s+1 is dispatched before step s's
loss is read, so the device never waits on Python. The loop talks to the run's
records only through the `RunTracker` protocol, handing it plain values.
`TrainingLoop` is the loop half of `jaxlm.train.trainer.Trainer`, which provides
the state (params, opt_state, step, compiled steps) and `batch`, `evaluate`, `evaluate_full`,
`sample`, `checkpoint_meta`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import jax

from jaxlm.data.tokenizer import TOKENIZER_FILE
from jaxlm.tracking.protocol import RunTracker
from jaxlm.train.agreement import Agreement, agree_on_process_0
from jaxlm.train.checkpoint import RunCheckpoints
from jaxlm.train.distributed import is_primary
from jaxlm.train.flops import flops_per_token, param_counts
from jaxlm.train.meter import Meter
from jaxlm.train.optim import build_optimizer, learning_rate_schedule, planned_learning_rates
from jaxlm.train.sharding import compile_train_step, describe_mesh
from jaxlm.train.stopping import DivergenceGuard, StopSignals, calibration_step, out_of_time, planned_steps

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    status: str
    summary: dict[str, Any]
    sample: str | None


_FLAGS = ("stop_signal", "out_of_time")  # what every process contributes to the agreement, each step


@dataclass
class _Loop:
    """What the loop carries from one step to the next."""

    meter: Meter
    bar: Any  # tqdm
    guard: DivergenceGuard
    best: dict  # {"val_loss", "step"} of the best evaluation so far
    calibrate_at: int | None  # step after which a wall-clock schedule is sized (None: no sizing)
    requested_steps: int  # max_iterations before any sizing to a wall-clock budget
    step_times: dict[int, float] = field(default_factory=dict)
    eval_s: float = 0.0  # duration of the latest eval + sample
    pending: tuple | None = None  # (step, device metrics, eval results) not yet read back
    sample: str | None = None
    stopped_by: str = "max_iterations"
    interrupted_by: str | None = None  # the stop signal all processes agreed to act on
    agreement: Agreement = field(default_factory=lambda: Agreement(len(_FLAGS)))


class TrainingLoop:
    """The run loop of a Trainer (see the module docstring for what it expects of `self`)."""

    def run(self, tracker: RunTracker) -> RunResult:
        """Train to max_iterations (or a stop), logging through `tracker`."""
        self.tracker = tracker
        self._open_run(tracker)
        loop = self._start_loop(tracker)
        with jax.default_device(self.device), StopSignals() as stop:
            while self.step < self.c.max_iterations:
                if not self._train_one_step(loop, stop):
                    break
            if loop.pending is not None:
                loop.meter.consume(*loop.pending, guard=loop.guard)
            self.checkpoints.close()  # waits for the async saves
        loop.bar.close()
        return self._finish(loop, stop)

    def _open_run(self, tracker: RunTracker) -> None:
        """Make the run directory self-contained (its tokenizer) and record what the run is."""
        c = self.c
        if self.tokenizer_path and is_primary() and tracker.run_dir.is_dir():
            shutil.copyfile(self.tokenizer_path, tracker.run_dir / TOKENIZER_FILE)
        self.checkpoints = self.checkpoints or RunCheckpoints(tracker.run_dir, c.keep_checkpoints)
        counts = param_counts(c)
        tracker.write_summary(
            compile_s=self.compile_s,
            params_total=counts["total"],
            params_non_embedding=counts["non_embedding"],
            device_kind=self.device.device_kind,
            device_platform=self.device.platform,
            device_requested=c.device,
            **self.attention.record(),
            **describe_mesh(self.mesh),
            jax_version=jax.__version__,
            max_iterations=c.max_iterations,
            peak_flops_per_device=self.peak_flops,
            flops_per_token=flops_per_token(c),
        )
        tracker.plan_learning_rate(planned_learning_rates(self.schedule, c.max_iterations))

    def _start_loop(self, tracker: RunTracker) -> _Loop:
        from tqdm import tqdm

        c, resumed = self.c, self.resumed
        bar = tqdm(total=c.max_iterations, initial=self.step, desc=tracker.name, disable=not self.progress, unit="step")
        meter = Meter(
            c,
            self.schedule,
            tracker,
            bar,
            self.step,
            resumed.get("wallclock_s", 0.0),
            resumed.get("window_losses", []),
            self.mesh.size,
            self.peak_flops,
        )
        return _Loop(
            meter=meter,
            bar=bar,
            guard=DivergenceGuard(c.divergence_factor, c.warmup_iters, resumed.get("initial_loss")),
            best={"val_loss": resumed.get("best_val_loss", math.inf), "step": resumed.get("best_val_step")},
            calibrate_at=calibration_step(c, self.step),
            requested_steps=c.max_iterations,
        )

    def _train_one_step(self, loop: _Loop, stop: StopSignals) -> bool:
        """Dispatch one update, then evaluate, checkpoint and log as due; False when the loop must end."""
        x, y = self.batch(self.step)
        self.params, self.opt_state, metrics = self.train_step(self.params, self.opt_state, x, y)
        self.step += 1
        if loop.pending is not None and not loop.meter.consume(*loop.pending, guard=loop.guard):
            loop.pending = None
            return False
        self._calibrate(loop)
        # stop early enough that the final eval still fits the budget; act only on what all processes agreed
        out_of_budget = out_of_time(self.c, loop.meter.elapsed() + loop.eval_s)
        signal_number, out_of_budget = loop.agreement.exchange([stop.signum, out_of_budget])
        if signal_number and loop.interrupted_by is None:
            loop.interrupted_by = StopSignals.name(int(signal_number))
        last = self.step == self.c.max_iterations or bool(out_of_budget)
        evals = self._evaluate_if_due(loop, last)
        loop.pending = (self.step, metrics, evals)
        val_ok = evals is None or loop.guard.check_val(self.step, evals["val_loss"])
        is_best = val_ok and evals is not None and evals["val_loss"] < loop.best["val_loss"]
        if not val_ok or is_best or loop.interrupted_by or last or self.step % self.c.checkpoint_interval == 0:
            if not self._checkpoint(loop, evals, val_ok, is_best):
                return False
        loop.bar.update(1)
        if loop.interrupted_by:
            return False
        if out_of_budget:
            loop.stopped_by = "wallclock"
            return False
        return True

    def _calibrate(self, loop: _Loop) -> None:
        """schedule_by=wallclock: time the first steps, then size the schedule to the budget."""
        if loop.calibrate_at is None or self.step > loop.calibrate_at:
            return
        loop.step_times[self.step] = loop.meter.elapsed() - loop.meter.paused_total
        if self.step == loop.calibrate_at:
            loop.eval_s = self._fit_schedule_to_budget(loop)

    def _evaluate_if_due(self, loop: _Loop, last: bool) -> dict[str, float] | None:
        if not (self.step % self.c.eval_interval == 0 or last):
            return None
        t0 = time.perf_counter()
        evals = self.evaluate()
        if last and self.c.final_eval == "full":
            evals.update(self.evaluate_full())
        loop.sample = self.sample()
        if loop.sample is not None:
            self.tracker.log_sample(self.step, self.c.sample_prompt, loop.sample)
        loop.eval_s = time.perf_counter() - t0
        loop.meter.pause(loop.eval_s)
        return evals

    def _checkpoint(self, loop: _Loop, evals: dict | None, val_ok: bool, is_best: bool) -> bool:
        """Read this step's loss first (a diverged step's params are never saved), then save; False
        when the step diverged."""
        ok = loop.meter.consume(*loop.pending, guard=loop.guard)
        loop.pending = None
        if not ok or not val_ok:
            return False
        if is_best:
            loop.best.update(val_loss=evals["val_loss"], step=self.step)
        t0 = time.perf_counter()
        self.checkpoints.save(
            self.step,
            self.params,
            self.opt_state,
            self.checkpoint_meta(loop.meter, loop.guard, loop.best),
            val_loss=evals and evals["val_loss"],
        )
        loop.meter.pause(time.perf_counter() - t0)
        return True

    def _fit_schedule_to_budget(self, loop: _Loop) -> float:
        """From the measured step time, set cosine_cycle_iters (and the step count) so the schedule
        ends with the budget, then recompile the step with that schedule. Returns the eval + sample time."""
        meter, step_times = loop.meter, loop.step_times
        first = min(step_times) + min(2, len(step_times) - 2)  # the first steps run slower
        step_s = (step_times[self.step] - step_times[first]) / max(self.step - first, 1)
        t0 = time.perf_counter()
        self.evaluate(), self.sample()  # timed once, so the plan leaves room for the evals
        eval_s = time.perf_counter() - t0
        meter.pause(eval_s)
        steps = planned_steps(self.c, self.step, meter.elapsed(), step_s, eval_s, self.train_compile_s)
        steps, eval_s = agree_on_process_0([steps, eval_s])  # one schedule for all processes: process 0's timing
        steps = int(steps)
        self.c = dataclasses.replace(self.c, cosine_cycle_iters=steps, max_iterations=steps)
        self.schedule = meter.schedule = learning_rate_schedule(self.c)
        meter.c = self.c
        t0 = time.perf_counter()
        self.train_step = compile_train_step(
            self.c, self.graphdef, build_optimizer(self.c, self.schedule), self.layout, self.params, self.opt_state
        )
        meter.pause(time.perf_counter() - t0)
        self.tracker.update_config(cosine_cycle_iters=steps, max_iterations=steps)
        self.tracker.plan_learning_rate(planned_learning_rates(self.schedule, steps))
        loop.bar.total = steps
        log.info("wall-clock budget: %.3fs/step, eval %.1fs -> schedule sized to %d steps", step_s, eval_s, steps)
        return eval_s

    def _finish(self, loop: _Loop, stop: StopSignals) -> RunResult:
        """The run's status and summary, written through the tracker."""
        meter, guard, c = loop.meter, loop.guard, self.c
        if loop.calibrate_at is not None and c.max_iterations < loop.requested_steps:
            loop.stopped_by = "wallclock"  # the step count itself was sized to the budget
        status = "diverged" if guard.tripped else "interrupted" if loop.interrupted_by else "completed"
        stop_fields = (
            {"diverged_step": guard.tripped["step"], "divergence_reason": guard.tripped["reason"]}
            if guard.tripped
            else {"interrupted_by": loop.interrupted_by}
            if loop.interrupted_by
            else {"stopped_by": loop.stopped_by}
        )
        last_row = meter.last_row
        summary = self.tracker.finalize(
            status=status,
            **stop_fields,
            checkpoint_steps=self.checkpoints.steps,
            best_checkpoint_step=self.checkpoints.best_step(),
            steps=self.step,
            tokens=self.step * c.tokens_per_step,
            wallclock_s=meter.segment_elapsed(),
            final_train_loss=last_row.get("train_loss", meter.last_loss),  # the last row's, as metrics.csv
            final_val_loss=last_row.get("val_loss"),
            final_val_perplexity=last_row.get("val_perplexity"),
            final_val_bpb=last_row.get("val_bpb"),
            best_val_loss=loop.best["val_loss"],
            best_val_step=loop.best["step"],
            **{k: v for k, v in last_row.items() if k.startswith("full_val_")},  # final_eval "full"
            **meter.throughput(meter.mean_tokens_per_sec(self.step), "mean_"),
            flops_per_token=flops_per_token(c),
        )
        return RunResult(status, summary, loop.sample)
