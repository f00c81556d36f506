"""The list of runs behind `jaxlm runs`: one line per run directory, read from its summary.json.

A running run refreshes its summary at every logged row (`records.progress_fields`: current step,
rate, ETA), so a line costs one small JSON read and one lock probe, and a folder of hundreds of runs
lists in well under a second. Only a run whose summary lacks its progress (damaged, missing, or
written by an older jaxlm) has its metrics.jsonl read instead. Every problem with one run (a
damaged summary.json, an unreadable directory) is one warning, and the run is still listed when
anything of it can be read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jaxlm.tracking import runlock
from jaxlm.tracking.evals import full_val_loss
from jaxlm.tracking.fmt import as_float, json_safe, number
from jaxlm.tracking.runs import is_run_dir, read_json_object, read_rows

SORT_KEYS = ("start", "name", "best")
COLUMNS = ("name", "status", "step", "best val", "latest val", "bpb", "full val", "wall", "rate", "ETA")


@dataclass
class RunLine:
    """What `jaxlm runs` shows of one run (and `--json` prints): losses in nats/token, times in seconds."""

    name: str
    path: str
    status: str
    step: int | None = None
    planned_steps: int | None = None
    best_val_loss: float | None = None
    best_val_step: int | None = None
    latest_val_loss: float | None = None
    val_bpb: float | None = None
    full_val_loss: float | None = None
    wallclock_s: float | None = None
    steps_per_sec: float | None = None
    eta_s: float | None = None
    start_time: str | None = None


def find_run_dirs(folders: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories: each folder that is a run itself, else the runs directly inside it (hidden folders
    such as `.reports` and files such as the experiment log are not runs). Warnings for folders that are
    missing or unreadable."""
    found: list[Path] = []
    warnings: list[str] = []
    for folder in map(Path, folders):
        if is_run_dir(folder):
            found.append(folder)
            continue
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            warnings.append(f"'{folder}': no such directory")
            continue
        except OSError as e:
            warnings.append(f"'{folder}': cannot read it ({e.strerror or e})")
            continue
        found += [Path(c.path) for c in children if not c.name.startswith(".") and is_run_dir(c.path)]
    return found, warnings


def _summary(run_dir: Path, warnings: list[str]) -> dict[str, Any]:
    """summary.json, or {} with a warning when it exists but is not a JSON object."""
    path = run_dir / "summary.json"
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not valid JSON"
        warnings.append(f"'{path}': unreadable ({reason}); showing what metrics.jsonl says")
        return {}
    if not isinstance(value, dict):
        warnings.append(f"'{path}': not a JSON object; showing what metrics.jsonl says")
        return {}
    return value


def _int(value: Any) -> int | None:
    v = as_float(value)
    return int(v) if v is not None and math.isfinite(v) else None


def _finite(value: Any) -> float | None:
    v = as_float(value)
    return v if v is not None and math.isfinite(v) else None


def run_line(run_dir: Path, warnings: list[str]) -> RunLine:
    """One run's line; a running run's rate and ETA only while a live process holds it."""
    s = _summary(run_dir, warnings)
    status = runlock.shown_status(run_dir, s.get("status")) or "unknown"
    finished = s.get("status") not in (None, "running")
    line = RunLine(
        name=str(s.get("name") or run_dir.name),
        path=str(run_dir),
        status=status,
        step=_int(s.get("steps") if finished and "steps" in s else s.get("current_step")),
        planned_steps=_int(s.get("planned_steps", s.get("max_iterations"))),
        best_val_loss=_finite(s.get("best_val_loss")),
        best_val_step=_int(s.get("best_val_step")),
        latest_val_loss=as_float(s.get("final_val_loss") if finished else s.get("latest_val_loss")),
        val_bpb=_finite(s.get("final_val_bpb") if finished else s.get("latest_val_bpb")),
        full_val_loss=_finite(full_val_loss(s)),
        wallclock_s=_finite(s.get("wallclock_s")),
        start_time=s.get("start_time") if isinstance(s.get("start_time"), str) else None,
    )
    if status == "running":
        line.steps_per_sec, line.eta_s = _finite(s.get("steps_per_sec")), _finite(s.get("eta_s"))
    if line.step is None:
        _from_rows(line, run_dir, warnings)
    if line.planned_steps is None:
        line.planned_steps = _int(read_json_object(run_dir / "config.json").get("max_iterations"))
    return line


def _from_rows(line: RunLine, run_dir: Path, warnings: list[str]) -> None:
    """Fill in what the metrics say, for a run whose summary does not (damaged, or an older jaxlm's)."""
    try:
        rows = read_rows(run_dir)
    except (OSError, ValueError) as e:
        warnings.append(f"'{run_dir}': cannot read its metrics ({e})")
        return
    if not rows:
        return
    line.step = _int(rows[-1].get("step"))
    line.wallclock_s = line.wallclock_s or _finite(rows[-1].get("wallclock_s"))
    vals = [(int(r["step"]), as_float(r.get("val_loss")), r) for r in rows if as_float(r.get("val_loss")) is not None]
    if vals:
        line.latest_val_loss, line.val_bpb = vals[-1][1], _finite(vals[-1][2].get("val_bpb"))
        finite = [(v, step) for step, v, _ in vals if math.isfinite(v)]
        if finite and line.best_val_loss is None:
            line.best_val_loss, line.best_val_step = min(finite)


def list_runs(folders: Sequence[str | Path], sort: str = "start") -> tuple[list[RunLine], list[str]]:
    """Every run in `folders` (see find_run_dirs), sorted by `sort`: "start" (oldest first, so the
    newest runs end the list), "name", or "best" (lowest best validation loss first, none last)."""
    if sort not in SORT_KEYS:
        raise ValueError(f"--sort {sort!r}: expected one of {', '.join(SORT_KEYS)}")
    dirs, warnings = find_run_dirs(folders)
    lines = [run_line(d, warnings) for d in dict.fromkeys(dirs)]
    if sort == "name":
        lines.sort(key=lambda r: r.name)
    elif sort == "best":
        lines.sort(key=lambda r: (r.best_val_loss is None, r.best_val_loss or 0.0, r.name))
    else:
        lines.sort(key=lambda r: (r.start_time is None, r.start_time or "", r.name))
    return lines, warnings


def duration(seconds: float | None) -> str:
    """12s, 4m05s, 2h03m: short and readable."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _cells(r: RunLine) -> list[str]:
    dash = lambda text: "-" if text == "n/a" else text  # noqa: E731
    step = f"{number(r.step, ',')}/{number(r.planned_steps, ',')}".replace("n/a", "?")
    best = dash(number(r.best_val_loss, ".4f"))
    if r.best_val_loss is not None and r.best_val_step is not None:
        best += f" @{r.best_val_step}"
    rate = f"{r.steps_per_sec:.2f} it/s" if r.steps_per_sec else "-"
    return [
        r.name,
        r.status,
        step,
        best,
        dash(number(r.latest_val_loss, ".4f")),
        dash(number(r.val_bpb, ".3f")),
        dash(number(r.full_val_loss, ".4f")),
        duration(r.wallclock_s),
        rate,
        duration(r.eta_s),
    ]


def format_table(lines: Sequence[RunLine]) -> str:
    """Aligned plain-text columns, one line per run, under a header line."""
    rows = [list(COLUMNS), *(_cells(r) for r in lines)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def as_json(lines: Sequence[RunLine]) -> str:
    """The lines as a JSON list of objects (RunLine's fields), for scripts."""
    return json.dumps(json_safe([asdict(r) for r in lines]), indent=2, allow_nan=False)
