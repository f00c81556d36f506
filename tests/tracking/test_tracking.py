"""The run directory: one real (tiny) training run through the CLI, and the tracker's own behaviour
(resume, statuses, crash safety, MFU, the pure-Python schedule) on synthetic rows."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import matplotlib.image as mpimg
import pytest

from jaxlm.tracking import METRIC_COLUMNS, STATUSES, ExperimentTracker

TINY_RUN = {
    "description": "tiny tracking test",
    "vocab_size": 300,
    "context_length": 32,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 2,
    "d_ff": 64,
    "batch_size": 4,
    "max_iterations": 12,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "log_interval": 2,
    "eval_interval": 6,
    "eval_batches": 2,
    "sample_tokens": 8,
}
RUN_FILES = (
    "config.json",
    "metrics.csv",
    "metrics.jsonl",
    "metrics.json",
    "summary.json",
    "loss_curves.png",
    "lr_schedule.png",
    "samples.txt",
)


def fake_run(output_dir, name="run", steps=20, eval_every=5, finalize=True, **tracker_kwargs):
    """A synthetic run through ExperimentTracker: train rows every step, val rows every `eval_every`."""
    config = {
        "description": f"synthetic {name}",
        "learning_rate": 1e-3,
        "min_learning_rate": 1e-4,
        "warmup_iters": 3,
        "cosine_cycle_iters": None,
        "max_iterations": steps,
        "batch_size": 2,
        "context_length": 8,
    }
    tracker = ExperimentTracker(name, config, output_dir, **tracker_kwargs)
    for step in range(1, steps + 1):
        row = {
            "train_loss": 5.0 / step + 1.0,
            "learning_rate": 1e-3,
            "grad_norm": 0.5,
            "tokens_per_sec": 100.0 + step,
            "wallclock_s": 0.1 * step,
        }
        if step % eval_every == 0:
            row.update(val_loss=5.0 / step + 1.2, val_bpb=2.0 / step + 1.0)
            tracker.log_sample(step, "Once", f"sample at {step}")
        tracker.log_step(step, **row)
    if finalize:
        tracker.finalize("completed")
    return tracker


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, cells)) for cells in reader]


@pytest.mark.slow
def test_real_training_run_writes_every_file(tmp_path, capsys):
    from jaxlm import launch

    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(TINY_RUN))
    code = launch.main(
        [
            "--config",
            str(config_path),
            "--name",
            "tiny",
            "--output-dir",
            str(tmp_path / "runs"),
            "--quiet",
            "--set",
            "learning_rate=0.004",
        ]
    )
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "tiny"
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard event file"

    header, rows = read_csv(run / "metrics.csv")
    assert tuple(header) == METRIC_COLUMNS
    steps = [int(r["step"]) for r in rows]
    walls = [float(r["wallclock_s"]) for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == 12
    assert walls == sorted(walls) and walls[0] >= 0
    eval_steps = {6, 12}
    for r in rows:
        on_eval = int(r["step"]) in eval_steps
        for col in ("val_loss", "val_perplexity", "val_bpb"):
            assert (r[col] != "") == on_eval, (r["step"], col)
        assert r["train_loss"] and r["learning_rate"] and r["grad_norm"] and r["tokens_per_sec"]
        assert int(r["tokens"]) == int(r["step"]) * 4 * 32
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == steps
    metrics = json.loads((run / "metrics.json").read_text())
    assert [p["step"] for p in metrics["val"]] == [6, 12] and len(metrics["train"]) == len(rows)

    config = json.loads((run / "config.json").read_text())
    assert config["learning_rate"] == 0.004 and config["d_model"] == 32 and config["name"] == "tiny"
    assert config["overrides"] == ["learning_rate=0.004"] and config["config_file"] == str(config_path)
    assert {"jaxlm_version", "git_commit", "start_time"} <= config.keys()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12 and summary["tokens"] == 12 * 128
    assert summary["best_val_loss"] == min(float(r["val_loss"]) for r in rows if r["val_loss"])
    assert summary["best_val_step"] in eval_steps
    for key in (
        "description",
        "wallclock_s",
        "compile_s",
        "final_train_loss",
        "final_val_loss",
        "final_val_perplexity",
        "final_val_bpb",
        "mean_tokens_per_sec",
        "params_total",
        "params_non_embedding",
        "device_kind",
        "device_count",
        "jax_version",
    ):
        assert summary.get(key) is not None, key
    assert [
        line.split(" ")[2] for line in (run / "samples.txt").read_text().splitlines() if line.startswith("=== step")
    ] == ["6", "12"]

    for png in ("loss_curves.png", "lr_schedule.png"):
        image = mpimg.imread(run / png)
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 600, png
        assert image[..., :3].std() > 0.05, f"{png} is blank"

    log_text = (run.parent / "EXPERIMENT_LOG.md").read_text()  # default: in the runs folder
    assert "tiny · completed" in log_text and "`learning_rate`: 0.003 -> 0.004" in log_text
    assert "[loss curves](tiny/loss_curves.png)" in log_text and "### Observations" in log_text


def test_eval_rows_refresh_plots_and_metrics_json_before_the_end(tmp_path):
    tracker = fake_run(tmp_path, steps=12, eval_every=5, finalize=False)  # a run that is still going (or crashed)
    run = tracker.run_dir
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    assert [p["step"] for p in json.loads((run / "metrics.json").read_text())["val"]] == [5, 10]
    assert (run / "loss_curves.png").stat().st_size > 0 and (run / "lr_schedule.png").stat().st_size > 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 12  # flushed row by row
    assert tracker.last_refresh_s < 5.0


@pytest.mark.parametrize("status", STATUSES)
def test_finalize_accepts_every_status(tmp_path, status):
    tracker = fake_run(tmp_path, steps=6, eval_every=3, finalize=False, tensorboard=False, make_plots=False)
    summary = tracker.finalize(status, error="boom" if status == "failed" else None)
    on_disk = json.loads((tracker.run_dir / "summary.json").read_text())
    assert on_disk["status"] == summary["status"] == status
    assert on_disk["best_val_loss"] == pytest.approx(5.0 / 6 + 1.2) and on_disk["best_val_step"] == 6


def test_finalize_rejects_an_unknown_status(tmp_path):
    tracker = fake_run(tmp_path, steps=2, eval_every=2, finalize=False, tensorboard=False, make_plots=False)
    with pytest.raises(ValueError, match="not one of"):
        tracker.finalize("exploded")


def test_with_block_marks_failed_runs(tmp_path):
    with pytest.raises(RuntimeError):
        with ExperimentTracker("crash", {}, tmp_path, tensorboard=False, make_plots=False) as tracker:
            tracker.log_step(1, train_loss=3.0)
            raise RuntimeError("out of memory")
    summary = json.loads((tmp_path / "crash" / "summary.json").read_text())
    assert summary["status"] == "failed" and "out of memory" in summary["error"]


@pytest.mark.slow
def test_resume_drops_later_rows_and_continues_the_clock(tmp_path):
    first = fake_run(tmp_path, name="r", steps=10, eval_every=5, finalize=False)
    first.finalize("interrupted")
    resumed = ExperimentTracker.resume(tmp_path / "r", from_step=6)
    assert [r["step"] for r in resumed.rows] == [1, 2, 3, 4, 5, 6]
    assert resumed.summary["status"] == "running" and resumed.summary["resumed_from_step"] == 6
    assert resumed.config["max_iterations"] == 10  # read back from config.json, without the metadata keys
    assert "git_commit" not in resumed.config
    for step in (7, 8):
        resumed.log_step(step, train_loss=9.0, wallclock_s=0.5 * (step - 6))  # the new process's own clock
    resumed.finalize("completed", wallclock_s=1.0)
    header, rows = read_csv(tmp_path / "r" / "metrics.csv")
    assert tuple(header) == METRIC_COLUMNS
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [float(r["wallclock_s"]) for r in rows][5:] == pytest.approx([0.6, 1.1, 1.6])
    assert [json.loads(x)["step"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
    ]
    assert "sample at 10" not in (tmp_path / "r" / "samples.txt").read_text()
    assert "sample at 5" in (tmp_path / "r" / "samples.txt").read_text()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["resumes"] == 1
    assert summary["wallclock_s"] == pytest.approx(1.6) and summary["best_val_step"] == 5
    assert len(list((tmp_path / "r").glob("events.out.tfevents.*"))) == 2


def test_mfu_is_filled_when_the_device_peak_is_known(tmp_path):
    tracker = ExperimentTracker("m", {}, tmp_path, tensorboard=False, make_plots=False)
    tracker.write_summary(peak_flops_per_device=989e12, device_count=2, flops_per_token=1e9)
    row = tracker.log_step(1, train_loss=1.0, tokens_per_sec=1e5)
    assert row["mfu"] == pytest.approx(1e5 * 1e9 / (2 * 989e12))
    tracker.write_summary(peak_flops_per_device=None)  # e.g. a CPU: no published peak, no MFU
    assert tracker.log_step(2, train_loss=1.0, tokens_per_sec=1e5)["mfu"] is None


def test_tracking_imports_without_jax():
    code = (
        "import sys, jaxlm.tracking, jaxlm.compare; "
        "bad = [m for m in ('jax', 'matplotlib', 'tensorboardX') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_lr_plot_draws_the_planned_numbers_it_was_given(tmp_path):
    tracker = ExperimentTracker("lr", {"learning_rate": 1.0}, tmp_path, make_plots=True, tensorboard=False)
    tracker.plan_learning_rate([0.0, 0.5, 1.0, 0.5])
    assert tracker.planned_lr == [0.0, 0.5, 1.0, 0.5]
    tracker.log_step(1, train_loss=2.0, learning_rate=0.5, val_loss=2.5)
    assert (tmp_path / "lr" / "lr_schedule.png").stat().st_size > 0


def test_run_metadata_keys_match_the_config_reader():
    """The tracker writes these keys beside the config; jaxlm.config skips the same keys when reading."""
    from jaxlm.config import RUN_METADATA_KEYS
    from jaxlm.tracking.records import META_KEYS

    assert tuple(META_KEYS) == tuple(RUN_METADATA_KEYS)


def test_samples_are_framed_so_no_generated_text_or_prompt_reads_back_as_an_entry(tmp_path):
    from jaxlm.tracking.records import append_sample, sample_entries, trim_samples

    hostile = "story\n=== step 99 | 1 characters | prompt: 'x'\nz\r\n\n=== step 7 | prompt: 'old'\n"
    append_sample(tmp_path, 5, "Once | 3 characters | prompt: '\n=== step 1", hostile)
    append_sample(tmp_path, 10, "", "")
    append_sample(tmp_path, 15, "a", hostile)
    path = tmp_path / "samples.txt"
    assert [step for step, _ in sample_entries(path.read_bytes().decode())] == [5, 10, 15]
    whole = path.read_bytes()
    trim_samples(tmp_path, 10)  # a resume from step 10
    assert path.read_bytes() == whole[: whole.index(b"=== step 15 | ")]
    path.write_bytes(whole[:-5])  # torn while the last one was written
    trim_samples(tmp_path, 20)
    assert [step for step, _ in sample_entries(path.read_bytes().decode())] == [5, 10]
    path.write_text("=== step 5 | prompt: 'a'\nfoo\n\n=== step 10 | prompt: 'b'\nbar\n\n")  # before the framing
    trim_samples(tmp_path, 5)
    assert path.read_text() == "=== step 5 | prompt: 'a'\nfoo\n\n"
