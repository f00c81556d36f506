"""Time `jaxlm runs` (jaxlm.tracking.listing.list_runs) on a folder of N finished runs, and the same
folder read the way compare does (every metrics.jsonl), side by side.

    uv run python scripts/bench_runs_listing.py [N] [ROWS]

Each run is a real ExperimentTracker run of ROWS logged rows, copied N times. Prints seconds per pass.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from jaxlm.tracking import ExperimentTracker
from jaxlm.tracking.listing import list_runs
from jaxlm.tracking.runs import load_run


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        config = {"max_iterations": rows, "batch_size": 2, "context_length": 8}
        t = ExperimentTracker("r0", config, out, tensorboard=False, make_plots=False)
        for step in range(1, rows + 1):
            t.log_step(step, train_loss=1.0, wallclock_s=0.1 * step, **({"val_loss": 1.0} if step % 100 == 0 else {}))
        t.finalize("completed")
        for i in range(1, n):
            shutil.copytree(out / "r0", out / f"r{i}")
        for label, fn in (
            ("list_runs (summary.json only)", lambda: list_runs([out])),
            ("load_run every run (metrics.jsonl)", lambda: [load_run(p) for p in out.iterdir() if p.is_dir()]),
        ):
            fn()  # warm the page cache
            t0 = time.perf_counter()
            fn()
            print(f"{label:<38} {n} runs x {rows} rows: {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
