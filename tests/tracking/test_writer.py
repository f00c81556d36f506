"""Records written off the training thread (jaxlm/tracking/writer.py, ExperimentTracker(background=True)):
in order, never blocking the caller on a slow plot, nothing queued lost at the end or at a crash,
a metric file's write failure still the run's failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from jaxlm.tracking import ExperimentTracker
from jaxlm.tracking.writer import Lane

from ..helpers import metric_rows

mpimg = pytest.importorskip("matplotlib.image")

CONFIG = {"max_iterations": 100, "batch_size": 2, "context_length": 8, "learning_rate": 1e-3}
WAIT_S = 30  # a generous upper bound for what should take milliseconds: hitting it fails the test


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_lane_runs_jobs_in_order_and_latest_only_keeps_the_newest():
    done: list[int] = []
    lane = Lane("test-order")
    for i in range(500):
        lane.submit("job", lambda i=i: done.append(i))
    lane.drain()
    assert done == list(range(500))

    gate, started, seen = threading.Event(), threading.Event(), []

    def blocked():
        started.set()
        assert gate.wait(WAIT_S)

    latest = Lane("test-latest", latest_only=True)
    latest.submit("first", blocked)
    assert started.wait(WAIT_S)
    for i in range(5):  # asked for while the first still runs: only the last one is kept
        latest.submit("refresh", lambda i=i: seen.append(i))
    gate.set()
    latest.close()
    assert seen == [4]
    latest.submit("after close", lambda: seen.append("inline"))  # a closed lane runs jobs in the caller
    assert seen == [4, "inline"]
    lane.close()


def test_a_failing_essential_job_is_raised_to_the_caller_once_and_a_record_job_only_warns(caplog):
    lane = Lane("test-failure")
    lane.submit("plot", lambda: 1 / 0)
    lane.drain()
    lane.check()  # a record's failure is a warning, not the caller's
    assert "could not write plot: ZeroDivisionError" in caplog.text

    def disk_full():
        raise OSError(28, "No space left on device")

    lane.submit("metrics.csv", disk_full, essential=True)
    lane.drain()
    with pytest.raises(OSError, match="No space left"):
        lane.check()
    lane.check()  # raised once
    lane.close()


def test_a_slow_plot_never_blocks_logging_and_rows_reach_the_files_meanwhile(tmp_path, monkeypatch):
    gate, calls = threading.Event(), []

    def slow_plots(self, rows, planned):
        calls.append(len(rows))
        assert gate.wait(WAIT_S), "the test never released the plot"

    monkeypatch.setattr(ExperimentTracker, "write_plots", slow_plots)
    tracker = ExperimentTracker("run", CONFIG, tmp_path, tensorboard=False, background=True)
    tracker.log_step(1, train_loss=5.0, val_loss=5.1)  # an eval row: a refresh, blocked in the plot
    wait_until(lambda: calls, "the first refresh to start")
    for step in range(2, 41):  # logging goes on while the plot is stuck (it would hang here if it waited)
        tracker.log_step(step, train_loss=5.0 - step / 100, val_loss=5.1 if step % 10 == 0 else None)
    wait_until(lambda: len(metric_rows(tmp_path / "run")) == 40, "rows 1..40 in metrics.csv")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["current_step"] == 40
    assert calls == [1]  # still the first refresh
    gate.set()
    summary = tracker.finalize()
    assert [int(r["step"]) for r in metric_rows(tmp_path / "run")] == list(range(1, 41))
    # the refreshes asked for while the first one was stuck collapse into the newest, then the final one
    assert calls[0] == 1 and calls[-1] == 40 and len(calls) <= 3
    assert summary["status"] == "completed"
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]) == 40


def test_a_metric_file_that_cannot_be_written_fails_the_run_at_the_next_row(tmp_path, monkeypatch):
    tracker = ExperimentTracker("run", CONFIG, tmp_path, tensorboard=False, make_plots=False, background=True)
    tracker.log_step(1, train_loss=5.0)
    tracker.flush()

    def disk_full(row):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracker.files, "write", disk_full)
    tracker.log_step(2, train_loss=4.9)
    tracker._rows_lane.drain()
    with pytest.raises(OSError, match="No space left"):
        tracker.log_step(3, train_loss=4.8)
    assert tracker.finalize("failed", error="OSError")["status"] == "failed"


def test_rows_queued_when_the_process_crashes_are_still_written(tmp_path):
    """Each row's write is slowed so that most are still queued when the script dies of an exception."""
    script = textwrap.dedent(
        f"""
        import time
        from jaxlm.tracking import ExperimentTracker
        from jaxlm.tracking.records import MetricFiles

        write = MetricFiles.write
        MetricFiles.write = lambda self, row: (time.sleep(0.02), write(self, row))
        tracker = ExperimentTracker("run", {CONFIG!r}, {str(tmp_path)!r}, tensorboard=False, background=True)
        for step in range(1, 51):
            tracker.log_step(step, train_loss=5.0)
        raise RuntimeError("crash with rows queued")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "crash with rows queued" in proc.stderr
    assert [int(r["step"]) for r in metric_rows(tmp_path / "run")] == list(range(1, 51))


def test_plots_are_drawn_in_a_child_process_that_ends_with_the_run(tmp_path):
    tracker = ExperimentTracker("run", CONFIG, tmp_path, tensorboard=False, background=True)
    plotter = tracker._plotter
    child = plotter.proc
    for step in range(1, 21):
        tracker.log_step(step, train_loss=5.0 - step / 10, val_loss=5.0 - step / 10 if step % 5 == 0 else None)
    tracker.finalize()
    assert child.poll() == 0  # closed by finalize, not left behind
    assert plotter.failed is False and plotter.sent == 20  # drawn there, every row sent once
    assert tracker._plotter is None  # a refresh after the end starts no new child
    for png in ("loss_curves.png", "lr_schedule.png"):
        assert mpimg.imread(tmp_path / "run" / png).ndim == 3


def test_the_plot_process_never_outlives_a_killed_run(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from jaxlm.tracking import ExperimentTracker

        tracker = ExperimentTracker("run", {CONFIG!r}, {str(tmp_path)!r}, tensorboard=False, background=True)
        tracker.log_step(1, train_loss=5.0, val_loss=5.0)
        tracker.flush()
        print(tracker._plotter.proc.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, signal.SIGINT)  # a Ctrl-C reaches the whole process group: the child ignores it
        time.sleep(0.5)
        assert os.path.exists(f"/proc/{child}") and not ended(child)
        parent.kill()
        parent.wait()
        wait_until(lambda: ended(child), "the plot process to end")
    finally:
        parent.kill()
        parent.wait()


def ended(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
