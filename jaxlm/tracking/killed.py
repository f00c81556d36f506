"""Experiment-log entries for runs that were killed: a `kill -9`, an out-of-memory kill or a lost node
ends a run before it can write its own entry, so the next command that owns the run writes it.

A run is killed when its summary says `running` and no live process holds its lock
(`jaxlm.tracking.runlock`). `record_killed` is called by the run's new owner (a
`--resume`, before the run is reopened) and `record_killed_runs` by every launch for
the other runs of its runs folder; each takes the run's lock first, so two commands
never both write one entry. The entry goes to the log the run itself was writing to
(summary.json's `experiment_log`), with what its metrics recorded up to the kill;
summary.json then says `killed_logged`, so the entry is written once per kill (a
resume's reopened summary drops the mark).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jaxlm.tracking import explog, runlock
from jaxlm.tracking.fmt import write_json
from jaxlm.tracking.records import META_KEYS, summary_from_rows
from jaxlm.tracking.runs import read_json_object, read_rows, read_summary, saved_checkpoint_steps

log = logging.getLogger(__name__)
SUMMARY = "summary.json"
LOGGED = "killed_logged"  # summary.json key: this kill has its log entry


def unlogged_kill(summary: dict[str, Any]) -> bool:
    """A summary left `running` by a run that has no log entry for it yet, and had a log to write to."""
    log_path = summary.get("experiment_log")
    return (
        summary.get("status") == "running" and not summary.get(LOGGED) and isinstance(log_path, str) and log_path != ""
    )


def record_killed(run_dir: str | Path) -> bool:
    """Write the log entry of a killed run whose lock the caller holds; True if one was written."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    if not unlogged_kill(summary):
        return False
    stored = read_json_object(run_dir / "config.json")
    config = {k: v for k, v in stored.items() if k not in META_KEYS}
    saved = saved_checkpoint_steps(run_dir)
    log_path = Path(summary["experiment_log"])
    launched = (stored.get("config_file"), stored.get("overrides") or ())
    try:
        shown = {**summary, **summary_from_rows(read_rows(run_dir)), "status": runlock.KILLED}
        shown["error"] = f"killed at step {shown.get('steps') or 0} (no stop signal handled); " + (
            f"resume from step {saved[-1]} with --resume {run_dir}" if saved else "no checkpoint was saved"
        )
        explog.append_entry(log_path, explog.format_entry(shown, config, run_dir, log_path, *launched))
        write_json(run_dir / SUMMARY, {**summary, LOGGED: True})
    except OSError as e:  # a record a later command can still write; never the reason a command fails
        log.warning("could not log the killed run %s in %s: %s", run_dir, log_path, e)
        return False
    return True


def record_killed_runs(folder: str | Path) -> list[Path]:
    """`record_killed` for every killed run directly under `folder` that no process holds; the runs logged."""
    try:
        candidates = sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []
    logged = []
    for run_dir in candidates:
        if not unlogged_kill(read_summary(run_dir)) or runlock.holder(run_dir) is not None:
            continue
        try:
            lock = runlock.acquire(run_dir)
        except (runlock.RunInUseError, OSError):
            continue  # taken meanwhile (its new owner logs it), or not ours to lock
        try:
            if record_killed(run_dir):
                logged.append(run_dir)
        finally:
            lock.release()
    return logged
