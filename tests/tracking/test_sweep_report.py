"""Sweep figures and table (jaxlm.tracking.sweep_report, sweep_plots) and `python -m jaxlm.sweep --report`,
on run directories written by the real ExperimentTracker."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import pytest

from jaxlm import sweep
from jaxlm.tracking import ExperimentTracker
from jaxlm.tracking.sweep_plots import PointCurves, ValuePoint, plot_by_value, plot_sweep_curves
from jaxlm.tracking.sweep_report import sweep_table
from jaxlm.train import grid

LRS = {"1e-3": 3.0, "3e-3": 2.5, "1e-2": 2.8, "1": None}  # final-ish loss; None = diverges at step 5


def make_point(runs, name, values: dict, floor, full=None):
    config = {"learning_rate": 1e-3, "batch_size": 4, "context_length": 8, "max_iterations": 40, **values}
    tracker = ExperimentTracker(name, config, runs, tensorboard=False, make_plots=False)
    for step in range(1, 41):
        if floor is None and step == 5:
            tracker.log_step(step, train_loss=30000.0)
            tracker.finalize("diverged", steps=5, diverged_step=5)
            return tracker.run_dir
        loss = (floor or 3.0) + 6.0 / step
        tracker.log_step(step, train_loss=loss, val_loss=loss + 0.1 if step % 10 == 0 else None)
    tracker.finalize("completed", steps=40, **({"full_val_loss": full} if full else {}))
    return tracker.run_dir


@pytest.fixture
def lr_sweep(tmp_path):
    runs = tmp_path / "runs"
    for value, floor in LRS.items():
        make_point(
            runs, f"lr_learning_rate={value}", {"learning_rate": float(value)}, floor, 2.61 if value == "3e-3" else None
        )
    return runs


def test_curves_fit_the_points_that_did_not_diverge(tmp_path):
    good = [
        PointCurves(f"p{i}", [{"step": s, "train_loss": 2 + i + 6 / s, "val_loss": 3 + i} for s in range(1, 30)])
        for i in range(2)
    ]
    bad = PointCurves("lr=1", [{"step": 1, "train_loss": 8.0}, {"step": 5, "train_loss": 30000.0}], diverged_step=5)
    fig = plot_sweep_curves([*good, bad], tmp_path / "c.png", "t")
    train_ax, val_ax = fig.axes[:2]
    bottom, top = train_ax.get_ylim()
    assert 2.0 <= top < 10.0 and bottom > 1.5  # 30000 does not stretch the axis; the good curves fill it
    labels = [t.get_text() for t in train_ax.get_legend().get_texts()]
    assert "lr=1 (diverged, step 5)" in labels
    cross = [line for line in train_ax.lines if line.get_marker() == "x"]
    assert len(cross) == 1 and cross[0].get_ydata()[0] == pytest.approx(top)  # × on the top edge
    assert mpimg.imread(tmp_path / "c.png").shape[1] == 1200


def test_by_value_is_log_x_with_diverged_at_the_top_and_best_ringed(tmp_path):
    points = [
        ValuePoint(1e-3, 3.1, 3.2),
        ValuePoint(3e-3, 2.6, 2.7),
        ValuePoint(1e-2, 2.9, 2.95),
        ValuePoint(1.0, None, None, 5),
    ]
    fig = plot_by_value(points, "learning_rate", tmp_path / "v.png", "t")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    top = ax.get_ylim()[1]
    assert top < 4  # from the non-diverged losses only
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_xdata()[0] == 1.0 and crosses[0].get_ydata()[0] == top
    assert any("best: learning_rate=0.003" in t.get_text() for t in ax.get_legend().get_texts())
    narrow = plot_by_value([ValuePoint(1.0, 3.0, 3.1), ValuePoint(5.0, 2.9, 3.0)], "x", tmp_path / "n.png", "t")
    assert narrow.axes[0].get_xscale() == "linear"  # 5x span: linear


def test_report_from_existing_runs_writes_both_figures_and_the_table(lr_sweep, capsys):
    assert sweep.main(["--report", "lr", "--output-dir", str(lr_sweep)]) == 0
    out = capsys.readouterr().out
    for name in ("lr_sweep.png", "lr_by_value.png", "lr_sweep.md"):
        assert (lr_sweep / ".reports" / name).stat().st_size > 1000 or name.endswith(".md")
        assert not (lr_sweep / name).exists()  # where no run-directory glob finds it
    table = (lr_sweep / ".reports" / "lr_sweep.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| ") and "status" in line)
    assert "full val loss" in header and "`learning_rate`" in header
    row = next(line for line in table.splitlines() if line.startswith("| ") and "learning_rate=3e-3" in line)
    assert "2.6100" in row and "**best**" in row and "| 0.003 |" in row
    assert "**DIVERGED** at step 5" in out
    assert [p.name for p in grid.find_points(lr_sweep, "lr")] == [
        f"lr_learning_rate={v}" for v in ("1e-3", "3e-3", "1e-2", "1")
    ]  # numeric order


def test_two_key_grid_gets_a_heat_map_and_names_parse(tmp_path, capsys):
    runs = tmp_path / "runs"
    for lr in ("1e-3", "1e-2"):
        for mlr in ("1e-4", "1e-5"):
            make_point(
                runs,
                f"g_learning_rate={lr}_min_learning_rate={mlr}",
                {"learning_rate": float(lr), "min_learning_rate": float(mlr)},
                2 + float(lr),
            )
    points = grid.find_points(runs, "g")
    assert points[0].values == (("learning_rate", "1e-3"), ("min_learning_rate", "1e-5"))
    assert sweep.main(["--report", "g", "--output-dir", str(runs)]) == 0
    assert mpimg.imread(runs / ".reports" / "g_by_value.png").shape[0] > 100


def test_report_with_no_matching_runs_is_one_line_exit_2(tmp_path, capsys):
    assert sweep.main(["--report", "nope", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --report nope")
    assert sweep.main(["--grid", "learning_rate=1e-3"]) == 2  # neither --config nor --report
    assert capsys.readouterr().err.startswith("error: --config")


def test_table_without_full_loss_or_differing_keys_keeps_its_columns(tmp_path):
    from jaxlm.tracking.runs import load_run

    runs = tmp_path / "runs"
    run = load_run(make_point(runs, "only", {}, 2.0))
    point = type("P", (), {"name": "only", "label": "only", "values": ()})()
    table = sweep_table([point], {"only": run}, None)
    assert "full val loss" not in table and "`" not in table.splitlines()[0]
    assert math.isfinite(json.loads((runs / "only" / "summary.json").read_text())["best_val_loss"])
