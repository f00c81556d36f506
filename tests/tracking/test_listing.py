"""`jaxlm runs`: one line per run with its status and progress, a running run's rate and ETA from the
summary.json its tracker refreshes at every row, `--json`, sorting, and damaged runs as one warning."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jaxlm import runs as runs_command
from jaxlm.tracking import ExperimentTracker, runlock
from jaxlm.tracking.listing import duration, list_runs

CONFIG = {"max_iterations": 40, "batch_size": 2, "context_length": 8, "learning_rate": 1e-3}


def make(output_dir, name, steps, status=None, **finalize):
    """A tracked run that logged `steps` rows (every 10th with a val loss), at 0.5 s a step, finalized
    with `status` unless None (left `running`)."""
    tracker = ExperimentTracker(name, CONFIG, output_dir, tensorboard=False, make_plots=False)
    for step in range(1, steps + 1):
        val = {"val_loss": 5.0 - step / 10, "val_bpb": (5.0 - step / 10) / 3} if step % 10 == 0 else {}
        tracker.log_step(step, train_loss=6.0 - step / 10, wallclock_s=0.5 * step, **val)
    if status is not None:
        tracker.finalize(status, **finalize)
    return tracker


def test_a_running_summary_carries_step_rate_and_eta_refreshed_at_each_row(tmp_path):
    tracker = make(tmp_path, "live", 20)
    s = json.loads((tracker.run_dir / "summary.json").read_text())
    assert s["status"] == "running" and s["current_step"] == 20 and s["planned_steps"] == 40
    assert s["steps_per_sec"] == pytest.approx(2.0) and s["eta_s"] == pytest.approx(10.0)  # 20 steps left
    assert s["latest_val_loss"] == pytest.approx(3.0) and s["best_val_loss"] == pytest.approx(3.0)
    assert s["best_val_step"] == 20 and s["wallclock_s"] == pytest.approx(10.0)
    tracker.log_step(21, train_loss=1.0, wallclock_s=11.0)
    s = json.loads((tracker.run_dir / "summary.json").read_text())
    assert s["current_step"] == 21 and s["eta_s"] == pytest.approx(19 / s["steps_per_sec"])
    tracker.finalize("completed")
    s = json.loads((tracker.run_dir / "summary.json").read_text())
    assert "eta_s" not in s and "steps_per_sec" not in s and s["steps"] == 21


@pytest.fixture
def five_kinds(tmp_path):
    """completed, running (its lock held), killed (running, lock free), diverged, interrupted."""
    out = tmp_path / "runs"
    make(out, "done", 40, "completed", full_val_loss=1.25)
    live = make(out, "live", 20)
    make(out, "killed", 12)
    make(out, "boom", 30, "diverged")
    make(out, "cut", 25, "interrupted")
    (out / "EXPERIMENT_LOG.md").write_text("# log\n")  # not runs: never listed
    (out / ".reports").mkdir()
    lock = runlock.acquire(live.run_dir)
    yield out
    lock.release()


def test_every_kind_of_run_gets_its_line(five_kinds, capsys):
    assert runs_command.main([str(five_kinds), "--sort", "name"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["name", "status", "step", "best", "val", "latest", "val", "bpb", "full"] + [
        "val",
        "wall",
        "rate",
        "ETA",
    ]
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert sorted(by_name) == ["boom", "cut", "done", "killed", "live"]
    assert by_name["done"].split()[1:6] == ["completed", "40/40", "1.0000", "@40", "1.0000"]
    assert "1.2500" in by_name["done"] and "20s" in by_name["done"]
    assert by_name["live"].split()[1:3] == ["running", "20/40"] and "2.00 it/s" in by_name["live"]
    assert by_name["live"].rstrip().endswith("10s")  # ETA: 20 steps at 2 steps/s
    assert "stopped (killed)" in by_name["killed"] and "12/40" in by_name["killed"]
    assert "it/s" not in by_name["killed"]  # a dead run has no rate, no ETA
    assert "diverged" in by_name["boom"] and "interrupted" in by_name["cut"]


def test_json_and_sorting(five_kinds, capsys):
    assert runs_command.main([str(five_kinds), "--json", "--sort", "best"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["done", "boom", "cut", "live", "killed"]  # lowest best val first
    live = next(r for r in rows if r["name"] == "live")
    assert live["status"] == "running" and live["step"] == 20 and live["eta_s"] == pytest.approx(10.0)
    for i, name in enumerate(["cut", "done", "boom", "killed", "live"]):  # started a minute apart
        path = five_kinds / name / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "start_time": f"2026-01-01T10:0{i}:00+00:00"}))
    lines, _ = list_runs([five_kinds])  # default: by start time, the newest last
    assert [r.name for r in lines] == ["cut", "done", "boom", "killed", "live"]


def test_damaged_runs_are_one_warning_each_and_still_listed(five_kinds, capsys):
    (five_kinds / "done" / "summary.json").write_text('{"status": "compl')  # torn
    (five_kinds / "cut" / "summary.json").write_bytes(b"\xff\xfe[")
    (five_kinds / "boom" / "summary.json").write_text("[1, 2]")
    missing = str(five_kinds.parent / "nowhere")
    assert runs_command.main([str(five_kinds), missing]) == 0
    out, err = capsys.readouterr()
    warnings = err.splitlines()
    assert len(warnings) == 4 and all(w.startswith("warning: ") for w in warnings)
    assert sum("summary.json" in w for w in warnings) == 3 and sum("nowhere" in w for w in warnings) == 1
    done = next(line for line in out.splitlines() if line.startswith("done"))
    assert "unknown" in done and "40/40" in done  # from metrics.jsonl and config.json
    assert runs_command.main([missing]) == 2 and len(capsys.readouterr().err.splitlines()) == 1


def test_an_empty_folder_and_a_run_given_directly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert runs_command.main([str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.startswith("no runs in")
    run = make(tmp_path / "runs", "solo", 10, "completed").run_dir
    assert runs_command.main([str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("solo ")


def test_hundreds_of_runs_are_listed_from_their_summaries_alone(tmp_path, monkeypatch):
    """300 finished runs: no metrics file is read (that is what keeps a big folder fast; the time is
    measured by scripts/bench_runs_listing.py)."""
    from jaxlm.tracking import listing

    out = tmp_path / "runs"
    template = make(out, "r000", 40, "completed").run_dir
    summary = (template / "summary.json").read_text()
    for i in range(1, 300):
        d = out / f"r{i:03d}"
        d.mkdir()
        (d / "metrics.jsonl").write_text("")
        (d / "summary.json").write_text(summary.replace('"r000"', f'"r{i:03d}"'))
    monkeypatch.setattr(listing, "read_rows", lambda path: pytest.fail(f"read the metrics of {path}"))
    lines, warnings = list_runs([out])
    assert len(lines) == 300 and not warnings and all(r.step == 40 and r.status == "completed" for r in lines)


def test_durations_and_the_console_script():
    assert [duration(s) for s in (None, 5, 245, 7380)] == ["-", "5s", "4m05s", "2h03m"]
    proc = subprocess.run([sys.executable, "-m", "jaxlm.cli", "--help"], capture_output=True, text=True)
    assert "runs" in proc.stdout
