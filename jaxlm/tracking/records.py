"""The files a run's rows go to, and what a run records about itself.

Rows go to `metrics.csv` and `metrics.jsonl`, flushed one by one, so a crashed
run keeps everything it logged. No JAX here.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from jaxlm.tracking.fmt import as_float, json_safe, write_text

METRIC_COLUMNS = (
    "step",
    "tokens",
    "wallclock_s",
    "train_loss",
    "val_loss",
    "val_perplexity",
    "val_bpb",
    "learning_rate",
    "grad_norm",
    "tokens_per_sec",
    "mfu",
    "z_loss",  # the z-loss term's mean logsumexp^2 (config z_loss > 0); empty otherwise
)
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
# keys the tracker writes into config.json beside the run's config (jaxlm.config.RUN_METADATA_KEYS
# lists the same keys, so a run's config.json can be read back as a config; a test keeps them equal)
META_KEYS = ("name", "jaxlm_version", "git_commit", "git_dirty", "start_time", "config_file", "overrides")


def mfu(
    tokens_per_sec: float, flops_per_token: float, device_count: int, peak_per_device: float | None
) -> float | None:
    """Model-FLOPs utilisation in [0, 1]: achieved model FLOP/s over the devices' peak (jaxlm.train.hardware
    has the peak table); None when the peak is unknown."""
    if peak_per_device is None or not tokens_per_sec > 0:
        return None
    return tokens_per_sec * flops_per_token / (device_count * peak_per_device)


def complete_row(row: dict[str, Any], config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """A logged row as the metric files hold it: `val_perplexity`, `tokens` and `mfu` filled in when they
    can be (from the config's batch and context, the summary's FLOPs and peak), METRIC_COLUMNS first,
    every value JSON-safe."""
    row = dict(row)
    if row.get("val_loss") is not None and row.get("val_perplexity") is None:
        row["val_perplexity"] = math.exp(min(float(row["val_loss"]), 700.0))
    batch, context = config.get("batch_size"), config.get("context_length")
    if row.get("tokens") is None:
        row["tokens"] = row["step"] * batch * context if isinstance(batch, int) and isinstance(context, int) else None
    peak, flops, tok_s = summary.get("peak_flops_per_device"), summary.get("flops_per_token"), row.get("tokens_per_sec")
    if row.get("mfu") is None and peak and flops and tok_s:
        row["mfu"] = mfu(tok_s, flops, summary.get("device_count") or 1, peak)
    ordered = {k: row.get(k) for k in METRIC_COLUMNS}
    ordered.update({k: v for k, v in row.items() if k not in ordered})
    return {k: json_safe(v) for k, v in ordered.items()}


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dict from a dict, a dataclass (jaxlm Config, ExperimentConfig) or any object with attributes."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}


def run_metadata() -> dict[str, Any]:
    """jaxlm version, the git commit of the current working tree (when there is one), start time."""
    try:
        from importlib.metadata import version

        jaxlm_version = version("jaxlm")
    except Exception:
        jaxlm_version = "unknown"
    commit, dirty = None, None
    try:
        git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, timeout=10, check=True).stdout
        commit = git("rev-parse", "HEAD").strip() or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "jaxlm_version": jaxlm_version,
        "git_commit": commit,
        "git_dirty": dirty,
        "start_time": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


class MetricFiles:
    """metrics.csv and metrics.jsonl of one run, open for appending rows."""

    def __init__(self, run_dir: Path, mode: str, suffix: str = ""):
        """Open both files: mode "w" starts them (CSV header included), "a" appends."""
        self.csv_file = open(run_dir / f"metrics.csv{suffix}", mode, newline="")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if mode == "w":
            self.csv.writeheader()
            self.csv_file.flush()
        self.jsonl = open(run_dir / f"metrics.jsonl{suffix}", mode)

    @classmethod
    def rewrite(cls, run_dir: Path, rows: list[dict[str, Any]]) -> MetricFiles:
        """Replace both files with `rows` (written to temporary files and swapped in whole), then append."""
        files = cls(run_dir, "w", suffix=".tmp")
        for row in rows:
            files.write(row)
        files.close()
        for name in ("metrics.csv", "metrics.jsonl"):
            os.replace(run_dir / f"{name}.tmp", run_dir / name)
        return cls(run_dir, "a")

    def write(self, row: dict[str, Any]) -> None:
        self.csv.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
        self.csv_file.flush()
        self.jsonl.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.csv_file.close()
        self.jsonl.close()


def append_sample(run_dir: Path, step: int, prompt: str, text: str) -> None:
    """One entry of samples.txt. The header frames the text by its length and the prompt is quoted, so
    no generated text (a "=== step" line in it included) can be read back as an entry (`sample_entries`)."""
    with open(run_dir / "samples.txt", "a", encoding="utf-8", newline="") as f:
        f.write(f"=== step {step} | {len(text)} characters | prompt: {prompt!r}\n{text}\n\n")


SAMPLE_HEADER = re.compile(r"=== step (\d+) \| (\d+) characters \| prompt: [^\n]*\n")


def sample_entries(text: str) -> list[tuple[int, str]]:
    """samples.txt as (step, the entry's exact text). Entries are read by their framed length; a torn
    last entry is dropped, and a file from before the framing is split at its "=== step" headers."""
    entries, pos = [], 0
    while (header := SAMPLE_HEADER.match(text, pos)) is not None:
        end = header.end() + int(header[2]) + 2
        if end > len(text):
            return entries  # torn by a crash while it was written
        entries.append((int(header[1]), text[pos:end]))
        pos = end
    old = re.compile(r"^=== step (\d+) ", re.M)
    starts = [m for m in old.finditer(text, pos) if m.start() >= pos]
    for m, following in zip(starts, [*starts[1:], None]):
        entries.append((int(m[1]), text[m.start() : following.start() if following else len(text)]))
    return entries


def trim_samples(run_dir: Path, from_step: int) -> None:
    """Drop samples.txt entries written after `from_step` (a resume rewrites that future)."""
    path = run_dir / "samples.txt"
    if not path.is_file():
        return
    entries = sample_entries(path.read_bytes().decode("utf-8", errors="replace"))
    write_text(path, "".join(entry for step, entry in entries if step <= from_step))


def summary_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary fields as the rows give them (a caller of `finalize` may pass better ones)."""
    if not rows:
        return {}
    last = rows[-1]
    val_rows = [r for r in rows if as_float(r.get("val_loss")) is not None]
    finite_val = [r for r in val_rows if math.isfinite(as_float(r["val_loss"]))]
    best = min(finite_val, key=lambda r: as_float(r["val_loss"])) if finite_val else None
    train = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    speeds = [r["tokens_per_sec"] for r in rows if isinstance(r.get("tokens_per_sec"), (int, float))]
    mfus = [r["mfu"] for r in rows if isinstance(r.get("mfu"), (int, float))]
    out = {
        "steps": last["step"],
        "tokens": last.get("tokens"),
        "wallclock_s": last.get("wallclock_s"),
        "final_train_loss": train[-1] if train else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_step": best["step"] if best else None,
        "mean_tokens_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "mfu": sum(mfus) / len(mfus) if mfus else None,
    }
    if val_rows:
        v = val_rows[-1]
        out.update(
            final_val_loss=v["val_loss"],
            final_val_perplexity=v.get("val_perplexity"),
            final_val_bpb=v.get("val_bpb"),
        )
    return out


PROGRESS_WINDOW = 10  # rows the rate of a running run is measured over: recent, so compile time drops out
RUNNING_ONLY = ("steps_per_sec", "eta_s")  # progress fields that mean nothing once a run has ended


def progress_fields(summary: dict[str, Any], rows: list[dict[str, Any]], planned_steps: Any) -> dict[str, Any]:
    """summary.json's fields of a running run, refreshed at each logged row so that `jaxlm runs` (and
    anyone) can tell where it is without reading its metrics: `current_step`, `planned_steps`,
    `wallclock_s`, the latest and best validation loss so far, `steps_per_sec` over the last
    PROGRESS_WINDOW rows and `eta_s`, the time to `planned_steps` at that rate. Constant work per row."""
    last = rows[-1]
    step = int(last["step"])
    out: dict[str, Any] = {
        "current_step": step,
        "planned_steps": planned_steps,
        "wallclock_s": last.get("wallclock_s"),
        "updated_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    val = as_float(last.get("val_loss"))
    if val is not None:
        out.update(latest_val_loss=val, latest_val_step=step, latest_val_bpb=last.get("val_bpb"))
        best = as_float(summary.get("best_val_loss"))
        if math.isfinite(val) and (best is None or val < best):
            out.update(best_val_loss=val, best_val_step=step)
    first = rows[max(0, len(rows) - 1 - PROGRESS_WINDOW)]
    walls = as_float(first.get("wallclock_s")), as_float(last.get("wallclock_s"))
    rate = None
    if None not in walls and walls[1] > walls[0] and step > int(first["step"]):
        rate = (step - int(first["step"])) / (walls[1] - walls[0])
    out["steps_per_sec"] = rate
    planned = as_float(planned_steps)
    out["eta_s"] = max(0.0, (planned - step) / rate) if rate and planned is not None else None
    return out


def segment_record(from_step: int) -> dict[str, Any]:
    """One start of a run (the first, or a resume) for summary.json's `segments`: when, from which step,
    and, under SLURM, which job and how many times SLURM had requeued it (SLURM_RESTART_COUNT)."""
    record: dict[str, Any] = {
        "start_time": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "from_step": from_step,
    }
    for key, env in (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_restart_count", "SLURM_RESTART_COUNT")):
        if os.environ.get(env):
            record[key] = os.environ[env]
    return record
