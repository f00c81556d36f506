"""Records of evaluations made after training (`python -m jaxlm.evaluate`), kept in the run directory:

    evals/<data>-<step>.json   one file per (data, checkpoint step): the numbers and what was evaluated
    summary.json               the same numbers under `evals["<data>-<step>"]`
    EXPERIMENT_LOG.md          one short entry per evaluation

Evaluating the same checkpoint on the same data again replaces its own file and key (it is the
command's own output); nothing else in the run directory is touched. `<data>` is `val` for the
run's own validation file, else the evaluated file's name without its suffixes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxlm.tracking.explog import append_entry, inline
from jaxlm.tracking.fmt import number, write_json

EVALS_DIR = "evals"
OWN_VALIDATION = "val"  # the data name of the run's own validation file


def data_name(path: str | Path | None) -> str:
    """`val` for the run's validation file (None), else the file name without suffixes, made safe for a file name."""
    if path is None:
        return OWN_VALIDATION
    stem = Path(path).name.split(".")[0] or "data"
    return re.sub(r"[^A-Za-z0-9_=-]", "_", stem)


def eval_key(name: str, step: int) -> str:
    return f"{name}-{step}"


def record_eval(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write `evals/<data>-<step>.json` and the summary.json key; returns the JSON file's path.

    `record` carries at least `data_name`, `step` and the numbers (`loss`, `perplexity`, `bpb`, `tokens`, ...).
    """
    run_dir = Path(run_dir)
    key = eval_key(record["data_name"], record["step"])
    out = run_dir / EVALS_DIR / f"{key}.json"
    out.parent.mkdir(exist_ok=True)
    write_json(out, dict(record))
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        summary = {}
    if not isinstance(summary, dict):
        summary = {}
    evals = summary.get("evals") if isinstance(summary.get("evals"), dict) else {}
    evals[key] = {k: v for k, v in record.items() if k != "run_dir"}
    summary["evals"] = evals
    write_json(summary_path, summary)
    return out


def full_val_loss(summary: Mapping[str, Any]) -> float | None:
    """The run's loss on its whole validation file: `full_val_loss` (final_eval "full"), else the
    latest-step `python -m jaxlm.evaluate` result on its own validation file; None when neither exists."""
    if summary.get("full_val_loss") is not None:
        return summary["full_val_loss"]
    evals = summary.get("evals") if isinstance(summary.get("evals"), dict) else {}
    own = [e for e in evals.values() if isinstance(e, dict) and e.get("data_name") == OWN_VALIDATION]
    return max(own, key=lambda e: e.get("step") or 0).get("loss") if own else None


def log_entry(run_name: str, record: Mapping[str, Any], run_dir: Path, log_path: Path) -> str:
    """The markdown of one evaluation's EXPERIMENT_LOG.md entry; the link is relative to the log."""
    rel = Path(os.path.relpath(Path(run_dir).resolve(), Path(log_path).resolve().parent)).as_posix()
    key = eval_key(record["data_name"], record["step"])
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    return "\n".join(
        [
            f"## {date} · {run_name} · evaluated",
            "",
            f"- Checkpoint {record['checkpoint']} (step {record['step']}) on `{inline(record['data'])}`, every token: "
            f"loss {number(record['loss'])} nats/token, perplexity {number(record['perplexity'], '.2f')}, "
            f"{number(record.get('bpb'), '.4f')} bits/byte; {number(record['tokens'], ',')} tokens in "
            f"{number(record['seconds'], '.1f')} s ({number(record['tokens_per_sec'], ',.0f')} tokens/s)",
            f"- Record: [{rel}/{EVALS_DIR}/{key}.json]({rel}/{EVALS_DIR}/{key}.json)",
            "",
        ]
    )


def append_eval_log(log_path: str | Path, run_name: str, record: Mapping[str, Any], run_dir: Path) -> None:
    append_entry(log_path, log_entry(run_name, record, run_dir, Path(log_path)))


def eval_time() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
