"""The CS336 transformer against plain NumPy: each component, the whole forward pass
(baseline and every ablation switch), causality, shapes, init statistics, parameter counts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.model.attention import attention_implementation, causal_attention
from jaxlm.model.transformer import (
    RMS_EPS,
    FeedForward,
    Linear,
    RMSNorm,
    Transformer,
    apply_rope,
    build_model,
    cross_entropy,
)
from jaxlm.train.flops import param_counts

ABLATIONS = {
    "baseline": {},
    "no_norm": {"norm": "none"},
    "post_norm": {"norm_position": "post"},
    "nope": {"position_embedding": "none"},
    "silu_ffn": {"ffn": "silu", "d_ff": None},
    "tied": {"tie_embeddings": True},
}


# ---------------------------------------------------------------- NumPy references (float64)


def np_rmsnorm(x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * weight


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_rope(x_BxTxHxD, positions_T, theta):
    """Rotate pair (x[2j], x[2j+1]) at position p by angle p * theta^(-2j/d), written as a loop."""
    d = x_BxTxHxD.shape[-1]
    out = np.empty_like(x_BxTxHxD)
    for j in range(d // 2):
        angle_T = positions_T * theta ** (-2.0 * j / d)
        cos, sin = np.cos(angle_T)[None, :, None], np.sin(angle_T)[None, :, None]
        a, b = x_BxTxHxD[..., 2 * j], x_BxTxHxD[..., 2 * j + 1]
        out[..., 2 * j] = a * cos - b * sin
        out[..., 2 * j + 1] = a * sin + b * cos
    return out


def np_causal_attention(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD):
    b, t, h, d = q_BxTxHxD.shape
    out = np.zeros_like(q_BxTxHxD)
    for bi in range(b):
        for hi in range(h):
            q, k, v = q_BxTxHxD[bi, :, hi], k_BxTxHxD[bi, :, hi], v_BxTxHxD[bi, :, hi]
            scores = q @ k.T / math.sqrt(d)
            scores[np.triu(np.ones((t, t), bool), k=1)] = -np.inf
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[bi, :, hi] = probs @ v
    return out


def np_swiglu(x, w1, w2, w3):
    return (np_silu(x @ w1) * (x @ w3)) @ w2


def np_forward(model: Transformer, c, ids_BxT):
    """The whole CS336 forward pass in float64 NumPy, reading the weights out of `model`."""
    get = lambda p: np.asarray(p[...], np.float64)
    norm = (lambda x, mod: np_rmsnorm(x, get(mod.weight))) if c.norm == "rmsnorm" else (lambda x, mod: x)
    b, t = ids_BxT.shape
    positions = np.arange(t, dtype=np.float64)
    emb = get(model.token_embeddings)
    x = emb[ids_BxT]

    def attn(layer, x):
        a = layer.attn
        split = lambda y: y.reshape(b, t, c.num_heads, c.head_dim)
        q, k, v = (split(x @ get(p.weight)) for p in (a.q_proj, a.k_proj, a.v_proj))
        if c.position_embedding == "rope":
            q, k = np_rope(q, positions, c.rope_theta), np_rope(k, positions, c.rope_theta)
        return np_causal_attention(q, k, v).reshape(b, t, c.d_model) @ get(a.output_proj.weight)

    def ffn(layer, x):
        f = layer.ffn
        if c.ffn == "swiglu":
            return np_swiglu(x, get(f.w1.weight), get(f.w2.weight), get(f.w3.weight))
        return np_silu(x @ get(f.w1.weight)) @ get(f.w2.weight)

    for layer in model.layers:
        if c.norm_position == "pre":
            h = x + attn(layer, norm(x, layer.ln1))
            x = h + ffn(layer, norm(h, layer.ln2))
        else:
            z = norm(x + attn(layer, x), layer.ln1)
            x = norm(z + ffn(layer, z), layer.ln2)
    x = norm(x, model.ln_final)
    return x @ (emb.T if c.tie_embeddings else get(model.lm_head.weight))


def randomize_norm_weights(model: nnx.Module, seed: int = 1) -> None:
    """Norm weights start at 1; make them random so a test sees whether they are applied."""
    rng = np.random.default_rng(seed)
    for _, mod in nnx.iter_modules(model):
        if isinstance(mod, RMSNorm):
            mod.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, mod.weight.shape), jnp.float32)


# ---------------------------------------------------------------- components


def test_rmsnorm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32) * 3
    norm = RMSNorm(16)
    w = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    norm.weight[...] = jnp.asarray(w)
    np.testing.assert_allclose(
        np.asarray(norm(jnp.asarray(x))), np_rmsnorm(x.astype(np.float64), w), rtol=1e-5, atol=1e-6
    )


def test_rmsnorm_computes_in_float32_and_returns_input_dtype():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)) * 100, jnp.bfloat16)
    y = RMSNorm(8)(x)
    assert y.dtype == jnp.bfloat16
    ref = np_rmsnorm(np.asarray(x, np.float64), 1.0)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-2, atol=1e-2)


def test_rope_matches_numpy_adjacent_pairs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
    positions = np.arange(7)
    got = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), 10000.0))
    np.testing.assert_allclose(
        got, np_rope(x.astype(np.float64), positions.astype(np.float64), 10000.0), rtol=1e-5, atol=1e-5
    )
    # Position 0 is the identity; a rotation keeps each pair's norm.
    np.testing.assert_allclose(got[:, 0], x[:, 0], atol=1e-6)
    pair_norm = lambda a: np.hypot(a[..., 0::2], a[..., 1::2])
    np.testing.assert_allclose(pair_norm(got), pair_norm(x), rtol=1e-5)


def test_rope_uses_theta_and_rotates_the_first_pair_by_position():
    """Pair j=0 has inverse frequency 1: at position p it is rotated by exactly p radians."""
    x = np.zeros((1, 4, 1, 4), np.float32)
    x[..., 0] = 1.0  # unit vector in pair 0, nothing in pair 1
    x[..., 2] = 1.0  # unit vector in pair 1 (inverse frequency theta^(-2/4) = 1/theta^0.5)
    got = np.asarray(apply_rope(jnp.asarray(x), jnp.arange(4), 100.0))
    p = np.arange(4)
    np.testing.assert_allclose(got[0, :, 0, 0], np.cos(p), atol=1e-6)
    np.testing.assert_allclose(got[0, :, 0, 1], np.sin(p), atol=1e-6)
    np.testing.assert_allclose(got[0, :, 0, 2], np.cos(p / 10.0), atol=1e-6)
    np.testing.assert_allclose(got[0, :, 0, 3], np.sin(p / 10.0), atol=1e-6)


def test_swiglu_matches_numpy(tiny_config):
    c = tiny_config(d_model=16, num_heads=2, d_ff=48)
    ffn = FeedForward(c, rngs=nnx.Rngs(0))
    x = np.random.default_rng(2).normal(size=(2, 5, 16)).astype(np.float32)
    w = lambda lin: np.asarray(lin.weight[...], np.float64)
    ref = np_swiglu(x.astype(np.float64), w(ffn.w1), w(ffn.w2), w(ffn.w3))
    np.testing.assert_allclose(np.asarray(ffn(jnp.asarray(x))), ref, rtol=1e-4, atol=1e-5)
    assert ffn.w1.weight.shape == (16, 48) and ffn.w2.weight.shape == (48, 16) and ffn.w3.weight.shape == (16, 48)


def test_causal_attention_matches_numpy():
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=(2, 6, 3, 8)).astype(np.float32) for _ in range(3))
    pos = jnp.arange(6)
    got = np.asarray(causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), pos, pos))
    ref = np_causal_attention(*(a.astype(np.float64) for a in (q, k, v)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # The first query can only see the first key: its output is v[0] exactly.
    np.testing.assert_allclose(got[:, 0], v[:, 0], rtol=1e-6)


@pytest.mark.parametrize("t", [7, 192])  # one block; three blocks of 64
def test_self_attention_and_its_gradient_match_plain_masked_softmax(t):
    """The block-causal kernel and its hand-written backward equal masked softmax attention and what
    JAX derives for it."""
    from jaxlm.model.attention import block_size, self_attention

    rng = np.random.default_rng(5)
    q, k, v, w = (jnp.asarray(rng.normal(size=(2, t, 3, 8)), jnp.float32) for _ in range(4))
    pos = jnp.arange(t)

    def plain(q, k, v):
        s = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(8.0)
        s = jnp.where(pos[None, :] <= pos[:, None], s, -jnp.inf)
        return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v)

    assert block_size(t) == {7: 7, 192: 64}[t]
    np.testing.assert_allclose(np.asarray(self_attention(q, k, v)), np.asarray(plain(q, k, v)), rtol=1e-5, atol=1e-6)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)
    got = jax.grad(loss(self_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(plain), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)


def test_attention_uses_cudnn_only_for_half_precision_on_gpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention_implementation(jnp.bfloat16) == "cudnn"
    assert attention_implementation(jnp.float32) == "jaxlm"  # cuDNN flash attention has no float32 kernel
    assert attention_implementation(jnp.bfloat16, "jaxlm") == "jaxlm"  # the config's attention: "jaxlm"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert attention_implementation(jnp.bfloat16) == "jaxlm"


def test_self_attention_falls_back_when_cudnn_cannot_run(monkeypatch, caplog):
    """Told it is on a GPU, the CPU's missing cuDNN makes dot_product_attention raise:
    the model must still train, on the same maths."""
    from jaxlm.model.attention import self_attention

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    rng = np.random.default_rng(6)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 5, 2, 8)), jnp.bfloat16) for _ in range(3))
    pos = jnp.arange(5)
    np.testing.assert_allclose(
        np.asarray(self_attention(q, k, v), np.float32), np.asarray(causal_attention(q, k, v, pos, pos), np.float32)
    )
    assert "cuDNN attention unavailable" in caplog.text


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 4
    targets = rng.integers(0, 11, size=(2, 5))
    l64 = logits.astype(np.float64)
    logp = l64 - l64.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ref = -np.take_along_axis(logp, targets[..., None], -1).mean()
    assert float(cross_entropy(jnp.asarray(logits), jnp.asarray(targets))) == pytest.approx(ref, rel=1e-5)


# ---------------------------------------------------------------- whole model


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_forward_matches_numpy(tiny_config, ablation):
    c = tiny_config(**{"vocab_size": 64, "d_model": 16, "num_heads": 2, "d_ff": 32, **ABLATIONS[ablation]})
    model = build_model(c)
    randomize_norm_weights(model)
    ids = np.random.default_rng(5).integers(0, c.vocab_size, size=(2, 9))
    got = np.asarray(model(jnp.asarray(ids)))
    assert got.shape == (2, 9, c.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_forward(model, c, ids), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("ablation", ["baseline", "nope"])
def test_future_tokens_do_not_change_earlier_logits(tiny_config, ablation):
    c = tiny_config(**ABLATIONS[ablation])
    model = build_model(c)
    ids = np.random.default_rng(6).integers(0, c.vocab_size, size=(2, 16))
    changed = ids.copy()
    changed[:, 10] = (ids[:, 10] + 1) % c.vocab_size
    changed[:, 13:] = (ids[:, 13:] + 7) % c.vocab_size
    a, b = np.asarray(model(jnp.asarray(ids))), np.asarray(model(jnp.asarray(changed)))
    np.testing.assert_allclose(a[:, :10], b[:, :10], rtol=0, atol=1e-6)
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-3  # the change does reach later positions


def test_output_shapes_and_dtypes(tiny_config):
    for dtype in ("float32", "bfloat16"):
        c = tiny_config(dtype=dtype)
        model = build_model(c)
        ids = jnp.zeros((3, 11), jnp.int32)
        logits = model(ids)
        assert logits.shape == (3, 11, c.vocab_size)
        assert logits.dtype == jnp.float32  # logits are float32 whatever the compute dtype
        assert model.token_embeddings[...].dtype == jnp.float32  # params stay float32
        loss = cross_entropy(logits, ids)
        assert loss.shape == () and np.isfinite(float(loss))


def test_bfloat16_forward_close_to_float32(tiny_config):
    ids = jnp.asarray(np.random.default_rng(7).integers(0, 300, size=(2, 12)))
    f32 = build_model(tiny_config(dtype="float32"))(ids)
    bf16 = build_model(tiny_config(dtype="bfloat16"))(ids)  # same seed -> same weights
    assert float(jnp.max(jnp.abs(f32 - bf16))) < 0.1 * float(jnp.max(jnp.abs(f32)))


# ---------------------------------------------------------------- init and parameter counts

TRUNC = 3.0


def truncated_std_factor(a: float = TRUNC) -> float:
    """Std of N(0,1) truncated to [-a, a]: sqrt(1 - 2 a phi(a) / (Phi(a) - Phi(-a))) ~= 0.9866 at a=3."""
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(a / math.sqrt(2))
    return math.sqrt(1 - 2 * a * phi / mass)


def test_linear_init_std_is_truncated_xavier():
    d_in, d_out = 384, 768
    w = np.asarray(Linear(d_in, d_out, dtype="float32", rngs=nnx.Rngs(0)).weight[...], np.float64)
    sigma = math.sqrt(2.0 / (d_in + d_out))
    assert np.abs(w).max() <= TRUNC * sigma * (1 + 1e-6)
    assert np.abs(w).max() > 2.9 * sigma  # truncated at 3 sigma, not narrower
    assert abs(w.mean()) < 0.01 * sigma
    assert w.std() == pytest.approx(truncated_std_factor() * sigma, rel=5e-3)


def test_model_init_stds(tiny_config):
    c = tiny_config(vocab_size=4096, d_model=64, num_heads=4, d_ff=192)
    model = build_model(c)
    emb = np.asarray(model.token_embeddings[...], np.float64)
    assert emb.shape == (4096, 64)
    assert np.abs(emb).max() <= TRUNC * (1 + 1e-6)
    assert emb.std() == pytest.approx(truncated_std_factor(), rel=1e-2)
    linears = {"lm_head": model.lm_head}
    for i, layer in enumerate(model.layers):
        for name in ("q_proj", "k_proj", "v_proj", "output_proj"):
            linears[f"layers/{i}/attn/{name}"] = getattr(layer.attn, name)
        for name in ("w1", "w2", "w3"):
            linears[f"layers/{i}/ffn/{name}"] = getattr(layer.ffn, name)
        np.testing.assert_array_equal(np.asarray(layer.ln1.weight[...]), 1.0)
    for path, lin in linears.items():
        w = np.asarray(lin.weight[...], np.float64)
        sigma = math.sqrt(2.0 / sum(w.shape))
        assert np.abs(w).max() <= TRUNC * sigma * (1 + 1e-6), path
        assert w.std() == pytest.approx(truncated_std_factor() * sigma, rel=0.08), path


def test_different_seeds_give_different_weights(tiny_config):
    a = build_model(tiny_config(seed=0)).token_embeddings[...]
    b = build_model(tiny_config(seed=0)).token_embeddings[...]
    c = build_model(tiny_config(seed=1)).token_embeddings[...]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_param_counts_match_built_model(tiny_config, ablation):
    c = tiny_config(**{"d_ff": 48, **ABLATIONS[ablation]})
    model = build_model(c)
    real = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    counts = param_counts(c)
    assert counts["total"] == real
    assert counts["embedding"] == c.vocab_size * c.d_model
    assert counts["non_embedding"] == real - c.vocab_size * c.d_model
