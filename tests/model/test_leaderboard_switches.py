"""The leaderboard switches (qk_norm, ffn "relu2", logit_softcap, zero_init_output, z_loss) against NumPy
references written here; their defaults leave the CS336 baseline's parameters and init untouched; the
KV-cache forward, the CS336 safetensors round trip and the Hugging Face refusal know about them."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import RecordingTracker, cached_logits
from jaxlm.errors import UserError
from jaxlm.model.hf_weights import check_llama_compatible, export_hf
from jaxlm.model.loss import chunked_cross_entropy
from jaxlm.model.transformer import RMS_EPS, Attention, FeedForward, build_model
from jaxlm.model.weights import (
    export_safetensors,
    import_safetensors,
    model_config_dict,
    save_tensors,
    to_cs336_tensors,
)
from jaxlm.train.meter import Meter
from jaxlm.train.steps import make_loss_fn, make_train_step, train_step_fn

ALL_ON = {"qk_norm": True, "logit_softcap": 3.0, "ffn": "relu2"}


# ---------------------------------------------------------------- NumPy references (float64)


def np_rmsnorm(x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * weight


def np_rope(x_BxTxHxD, positions_T, theta):
    """Rotate the adjacent pair (x[2j], x[2j+1]) at position p by p * theta^(-2j/d)."""
    d = x_BxTxHxD.shape[-1]
    angle = positions_T[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]
    x1, x2 = x_BxTxHxD[..., 0::2], x_BxTxHxD[..., 1::2]
    out = np.empty_like(x_BxTxHxD)
    out[..., 0::2], out[..., 1::2] = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    return out


def np_logsumexp(z):
    m = z.max(-1, keepdims=True)
    return m[..., 0] + np.log(np.exp(z - m).sum(-1))


def np_cross_entropy_terms(logits, targets):
    """(mean NLL, per-position logsumexp) of float64 logits."""
    lse = np_logsumexp(logits)
    return np.mean(lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]), lse


def flat_params(model) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def set_param(model, path: tuple, value) -> None:
    node = model
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    getattr(node, path[-1])[...] = jnp.asarray(value, jnp.float32)


def randomize_qk_gains(model, seed: int = 0) -> None:
    """Non-unit q/k norm gains: with unit gains RMSNorm commutes with RoPE (a rotation keeps the RMS), so
    only unequal gains tell "norm before RoPE" from "after"."""
    rng = np.random.default_rng(seed)
    for path in flat_params(model):
        if {"q_norm", "k_norm"} & set(path):
            set_param(model, path, rng.uniform(0.5, 1.5, size=model.layers[0].attn.q_norm.weight.shape))


def ids(c, shape=(2, 16), seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, c.vocab_size)


# ---------------------------------------------------------------- qk_norm


def test_qk_norm_projections_match_numpy_norm_before_rope(tiny_config):
    c = tiny_config(qk_norm=True)
    attn = Attention(c, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    gq, gk = rng.uniform(0.5, 1.5, c.head_dim), rng.uniform(0.5, 1.5, c.head_dim)
    attn.q_norm.weight[...], attn.k_norm.weight[...] = jnp.asarray(gq, jnp.float32), jnp.asarray(gk, jnp.float32)
    x = rng.normal(size=(2, 10, c.d_model)).astype(np.float32)
    positions = np.arange(3, 13)
    q, k, v = attn.project_qkv(jnp.asarray(x), jnp.asarray(positions))

    x64 = x.astype(np.float64)
    w = {n: np.asarray(getattr(attn, f"{n}_proj").weight[...], np.float64) for n in "qkv"}
    split = lambda y: y.reshape(2, 10, c.num_heads, c.head_dim)  # noqa: E731
    want_q = np_rope(np_rmsnorm(split(x64 @ w["q"]), gq), positions, c.rope_theta)
    want_k = np_rope(np_rmsnorm(split(x64 @ w["k"]), gk), positions, c.rope_theta)
    np.testing.assert_allclose(q, want_q, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(k, want_k, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(v, split(x64 @ w["v"]), atol=1e-5, rtol=1e-5)
    wrong_order = np_rmsnorm(np_rope(split(x64 @ w["q"]), positions, c.rope_theta), gq)
    assert np.abs(wrong_order - want_q).max() > 1e-2  # the gains make the order observable


def test_qk_norm_adds_only_the_two_gains_and_draws_nothing(tiny_config):
    base, normed = flat_params(build_model(tiny_config())), flat_params(build_model(tiny_config(qk_norm=True)))
    added = {p: v for p, v in normed.items() if p not in base}
    assert sorted(added) == sorted(
        ("layers", i, "attn", name, "weight") for i in range(2) for name in ("q_norm", "k_norm")
    )
    assert all(v.shape == (tiny_config().head_dim,) and np.all(v == 1.0) for v in added.values())
    assert all(np.array_equal(normed[p], v) for p, v in base.items())  # same rng draws, same values


# ---------------------------------------------------------------- relu2


def test_relu2_ffn_matches_numpy_and_has_two_matrices(tiny_config):
    c = tiny_config(ffn="relu2")
    ffn = FeedForward(c, rngs=nnx.Rngs(0))
    assert ffn.w3 is None
    x = np.random.default_rng(0).normal(size=(2, 5, c.d_model)).astype(np.float32)
    w1, w2 = (np.asarray(getattr(ffn, n).weight[...], np.float64) for n in ("w1", "w2"))
    want = np.maximum(x.astype(np.float64) @ w1, 0.0) ** 2 @ w2
    np.testing.assert_allclose(ffn(jnp.asarray(x)), want, atol=1e-5, rtol=1e-5)
    assert c.ffn_dim == 64 and tiny_config(ffn="relu2", d_ff=None).ffn_dim == 4 * c.d_model


# ---------------------------------------------------------------- logit soft-cap


def test_softcapped_logits_match_numpy(tiny_config):
    x = ids(tiny_config())
    z = np.asarray(build_model(tiny_config())(x), np.float64)
    cap = 0.5 * np.abs(z).max()  # low enough that the cap bends the largest logits
    got = np.asarray(build_model(tiny_config(logit_softcap=float(cap)))(x))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, cap * np.tanh(z / cap), atol=1e-5, rtol=1e-5)
    assert np.abs(got).max() < cap < np.abs(z).max()


def plain_capped_loss(h, w, y, cap):
    """Unchunked jnp reference: mean of logsumexp minus the target logit of cap * tanh(h @ w / cap)."""
    z = cap * jnp.tanh(jnp.einsum("btd,dv->btv", h, w) / cap)
    target = jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(z, axis=-1) - target)


@pytest.mark.parametrize("chunk", [12, 4])
def test_softcapped_chunked_loss_and_gradient(chunk):
    rng = np.random.default_rng(0)
    b, t, d, v, cap = 2, 12, 16, 40, 2.0
    h = rng.normal(size=(b, t, d)).astype(np.float32)
    w = rng.normal(size=(d, v)).astype(np.float32)
    y = rng.integers(0, v, (b, t)).astype(np.int32)
    z = h.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(z).max() > 2 * cap
    want, want_lse = np_cross_entropy_terms(cap * np.tanh(z / cap), y)
    fn = lambda h, w: chunked_cross_entropy(h, w, jnp.asarray(y), chunk, softcap=cap)  # noqa: E731
    (got, extras), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(h, w)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    np.testing.assert_allclose(extras["logsumexp"], want_lse, rtol=1e-5, atol=1e-5)
    uncapped = chunked_cross_entropy(jnp.asarray(h), jnp.asarray(w), jnp.asarray(y), chunk)[0]
    assert abs(float(uncapped) - want) > 0.1  # the cap is applied, not ignored
    want_grads = jax.grad(plain_capped_loss, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w), jnp.asarray(y), cap)
    for g, wg in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, wg, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- z-loss


def z_loss_setup(tiny_config, coef=0.1):
    c = tiny_config(z_loss=coef, batch_size=4, context_length=16)
    graphdef, params = nnx.split(build_model(c), nnx.Param)
    x, y = ids(c, (4, 16), seed=2), ids(c, (4, 16), seed=3)
    logits = np.asarray(nnx.merge(graphdef, params)(x), np.float64)
    ce, lse = np_cross_entropy_terms(logits, np.asarray(y))
    return c, graphdef, params, x, y, ce, np.mean(lse**2)


def test_z_loss_objective_matches_numpy_and_loss_stays_the_cross_entropy(tiny_config):
    coef = 0.1
    c, graphdef, params, x, y, ce, z = z_loss_setup(tiny_config, coef)
    (objective, aux), grads = jax.value_and_grad(make_loss_fn(graphdef, None, coef), has_aux=True)(params, x, y)
    np.testing.assert_allclose(objective, ce + coef * z, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(aux["z_loss"], z, rtol=1e-5)  # unscaled
    assert float(aux["loss"]) == float(make_loss_fn(graphdef)(params, x, y))

    def reference(params):  # full logits, no chunking
        logits = nnx.merge(graphdef, params)(x)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        return jnp.mean(lse - target) + coef * jnp.mean(lse**2)

    for g, wg in zip(jax.tree.leaves(grads), jax.tree.leaves(jax.grad(reference)(params)), strict=True):
        np.testing.assert_allclose(g, wg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_train_step_reports_ce_and_z_loss_with_accumulation(tiny_config, grad_accum_steps):
    c, graphdef, params, x, y, ce, z = z_loss_setup(tiny_config)
    tx = optax.sgd(0.1)
    step = jax.jit(train_step_fn(graphdef, tx, grad_accum_steps=grad_accum_steps, z_loss=c.z_loss))
    new_params, _, metrics = step(params, tx.init(params), x, y)
    assert set(metrics) == {"loss", "z_loss", "grad_norm"}
    np.testing.assert_allclose(metrics["loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["z_loss"], z, rtol=1e-5)
    grads = jax.grad(lambda p: make_loss_fn(graphdef, None, c.z_loss)(p, x, y)[0])(params)
    want = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    for got, w in zip(jax.tree.leaves(new_params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_without_z_loss_the_step_reports_loss_and_grad_norm_only(tiny_config):
    c, graphdef, params, x, y, ce, _ = z_loss_setup(tiny_config, coef=0.0)
    tx = optax.sgd(0.1)
    _, _, metrics = make_train_step(graphdef, tx)(params, tx.init(params), x, y)
    assert set(metrics) == {"loss", "grad_norm"}
    np.testing.assert_allclose(metrics["loss"], ce, rtol=1e-5)


def test_sharded_train_step_takes_z_loss_from_the_config(tiny_config):
    """The Trainer's compiled step (jaxlm.train.sharding) gets the coefficient from the config."""
    from jaxlm.train.optim import build_optimizer, learning_rate_schedule
    from jaxlm.train.sharding import build_mesh, compile_train_step, init_state

    c, _, _, x, y, ce, z = z_loss_setup(tiny_config)
    tx = build_optimizer(c, learning_rate_schedule(c))
    graphdef, params, opt_state, layout = init_state(c, tx, build_mesh(c))
    step = compile_train_step(c, graphdef, tx, layout, params, opt_state)
    _, _, metrics = step(params, opt_state, *layout.put_batch(np.asarray(x), np.asarray(y), c.batch_size))
    np.testing.assert_allclose(metrics["loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["z_loss"], z, rtol=1e-5)


class Bar:
    def set_postfix(self, **fields):
        pass


@pytest.mark.parametrize("coef", [0.0, 1e-4])
def test_rows_carry_z_loss_only_with_a_z_loss(tiny_config, tmp_path, coef):
    c = tiny_config(z_loss=coef, log_interval=2, max_iterations=4)
    tracker = RecordingTracker("z", tmp_path)
    meter = Meter(c, lambda step: 1e-3, tracker, Bar(), start_step=0)
    for step in range(1, 5):
        meter.record(step, {"loss": 3.0, "grad_norm": 1.0, **({"z_loss": 10.0 + step} if coef else {})})
        if meter.row_due(step, None):
            assert meter.drain()
            meter.log_row(step, None)
    if coef:
        assert [r["z_loss"] for r in tracker.rows] == [12.0, 14.0]  # the row's step
    else:
        assert all("z_loss" not in r for r in tracker.rows)


# ---------------------------------------------------------------- zero_init_output


def test_zero_init_output_zeroes_those_weights_and_blocks_start_as_identity(tiny_config):
    model = build_model(tiny_config(zero_init_output=True))
    got, base = flat_params(model), flat_params(build_model(tiny_config()))
    assert got.keys() == base.keys()
    zeroed = {p for p in got if {"output_proj", "w2"} & set(p)}
    assert len(zeroed) == 4 and all(np.all(got[p] == 0.0) for p in zeroed)
    assert all(np.array_equal(got[p], base[p]) for p in got if p not in zeroed)  # rng order kept

    x = np.asarray(ids(tiny_config()))
    h = got[("token_embeddings",)].astype(np.float64)[x]
    want = np_rmsnorm(h, got[("ln_final", "weight")]) @ got[("lm_head", "weight")]
    np.testing.assert_allclose(model(jnp.asarray(x)), want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- defaults


def test_defaults_keep_the_baseline_parameters(tiny_config):
    explicit = tiny_config(qk_norm=False, logit_softcap=None, zero_init_output=False, z_loss=0.0, ffn="swiglu")
    default, at_defaults = build_model(tiny_config()), build_model(explicit)
    a, b = flat_params(default), flat_params(at_defaults)
    assert a.keys() == b.keys() and all(np.array_equal(a[p], b[p]) for p in a)
    assert not any(name in ("q_norm", "k_norm") for path in a for name in path)
    assert {p[-2] for p in a if p[0] == "layers" and p[1] == 0} == {
        "q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3", "ln1", "ln2",
    }  # fmt: skip
    assert default.logit_softcap is None and default.layers[0].attn.q_norm is None
    relu2 = flat_params(build_model(tiny_config(ffn="relu2")))
    assert relu2.keys() == a.keys() - {("layers", i, "ffn", "w3", "weight") for i in range(2)}


# ---------------------------------------------------------------- KV cache


def test_cached_logits_equal_full_forward_with_the_switches_on(tiny_config):
    c = tiny_config(context_length=16, **ALL_ON)
    model = build_model(c)
    randomize_qk_gains(model)
    x = ids(c)
    full = np.asarray(nnx.jit(lambda m, i: m(i))(model, x))
    assert np.abs(full).max() < c.logit_softcap
    np.testing.assert_allclose(cached_logits(model, x), full, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- export


def test_cs336_round_trip_with_the_switches_on(tiny_config, tmp_path):
    c = tiny_config(**ALL_ON)
    model = build_model(c)
    randomize_qk_gains(model)
    params = nnx.state(model, nnx.Param)
    x = ids(c)
    want = np.asarray(model(x))

    out, config_path = export_safetensors(params, c, tmp_path / "model.safetensors")
    model_json = json.loads(config_path.read_text())
    assert (model_json["qk_norm"], model_json["logit_softcap"], model_json["ffn"]) == (True, 3.0, "relu2")
    tensors = to_cs336_tensors(params)
    assert tensors["layers.1.attn.q_norm.weight"].shape == (c.head_dim,)
    assert "layers.0.ffn.w3.weight" not in tensors
    loaded, config = import_safetensors(out)  # the config from the file's metadata
    np.testing.assert_array_equal(nnx.merge(nnx.graphdef(model), loaded)(x), want)
    assert config == c

    # a file written outside jaxlm: no metadata, the model keys from model.json beside it
    bare = tmp_path / "bare.safetensors"
    save_tensors(tensors, bare, {})
    bare.with_suffix(".json").write_text(json.dumps(model_config_dict(c)))
    loaded, config = import_safetensors(bare)
    assert (config.qk_norm, config.logit_softcap, config.ffn) == (True, 3.0, "relu2")
    rebuilt = build_model(config)
    nnx.update(rebuilt, loaded)
    np.testing.assert_array_equal(rebuilt(x), want)


@pytest.mark.parametrize(
    "switch,key",
    [({"qk_norm": True}, "qk_norm"), ({"logit_softcap": 30.0}, "logit_softcap"), ({"ffn": "relu2"}, "ffn")],
)
def test_hf_export_refuses_each_switch_in_one_line(tiny_config, tmp_path, switch, key):
    c = tiny_config(**switch)
    with pytest.raises(UserError, match=f"config key '{key}'") as e:
        check_llama_compatible(c)
    assert "\n" not in str(e.value)
    out = tmp_path / "hf"
    with pytest.raises(UserError, match=f"config key '{key}'"):
        export_hf(nnx.state(build_model(c), nnx.Param), c, {}, 0, out)
    assert not out.exists()
