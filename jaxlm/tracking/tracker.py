"""ExperimentTracker: the one writer of a run directory.

Rows go to `metrics.csv` and `metrics.jsonl`, flushed one by one, so a crashed
run keeps everything it logged. At each eval row (a row with `val_loss`) and at
the end it rewrites `metrics.json`, `loss_curves.png` and `lr_schedule.png`, so a
running or crashed run already has them. TensorBoard events are written as rows
arrive. With `background=True` (what `jaxlm.launch` uses) every write happens on
the tracker's own threads (jaxlm/tracking/writer.py), in order, so the training
loop never waits for a file, a plot or TensorBoard; `flush` waits for them.
`finalize` writes everything still queued, then the final summary, the TensorBoard
hparams and one EXPERIMENT_LOG.md entry. With `wandb_project` in the config, W&B gets the same records
(jaxlm/tracking/wandb_log.py). No JAX here: any training loop (even a PyTorch one) can
use it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxlm.tracking import explog, killed, plots
from jaxlm.tracking.fmt import as_float, brief, json_safe, json_text, write_json, write_text
from jaxlm.tracking.outputs import OutputError
from jaxlm.tracking.plot_worker import PlotProcess, draw
from jaxlm.tracking.records import (
    META_KEYS,
    RUNNING_ONLY,
    STATUSES,
    MetricFiles,
    append_sample,
    complete_row,
    config_to_dict,
    progress_fields,
    run_metadata,
    segment_record,
    summary_from_rows,
    trim_samples,
)
from jaxlm.tracking.runlock import LOCK_FILE
from jaxlm.tracking.runs import read_rows
from jaxlm.tracking.writer import Lane, safely

log = logging.getLogger(__name__)


class ExperimentTracker:
    """Writes `<output_dir>/<name>/`. Use `ExperimentTracker.resume(run_dir, step)` to continue a run."""

    def __init__(
        self,
        name: str | None = None,
        config: Any = None,
        output_dir: str | Path = "runs",
        *,
        experiment_name: str | None = None,
        tensorboard: bool = True,
        make_plots: bool = True,
        experiment_log: str | Path | None = None,
        config_file: str | None = None,
        overrides: Sequence[str] = (),
        resume_from_step: int | None = None,
        resume_wallclock_s: float | None = None,
        background: bool = False,
    ):
        self.name = name or experiment_name
        if not self.name:
            raise ValueError("ExperimentTracker needs a name")
        if self.name in (".", "..") or "/" in self.name or "\\" in self.name or "\0" in self.name:
            raise OutputError(f"run name {self.name!r}: no path separators, '.' or '..'")
        self.run_dir = Path(output_dir) / self.name
        self.make_plots = make_plots
        self.experiment_log = Path(experiment_log) if experiment_log is not None else None
        self.config_file, self.overrides = config_file, list(overrides)
        self.start_time = time.time()
        self.wallclock_offset = 0.0  # seconds already trained before a resume
        self.last_refresh_s = 0.0  # how long the last plots + metrics.json refresh took
        self.refresh_total_s = 0.0  # all refreshes of this process together (reported in summary.json)
        self._closed = False
        self.planned_lr: list[float] | None = None  # see plan_learning_rate
        if resume_from_step is None:
            self._start_new(config)
        else:
            self._reopen(config, resume_from_step)
            if resume_wallclock_s is not None:  # the caller knows better than the last row (e.g. a checkpoint)
                self.wallclock_offset = float(resume_wallclock_s)
        self._rows_lane = Lane("jaxlm-records", threaded=background)  # files, summary, TensorBoard, W&B
        self._refresh_lane = Lane("jaxlm-plots", latest_only=True, threaded=background)  # metrics.json, plots
        self._plotter = PlotProcess() if background and make_plots else None  # matplotlib off the loop's GIL
        if self._plotter is not None:
            self._plotter.start()
        elif make_plots:
            threading.Thread(target=plots.preload, name="matplotlib-preload", daemon=True).start()
        self.tb = None
        if tensorboard:
            purge = None if resume_from_step is None else resume_from_step + 1
            try:
                from jaxlm.tracking.tensorboard import TensorBoardLog

                self.tb = TensorBoardLog(self.run_dir, purge_step=purge, segment=int(self.summary.get("resumes") or 0))
            except ImportError as e:
                log.warning("TensorBoard logging off: %s", e)
        self.wandb = self._open_wandb(resume_from_step is not None)
        self.write_summary()

    def _open_wandb(self, resumed: bool):
        """W&B (jaxlm/tracking/wandb_log.py) when the config names a `wandb_project`, else None."""
        if not self.config.get("wandb_project"):
            return None
        try:
            from jaxlm.tracking.wandb_log import WandbLog

            return WandbLog(self.run_dir, self.config, self.name, resumed)
        except Exception as e:  # noqa: BLE001 - a record, not the run (launch checks the package beforehand)
            log.warning("W&B logging off: %s: %s", type(e).__name__, e)
            return None

    @classmethod
    def resume(
        cls, run_dir: str | Path, from_step: int, config: Any = None, wallclock_s: float | None = None, **kwargs: Any
    ) -> ExperimentTracker:
        """Reopen `run_dir` for a run restored at `from_step`: rows after it are dropped, logging appends,
        TensorBoard hides its stale events, wall-clock continues from `wallclock_s` (default: the last
        kept row's); the caller's clock then counts from zero in this process."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"'{run_dir}' has no config.json: not a run directory to resume")
        return cls(
            run_dir.name, config, run_dir.parent, resume_from_step=from_step, resume_wallclock_s=wallclock_s, **kwargs
        )

    # --- opening ---------------------------------------------------------------------------------

    def _start_new(self, config: Any) -> None:
        self.config = config_to_dict(config)
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.run_dir.mkdir()
        except FileExistsError:  # only a directory just claimed (holding nothing but its lock) is new
            if not self.run_dir.is_dir() or {p.name for p in self.run_dir.iterdir()} - {LOCK_FILE}:
                raise OutputError(
                    f"run directory '{self.run_dir}' already exists: a new run never writes into an old one "
                    f"(choose another name, or reopen it with ExperimentTracker.resume)"
                ) from None
        self.rows: list[dict[str, Any]] = []
        meta = {"name": self.name, **run_metadata(), "config_file": self.config_file, "overrides": self.overrides}
        write_json(self.run_dir / "config.json", {**self.config, **meta})
        self.files = MetricFiles(self.run_dir, "w")
        self.summary: dict[str, Any] = {
            "name": self.name,
            "description": brief(self.config.get("description", ""), 1000),
            "status": "running",
            "start_time": meta["start_time"],
            "segments": [segment_record(0)],
            "experiment_log": self._log_path(),
        }

    def _reopen(self, config: Any, from_step: int) -> None:
        stored = json.loads((self.run_dir / "config.json").read_text())
        self.config = config_to_dict(config) or {k: v for k, v in stored.items() if k not in META_KEYS}
        # the log entry of a resumed run still says where it was launched from, and every override since
        self.config_file = self.config_file or stored.get("config_file")
        self.overrides = [*(stored.get("overrides") or []), *self.overrides]
        self.rows = [r for r in read_rows(self.run_dir) if int(r["step"]) <= from_step]
        if self.rows:
            self.wallclock_offset = float(as_float(self.rows[-1].get("wallclock_s")) or 0.0)
        self.files = MetricFiles.rewrite(self.run_dir, self.rows)
        trim_samples(self.run_dir, from_step)
        summary_path = self.run_dir / "summary.json"
        self.summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"name": self.name}
        self.summary.update(
            status="running", resumed_from_step=from_step, resumes=int(self.summary.get("resumes") or 0) + 1
        )
        self.summary["segments"] = [*self.summary.get("segments", []), segment_record(from_step)]
        for stale in ("error", "end_time", killed.LOGGED):
            self.summary.pop(stale, None)
        self.summary["experiment_log"] = self._log_path()
        self.write_metrics_json()

    def _log_path(self) -> str | None:
        """Where this run's log entry goes, as summary.json records it (for `jaxlm.tracking.killed`)."""
        return str(self.experiment_log.resolve()) if self.experiment_log is not None else None

    def update_config(self, **fields: Any) -> None:
        """Record config values decided during the run (e.g. a schedule sized to a wall-clock budget)
        in config.json, so a resume uses them."""
        self.config.update(fields)
        stored = json.loads((self.run_dir / "config.json").read_text())
        write_json(self.run_dir / "config.json", {**stored, **fields})

    # --- logging ---------------------------------------------------------------------------------

    def log_step(
        self,
        step: int,
        train_loss: float | None = None,
        val_loss: float | None = None,
        learning_rate: float | None = None,
        tokens_per_sec: float | None = None,
        **extra: Any,
    ) -> dict:
        """Append one row (missing columns stay empty) and flush it; an eval row refreshes plots and metrics.json.

        `wallclock_s` counts from the start of training (the caller's clock when given, plus the time
        trained before a resume); `tokens`, `val_perplexity` and `mfu` are filled in when they can be."""
        row: dict[str, Any] = {
            "step": int(step),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "learning_rate": learning_rate,
            "tokens_per_sec": tokens_per_sec,
            **extra,
        }
        wall = row.get("wallclock_s")
        row["wallclock_s"] = (time.time() - self.start_time if wall is None else float(wall)) + self.wallclock_offset
        row = complete_row(row, self.config, self.summary)
        self._rows_lane.check()  # a metric file that could not be written fails the run, one row late at most
        self.rows.append(row)
        self._rows_lane.submit("metrics.csv", lambda: self.files.write(row), essential=True)
        self.write_progress()
        if self.tb is not None:
            self._rows_lane.submit("TensorBoard scalars", lambda: self.tb.log_row(row))
        if self.wandb is not None:
            self._rows_lane.submit("W&B scalars", lambda: self.wandb.log_row(row))
        if val_loss is not None:
            self.refresh()
        return row

    def write_progress(self) -> None:
        """summary.json's progress of a running run (records.progress_fields), at every logged row."""
        planned = self.summary.get("max_iterations", self.config.get("max_iterations"))
        self.write_summary(**progress_fields(self.summary, self.rows, planned))

    def log_sample(self, step: int, prompt: str, text: str) -> None:
        """Append a generated sample to samples.txt (and TensorBoard's Text tab)."""
        self._rows_lane.submit("samples.txt", lambda: append_sample(self.run_dir, step, prompt, text), essential=True)
        if self.tb is not None:
            self._rows_lane.submit("TensorBoard text", lambda: self.tb.log_sample(step, prompt, text))
        if self.wandb is not None:
            self._rows_lane.submit("W&B samples", lambda: self.wandb.log_sample(step, prompt, text))

    def write_metrics_json(self, rows: list[dict[str, Any]] | None = None) -> None:
        rows = self.rows if rows is None else rows
        train = [r for r in rows if r.get("train_loss") is not None]
        val = [r for r in rows if r.get("val_loss") is not None]
        # one line, so that json's C encoder writes it (indented JSON is encoded in Python, holding the GIL)
        text = json.dumps(json_safe({"train": train, "val": val}), allow_nan=False)
        write_text(self.run_dir / "metrics.json", text + "\n")

    def refresh(self) -> None:
        """Rewrite metrics.json and the two plots from every row so far; flush TensorBoard. In the
        background, a refresh still waiting when the next is asked for is dropped for it."""
        rows, planned = list(self.rows), self.planned_lr  # rows are never changed once logged

        def rewrite() -> None:
            t0 = time.perf_counter()
            self.write_metrics_json(rows)
            if self.make_plots:
                self.write_plots(rows, planned)
            self.last_refresh_s = time.perf_counter() - t0
            self.refresh_total_s += self.last_refresh_s
            log.debug("refreshed plots and metrics.json in %.3fs", self.last_refresh_s)

        self._refresh_lane.submit("metrics.json and plots", rewrite)
        if self.tb is not None:
            self._rows_lane.submit("TensorBoard flush", self.tb.flush)

    def write_plots(self, rows: list[dict[str, Any]] | None = None, planned: list[float] | None = None) -> None:
        rows = self.rows if rows is None else rows
        planned = self.planned_lr if planned is None else planned
        description = self.summary.get("description") or self.config.get("description") or ""
        job = {
            "planned": planned,
            "loss_png": str(self.run_dir / "loss_curves.png"),
            "loss_title": f"{self.name}: {brief(description, 100)}" if description else self.name,
            "lr_png": str(self.run_dir / "lr_schedule.png"),
            "lr_title": f"{self.name}: learning rate",
        }
        for error in self._plotter.draw(rows, job) if self._plotter is not None else draw(rows, job):
            log.warning("could not write %s", error)

    def plan_learning_rate(self, values: Sequence[float]) -> None:
        """The learning rate the training loop will use at steps 0, 1, ..., len(values) - 1, drawn as
        the planned line of lr_schedule.png (the loop's own schedule, handed over as numbers)."""
        self.planned_lr = [float(v) for v in values]

    def write_summary(self, **fields: Any) -> None:
        """Update summary.json (a snapshot of it is written, in order with the rows)."""
        self.summary.update({k: json_safe(v) for k, v in fields.items()})
        text = json_text(self.summary)
        self._rows_lane.submit("summary.json", lambda: write_text(self.run_dir / "summary.json", text), essential=True)

    def flush(self) -> None:
        """Wait until every record handed over so far is written; raise a metric file's write failure."""
        self._rows_lane.drain()
        self._refresh_lane.drain()
        self._rows_lane.check()

    # --- the end ---------------------------------------------------------------------------------

    def finalize(self, status: str = "completed", **fields: Any) -> dict[str, Any]:
        """Close the run: summary.json with `status`, final metrics.json, plots, TensorBoard hparams and
        an EXPERIMENT_LOG.md entry. A second call only updates summary.json."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        if self._closed:
            self.write_summary(status=status, **fields)
            return self.summary
        self._closed = True
        self._refresh_lane.close()  # what was handed over is written first; from here on, all in this thread
        self._rows_lane.close()
        for key in RUNNING_ONLY:
            self.summary.pop(key, None)
        if fields.get("wallclock_s") is not None:
            fields["wallclock_s"] = float(fields["wallclock_s"]) + self.wallclock_offset
        derived = summary_from_rows(self.rows)
        merged = {**derived, **{k: v for k, v in fields.items() if v is not None}}
        for key in ("best_val_loss", "best_val_step"):  # every row counts, not just those since a resume
            if derived.get("best_val_loss") is not None:
                merged[key] = derived[key]
        if isinstance(merged.get("best_val_loss"), float) and not math.isfinite(merged["best_val_loss"]):
            merged["best_val_loss"] = merged["best_val_step"] = None  # no eval ever ran
        self.write_summary(
            status=status, end_time=dt.datetime.now().astimezone().isoformat(timespec="seconds"), **merged
        )
        self.files.close()
        self.refresh()
        self.write_summary(tracking_refresh_s=round(self.refresh_total_s, 3))
        if self._plotter is not None:
            self._plotter.close()
            self._plotter = None  # a plot asked for after the end is drawn here, not by a new child
        if self.tb is not None:
            step = int(self.rows[-1]["step"]) if self.rows else 0
            safely("TensorBoard hparams", lambda: self.tb.log_hparams(self.config, self.summary, step))
            safely("TensorBoard close", self.tb.close)
        if self.wandb is not None:
            safely("W&B summary", lambda: self.wandb.finish(self.summary, self.config))
        if self.experiment_log is not None:
            safely("EXPERIMENT_LOG.md", self.append_experiment_log)
        self._rows_lane.check()  # a row the background could not write fails the run, its summary written
        return self.summary

    def append_experiment_log(self) -> None:
        entry = explog.format_entry(
            self.summary, self.config, self.run_dir, self.experiment_log, self.config_file, self.overrides
        )
        explog.append_entry(self.experiment_log, entry)

    def __enter__(self) -> ExperimentTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving a `with` block finalizes: completed, interrupted (Ctrl-C) or failed."""
        if exc_type is None:
            self.finalize("completed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finalize("interrupted")
        else:
            self.finalize("failed", error=f"{exc_type.__name__}: {exc}")
