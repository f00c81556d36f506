"""ExperimentTracker: the one writer of a run directory's metrics and summary.

Rows go to `metrics.csv` and `metrics.jsonl` and are flushed one by one, so a
crashed run keeps everything it logged. No JAX here: any training loop can use it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

METRIC_COLUMNS = ("step", "tokens", "wallclock_s", "train_loss", "val_loss", "val_perplexity", "val_bpb",
                  "learning_rate", "grad_norm", "tokens_per_sec", "mfu")


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename): readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class ExperimentTracker:
    """Writes `<output_dir>/<name>/`: config.json, metrics.csv/.jsonl/.json, summary.json."""

    def __init__(self, name: str, config: dict[str, Any], output_dir: str | Path = "runs"):
        self.name = name
        self.config = dict(config)
        self.run_dir = Path(output_dir) / name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.start_time = time.time()
        write_json(self.run_dir / "config.json", self.config)
        self._csv_file = open(self.run_dir / "metrics.csv", "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        self._csv.writeheader()
        self._csv_file.flush()
        self._jsonl = open(self.run_dir / "metrics.jsonl", "w")
        self.summary: dict[str, Any] = {"name": name, "description": self.config.get("description", ""),
                                        "status": "running"}
        self.write_summary()

    def log_step(self, step: int, train_loss: float | None = None, val_loss: float | None = None,
                 learning_rate: float | None = None, tokens_per_sec: float | None = None, **extra: Any) -> dict:
        """Append one row (missing columns stay empty) and flush it to disk."""
        row: dict[str, Any] = {"step": step, "train_loss": train_loss, "val_loss": val_loss,
                               "learning_rate": learning_rate, "tokens_per_sec": tokens_per_sec, **extra}
        if val_loss is not None and "val_perplexity" not in extra:
            row["val_perplexity"] = math.exp(min(val_loss, 700.0))
        if "wallclock_s" not in row:
            row["wallclock_s"] = time.time() - self.start_time
        row = {k: _clean(v) for k, v in row.items()}
        self.rows.append(row)
        self._csv.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
        self._csv_file.flush()
        self._jsonl.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        self._jsonl.flush()
        return row

    def log_sample(self, step: int, prompt: str, text: str) -> None:
        """Append a generated sample to samples.txt."""
        with open(self.run_dir / "samples.txt", "a") as f:
            f.write(f"=== step {step} | prompt: {prompt!r}\n{text}\n\n")

    def write_metrics_json(self) -> None:
        train = [r for r in self.rows if r.get("train_loss") is not None]
        val = [r for r in self.rows if r.get("val_loss") is not None]
        write_json(self.run_dir / "metrics.json", {"train": train, "val": val})

    def write_summary(self, **fields: Any) -> None:
        self.summary.update({k: _clean(v) for k, v in fields.items()})
        write_json(self.run_dir / "summary.json", self.summary)

    def finalize(self, status: str = "completed", **fields: Any) -> dict[str, Any]:
        """Close the files and write the final metrics.json and summary.json."""
        self.write_metrics_json()
        self.write_summary(status=status, **fields)
        self._csv_file.close()
        self._jsonl.close()
        return self.summary


    # --- resume (issue 4; minimal: the tracking work on main may supersede this) ---
    @classmethod
    def resume(cls, run_dir: str | Path, from_step: int, elapsed_s: float = 0.0) -> "ExperimentTracker":
        """Reopen a run directory to continue after step `from_step`.

        Rows logged after `from_step` (work lost with the process) are dropped from
        metrics.csv and metrics.jsonl, which are then reopened for appending; the
        summary goes back to `running`; default wall-clock continues from `elapsed_s`.
        """
        self = cls.__new__(cls)
        self.run_dir = run_dir = Path(run_dir)
        self.name = run_dir.name
        self.config = json.loads((run_dir / "config.json").read_text())
        self.start_time = time.time() - elapsed_s
        jsonl_path, csv_path = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
        lines = jsonl_path.read_text().splitlines() if jsonl_path.is_file() else []
        kept = [line for line in lines if line.strip() and int(json.loads(line)["step"]) <= from_step]
        self.rows = [json.loads(line) for line in kept]
        jsonl_path.write_text("".join(line + "\n" for line in kept))
        with open(csv_path, newline="") as f:
            csv_rows = list(csv.reader(f))
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerows(csv_rows[:1] + [r for r in csv_rows[1:] if r and int(r[0]) <= from_step])
        self._csv_file = open(csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        self._jsonl = open(jsonl_path, "a")
        samples = run_dir / "samples.txt"
        if samples.is_file():  # blocks start "=== step N | prompt: ..."
            blocks = re.split(r"(?m)^(?==== step )", samples.read_text())
            samples.write_text("".join(b for b in blocks if not b.startswith("=== step ")
                                       or int(b.split()[2]) <= from_step))
        summary_path = run_dir / "summary.json"
        self.summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"name": self.name}
        for stale in ("error", "diverged_step", "divergence_reason", "interrupted_by"):
            self.summary.pop(stale, None)
        self.write_summary(status="running", resumed_from_step=from_step)
        return self
