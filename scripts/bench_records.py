"""What writing a run's records costs the training thread at an evaluation row (plots, metrics.json).

    uv run python scripts/bench_records.py [--rows 1000] [--evals 5]

A synthetic run (ExperimentTracker, no JAX) logs `--rows` plain rows, then `--evals` evaluation rows,
each of which refreshes metrics.json and both plots. Around each, the main thread runs a loop shaped
like a training loop's: a little Python (the dispatch), then the GIL given up for a moment (the
wait for JAX, here `time.sleep(0)`), over and over; for 0.5 s before the row, to get its idle
speed, then from the `log_step` call until the refresh has finished. lost_ms = that
time minus the iterations done in it at idle speed: how much of the loop's time the records took.
Three ways:

- `inline`: ExperimentTracker(background=False), everything written before `log_step` returns;
- `thread`: background=True with the plots drawn on the tracker's refresh thread (the plot process
  switched off): after each wait the loop must get the GIL back from matplotlib;
- `process`: background=True as `jaxlm.launch` uses it, the plots drawn by the plot process
  (jaxlm/tracking/plot_worker.py).

One JSON line per way, then a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from jaxlm.tracking import ExperimentTracker


def spin(done) -> tuple[int, float]:
    """(iterations, seconds) of a small pure-Python loop run until `done()` is true."""
    n, t0 = 0, time.perf_counter()
    while n % 256 or not done():
        n += sum(range(50)) > 0
        if n % 8 == 0:
            time.sleep(0)  # a wait for the device: the GIL is given up and must be taken back
    return n, time.perf_counter() - t0


def for_seconds(seconds: float):
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= end


def measure(way: str, rows: int, evals: int) -> dict:
    config = {"max_iterations": rows + evals, "batch_size": 2, "context_length": 8, "learning_rate": 1e-3}
    with tempfile.TemporaryDirectory(prefix="bench_records_") as out:
        tracker = ExperimentTracker("run", config, out, tensorboard=False, background=way != "inline")
        if way == "thread":
            tracker._plotter.close()
            tracker._plotter = None
        tracker.plan_learning_rate([1e-3] * (rows + evals + 1))
        for step in range(1, rows + 1):
            tracker.log_step(step, train_loss=5.0 - step / rows, learning_rate=1e-3)
        tracker.log_step(rows, train_loss=4.0, val_loss=4.0)  # warm: matplotlib imported, first plots drawn
        tracker.flush()
        lost, call = [], []
        for k in range(evals):
            n, seconds = spin(for_seconds(0.5))
            idle_rate = n / seconds
            t0 = time.perf_counter()
            tracker.log_step(rows + k + 1, train_loss=4.0, val_loss=4.0 - k / 100)
            call.append((time.perf_counter() - t0) * 1e3)
            n, seconds = spin(lambda: not tracker._refresh_lane.busy())
            lost.append(max(call[-1] / 1e3 + seconds - n / idle_rate, 0.0) * 1e3)
        tracker.finalize()
    return {
        "way": way,
        "rows": rows,
        "log_step_ms": round(sorted(call)[len(call) // 2], 2),
        "lost_ms_per_eval_row": round(sorted(lost)[len(lost) // 2], 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--evals", type=int, default=5)
    a = p.parse_args()
    results = [measure(way, a.rows, a.evals) for way in ("inline", "thread", "process")]
    for r in results:
        print(json.dumps(r), flush=True)
    print("\n| way | log_step ms (median) | main-thread ms lost per eval row (median) |")
    print("| --- | --- | --- |")
    for r in results:
        print(f"| {r['way']} | {r['log_step_ms']:,.2f} | {r['lost_ms_per_eval_row']:,.1f} |")


if __name__ == "__main__":
    main()
