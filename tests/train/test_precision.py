"""dtype "bfloat16": bf16 matmuls and attention, float32 params, norms, softmax and loss."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import MULTI_DEVICE_SHAPE, RecordingTracker, shared_token_cache
from jaxlm.config import build_config
from jaxlm.model.transformer import build_model, cross_entropy
from jaxlm.tracking.records import mfu
from jaxlm.train.hardware import device_peak, peak_flops

TINY = {
    **MULTI_DEVICE_SHAPE,
    "max_iterations": 50,
    "warmup_iters": 5,
    "learning_rate": 1e-2,
    "min_learning_rate": 1e-3,
    "eval_interval": 50,
    "eval_batches": 2,
    "log_interval": 1,
    "sample_tokens": 0,
}


def equations(jaxpr) -> list:
    """All equations, descending into sub-jaxprs (pjit, custom_jvp...)."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out.extend(equations(sub))
    return out


def loss_jaxpr(dtype: str):
    c = build_config({**TINY, "dtype": dtype})
    graphdef, params = nnx.split(build_model(c), nnx.Param)
    ids = jnp.zeros((2, c.context_length), jnp.int32)
    loss = lambda p: cross_entropy(nnx.merge(graphdef, p)(ids), ids)
    return jax.make_jaxpr(jax.grad(loss))(params).jaxpr, params


def test_bf16_matmuls_with_float32_params_softmax_and_loss():
    jaxpr, params = loss_jaxpr("bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    eqns = equations(jaxpr)
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    # attention scores and logits accumulate into float32 (no bf16 rounding before softmax / loss)
    assert any(e.outvars[0].aval.dtype == jnp.float32 for e in dots)
    exps = [e for e in eqns if e.primitive.name == "exp"]
    assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)  # softmax, log-softmax
    rsqrts = [e for e in eqns if e.primitive.name == "rsqrt"]
    assert rsqrts and all(e.outvars[0].aval.dtype == jnp.float32 for e in rsqrts)  # RMSNorm
    sincos = [e for e in eqns if e.primitive.name in ("sin", "cos")]
    assert sincos and all(e.outvars[0].aval.dtype == jnp.float32 for e in sincos)  # RoPE angles


def test_float32_has_no_bf16_anywhere():
    jaxpr, _ = loss_jaxpr("float32")
    assert all(v.aval.dtype != jnp.bfloat16 for e in equations(jaxpr) for v in e.outvars if hasattr(v.aval, "dtype"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A token cache for the bundled sample at this module's vocab, shared by its runs."""
    yield from shared_token_cache(tmp_path_factory, TINY)


def train_losses(dtype: str, out_dir) -> tuple[np.ndarray, dict]:
    from jaxlm.train.trainer import Trainer

    c = build_config({**TINY, "dtype": dtype})
    tracker = RecordingTracker("t", Path(out_dir) / "t")
    trainer = Trainer(c)
    summary = trainer.run(tracker).summary
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(trainer.params))  # params stay float32
    return np.array([r["train_loss"] for r in tracker.rows]), summary


@pytest.mark.slow
def test_bf16_trains_and_tracks_float32(cache_dir, tmp_path):
    f32, _ = train_losses("float32", tmp_path / "f32")
    bf16, summary = train_losses("bfloat16", tmp_path / "bf16")
    assert len(bf16) == 50
    assert bf16[-10:].mean() < bf16[:5].mean() - 1.0  # it learns
    assert not np.array_equal(bf16, f32)  # and really computed in another precision
    np.testing.assert_allclose(bf16[-10:].mean(), f32[-10:].mean(), rtol=0.03)
    assert np.max(np.abs(bf16 - f32) / f32) < 0.05
    assert summary["mfu"] is None and summary["device_count"] == 1  # CPU: no datasheet peak, so no MFU


def test_peak_table_and_mfu():
    h100 = "NVIDIA H100 80GB HBM3"
    assert peak_flops(h100, "gpu", "bfloat16") == pytest.approx(989.5e12)
    assert peak_flops(h100, "gpu", "float32") == pytest.approx(494.5e12)  # TF32 at default precision
    assert peak_flops(h100, "gpu", "float32", "highest") == 67e12
    assert peak_flops("NVIDIA H100 PCIe", "gpu", "bfloat16") == pytest.approx(756.5e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "gpu", "bfloat16") == 312e12
    assert peak_flops("NVIDIA H200", "gpu", "bfloat16") == pytest.approx(989.5e12)
    assert peak_flops("NVIDIA B200", "gpu", "bfloat16") == 2250e12
    assert peak_flops("NVIDIA L4", "gpu", "bfloat16") == 121e12
    assert peak_flops("TPU v4", "tpu", "bfloat16") == 275e12
    assert peak_flops("TPU v5 lite", "tpu", "bfloat16") == 197e12
    assert peak_flops("TPU v5", "tpu", "bfloat16") == 459e12
    assert peak_flops("TPU v6 lite", "tpu", "float32") == 918e12  # default precision: one bf16 pass
    assert peak_flops("TPU v6 lite", "tpu", "float32", "highest") is None  # Google publishes no FP32 peak
    for unknown in ("cpu", "NVIDIA L40S", "NVIDIA GH200 480GB", "Some Future Chip"):
        assert device_peak(unknown) is None
    assert mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
    assert mfu(1000.0, 1e9, 2, None) is None
