"""The training loop, phase by phase: open the run, step, evaluate, checkpoint, finish.

The loop runs ahead of the device: it dispatches step s, prepares batch s+1 while
the device computes, and reads nothing back, except at the steps where it must
decide something (log, evaluation and checkpoint steps, the last step, a stop):
there it fetches every step's metrics since the previous such step in one
transfer (`Meter.drain`, which judges each step's loss), and all processes agree
on stop signals and the wall-clock budget (`Agreement.agree`) at those same step
numbers. A single process, which has nothing to agree on, checks its stop flags
at every step (host-only, no device wait). The loop talks to the run's
records only through the `RunTracker` protocol, handing it plain values.
`TrainingLoop` is the loop half of `jaxlm.train.trainer.Trainer`, which provides
the state (params, opt_state, step, compiled steps) and `batch`, `evaluate`, `evaluate_full`,
`sample`, `checkpoint_meta`.
"""

from __future__ import annotations

import contextlib
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
from jaxlm.train.budget import WallclockPlan, out_of_time, planned_steps
from jaxlm.train.checkpoint import RunCheckpoints
from jaxlm.train.distributed import is_primary
from jaxlm.train.flops import flops_per_token, param_counts
from jaxlm.train.full_eval import compile_nll_sum
from jaxlm.train.meter import Meter
from jaxlm.train.optim import build_optimizer, learning_rate_schedule, planned_learning_rates
from jaxlm.train.profiling import StepProfiler
from jaxlm.train.sharding import compile_train_step, describe_mesh
from jaxlm.train.stopping import DivergenceGuard, StopSignals

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
    plan: WallclockPlan  # the wall-clock budget's timings and reserve
    next_batch: tuple | None = None  # batch self.step, put on the device while the previous step ran
    bar_step: int = 0  # the step the progress bar shows
    profiler: StepProfiler | None = None
    sample: str | None = None
    stopped_by: str = "max_iterations"
    interrupted_by: str | None = None  # the stop signal all processes agreed to act on
    agreement: Agreement = field(default_factory=lambda: Agreement(len(_FLAGS)))


