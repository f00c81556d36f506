"""A sweep's write-up, read from its points' run directories, in `<output-dir>/.reports/` (hidden, so a
run-directory glob such as `runs/lr_*` or `runs/*` never picks a report up): `<prefix>_sweep.png` (train and
validation curves, every point), `<prefix>_by_value.png` (validation loss against the swept value, or
a heat map for two keys; `jaxlm.tracking.sweep_plots`), one markdown table (best point and diverged
points marked, the config keys that differ, the full-validation loss when measured), and one grouped
entry in EXPERIMENT_LOG.md."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jaxlm.tracking.evals import full_val_loss
from jaxlm.tracking.explog import append_entry
from jaxlm.tracking.fmt import markdown_table, number, write_text
from jaxlm.tracking.outputs import OutputError
from jaxlm.tracking.runs import RunRecord, config_cell, differing_config_keys, is_run_dir, load_run, report_dir
from jaxlm.tracking.sweep_plots import PointCurves, ValuePoint, numeric, plot_by_value, plot_heatmap, plot_sweep_curves

COLUMNS = (
    "",
    "point",
    "status",
    "best val loss (step)",
    "final val loss",
    "final val bpb",
    "steps",
    "wall-clock (s)",
    "tokens/s",
)


FULL_VAL_COLUMN = "full val loss"


@dataclass(frozen=True)
class SweepReport:
    png: Path | None  # None when no point has a run directory to draw
    markdown: Path
    by_value: Path | None  # None when the grid is neither one numeric key nor two keys
    table: str
    statuses: dict[str, str]
    best: str | None  # name of the best point


def _status_cell(run: RunRecord | None, outcome: str | None = None) -> str:
    """A point's status; `outcome` is what the sweep saw of a point that left no run directory."""
    if run is None:
        return outcome or "not started"
    s = run.summary
    if run.status == "diverged":
        step = s.get("diverged_step", s.get("steps"))
        return "**DIVERGED**" + (f" at step {step}" if step is not None else "")
    if run.status == "failed" and s.get("error"):
        return f"failed: {str(s['error'])[:60]}".replace("|", "\\|")
    return run.status


def _best_point(runs: dict[str, RunRecord | None]) -> str | None:
    """The completed point with the lowest validation loss (diverged, failed and unfinished ones don't count)."""
    scored = [
        (run.best("val_loss")[1], name)
        for name, run in runs.items()
        if run is not None and run.status == "completed" and run.best("val_loss")
    ]
    return min(scored)[1] if scored else None


def sweep_table(
    points: Sequence,
    runs: dict[str, RunRecord | None],
    best: str | None,
    link_base: Path | None = None,
    outcomes: dict[str, str] | None = None,
) -> str:
    """Markdown table, one row per point; `link_base` makes the point names links relative to it. Besides
    COLUMNS: one column per config key that differs between the points, and the full-validation loss
    when any point has one."""
    found = [run for run in runs.values() if run is not None]
    keys = differing_config_keys(found) if len(found) > 1 else []
    full = any(full_val_loss(run.summary) is not None for run in found)
    header = [*COLUMNS[:4], *([FULL_VAL_COLUMN] if full else []), *COLUMNS[4:], *(f"`{k}`" for k in keys)]
    rows = []
    for point in points:
        run = runs[point.name]
        label = f"`{point.label}`"
        if link_base is not None and run is not None:
            label = f"[{point.label}]({Path(os.path.relpath(run.path.resolve(), link_base.resolve())).as_posix()})"
        if run is None:
            cells = [label, _status_cell(None, (outcomes or {}).get(point.name))] + ["n/a"] * (len(header) - 3)
        else:
            best_val = run.best("val_loss")
            s = run.summary if run.summary.get("status") not in ("running", None) else {}
            cells = [
                label,
                _status_cell(run),
                f"{best_val[1]:.4f} ({best_val[0]})" if best_val else "n/a",
                *([number(full_val_loss(run.summary), ".4f", finite_only=True)] if full else []),
                number(run.final("val_loss"), ".4f", finite_only=True),
                number(run.final("val_bpb"), ".3f", finite_only=True),
                number(s.get("steps", run.last("step")), ",.0f", finite_only=True),
                number(s.get("wallclock_s", run.last("wallclock_s")), ".1f", finite_only=True),
                number(run.mean_tokens_per_sec(), ",.0f", finite_only=True),
                *(config_cell(run, k) for k in keys),
            ]
        mark = "**best**" if point.name == best else ""
        if mark:
            cells[0] = f"**{cells[0]}**"
        rows.append([mark, *cells])
    return markdown_table(header, rows)


