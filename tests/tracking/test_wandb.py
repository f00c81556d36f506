"""W&B sink, offline only: the run's files read back with W&B's own reader (scripts/check_wandb_offline.py,
`wandb leet inspect`) equal metrics.csv; a resume continues the same W&B run with no step logged twice;
a config asking for W&B without the package is a one-line error before anything is written.
Skipped when the optional extra is not installed (`uv sync --extra wandb`)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from helpers import REPO_ROOT
from jaxlm.tracking import ExperimentTracker

sys.path.insert(0, str(REPO_ROOT / "scripts"))
check_wandb_offline = importlib.import_module("check_wandb_offline")

needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb extra not installed")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Nothing may reach the network: offline mode, no key, every W&B folder inside tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc key, no ~/.config/wandb
    for var, sub in (("WANDB_DIR", "wandb"), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


CONFIG = {"batch_size": 4, "context_length": 8, "learning_rate": 1e-3, "wandb_project": "jaxlm-test"}


def log_rows(tracker: ExperimentTracker, steps, wall0: float = 0.0) -> None:
    """Deterministic losses (as training is), a clock that depends on the session."""
    for step in steps:
        val = 3.0 - step / 100 if step % 5 == 0 else None
        tracker.log_step(
            step,
            train_loss=4.0 - step / 50,
            val_loss=val,
            learning_rate=1e-3 * step / 20,
            tokens_per_sec=1000.0 + step,
            grad_norm=0.5 + step / 1000,
            wallclock_s=wall0 + step * 0.25,
        )
        if val is not None:
            tracker.log_sample(step, "Once upon a time", f"Once upon a time step {step}")


@pytest.mark.slow
@needs_wandb
def test_offline_run_equals_metrics_csv(offline):
    tracker = ExperimentTracker("run", CONFIG, offline / "runs", make_plots=False)
    log_rows(tracker, range(1, 11))
    tracker.finalize("completed")
    run_dir = offline / "runs" / "run"
    problems, facts = check_wandb_offline.compare(run_dir)
    assert problems == []
    assert facts["history_rows"] == 10 and facts["values_compared"] >= 10 * 5
    assert {"step", "wallclock_s", "train/loss", "val/loss"} <= set(facts["metrics_defined"])
    assert facts["status"] == "completed" and facts["exit_codes"] == [0]
    assert facts["sample_tables"] >= 1
    wb = check_wandb_offline.read_offline_run(run_dir)
    assert wb["config"]["learning_rate"] == 1e-3 and wb["config"]["wandb_project"] == "jaxlm-test"
    assert wb["summary"]["final/train_loss"] == pytest.approx(4.0 - 10 / 50)
    assert json.loads((run_dir / "wandb.json").read_text())["logged_through"] == 10


@pytest.mark.slow
@needs_wandb
def test_resume_continues_the_same_run_without_duplicate_steps(offline):
    tracker = ExperimentTracker("run", CONFIG, offline / "runs", make_plots=False)
    log_rows(tracker, range(1, 13))  # crashed after step 12; the last checkpoint is step 8
    tracker.finalize("interrupted")
    run_dir = offline / "runs" / "run"
    first_id = json.loads((run_dir / "wandb.json").read_text())["id"]
    resumed = ExperimentTracker.resume(run_dir, 8, make_plots=False)
    log_rows(resumed, range(9, 21), wall0=0.5)  # steps 9..12 redone: the same losses, a later clock
    resumed.finalize("completed")
    problems, facts = check_wandb_offline.compare(run_dir)
    # W&B keeps the first points of the redone steps: only their wall-clock differs from metrics.csv's.
    assert problems and all(p.startswith(tuple(f"step {s} wallclock_s:" for s in (9, 10, 11, 12))) for p in problems)
    assert facts["run_ids"] == [first_id] and len(facts["files"]) == 2
    assert facts["history_rows"] == 20 and facts["exit_codes"] == [1, 0]


def test_asking_for_wandb_without_the_package_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from jaxlm import launch

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, as without the extra
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"vocab_size": 300, "max_iterations": 2, "warmup_iters": 1}))
    out = tmp_path / "runs"
    code = launch.main(["--config", str(config), "--output-dir", str(out), "--set", "wandb_project=x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: config key 'wandb_project'") and err.count("\n") == 1
    assert "uv sync --extra wandb" in err and not out.exists()
