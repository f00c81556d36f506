"""Reading run directories back: rows, config and summary, for compare and resume.

Rows come from `metrics.jsonl` (streamed, so it holds everything a crashed or
still-running run logged), falling back to `metrics.csv`. A torn last line (a
run killed mid-write) is skipped.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxlm.tracking import runlock
from jaxlm.tracking.fmt import as_float
from jaxlm.tracking.records import META_KEYS

RUN_MARKERS = ("metrics.jsonl", "metrics.csv")
REPORT_DIR = ".reports"  # hidden: a run-directory glob (`runs/*`, `runs/lr_*`) never picks a report up


class NotARunError(ValueError):
    """The directory holds no metrics file of a jaxlm run."""


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in RUN_MARKERS)


def report_dir(output_dir: str | Path) -> Path:
    """Where reports on the runs in `output_dir` go: sweep reports (and SLURM files), default comparisons."""
    return Path(output_dir) / REPORT_DIR


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file's contents; {} when it is missing, unreadable or not an object (a run killed
    before writing it, or mid-write)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """A run's summary.json, or {} (see read_json_object)."""
    return read_json_object(Path(run_dir) / "summary.json")


# What every finished jaxlm checkpoint holds (docs/checkpoints.md, "Damaged checkpoints"), and the names of the
# small JSON files Orbax writes into it; array data lives in binary files beside them.
CHECKPOINT_FILES = ("params/_METADATA", "opt_state/_METADATA", "meta/metadata")
CHECKPOINT_JSON_NAMES = frozenset({"_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata", "metrics"})


def checkpoint_damage(step_dir: Path) -> str | None:
    """What is wrong with a finished checkpoint folder, as a phrase that names the file; None if it looks
    whole. A power loss or a full disk leaves files missing, empty (zero bytes: nothing Orbax writes is
    empty) or torn (a JSON file that does not parse). Reads only the small JSON files, never the arrays."""
    for name in CHECKPOINT_FILES:
        if not (step_dir / name).is_file():
            return f"{step_dir / name} is missing"
    try:
        files = sorted(p for p in step_dir.rglob("*") if p.is_file())
        for path in files:
            if path.stat().st_size == 0:
                return f"{path} is empty"
            if path.name in CHECKPOINT_JSON_NAMES or path.parent.name == "array_metadatas":
                json.loads(path.read_bytes())
    except OSError as e:
        return f"{e.filename or step_dir} cannot be read ({e.strerror or e})"
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return f"{path} is not valid JSON"
    return None


def saved_checkpoint_steps(run_dir: str | Path, on_damage: Callable[[str], None] | None = None) -> list[int]:
    """Steps with a finished, undamaged checkpoint (Orbax renames `<step>.orbax-checkpoint-tmp-*` to
    `<step>` when a save completes; `checkpoint_damage` skips what a power loss left), read from the
    directory alone: no JAX, so the sweep and the log can ask it. `on_damage(line)` hears of each
    damaged step skipped."""
    folder = Path(run_dir) / "checkpoints"
    try:
        found = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
        return []
    intact = []
    for step in found:
        damage = checkpoint_damage(folder / str(step))
        if damage is None:
            intact.append(step)
        elif on_damage is not None:
            on_damage(f"checkpoint at step {step} skipped: {damage}")
    return intact


def read_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every intact logged row, in step order: metrics.jsonl's row of a step where its line parses, else
    metrics.csv's where its line is whole. A file that a power loss tore, emptied or filled with garbage
    loses nothing the other one kept (a resume rewrites both from these rows)."""
    run_dir = Path(run_dir)
    by_step = {row["step"]: row for row in _csv_rows(run_dir / "metrics.csv")}
    by_step |= {row["step"]: row for row in _jsonl_rows(run_dir / "metrics.jsonl")}
    return [by_step[step] for step in sorted(by_step)]


def _lines(path: Path) -> list[str]:
    """The file's lines, bytes that are not UTF-8 replaced (they fail to parse, line by line)."""
    return path.read_bytes().decode("utf-8", errors="replace").splitlines() if path.is_file() else []


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in _lines(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn line
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
            rows.append(row)
    return rows


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    lines = [line for line in _lines(path) if "\0" not in line]
    for cells in csv.DictReader(lines):
        if None in cells or None in cells.values():  # a torn line: too many cells, or too few
            continue
        row = {k: as_float(v) for k, v in cells.items() if k and v != ""}
        step = row.get("step")
        if step is not None and step.is_integer() and None not in row.values():
            rows.append({**row, **{k: int(row[k]) for k in ("step", "tokens") if row.get(k, 0.5).is_integer()}})
    return rows


@dataclass
class RunRecord:
    """What a run directory says about its run; results derived from rows, so partial runs work too."""

    path: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.summary.get("name") or self.config.get("name") or self.path.name

    @property
    def description(self) -> str:
        return self.summary.get("description") or self.config.get("description") or ""

    @property
    def status(self) -> str:
        """The summary's status; a `running` one whose lock no live process holds is `stopped (killed)`."""
        return runlock.shown_status(self.path, self.summary.get("status")) or "unknown (no summary.json)"

    def values(self, key: str) -> list[tuple[int, float]]:
        out = []
        for row in self.rows:
            v = as_float(row.get(key))
            if v is not None:
                out.append((int(row["step"]), v))
        return out

    def best(self, key: str = "val_loss") -> tuple[int, float] | None:
        finite = [(s, v) for s, v in self.values(key) if math.isfinite(v)]
        return min(finite, key=lambda sv: sv[1]) if finite else None

    def final(self, key: str) -> float | None:
        vals = self.values(key)
        return vals[-1][1] if vals else None

    def last(self, key: str) -> Any:
        for row in reversed(self.rows):
            if row.get(key) not in (None, ""):
                return row[key]
        return None

    def mean_tokens_per_sec(self) -> float | None:
        if self.summary.get("mean_tokens_per_sec") is not None and self.summary.get("status") != "running":
            return as_float(self.summary["mean_tokens_per_sec"])
        vals = [v for _, v in self.values("tokens_per_sec") if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None


def load_run(path: str | Path) -> RunRecord:
    """RunRecord for a run directory; NotARunError naming it when it is not one."""
    path = Path(path)
    if not is_run_dir(path):
        raise NotARunError(f"'{path}' is not a run directory (no metrics.jsonl or metrics.csv)")
    return RunRecord(path, read_rows(path), read_json_object(path / "config.json"), read_summary(path))


IGNORED_CONFIG_KEYS = frozenset(META_KEYS) | {"description"}  # say where and when, not what was run


def differing_config_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Config keys whose values are not the same in every run that has a config (a key one of them lacks
    counts as differing), in config order; run metadata and descriptions left out."""
    runs = [run for run in runs if run.config]  # a run killed before writing config.json says nothing
    keys = list(dict.fromkeys(k for run in runs for k in run.config if k not in IGNORED_CONFIG_KEYS))
    cell = lambda run, k: json.dumps(run.config[k], default=str) if k in run.config else None  # noqa: E731
    return [k for k in keys if len({cell(run, k) for run in runs}) > 1]


def config_cell(run: RunRecord, key: str) -> str:
    """A config value for a table cell: JSON as in config.json ("n/a" when the run lacks the key)."""
    if key not in run.config:
        return "n/a"
    value = run.config[key]
    return (value if isinstance(value, str) else json.dumps(value)).replace("|", "\\|")
