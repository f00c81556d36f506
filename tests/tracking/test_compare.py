"""`python -m jaxlm.compare`: PNG + markdown table over finished, diverged and cut-off runs."""

from __future__ import annotations

import math
import subprocess
import sys

import matplotlib.image as mpimg
import pytest

from jaxlm import compare
from jaxlm.tracking import ExperimentTracker


def make_run(output_dir, name, steps, lr, status="completed", diverge_at=None):
    config = {
        "description": f"lr {lr} | test",
        "learning_rate": lr,
        "min_learning_rate": lr / 10,
        "warmup_iters": 2,
        "max_iterations": steps,
        "batch_size": 2,
        "context_length": 8,
    }
    tracker = ExperimentTracker(name, config, output_dir, tensorboard=False, make_plots=False)
    for step in range(1, steps + 1):
        loss = 6.0 / step + 1.0 if diverge_at is None or step < diverge_at else math.nan
        row = {"train_loss": loss, "learning_rate": lr, "tokens_per_sec": 500.0, "wallclock_s": 0.2 * step}
        if step % 5 == 0:
            row["val_loss"] = loss + 0.1
            row["val_bpb"] = (loss + 0.1) / 2
        tracker.log_step(step, **row)
    if status != "running":
        tracker.finalize(status)
    return tracker.run_dir


@pytest.fixture
def three_runs(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "lr_1e-3", 20, 1e-3)
    make_run(runs, "lr_1e-1", 15, 1e-1, status="diverged", diverge_at=11)
    cut = make_run(runs, "lr_3e-3", 20, 3e-3, status="running")
    for name in ("metrics.csv", "summary.json", "config.json", "metrics.json"):
        (cut / name).unlink(missing_ok=True)  # a run killed mid-way: only the streamed jsonl survives
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "train_lo')  # torn last line
    return runs


def test_compare_three_runs_with_a_glob(three_runs, tmp_path, capsys):
    (three_runs / "lr_comparison.png").write_bytes(b"not a run")  # a file the glob also matches
    out = tmp_path / "cmp" / "comparison.png"
    assert compare.main([str(three_runs / "lr_*"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert printed.split("\n\nwrote")[0].strip() in table
    lines = [line for line in table.splitlines() if line.startswith("| lr_")]
    assert [line.split(" | ")[0] for line in lines] == ["| lr_1e-3", "| lr_3e-3", "| lr_1e-1"]  # by value
    done, cut, diverged = (line.split(" | ") for line in lines)
    assert done[9].strip(" |") == f"{(6.0 / 20 + 1.1) / 2:.3f}"  # final val bits/byte
    assert done[2] == "completed" and done[3] == f"{6.0 / 20 + 1.1:.4f} (20)" and done[5] == "20"
    assert done[1] == "lr 0.001 \\| test"  # pipes in descriptions are escaped
    assert (
        diverged[2] == "diverged"
        and diverged[3] == f"{6.0 / 10 + 1.1:.4f} (10)"
        and diverged[4] == "nan"
        and diverged[5] == "15"
    )
    assert cut[2].startswith("unknown") and cut[3] == f"{6.0 / 20 + 1.1:.4f} (20)" and cut[5] == "20"
    assert cut[7] == "4.0" and cut[8].strip(" |") == "500"
    image = mpimg.imread(out)
    assert image.shape[0] >= 300 and image.shape[1] >= 800 and image[..., :3].std() > 0.05


def test_names_and_metric(three_runs, tmp_path):
    out = tmp_path / "bpb.png"
    code = compare.main(
        [
            str(three_runs / "lr_1e-3"),
            str(three_runs / "lr_3e-3"),
            "--names",
            "base",
            "fast",
            "--metric",
            "val_bpb",
            "-o",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()
    table = (tmp_path / "bpb.md").read_text()
    assert "| base |" in table and "| fast |" in table and "val_bpb" in table


def test_paths_that_are_not_runs_are_skipped_with_one_warning_unless_none_is_left(three_runs, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (three_runs / "lr_sweep.png").write_bytes(b"png")  # what an unquoted `runs/lr_*` also hands over
    args = [str(three_runs / "lr_1e-3"), str(tmp_path / "notes"), str(three_runs / "lr_sweep.png")]
    assert compare.main([*args, "-o", str(tmp_path / "x.png")]) == 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("warning: skipped 2 path(s)")
    assert "notes" in err and "lr_sweep.png" in err
    assert "| lr_1e-3 |" in (tmp_path / "x.md").read_text()

    assert compare.main([str(tmp_path / "notes"), str(tmp_path / "nothing_*"), "-o", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: no run directory") and "nothing_*" in err
    assert not (tmp_path / "y.png").exists()
    assert compare.main([str(three_runs / "lr_1e-3"), "--names", "a", "b", "-o", str(tmp_path / "x.png")]) == 2


def test_without_o_the_output_goes_to_the_runs_reports_folder_not_the_current_directory(
    three_runs, tmp_path, monkeypatch, capsys
):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for _ in range(2):  # the default output is compare's own: replaced, not refused
        assert compare.main([str(three_runs / "lr_1e-3"), str(three_runs / "lr_3e-3")]) == 0
    assert list((tmp_path / "cwd").iterdir()) == []
    assert (three_runs / ".reports" / "comparison.png").stat().st_size > 1000
    assert "| lr_3e-3 |" in (three_runs / ".reports" / "comparison.md").read_text()
    assert "wrote " + str(three_runs / ".reports" / "comparison.png") in capsys.readouterr().out


def test_cli_entry_point(three_runs, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlm.compare", str(tmp_path / "nope"), "-o", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope" in proc.stderr


def test_smooth_x_axis_and_columns_for_the_keys_that_differ(three_runs, tmp_path):
    out = tmp_path / "tok.png"
    runs = [str(three_runs / "lr_1e-3"), str(three_runs / "lr_1e-1")]
    table = compare.compare_runs(runs, out, metric="train_loss", x="tokens", smooth=4)
    header = table.splitlines()[0]
    # the two runs differ in learning rate, min_learning_rate and max_iterations; description is not a key
    assert header.endswith("| `learning_rate` | `min_learning_rate` | `max_iterations` |")
    assert table.splitlines()[2].endswith("| 0.001 | 0.0001 | 20 |")
    assert mpimg.imread(out).shape[1] == 750  # one panel: tokens
    with pytest.raises(ValueError, match="--smooth 0"):
        compare.compare_runs(runs, out, smooth=0)
    assert compare.main([*runs, "-o", str(tmp_path / "wall.png"), "--x", "wallclock", "--smooth", "3"]) == 0


def test_running_mean():
    from jaxlm.tracking.plots import running_mean

    assert running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert running_mean([2.0, 4.0], 1) == [2.0, 4.0]
