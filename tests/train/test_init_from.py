"""`init_from`: a run starts from weights saved with CS336 names (e.g. by a PyTorch student)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from jaxlm import launch
from jaxlm.data.tokens import batch_at
from jaxlm.model.transformer import build_model, cross_entropy
from jaxlm.model.weights import export_safetensors


@pytest.mark.slow
def test_first_step_loss_is_that_of_the_imported_weights(tmp_path, tiny_config):
    tokens = np.random.default_rng(0).integers(0, 64, 5_000).astype(np.uint16)
    np.save(tmp_path / "train.npy", tokens)
    np.save(tmp_path / "val.npy", tokens[:1_000])
    base = tiny_config(
        vocab_size=64,
        max_iterations=1,
        warmup_iters=1,
        log_interval=1,
        sample_tokens=0,
        train_data_path=str(tmp_path / "train.npy"),
        val_data_path=str(tmp_path / "val.npy"),
    )
    donor = build_model(base, seed=123)  # different weights from the run's own seed-0 init
    weights, _ = export_safetensors(nnx.state(donor, nnx.Param), base, tmp_path / "donor.safetensors")
    x, y = batch_at(tokens, base.seed, 0, base.batch_size, base.context_length)
    expected = float(cross_entropy(donor(x), y))
    own = float(cross_entropy(build_model(base)(x), y))
    assert abs(expected - own) > 1e-3  # the test can tell the two inits apart

    (tmp_path / "run.json").write_text(json.dumps({**base.to_dict(), "init_from": str(weights)}))
    assert (
        launch.main(
            [
                "--config",
                str(tmp_path / "run.json"),
                "--output-dir",
                str(tmp_path / "runs"),
                "--quiet",
                "--no-experiment-log",
            ]
        )
        == 0
    )
    first = json.loads((tmp_path / "runs" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and abs(first["train_loss"] - expected) < 1e-5


def test_missing_init_from_is_a_one_line_config_error(tmp_path, tiny_config, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({**tiny_config().to_dict(), "init_from": "nope.safetensors"}))
    assert launch.main(["--config", str(tmp_path / "bad.json"), "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "init_from" in err and len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()
