"""EXPERIMENT_LOG.md: one entry per run whatever its status, appended, never rewritten, never interleaved.

Launch is driven with `jaxlm.train.trainer.Trainer` replaced by a fake loop that logs through the real tracker, so the
CLI wiring (--experiment-log, --no-experiment-log, the --set overrides) is tested without compiling."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time

import pytest

from jaxlm import launch
from jaxlm.train import loop, trainer

CONFIG = {
    "description": "log test",
    "vocab_size": 300,
    "context_length": 16,
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "d_ff": 64,
    "batch_size": 2,
    "max_iterations": 6,
    "warmup_iters": 1,
    "learning_rate": 1e-3,
    "min_learning_rate": 1e-4,
    "eval_interval": 3,
}


def fake_train(fail_at=None):
    class FakeTrainer:
        def __init__(self, config, progress=False):
            self.config, self.step, self.resumed = config, 0, {}

        def run(self, tracker, stop=None):
            config = self.config
            for step in range(1, config.max_iterations + 1):
                self.step = step
                if step == fail_at:
                    raise RuntimeError("NaN in the attention logits")
                evals = {"val_loss": 4.0 / step, "val_bpb": 1.0 / step} if step % config.eval_interval == 0 else {}
                tracker.log_step(step, train_loss=5.0 / step, learning_rate=config.learning_rate, **evals)
            summary = tracker.finalize("completed", compile_s=0.5, wallclock_s=1.5)
            return loop.RunResult("completed", summary, None)

    return FakeTrainer


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "cfg.json").write_text(json.dumps(CONFIG))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer, "Trainer", fake_train())
    return tmp_path


def test_two_runs_append_two_entries_and_leave_the_first_unchanged(project):
    assert launch.main(["--config", "cfg.json", "--name", "a", "--quiet"]) == 0
    first = (project / "runs" / "EXPERIMENT_LOG.md").read_text()  # with the runs: runs/EXPERIMENT_LOG.md
    assert not (project / "EXPERIMENT_LOG.md").exists()
    assert first.count("\n## ") == 1 and "a · completed" in first
    assert "nothing (no `--set` overrides)" in first
    assert "[loss curves](a/loss_curves.png)" in first and "[LR schedule](a/lr_schedule.png)" in first
    assert "best val loss 0.6667 (step 6)" in first and "6 steps" in first and "1.5 s" in first
    assert first.rstrip().endswith("### Observations")

    assert (
        launch.main(
            [
                "--config",
                "cfg.json",
                "--name",
                "b",
                "--quiet",
                "--description",
                "does lr matter?",
                "--set",
                "learning_rate=0.003",
                "--set",
                "warmup_iters=2",
                "--set",
                "batch_size=2",  # the file's own value: not a difference
            ]
        )
        == 0
    )
    both = (project / "runs" / "EXPERIMENT_LOG.md").read_text()
    assert both.startswith(first) and both.count("\n## ") == 2
    second = both[len(first) :]
    assert "b · completed" in second and "does lr matter?" in second
    assert "`learning_rate`: 0.001 -> 0.003" in second and "`warmup_iters`: 1 -> 2" in second
    assert "batch_size" not in second


def test_log_path_option_and_opt_out(project):
    assert launch.main(["--config", "cfg.json", "--name", "a", "--quiet", "--experiment-log", "notes/lab.md"]) == 0
    assert "a · completed" in (project / "notes" / "lab.md").read_text()
    assert "(../runs/a/loss_curves.png)" in (project / "notes" / "lab.md").read_text()
    assert launch.main(["--config", "cfg.json", "--name", "b", "--quiet", "--no-experiment-log"]) == 0
    assert not (project / "runs" / "EXPERIMENT_LOG.md").exists() and not (project / "EXPERIMENT_LOG.md").exists()
    assert (project / "runs" / "b" / "summary.json").is_file()


def test_a_failed_run_is_logged_too(project, monkeypatch):
    monkeypatch.setattr(trainer, "Trainer", fake_train(fail_at=5))
    with pytest.raises(RuntimeError):
        launch.main(["--config", "cfg.json", "--name", "boom", "--quiet"])
    text = (project / "runs" / "EXPERIMENT_LOG.md").read_text()
    assert "boom · failed" in text and "NaN in the attention logits" in text and "(step 3)" in text


APPENDER = """
import sys
import time
from jaxlm.tracking.explog import append_entry
path, worker = sys.argv[1], sys.argv[2]
for i in range(15):
    append_entry(path, f"## entry {worker}-{i}\\n" + f"line of worker {worker}\\n" * 400 + "### end\\n\\n")
