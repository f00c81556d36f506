"""The seed's tracking API, used as the seed README uses it, from a training loop with no JAX in it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SEED_LOOP = textwrap.dedent("""
    import math, sys
    from pathlib import Path

    from jaxlm.tracking import ExperimentConfig, ExperimentLogger, ExperimentTracker, compare_experiments

    out = Path(sys.argv[1])
    for lr in (1e-3, 3e-3):
        name = f"seed_lr_{lr:g}"
        config = ExperimentConfig(experiment_name=name, description=f"seed API, lr {lr:g}", d_model=64,
                                  num_layers=2, num_heads=4, context_length=32, batch_size=8,
                                  max_iterations=40, learning_rate=lr, min_learning_rate=lr / 10, warmup_iters=4)
        logger = ExperimentLogger(experiment_name=name, config=config, output_dir=out)
        for step in range(1, config.max_iterations + 1):  # a stand-in for a PyTorch loop
            loss = 5.0 * math.exp(-step * lr * 20) + 1.5
            logger.log_training_step(step, train_loss=loss, learning_rate=lr, tokens_per_sec=1234.0)
            if step % 10 == 0:
                logger.log_validation_step(step, val_loss=loss + 0.1, val_perplexity=math.exp(loss + 0.1))
        logger.finalize()

    tracker = ExperimentTracker("plain", ExperimentConfig(experiment_name="plain"), out)
    tracker.log_step(1, train_loss=4.0, learning_rate=1e-4, tokens_per_sec=10.0)
    tracker.log_step(2, train_loss=3.0, val_loss=3.2, learning_rate=2e-4, tokens_per_sec=11.0, grad_norm=0.7)
    tracker.finalize()

    table = compare_experiments([out / "seed_lr_0.001", out / "seed_lr_0.003"], out / "seed_comparison.png",
                                experiment_names=["slow", "fast"])
    assert "| slow |" in table and "| fast |" in table
    loaded = [m for m in ("jax", "flax", "optax", "torch") if m in sys.modules]
    assert not loaded, loaded
    print("OK")
""")


@pytest.mark.slow
def test_seed_api_from_a_loop_without_jax(tmp_path):
    script = tmp_path / "seed_loop.py"
    script.write_text(SEED_LOOP)
    out = tmp_path / "experiments"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr

    run = out / "seed_lr_0.001"
    for name in (
        "config.json",
        "metrics.csv",
        "metrics.jsonl",
        "metrics.json",
        "summary.json",
        "loss_curves.png",
        "lr_schedule.png",
        "train.log",
    ):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["experiment_name"] == "seed_lr_0.001" and config["experiment_id"].startswith("seed_lr_0.001_")
    assert config["d_model"] == 64 and config["learning_rate"] == 1e-3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40 and summary["best_val_step"] == 40
    assert summary["tokens"] == 40 * 8 * 32  # batch_size x context_length from the ExperimentConfig
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["train"]) == 40 and [p["step"] for p in metrics["val"]] == [10, 20, 30, 40]

    log_lines = (run / "train.log").read_text().splitlines()
    assert any("new best validation loss" in line for line in log_lines)
    assert any("step 40: train loss" in line for line in log_lines)
    assert "best validation loss" in log_lines[-1]

    plain = json.loads((out / "plain" / "summary.json").read_text())
    assert plain["status"] == "completed" and plain["best_val_loss"] == 3.2 and plain["final_train_loss"] == 3.0
    assert (out / "seed_comparison.png").is_file() and (out / "seed_comparison.md").is_file()
