"""Read a run's offline W&B files back with W&B's own reader and compare them with metrics.csv.

    uv run python scripts/check_wandb_offline.py runs/quickstart [--json]

Every `<run>/wandb/offline-run-*/run-*.wandb` transaction log is read with
`wandb leet inspect --json` (wandb-core's reader). Checks: one W&B run id across all
sessions (a resume continues the same run), no training step logged twice, `step` and
`wallclock_s` defined as metrics (x-axes), and every scalar equal to the metrics.csv
column it comes from. Prints a report (or JSON with --json); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

# metrics.csv column -> W&B key (TensorBoard's tags, see jaxlm/tracking/tensorboard.py SCALAR_TAGS)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jaxlm.tracking.tensorboard import SCALAR_TAGS  # noqa: E402

COLUMNS = {"wallclock_s": "wallclock_s", **SCALAR_TAGS}


def read_records(wandb_file: Path) -> list[dict]:
    """All records of one .wandb transaction log, as W&B's reader prints them."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def read_offline_run(run_dir: Path) -> dict:
    """{run_ids, history: [item...] in file order, metrics: [names], exits: [codes], summary: {...}, config}"""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    result = {"files": [str(f) for f in files], "run_ids": set(), "history": [], "metrics": set(), "exits": []}
    result |= {"summary": {}, "config": {}, "tables": 0}
    for f in files:
        for rec in read_records(f):
            kind = rec.get("type")
            if kind == "run":
                result["run_ids"].add(rec["run"]["run_id"])
                result["config"].update(rec["run"].get("config", {}).get("update", {}))
            elif kind == "history":
                result["history"].append(rec["history"]["item"])
            elif kind == "metric":
                metric = rec["metric"]
                result["metrics"].add(metric.get("name") or metric.get("glob_name"))
            elif kind == "summary":
                result["summary"].update(rec["summary"].get("update", {}))
            elif kind == "config":
                result["config"].update(rec["config"].get("update", {}))
            elif kind == "exit":
                result["exits"].append(rec["exit"].get("exit_code", 0))
            elif kind == "artifact" and rec["artifact"].get("type") == "run_table":  # a logged wandb.Table
                result["tables"] += 1
    return result


def compare(run_dir: Path) -> tuple[list[str], dict]:
    """(problems, facts) for the run directory."""
    wb = read_offline_run(run_dir)
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    problems = []
    steps = [int(item["step"]) for item in wb["history"] if "step" in item]
    if len(wb["run_ids"]) != 1:
        problems.append(f"expected one W&B run id, found {sorted(wb['run_ids'])}")
    if len(steps) != len(set(steps)):
        problems.append(f"steps logged twice: {sorted({s for s in steps if steps.count(s) > 1})}")
    if set(steps) != set(rows):
        problems.append(f"W&B steps {sorted(set(steps) ^ set(rows))[:10]} differ from metrics.csv's")
    for axis in ("step", "wallclock_s"):
        if axis not in wb["metrics"]:
            problems.append(f"'{axis}' is not defined as a metric (x-axis)")
    compared = 0
    for item in wb["history"]:
        if "step" not in item:
            continue
        row = rows.get(int(item["step"]), {})
        for column, key in COLUMNS.items():
            want = float(row[column]) if row.get(column) not in (None, "") else None
            got = item.get(key)
            if want is None and got is None:
                continue
            compared += 1
            if want is None or got is None or not math.isclose(float(got), want, rel_tol=1e-6, abs_tol=1e-9):
                problems.append(f"step {item['step']} {key}: W&B {got} vs metrics.csv {want}")
    facts = {
        "files": wb["files"],
        "run_ids": sorted(wb["run_ids"]),
        "history_rows": len(steps),
        "values_compared": compared,
        "exit_codes": wb["exits"],
        "status": wb["summary"].get("status"),
        "sample_tables": wb["tables"],
        "metrics_defined": sorted(m for m in wb["metrics"] if m),
        "config_keys": len(wb["config"]),
    }
    return problems, facts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    problems, facts = compare(args.run_dir)
    if args.json:
        print(json.dumps({"problems": problems, **facts}))
    else:
        for key, value in facts.items():
            print(f"{key}: {value}")
        print("\n".join(problems) if problems else "OK: W&B scalars equal metrics.csv, no step logged twice")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
