"""Train tiny configs for a few steps through the real CLI and check the run directory."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from helpers import TINY_MODEL
from jaxlm import launch
from jaxlm.config import FIELDS


def write_config(path, **overrides):
    path.write_text(json.dumps({**TINY_MODEL, **overrides}, indent=2))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_quick_training_on_bundled_sample_lowers_loss(tmp_path, capsys):
    cfg = write_config(
        tmp_path / "tiny.json",
        dataset="tinystories-sample",
        vocab_size=300,
        max_iterations=40,
        eval_interval=20,
        learning_rate=1e-2,
        min_learning_rate=1e-3,
        warmup_iters=4,
        batch_size=8,
        sample_tokens=12,
    )
    out = tmp_path / "runs"
    code = launch.main(
        ["--config", str(cfg), "--output-dir", str(out), "--name", "e2e", "--quiet", "--description", "end-to-end test"]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    run_dir = out / "e2e"
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "metrics.json", "summary.json", "samples.txt"):
        assert (run_dir / name).is_file(), name

    config = json.loads((run_dir / "config.json").read_text())
    assert set(FIELDS) <= set(config)  # fully resolved: every key, defaults included
    assert config["name"] == "e2e" and config["description"] == "end-to-end test" and config["vocab_size"] == 300

    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 41))  # log_interval 1
    train = [float(r["train_loss"]) for r in rows]
    # Row 1 holds the loss of the untrained model: about ln(vocab) with the CS336 init.
    assert train[0] == pytest.approx(math.log(300), abs=0.5)
    assert np.mean(train[-5:]) < train[0] - 1.0
    val_rows = [r for r in rows if r["val_loss"]]
    assert [int(r["step"]) for r in val_rows] == [20, 40]
    val = [float(r["val_loss"]) for r in val_rows]
    assert val[-1] < train[0] - 1.0 and val[-1] <= val[0]
    assert float(val_rows[-1]["val_bpb"]) > 0
    assert float(rows[0]["learning_rate"]) == pytest.approx(1e-2 / 4)  # update 1 of a 4-step warmup
    assert all(float(r["tokens_per_sec"]) > 0 for r in rows)
    assert int(rows[-1]["tokens"]) == 40 * 8 * TINY_MODEL["context_length"]

    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jsonl] == list(range(1, 41))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["train"]) == 40 and [r["step"] for r in metrics["val"]] == [20, 40]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["steps"] == 40 and summary["tokens"] == 40 * 8 * TINY_MODEL["context_length"]
    assert summary["final_val_loss"] == pytest.approx(val[-1])
    assert summary["best_val_loss"] == pytest.approx(min(val))
    assert summary["final_val_bpb"] == pytest.approx(float(val_rows[-1]["val_bpb"]))

    # The public Python API on the same run: model, tokenizer, samples, a loss.
    import jaxlm

    model, config = jaxlm.load_run(run_dir, checkpoint="best")
    tokenizer = jaxlm.load_tokenizer(run_dir)
    ids = np.asarray([tokenizer.encode("Once upon a time there was a girl.").ids[:17]])
    assert model(ids[:, :-1]).shape == (1, ids.shape[1] - 1, config.vocab_size)
    assert jaxlm.evaluate_loss(model, ids) < math.log(300)
    texts = jaxlm.sample(model, tokenizer, "Once upon a time", max_new_tokens=8, num_samples=2, temperature=0)
    assert len(texts) == 2 and texts[0] == texts[1] and texts[0].startswith("Once upon a time")

    samples = (run_dir / "samples.txt").read_text()
    assert "=== step 20" in samples and "=== step 40" in samples and "Once upon a time" in samples
    assert "validation loss:" in stdout and "bits/byte" in stdout and str(run_dir) in stdout


@pytest.mark.slow
def test_training_on_a_synthetic_npy_file(tmp_path, capsys):
    """A .npy token file with no tokenizer: a repeating pattern the model learns fast; no samples."""
    pattern = np.random.default_rng(0).integers(0, 64, size=17)
    tokens = np.tile(pattern, 400).astype(np.uint16)
    np.save(tmp_path / "train.npy", tokens)
    np.save(tmp_path / "valid.npy", tokens[: 17 * 40])
    cfg = write_config(
        tmp_path / "synth.json",
        vocab_size=64,
        max_iterations=30,
        eval_interval=30,
        learning_rate=1e-2,
        min_learning_rate=1e-3,
        warmup_iters=3,
        batch_size=8,
        train_data_path=str(tmp_path / "train.npy"),
        val_data_path=str(tmp_path / "valid.npy"),
    )
    assert launch.main(["--config", str(cfg), "--output-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "synth"  # --name defaults to the config file's stem
    rows = read_csv(run_dir / "metrics.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final_val_loss"] < 0.5 * float(rows[0]["train_loss"])
    assert not (run_dir / "samples.txt").exists()  # no tokenizer, nothing to decode
    assert rows[-1]["val_bpb"] == ""  # no byte count for a bare .npy
