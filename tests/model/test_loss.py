"""The chunked cross-entropy equals a plain NumPy one, loss and gradient, to float32 rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.model.loss import MAX_CHUNK_LOGITS, chunked_cross_entropy, positions_per_chunk


def numpy_loss_and_grads(h, w, t):
    """Mean NLL of softmax(h @ w) in float64, and its gradients with respect to h and w."""
    h, w = h.astype(np.float64), w.astype(np.float64)
    logits = h @ w
    m = logits.max(-1, keepdims=True)
    p = np.exp(logits - m)
    p /= p.sum(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    nll = lse - np.take_along_axis(logits, t[..., None], -1)[..., 0]
    g_logits = p.copy()
    np.put_along_axis(g_logits, t[..., None], np.take_along_axis(p, t[..., None], -1) - 1, -1)
    g_logits /= t.size
    return nll.mean(), nll, g_logits @ w.T, np.einsum("btd,btv->dv", h, g_logits)


@pytest.mark.parametrize("chunk", [12, 4, 3, 1])
def test_chunked_loss_and_gradient_match_numpy(chunk):
    rng = np.random.default_rng(0)
    b, t, d, v = 3, 12, 16, 50
    h = rng.normal(size=(b, t, d)).astype(np.float32)
    w = rng.normal(size=(d, v)).astype(np.float32) * 0.5
    y = rng.integers(0, v, (b, t)).astype(np.int32)
    loss, nll, gh, gw = numpy_loss_and_grads(h, w, y)
    fn = lambda h, w: chunked_cross_entropy(h, w, jnp.asarray(y), chunk)  # noqa: E731
    (got, extras), (got_gh, got_gw) = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(h, w)
    np.testing.assert_allclose(got, loss, rtol=2e-6)
    np.testing.assert_allclose(extras["nll"], nll, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_gh, gh, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_gw, gw, rtol=1e-5, atol=1e-7)


def test_bfloat16_chunks_are_as_close_to_numpy_as_the_unchunked_loss():
    """bfloat16 compute, float32 master weight (as the model holds it): the weight's gradient, summed
    over chunks in float32, is as close to the float64 NumPy one as the single-product gradient."""
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.normal(size=(2, 8, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(16, 40)), jnp.bfloat16).astype(jnp.float32)  # bf16-exact values
    y = jnp.asarray(rng.integers(0, 40, (2, 8)), jnp.int32)
    _, _, _, gw = numpy_loss_and_grads(np.asarray(h, np.float32), np.asarray(w), np.asarray(y))
    grad = jax.grad(lambda h, w, c: chunked_cross_entropy(h, w, y, c)[0], argnums=(0, 1))
    (_, whole_w), (chunked_h, chunked_w) = grad(h, w, 8), grad(h, w, 2)
    assert chunked_h.dtype == jnp.bfloat16 and chunked_w.dtype == jnp.float32
    scale = np.abs(gw).max()
    err_whole, err_chunked = np.abs(whole_w - gw).max() / scale, np.abs(chunked_w - gw).max() / scale
    assert err_chunked <= max(err_whole, 2**-8), (err_chunked, err_whole)


def test_positions_per_chunk():
    assert positions_per_chunk(16, 128, 4096) == 128  # quickstart: one chunk, the plain loss
    chunk = positions_per_chunk(64, 256, 32_000)  # the leaderboard shape: 1.95 GiB of logits whole
    assert 256 % chunk == 0 and 64 * chunk * 32_000 <= MAX_CHUNK_LOGITS and chunk == 32
    assert positions_per_chunk(64, 256, 32_000, requested=64) == 64
    assert positions_per_chunk(1, 7, MAX_CHUNK_LOGITS) == 1
    with pytest.raises(ValueError, match="does not divide"):
        chunked_cross_entropy(jnp.zeros((1, 6, 2)), jnp.zeros((2, 3)), jnp.zeros((1, 6), jnp.int32), 4)