class TrainingLoop:
    """The run loop of a Trainer (see the module docstring for what it expects of `self`)."""

    def run(self, tracker: RunTracker, stop: StopSignals | None = None) -> RunResult:
        """Train to max_iterations (or a stop), logging through `tracker`. `stop`: the caller's signal
        handlers, already installed (a command that has records of its own to finish after the run),
        else the loop installs its own for the run."""
        with contextlib.nullcontext(stop) if stop is not None else StopSignals() as stop:
            self.tracker = tracker
            self._open_run(tracker)
            loop = self._start_loop(tracker)
            with jax.default_device(self.device):
                while self.step < self.c.max_iterations:
                    stop.raise_if_aborted()
                    if not self._train_one_step(loop, stop):
                        break
                loop.meter.drain(loop.guard)  # nothing is left unread after a decision step; kept for safety
                loop.profiler.close()
                self.checkpoints.close()  # waits for the async saves
            stop.raise_if_aborted()
            stop.finishing = True  # all that is left is writing records: a signal now waits for them
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
        self.planned_lr = planned_learning_rates(self.schedule, c.max_iterations)
        tracker.plan_learning_rate(self.planned_lr)

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
        meter.planned_lr = self.planned_lr
        return _Loop(
            meter=meter,
            bar=bar,
            guard=DivergenceGuard(c.divergence_factor, c.warmup_iters, resumed.get("initial_loss")),
            best={"val_loss": resumed.get("best_val_loss", math.inf), "step": resumed.get("best_val_step")},
            plan=WallclockPlan.start(c, self.step),
            bar_step=self.step,
            profiler=StepProfiler(c.profile_steps, tracker.run_dir, is_primary()),
        )

    def _train_one_step(self, loop: _Loop, stop: StopSignals) -> bool:
        """Dispatch one update; at a decision step, read the metrics back, agree on stopping, evaluate,
        checkpoint and log as due. False when the loop must end."""
        x, y = loop.next_batch or self.batch(self.step)
        with loop.profiler.step(self.step):
            self.params, self.opt_state, metrics = self.train_step(self.params, self.opt_state, x, y)
        self.step += 1
        loop.profiler.after(self.step, metrics)
        loop.next_batch = self.batch(self.step) if self.step < self.c.max_iterations else None
        loop.meter.record(self.step, metrics)
        if loop.plan.save_started is not None:
            loop.plan.poll_save(self.checkpoints.saving(), time.perf_counter())
        calibrating = self._calibrate(loop, metrics)
        c, step = self.c, self.step
        due = calibrating or step == c.max_iterations or any(step % n == 0 for n in self._decision_intervals())
        reserve = loop.plan.reserve()  # stop early enough that the final eval and save still fit the budget
        if not (due or loop.agreement.active):  # one process: look at the local flags, no device wait
            due = bool(stop.signum) or out_of_time(c, loop.meter.elapsed() + reserve)
        if not due:
            return True
        out_of_budget = out_of_time(c, loop.meter.elapsed() + reserve)  # acted on only as all processes agree
        signal_number, out_of_budget = loop.agreement.agree([stop.signum, out_of_budget])
        if signal_number and loop.interrupted_by is None:
            loop.interrupted_by = StopSignals.name(int(signal_number))
        if not loop.meter.drain(loop.guard):  # a diverged step's params are never evaluated or saved
            return False
        last = step == self.c.max_iterations or bool(out_of_budget)
        evals = self._evaluate_if_due(loop, last)
        val_ok = evals is None or loop.guard.check_val(step, evals["val_loss"])
        if loop.meter.row_due(step, evals) or not val_ok:
            loop.meter.log_row(step, evals)
        is_best = val_ok and evals is not None and evals["val_loss"] < loop.best["val_loss"]
        self._time_checkpoint_interval(loop)
        if not val_ok or is_best or loop.interrupted_by or last or step % self.c.checkpoint_interval == 0:
            if not self._checkpoint(loop, evals, val_ok, is_best):
                return False
        loop.bar.update(step - loop.bar_step)
        loop.bar_step = step
        if loop.interrupted_by:
            return False
        if out_of_budget:
            loop.stopped_by = "wallclock"
            return False
        return True

    def _decision_intervals(self) -> tuple[int, int, int]:
        return self.c.log_interval, self.c.eval_interval, self.c.checkpoint_interval

    def _calibrate(self, loop: _Loop, metrics) -> bool:
        """schedule_by=wallclock: time the warm steps (the first two after the start are not counted) as
        the loop runs them, ahead of the device, waiting only at both ends; then size the schedule to the
        budget. True at the steps where it waits (decision steps: every process has the same ones)."""
        plan = loop.plan
        if not plan.times_step(self.step):
            return False
        jax.block_until_ready(metrics)
        plan.step_times[self.step] = loop.meter.elapsed() - loop.meter.paused_total
        if self.step == plan.calibrate_at:
            self._fit_schedule_to_budget(loop)
        return True

    def _time_checkpoint_interval(self, loop: _Loop) -> None:
        """At checkpoints k1 and k2 (budget.py), before their saves: time the interval between them,
        evaluations out; at k2, plan again with that time per step (it pays for the checkpoints)."""
        plan = loop.plan
        mark = plan.window_mark(self.step, self.c.max_iterations)
        if mark is None:
            return
        plan.window[self.step] = loop.meter.elapsed() - plan.evals_s
        if mark == 1:
            self._resize_schedule(loop, plan.interval_step_s(time.perf_counter()), "a checkpoint interval")

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
        loop.plan.evaluated(time.perf_counter() - t0)
        loop.meter.pause(loop.plan.eval_s)
        return evals

    def _checkpoint(self, loop: _Loop, evals: dict | None, val_ok: bool, is_best: bool) -> bool:
        """Save this step (its losses are already read and judged); False when its validation loss
        diverged (a diverged step's params are never saved)."""
        if not val_ok:
            return False
        if is_best:
            loop.best.update(val_loss=evals["val_loss"], step=self.step)
        pending = loop.plan.save_started is not None  # k1's save, still written: this save waits for it
        t0 = time.perf_counter()
        if loop.plan.window_mark(self.step, self.c.max_iterations) == 0:
            loop.plan.save_started = t0  # timed until Orbax has finished it: the reserve for the last save
        self.checkpoints.save(
            self.step,
            self.params,
            self.opt_state,
            self.checkpoint_meta(loop.meter, loop.guard, loop.best),
            val_loss=evals and evals["val_loss"],
        )
        if pending:
            loop.plan.poll_save(False, self.checkpoints.previous_written_at)
        loop.meter.pause(time.perf_counter() - t0)
        return True

    def _fit_schedule_to_budget(self, loop: _Loop) -> None:
        """The first plan: time a warm evaluation and sample, reserve the final full evaluation, and size
        the schedule from the warm step time. Compiles (the decoder's, the full evaluation's step) are
        kept off the budget's clock, as the first compile is."""
        meter, plan = loop.meter, loop.plan
        t0 = time.perf_counter()
        self.evaluate(), self.sample()  # the first call compiles the decoder: not what later evals cost
        t1 = time.perf_counter()
        self.evaluate()  # timed warm, so the plan leaves room for the evals
        t2 = time.perf_counter()
        self.sample()
        plan.eval_s = time.perf_counter() - t1
        meter.pause(time.perf_counter() - t0)
        plan.final_s = self._full_eval_reserve(meter, t2 - t1)
        self._resize_schedule(loop, plan.warm_step_s(), "warm steps")

    def _resize_schedule(self, loop: _Loop, step_s: float, timed: str) -> None:
        """Set cosine_cycle_iters and max_iterations to the steps that fit the budget at `step_s` (process
        0's plan, on every process), then recompile the step with that schedule, off the clock."""
        meter, plan = loop.meter, loop.plan
        final_s = plan.reserve() - plan.eval_s  # planned_steps adds the final evaluation itself
        steps = planned_steps(self.c, self.step, meter.elapsed(), step_s, plan.eval_s, 0.0, final_s)
        steps, plan.eval_s, plan.final_s, plan.save_s = agree_on_process_0(
            [steps, plan.eval_s, plan.final_s, plan.save_s]
        )
        steps = int(steps)
        self.c = dataclasses.replace(self.c, cosine_cycle_iters=steps, max_iterations=steps)
        self.schedule = meter.schedule = learning_rate_schedule(self.c)
        meter.c = self.c
        t0 = time.perf_counter()
        self.train_step = compile_train_step(
            self.c, self.graphdef, build_optimizer(self.c, self.schedule), self.layout, self.params, self.opt_state
        )
        self.planned_lr = meter.planned_lr = planned_learning_rates(self.schedule, steps)  # compiles too
        meter.exclude(time.perf_counter() - t0)
        self.tracker.update_config(cosine_cycle_iters=steps, max_iterations=steps)
        self.tracker.plan_learning_rate(self.planned_lr)
        loop.bar.total = steps
        log.info(
            "wall-clock budget at step %d (%s): %.4fs/step, eval %.2fs, final eval %.1fs, last save %.2fs "
            "-> schedule sized to %d steps",
            self.step,
            timed,
            step_s,
            plan.eval_s,
            plan.final_s,
            plan.save_s,
            steps,
        )

    def _full_eval_reserve(self, meter: Meter, eval_s: float) -> float:
        """final_eval "full": compile its step now (off the clock) and estimate its time from the warm
        sampled evaluation's time per token; 0 otherwise."""
        c = self.c
        if c.final_eval != "full":
            return 0.0
        t0 = time.perf_counter()
        batch = c.batch_size // c.grad_accum_steps
        self.full_eval_step = compile_nll_sum(
            self.graphdef, self.layout, self.params, batch, c.context_length, c.loss_chunk_tokens
        )
        meter.exclude(time.perf_counter() - t0)
        sampled_tokens = max(len(self.val_set), 1) * c.tokens_per_step
        return eval_s * len(self.val_tokens) / sampled_tokens

    def _finish(self, loop: _Loop, stop: StopSignals) -> RunResult:
        """The run's status and summary, written through the tracker."""
        meter, guard, c = loop.meter, loop.guard, self.c
        if loop.plan.calibrate_at is not None and c.max_iterations < loop.plan.requested_steps:
            loop.stopped_by = "wallclock"  # the step count itself was sized to the budget
        if loop.interrupted_by and (self.step >= c.max_iterations or loop.stopped_by == "wallclock"):
            log.warning("%s arrived at the last step; the run is complete", loop.interrupted_by)
            loop.interrupted_by = None  # every step ran and was saved: nothing is left to resume
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