def _diverged_step(run: RunRecord) -> int | None:
    if run.status != "diverged":
        return None
    step = run.summary.get("diverged_step", run.summary.get("steps", run.last("step")))
    return int(step) if step is not None else 0


def write_figures(points: Sequence, runs: dict[str, RunRecord | None], output_dir: Path, prefix: str) -> list[Path]:
    """`<prefix>_sweep.png`, and `<prefix>_by_value.png` for a one-key numeric or a two-key grid."""
    found = [(p, runs[p.name]) for p in points if runs[p.name] is not None]
    if not found:
        return []  # nothing to draw: no empty plot
    png = output_dir / f"{prefix}_sweep.png"
    curves = [PointCurves(p.label, run.rows, _diverged_step(run), dict(p.values)) for p, run in found]
    plot_sweep_curves(curves, png, f"sweep {prefix}: {len(points)} points")
    keys = list(dict.fromkeys(k for p in points for k, _ in p.values))
    by_value = output_dir / f"{prefix}_by_value.png"
    if len(keys) == 1 and numeric([v for p, _ in found for _, v in p.values]) and found:
        values = [
            ValuePoint(
                float(p.values[0][1]),
                run.best("val_loss")[1] if run.best("val_loss") else None,
                run.final("val_loss"),
                _diverged_step(run),
            )
            for p, run in found
        ]
        plot_by_value(values, keys[0], by_value, f"sweep {prefix}: validation loss by {keys[0]}")
        return [png, by_value]
    if len(keys) == 2 and found:
        axes = [list(dict.fromkeys(dict(p.values)[k] for p in points)) for k in keys]
        cells = {}
        for p, run in found:
            best = run.best("val_loss")
            value = "diverged" if run.status == "diverged" else best[1] if best else None
            cells[(dict(p.values)[keys[0]], dict(p.values)[keys[1]])] = value
        plot_heatmap((keys[0], keys[1]), axes[0], axes[1], cells, by_value, f"sweep {prefix}: best validation loss")
        return [png, by_value]
    return [png]


def report_paths(output_dir: Path, prefix: str) -> list[Path]:
    """The files a sweep's report writes: `<prefix>_sweep.md`, `_sweep.png`, `_by_value.png`."""
    return [report_dir(output_dir) / f"{prefix}{suffix}" for suffix in ("_sweep.md", "_sweep.png", "_by_value.png")]


def check_report_outputs(output_dir: Path, prefix: str, force: bool = False) -> None:
    """OutputError unless the report may be written: its files are new, or they are this sweep's own
    earlier report (its `.md` starts with the heading a report writes), or `force`."""
    markdown, *figures = report_paths(output_dir, prefix)
    try:
        ours = markdown.read_text(encoding="utf-8", errors="replace").startswith(f"# Sweep `{prefix}`:")
    except OSError:
        ours = False
    for path in (markdown, *figures):
        if path.is_dir():
            raise OutputError(f"sweep report '{path}': is a directory")
        if path.exists() and not ours and not force:
            raise OutputError(
                f"sweep report '{path}': already exists and is not this sweep's report; move it, choose another "
                f"--name-prefix, or pass --force to replace it"
            )