"""


def test_concurrent_appends_do_not_interleave(tmp_path):
    path = tmp_path / "EXPERIMENT_LOG.md"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(w)]) for w in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    blocks = path.read_text().split("## entry ")[1:]
    assert len(blocks) == 60
    for block in blocks:
        worker = block.split("-", 1)[0]
        body = block.split("\n", 1)[1].split("### end")[0]
        assert body == f"line of worker {worker}\n" * 400
    assert path.read_text().count("# Experiment log") == 1


def test_append_waits_for_a_lock_held_by_another_writer(tmp_path):
    path = tmp_path / "EXPERIMENT_LOG.md"
    path.write_text("# earlier entries\n")
    script = (
        "import sys\nfrom jaxlm.tracking.explog import append_entry\nprint('ready', flush=True)\n"
        "append_entry(sys.argv[1], '## late entry\\n')\n"
    )
    with open(path, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert proc.poll() is None and path.read_text() == "# earlier entries\n"  # still waiting
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    assert proc.wait(timeout=30) == 0
    assert path.read_text() == "# earlier entries\n## late entry\n"


def test_a_resumed_runs_entry_keeps_where_it_was_launched_from(tmp_path):
    from jaxlm.tracking import ExperimentTracker

    config_file = tmp_path / "base.json"
    config_file.write_text(json.dumps({"learning_rate": 0.001, "max_iterations": 20}))
    log = tmp_path / "EXPERIMENT_LOG.md"
    config = {"learning_rate": 0.002, "max_iterations": 20}
    first = ExperimentTracker(
        "r", config, tmp_path, tensorboard=False, make_plots=False, experiment_log=log,
        config_file=str(config_file), overrides=["learning_rate=0.002"],
    )  # fmt: skip
    first.log_step(5, train_loss=3.0)
    first.finalize("interrupted")
    resumed = ExperimentTracker.resume(
        tmp_path / "r", 5, config={**config, "max_iterations": 50}, tensorboard=False, make_plots=False,
        experiment_log=log, overrides=["max_iterations=50"],
    )  # fmt: skip
    resumed.log_step(6, train_loss=2.9)
    resumed.finalize("completed")
    second = log.read_text().split("\n## ")[-1]
    assert f"Launched from: `{config_file}`" in second
    assert "`learning_rate`: 0.001 -> 0.002" in second and "`max_iterations`: 20 -> 50" in second
    assert "(default)" not in second


def test_a_killed_run_gets_its_entry_from_the_next_launch_once(project):
    """A run killed without a word (summary `running`, lock free) is logged `stopped (killed)` by the next
    launch in its runs folder, once, in the log it was writing to; a run still held is left alone."""
    from jaxlm.tracking import ExperimentTracker, runlock
    from jaxlm.tracking.killed import LOGGED, record_killed, record_killed_runs

    log = project / "runs" / "EXPERIMENT_LOG.md"  # the launches' default
    killed = ExperimentTracker("killed", {**CONFIG, "seed": 1}, "runs", experiment_log=log, config_file="cfg.json")
    for step in (1, 2, 3):
        killed.log_step(step, train_loss=5.0 / step, val_loss=4.5 if step == 3 else None)
    held = ExperimentTracker("held", CONFIG, "runs", experiment_log=log)  # its owner is alive:
    lock = runlock.acquire(held.run_dir)
    try:
        assert launch.main(["--config", "cfg.json", "--name", "next", "--quiet"]) == 0
        text = log.read_text()
        assert text.count("\n## ") == 2, text
        entry = text.split("\n## ")[1]
        assert entry.splitlines()[0].endswith("· killed · stopped (killed)"), entry
        assert "killed at step 3 (no stop signal handled); no checkpoint was saved" in entry
        assert "best val loss 4.5000 (step 3)" in entry and "Launched from: `cfg.json`" in entry
        assert "· next · completed" in text.split("\n## ")[2]
        assert json.loads((project / "runs" / "killed" / "summary.json").read_text())[LOGGED] is True
        assert record_killed_runs(project / "runs") == []  # once per kill
        assert launch.main(["--config", "cfg.json", "--name", "again", "--quiet"]) == 0
        assert log.read_text().count("stopped (killed)") == 1
    finally:
        lock.release()
    assert record_killed_runs(project / "runs") == [project / "runs" / "held"]  # freed: now it is a kill

    lock = runlock.acquire(killed.run_dir)  # a --resume owns it: the mark goes with the reopened summary
    try:
        assert not record_killed(killed.run_dir)
        reopened = ExperimentTracker.resume(killed.run_dir, 3, config=CONFIG, experiment_log=log)
        assert LOGGED not in reopened.summary and reopened.summary["status"] == "running"
    finally:
        lock.release()
    for tracker in (killed, held, reopened):  # the killed runs' writers, which nothing else closes
        tracker.tb.close()
