"""Data parallel + FSDP over a device mesh, and gradient accumulation.

The multi-device runs happen in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the flag must be set before
JAX starts, and this pytest process already runs JAX on one device); the
1-device reference runs here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helpers import MULTI_DEVICE_SHAPE, RecordingTracker, shared_token_cache
from jaxlm.config import build_config
from jaxlm.errors import ConfigError
from jaxlm.train.sharding import fsdp_spec, mesh_shape

WORKER = Path(__file__).with_name("scale_worker.py")
TINY = {
    **MULTI_DEVICE_SHAPE,
    "max_iterations": 20,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "eval_interval": 20,
    "eval_batches": 2,
    "log_interval": 1,
    "sample_tokens": 0,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A token cache for the bundled sample at this module's vocab, shared by its runs."""
    yield from shared_token_cache(tmp_path_factory, TINY)


@pytest.fixture(scope="module")
def reference(cache_dir) -> tuple[list[float], float]:
    """20 steps on this process's single device, no accumulation: what every other layout must reproduce."""
    return train_here()


def train_here(**overrides) -> tuple[list[float], float]:
    from jaxlm.train.trainer import Trainer

    c = build_config({**TINY, **overrides})
    with tempfile.TemporaryDirectory() as run_dir:  # the trainer saves its tokenizer and checkpoints there
        tracker = RecordingTracker("t", run_dir)
        result = Trainer(c).run(tracker)
    return [r["train_loss"] for r in tracker.rows], result.summary["final_val_loss"]


def run_worker(runs: dict, cache: Path, devices: int) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "JAXLM_CACHE_DIR": str(cache),
    }
    spec = json.dumps({"config": TINY, "runs": runs})
    proc = subprocess.run([sys.executable, str(WORKER), spec], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_close(a, b, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=0)


@pytest.mark.slow
def test_meshes_match_one_device_and_shard_params(cache_dir, reference):
    reference, reference_val = reference
    out = run_worker(
        {"dp4": {"mesh_data": 4, "mesh_fsdp": 1}, "dp2_fsdp2": {"mesh_data": 2, "mesh_fsdp": 2}}, cache_dir, 4
    )
    assert out["_devices"] == 4
    assert len(reference) == 20
    for name in ("dp4", "dp2_fsdp2"):
        assert out[name]["device_count"] == 4
        assert_close(out[name]["losses"], reference)
        assert_close(out[name]["val_loss"], reference_val)
    assert out["dp4"]["mesh_shape"] == {"data": 4, "fsdp": 1}
    assert out["dp4"]["w1_spec"] == []  # fsdp=1: replicated
    # fsdp=2: w1 (32, 64) split along its largest dim, each device holds half of it
    assert out["dp2_fsdp2"]["w1_spec"] == [None, "fsdp"]
    assert out["dp2_fsdp2"]["w1_shard_shapes"] == [[32, 32]] * 4
    assert out["dp2_fsdp2"]["emb_spec"] == ["fsdp", None]  # (300, 32)


@pytest.mark.slow
def test_grad_accumulation_equals_full_batch(reference):
    full, full_val = reference
    accum, accum_val = train_here(grad_accum_steps=4)
    assert_close(accum, full)
    assert_close(accum_val, full_val)
    assert accum[-1] < accum[0]


def test_split_microbatches_is_strided():
    import jax.numpy as jnp

    from jaxlm.train.steps import split_microbatches

    x = jnp.arange(8 * 3).reshape(8, 3)
    micro = np.asarray(split_microbatches(x, 4))
    assert micro.shape == (4, 2, 3)
    np.testing.assert_array_equal(micro[1], np.asarray(x)[[1, 5]])
    np.testing.assert_array_equal(np.sort(micro.reshape(-1, 3), axis=0), np.asarray(x))


def test_fsdp_spec_picks_largest_divisible_dim():
    assert tuple(fsdp_spec((32, 64), 1)) == ()
    assert tuple(fsdp_spec((32, 64), 4)) == (None, "fsdp")
    assert tuple(fsdp_spec((300, 32), 4)) == ("fsdp", None)  # both divide: the largest
    assert tuple(fsdp_spec((300, 32), 8)) == (None, "fsdp")  # only 32 divides
    assert tuple(fsdp_spec((64, 64), 2)) == ("fsdp", None)  # ties: the first
    assert tuple(fsdp_spec((3, 5), 2)) == ()  # nothing divides: replicated
    assert tuple(fsdp_spec((), 2)) == ()  # scalars (the step count)


def test_mesh_shape_resolution_and_errors():
    c = build_config({**TINY, "mesh_fsdp": 2})
    assert mesh_shape(c, 4) == (2, 2)
    assert mesh_shape(build_config({**TINY, "mesh_data": 2, "mesh_fsdp": -1}), 8) == (2, 4)
    with pytest.raises(ConfigError, match="mesh_fsdp"):
        mesh_shape(build_config({**TINY, "mesh_fsdp": 3}), 4)
    with pytest.raises(ConfigError, match="mesh_data"):
        mesh_shape(build_config({**TINY, "mesh_data": 2, "mesh_fsdp": 1}), 4)
    with pytest.raises(ConfigError, match="batch_size"):
        mesh_shape(build_config({**TINY, "batch_size": 6}), 4)
    with pytest.raises(ConfigError, match="batch_size"):  # 8 rows over 4 devices x 4 micro-batches
        mesh_shape(build_config({**TINY, "grad_accum_steps": 4}), 4)


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"mesh_data": 0}, "mesh_data"),
        ({"mesh_fsdp": -2}, "mesh_fsdp"),
        ({"mesh_data": -1, "mesh_fsdp": -1}, "mesh_fsdp"),
        ({"grad_accum_steps": 0}, "grad_accum_steps"),
        ({"grad_accum_steps": 3}, "grad_accum_steps"),
    ],
)
def test_config_rejects_bad_scale_out_keys(bad, key):
    with pytest.raises(ConfigError, match=key):
        build_config({**TINY, **bad})


def test_launch_rejects_a_mesh_that_does_not_fit_before_writing(tmp_path, cache_dir, capsys):
    from jaxlm import launch

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    code = launch.main(
        ["--config", str(config), "--output-dir", str(tmp_path / "runs"), "--quiet", "--set", "mesh_data=3"]
    )
    assert code == 2
    assert "mesh_data" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_muon_on_an_fsdp_mesh_matches_one_device(cache_dir):
    """Muon's Newton-Schulz matmuls on FSDP-sharded matrices and momenta: the same losses as one device."""
    reference, reference_val = train_here(optimizer="muon")
    out = run_worker({"muon": {"mesh_data": 2, "mesh_fsdp": 2, "optimizer": "muon"}}, cache_dir, 4)
    assert out["muon"]["w1_spec"] == [None, "fsdp"]
    assert_close(out["muon"]["losses"], reference, rtol=1e-4)
    assert_close(out["muon"]["val_loss"], reference_val, rtol=1e-4)