def write_report(
    points: Sequence,
    output_dir: Path,
    prefix: str,
    *,
    command: str,
    base_config: str,
    experiment_log: Path | None,
    outcomes: dict[str, str] | None = None,
) -> SweepReport:
    """Write `<output_dir>/.reports/<prefix>_sweep.png` and `.md`; append the log entry unless `experiment_log`
    is None, or the log already holds this sweep's entry for the same runs (a finished sweep run again).
    `outcomes` ({point: status}) is what the sweep saw of points that left no run directory (a launch
    that failed before its run began), so the table says "failed" as the console did."""
    output_dir = Path(output_dir)
    reports = report_dir(output_dir)
    reports.mkdir(parents=True, exist_ok=True)
    runs = {p.name: load_run(output_dir / p.name) if is_run_dir(output_dir / p.name) else None for p in points}
    outcomes = outcomes or {}
    statuses = {
        name: (run.status if run is not None else outcomes.get(name, "not started")) for name, run in runs.items()
    }
    best = _best_point(runs)
    figures = write_figures(points, runs, reports, prefix)
    png = figures[0] if figures else None
    table = sweep_table(points, runs, best, link_base=reports, outcomes=outcomes)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(_count(statuses.values()).items()))
    best_line = "none (no point finished with a validation loss)"
    if best is not None:
        step, loss = runs[best].best("val_loss")
        best_line = f"`{best}` (val loss {loss:.4f} at step {step})"
    markdown = reports / f"{prefix}_sweep.md"
    write_text(
        markdown,
        f"# Sweep `{prefix}`: {len(points)} points ({counts})\n\n"
        f"`{command}`\n\nBest: {best_line}\n\n" + "".join(f"![{f.stem}]({f.name})\n\n" for f in figures[::-1]) + table,
    )
    if experiment_log is not None:
        append_entry(
            experiment_log,
            _log_entry(
                points,
                runs,
                best,
                best_line,
                counts,
                command,
                base_config,
                png,
                markdown,
                Path(experiment_log),
                outcomes,
            ),
            key=_entry_key(prefix, points, runs, outcomes),
        )
    by_value = figures[1] if len(figures) > 1 else None
    return SweepReport(png, markdown, by_value, sweep_table(points, runs, best, outcomes=outcomes), statuses, best)


def _entry_key(prefix: str, points: Sequence, runs: dict[str, RunRecord | None], outcomes: dict[str, str]) -> str:
    """Identifies a sweep's log entry by what it reports: each point's status and when its run ended, so a
    sweep run again over the same finished runs adds no second entry, and one that ran anything does."""
    seen = []
    for p in points:
        run = runs[p.name]
        ended = run.summary.get("end_time") if run is not None else None
        seen.append([p.name, run.status if run is not None else outcomes.get(p.name), ended])
    return f"sweep {prefix} " + hashlib.sha256(json.dumps(seen, default=str).encode()).hexdigest()[:16]


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _log_entry(
    points, runs, best, best_line, counts, command, base_config, png, markdown, log_path: Path, outcomes=None
) -> str:
    """One grouped EXPERIMENT_LOG.md entry for the whole sweep; links relative to the log."""
    here = log_path.resolve().parent
    rel = lambda p: Path(os.path.relpath(Path(p).resolve(), here)).as_posix()
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    grid: dict[str, list[str]] = {}
    for point in points:
        for key, value in point.values:
            grid.setdefault(key, [])
            if value not in grid[key]:
                grid[key].append(value)
    grid_text = "; ".join(f"`{k}` = {', '.join(v)}" for k, v in grid.items())
    return "\n".join(
        [
            f"## {date} · sweep {Path(markdown).stem.removesuffix('_sweep')} · {len(points)} points ({counts})",
            "",
            f"**Hypothesis / description:** sweep of {grid_text} on `{base_config}`",
            "",
            f"- Command: `{command}`",
            f"- Best point: {best_line}",
            (f"- Plot: [{png.name}]({rel(png)}) · " if png else "- ") + f"Table: [{markdown.name}]({rel(markdown)})",
            "",
            sweep_table(points, runs, best, link_base=here, outcomes=outcomes),
            "### Observations",
            "",
            "",
        ]
    )
