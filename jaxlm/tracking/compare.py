"""Comparing runs: one PNG (a metric vs steps and vs wall-clock) and one markdown table.

Everything is read from the run directories (rows from metrics.jsonl), so
running, diverged and crashed runs compare as well as finished ones.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path

from jaxlm.tracking.evals import full_val_loss
from jaxlm.tracking.fmt import brief, markdown_table, number, write_text
from jaxlm.tracking.outputs import OutputError, check_output_files
from jaxlm.tracking.plots import plot_comparison
from jaxlm.tracking.runs import NotARunError, RunRecord, config_cell, differing_config_keys, load_run

METRICS = ("val_loss", "train_loss", "val_bpb")
X_CHOICES = ("steps", "tokens", "wallclock")
TABLE_COLUMNS = (
    "name",
    "description",
    "status",
    "best val loss (step)",
    "final val loss",
    "steps",
    "tokens",
    "wall-clock (s)",
    "tokens/s",
    "final val bpb",
)
FULL_VAL_COLUMN = "full val loss"  # only when a run has one (final_eval "full" or jaxlm evaluate)
NUMBER = re.compile(r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")


def natural_key(path: Path) -> list:
    """Sort key of a run name with its numbers as numbers: `lr_1e-3` < `lr_5e-3` < `lr_3e-2`."""
    parts = NUMBER.split(path.name)
    return [(1, float(p), "") if i % 2 else (0, 0.0, p) for i, p in enumerate(parts)]


def expand_run_paths(patterns: Sequence[str | Path], keep_unmatched: bool = False) -> list[Path]:
    """Paths with shell-style globs expanded (for quoted globs and shells that do not expand them).
    A glob keeps only the directories it matches (`runs/lr_*` may also match `runs/lr_comparison.png`);
    one that matches none is NotARunError, or with `keep_unmatched` stays as the path it spells."""
    paths: list[Path] = []
    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = sorted((m for m in glob.glob(pattern) if Path(m).is_dir()), key=lambda m: natural_key(Path(m)))
            if not matches and not keep_unmatched:
                raise NotARunError(f"'{pattern}' matches no run directory")
            matches = matches or [pattern]
            paths += [Path(m) for m in matches]
        else:
            paths.append(Path(pattern))
    return paths


def _finished(run: RunRecord) -> bool:
    return run.summary.get("status") not in (None, "running")  # a killed run's summary is not final either


def table_row(run: RunRecord, name: str) -> list[str]:
    best = run.best("val_loss")
    s = run.summary if _finished(run) else {}
    steps = s.get("steps", run.last("step"))
    tokens = s.get("tokens", run.last("tokens"))
    wall = s.get("wallclock_s", run.last("wallclock_s"))
    return [
        name,
        brief(run.description, 100).replace("|", "\\|"),
        run.status,
        f"{best[1]:.4f} ({best[0]})" if best else "n/a",
        number(run.final("val_loss"), ".4f"),
        number(steps, ",.0f"),
        number(tokens, ",.0f"),
        number(wall, ".1f"),
        number(run.mean_tokens_per_sec(), ",.0f"),
        number(run.final("val_bpb"), ".3f", finite_only=True),
    ]


def runs_table(runs: Sequence[RunRecord], names: Sequence[str]) -> str:
    """One row per run; besides TABLE_COLUMNS, the full-validation loss when a run has one, and one column per
    config key whose value differs between the runs."""
    keys = differing_config_keys(runs) if len(runs) > 1 else []
    full = any(full_val_loss(run.summary) is not None for run in runs)
    header = [*TABLE_COLUMNS, *([FULL_VAL_COLUMN] if full else []), *(f"`{k}`" for k in keys)]
    rows = [
        [
            *table_row(run, name),
            *([number(full_val_loss(run.summary), ".4f", finite_only=True)] if full else []),
            *(config_cell(run, k) for k in keys),
        ]
        for run, name in zip(runs, names)
    ]
    return markdown_table(header, rows)


def compare_runs(
    run_dirs: Sequence[str | Path],
    output_path: str | Path,
    names: Sequence[str] | None = None,
    metric: str = "val_loss",
    *,
    x: str | None = None,
    smooth: int = 1,
    force: bool = False,
) -> str:
    """Write `output_path` (PNG) and `<its stem>.md` beside it; return the markdown table.

    `x` plots against one axis ("steps", "tokens" or "wallclock") instead of steps and wall-clock side by
    side; `smooth` > 1 draws the train loss as a running mean of that many logged rows.
    Raises NotARunError naming the first directory that is not a run, ValueError on bad names/metric/x/smooth,
    OutputError when an output exists (without `force`), is a directory or lies inside a run directory."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if x is not None and x not in X_CHOICES:
        raise ValueError(f"--x {x!r}: expected one of {', '.join(X_CHOICES)}")
    if smooth < 1:
        raise ValueError(f"--smooth {smooth}: must be a positive number of rows")
    runs = [load_run(p) for p in expand_run_paths(run_dirs)]
    if not runs:
        raise ValueError("no run directories given")
    if names is not None and len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    labels = list(names) if names is not None else [run.name for run in runs]
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".png":
        raise OutputError(f"-o '{output_path}': expected a .png file name (the table goes beside it as .md)")
    check_output_files([output_path, output_path.with_suffix(".md")], force=force, flag="-o")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    plot_comparison([(label, run.rows) for label, run in zip(labels, runs)], metric, output_path, x=x, smooth=smooth)
    table = runs_table(runs, labels)
    write_text(output_path.with_suffix(".md"), f"# Comparison: {metric}\n\n![{metric}]({output_path.name})\n\n{table}")
    return table
