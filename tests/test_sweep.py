"""Sweeps: grid expansion and names, --constant-tokens, --dry-run, diverged/failed points recorded
while the sweep goes on, re-runs skip finished points and resume interrupted ones, the PNG +
table (in `<output-dir>/.reports/`) + one grouped EXPERIMENT_LOG.md entry, not repeated by a re-run,
and one real point run through `jaxlm.launch`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jaxlm.errors import ConfigError
from jaxlm.sweep import main
from jaxlm.tracking import ExperimentTracker
from jaxlm.tracking.runs import CHECKPOINT_FILES
from jaxlm.train.grid import expand, parse_grid

SAMPLE = Path(__file__).resolve().parent.parent / "jaxlm" / "data" / "tinystories_sample"
TINY = {
    "vocab_size": 300,
    "context_length": 16,
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "d_ff": 64,
    "batch_size": 4,
    "max_iterations": 20,
    "warmup_iters": 4,
    "learning_rate": 1e-3,
    "min_learning_rate": 1e-4,
    "log_interval": 2,
    "eval_interval": 4,
    "checkpoint_interval": 4,
    "eval_batches": 1,
    "sample_tokens": 0,
}


@pytest.fixture
def base(tmp_path) -> Path:
    text = (SAMPLE / "train.txt").read_text()
    (tmp_path / "train.txt").write_text(text[:20_000])
    (tmp_path / "valid.txt").write_text(text[20_000:26_000])
    path = tmp_path / "base.json"
    path.write_text(
        json.dumps(
            {**TINY, "train_data_path": str(tmp_path / "train.txt"), "val_data_path": str(tmp_path / "valid.txt")}
        )
    )
    return path


def test_grid_expansion_names_and_constant_tokens(base):
    grid = parse_grid(["batch_size=4,8", "learning_rate=1e-3,3e-3"])
    points = expand(str(base), grid, ["max_iterations=40", "warmup_iters=8"], "bs", constant_tokens=True)
    assert [p.name for p in points] == [
        "bs_batch_size=4_learning_rate=1e-3",
        "bs_batch_size=4_learning_rate=3e-3",
        "bs_batch_size=8_learning_rate=1e-3",
        "bs_batch_size=8_learning_rate=3e-3",
    ]
    assert [(p.config.batch_size, p.config.learning_rate) for p in points] == [
        (4, 1e-3),
        (4, 3e-3),
        (8, 1e-3),
        (8, 3e-3),
    ]
    tokens = {p.config.batch_size * p.config.max_iterations * p.config.context_length for p in points}
    assert tokens == {4 * 40 * 16}  # batch 8 trains 20 steps, not 40
    assert points[2].config.max_iterations == 20 and points[2].config.warmup_iters == 4
    assert expand(str(base), grid, [], "bs")[2].config.max_iterations == 20  # without the flag: unchanged

    with pytest.raises(ConfigError, match="learning_rat"):
        parse_grid(["learning_rat=1e-3"])
    with pytest.raises(ConfigError, match="batch_size"):
        parse_grid(["batch_size=4,big"])
    with pytest.raises(ConfigError, match="warmup_iters"):  # a point that is not a valid config
        expand(str(base), parse_grid(["max_iterations=2,40"]), [], "p")


def test_a_sweep_logging_to_wandb_groups_its_runs_by_prefix(base):
    grid = parse_grid(["learning_rate=1e-3,3e-3"])
    points = expand(str(base), grid, ["wandb_project=cs336"], "lr")
    assert [p.config.wandb_group for p in points] == ["lr", "lr"]
    assert "wandb_group=lr" in points[0].overrides
    assert expand(str(base), grid, ["wandb_project=cs336", "wandb_group=mine"], "lr")[0].config.wandb_group == "mine"
    assert expand(str(base), grid, [], "lr")[0].config.wandb_group is None


def test_dry_run_prints_runs_and_writes_nothing(base, tmp_path, capsys):
    out = tmp_path / "runs"
    assert (
        main(
            [
                "--config",
                str(base),
                "--grid",
                "learning_rate=1e-3,1e-2",
                "--name-prefix",
                "lr",
                "--output-dir",
                str(out),
                "--dry-run",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "lr_learning_rate=1e-3 [run" in printed and "lr_learning_rate=1e-2 [run" in printed
    assert "jaxlm.launch --config" in printed and "--set learning_rate=1e-2" in printed
    assert not out.exists()


class FakeLaunch:
    """Stands in for `python -m jaxlm.launch` (a real one is run below): writes a run directory
    through the real ExperimentTracker with the outcome chosen per learning rate."""

    def __init__(self, outcomes: dict[str, str]):
        self.outcomes, self.commands = outcomes, []

    def __call__(self, command: list[str]) -> int:
        self.commands.append(command)
        if "--resume" in command:
            run_dir = Path(command[command.index("--resume") + 1])
            name, out = run_dir.name, run_dir.parent
            tracker = ExperimentTracker.resume(run_dir, 4, tensorboard=False, make_plots=False)
        else:
            name, out = command[command.index("--name") + 1], command[command.index("--output-dir") + 1]
            if "--overwrite" in command:  # launch replaces the old run before its tracker opens
                shutil.rmtree(Path(out) / name)
            tracker = ExperimentTracker(name, {"name": name}, out, tensorboard=False, make_plots=False)
        lr = name.split("learning_rate=")[1]
        outcome = self.outcomes[lr] if "--resume" not in command else "completed"
        base_loss = {"1e-3": 2.0, "3e-3": 1.5, "1e-2": 1.8, "1": 5.0}[lr]
        for step in (4, 8) if "--resume" not in command else (8,):
            tracker.log_step(step, train_loss=base_loss, val_loss=base_loss - step / 100)
            if outcome == "interrupted" and step == 4:
                for name in CHECKPOINT_FILES:  # the files of a checkpoint, as a real stop saves one
                    (tracker.run_dir / "checkpoints" / "4" / name).parent.mkdir(parents=True, exist_ok=True)
                    (tracker.run_dir / "checkpoints" / "4" / name).write_text("{}")
                tracker.finalize("interrupted", steps=4)
                return 75
        if outcome == "diverged":
            tracker.log_step(9, train_loss=float("nan"))
            tracker.finalize("diverged", steps=9, diverged_step=9)
            return 3
        tracker.finalize(outcome, steps=8)
        return 0 if outcome == "completed" else 1


def test_sweep_records_diverged_and_failed_points_and_reruns_resume(base, tmp_path, capsys):
    out, log = tmp_path / "runs", tmp_path / "EXPERIMENT_LOG.md"
    args = [
        "--config",
        str(base),
        "--grid",
        "learning_rate=1e-3,3e-3,1e-2,1",
        "--name-prefix",
        "lr",
        "--output-dir",
        str(out),
        "--experiment-log",
        str(log),
    ]
    fake = FakeLaunch({"1e-3": "completed", "3e-3": "interrupted", "1e-2": "failed", "1": "diverged"})
    assert main(args, runner=fake) == 1  # not every point finished
    assert len(fake.commands) == 4  # the failed and diverged points did not stop the sweep

    table = (out / ".reports" / "lr_sweep.md").read_text()
    rows = {
        line.split("|")[2].strip(): line
        for line in table.splitlines()
        if line.startswith("| ") and "learning_rate=" in line
    }
    assert "**DIVERGED** at step 9" in rows["[learning_rate=1](../lr_learning_rate=1)"]
    assert "failed" in rows["[learning_rate=1e-2](../lr_learning_rate=1e-2)"]
    assert "**best**" in rows["**[learning_rate=1e-3](../lr_learning_rate=1e-3)**"]  # 3e-3 was interrupted
    assert (out / ".reports" / "lr_sweep.png").stat().st_size > 1000
    assert log.read_text().count("\n## ") == 1 and "sweep lr · 4 points" in log.read_text()

    # Again: finished points skipped, the interrupted one resumed, the failed one left alone.
    fake2 = FakeLaunch({})
    assert main(args, runner=fake2) == 1
    assert len(fake2.commands) == 1 and "--resume" in fake2.commands[0]
    assert fake2.commands[0][fake2.commands[0].index("--resume") + 1] == str(out / "lr_learning_rate=3e-3")
    assert "--no-experiment-log" in fake2.commands[0]
    rows = {
        line.split("|")[2].strip(): line
        for line in (out / ".reports" / "lr_sweep.md").read_text().splitlines()
        if line.startswith("| ") and "learning_rate=" in line
    }
    assert "**best**" in rows["**[learning_rate=3e-3](../lr_learning_rate=3e-3)**"]  # 1.42 after resuming
    assert log.read_text().count("\n## ") == 2

    # --retry-failed starts the failed point again, with --overwrite.
    fake3 = FakeLaunch({"1e-2": "completed"})
    assert main(args + ["--retry-failed"], runner=fake3) == 0  # all completed or diverged: a finished sweep
    assert len(fake3.commands) == 1 and fake3.commands[0][-1] == "--overwrite"
    assert log.read_text().count("\n## ") == 3

    # The finished sweep once more: nothing runs, the report is redrawn, the log gets no second copy.
    fake4 = FakeLaunch({})
    assert main(args, runner=fake4) == 0 and fake4.commands == []
    assert log.read_text().count("\n## ") == 3
    assert all((p / "summary.json").is_file() for p in out.glob("lr_*"))  # a run glob finds runs alone


@pytest.mark.slow
def test_one_real_point_through_launch(base, tmp_path, capsys):
    out = tmp_path / "runs"
    assert (
        main(
            [
                "--config",
                str(base),
                "--grid",
                "learning_rate=2e-3",
                "--set",
                "max_iterations=4",
                "--name-prefix",
                "real",
                "--output-dir",
                str(out),
                "--quiet",
                "--no-experiment-log",
            ]
        )
        == 0
    )
    summary = json.loads((out / "real_learning_rate=2e-3" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert json.loads((out / "real_learning_rate=2e-3" / "config.json").read_text())["learning_rate"] == 2e-3
    assert "**best**" in (out / ".reports" / "real_sweep.md").read_text()
    assert not (tmp_path / "EXPERIMENT_LOG.md").exists() and not (out / "EXPERIMENT_LOG.md").exists()


def test_points_that_fail_before_their_run_begins_are_failed_in_the_table_and_draw_no_plot(base, tmp_path, capsys):
    """A launch refused before it made its run directory (exit 2) is "failed", as the console says, not
    "not started"; with nothing to draw, no empty plot is written."""
    out = tmp_path / "runs"
    args = ["--config", str(base), "--grid", "learning_rate=1e-3,3e-3", "--name-prefix", "f"]
    args += ["--output-dir", str(out), "--no-experiment-log"]
    assert main(args, runner=lambda command: 2) == 1
    table = (out / ".reports" / "f_sweep.md").read_text()
    assert table.count("| failed |") == 2 and "not started" not in table
    assert not (out / ".reports" / "f_sweep.png").exists() and not (out / ".reports" / "f_by_value.png").exists()
    assert "failed (exit 2)" in capsys.readouterr().out


def test_slurm_args_may_be_one_option_that_starts_with_a_dash():
    from jaxlm.sweep import parse_args

    args = parse_args(["--config", "c.json", "--grid", "seed=1,2", "--slurm", "--slurm-args", "--cpus-per-task=1"])
    assert args.slurm_args == "--cpus-per-task=1" and args.slurm
    assert parse_args(["--config", "c.json", "--slurm", "--slurm-args", "--time=1:00 -p gpu"]).slurm_args == (
        "--time=1:00 -p gpu"
    )
