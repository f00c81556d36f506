"""`optimizer: "muon"`: which parameters Muon gets, one update against a NumPy transcription of Muon,
the AdamW group trained exactly as the baseline, a bit-exact resume and an FSDP mesh."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import RANDOM_TOKENS_RUN, write_tokens
from helpers import metric_rows as rows
from helpers import run_summary as summary
from jaxlm import launch
from jaxlm.config import build_config
from jaxlm.errors import EXIT_OK
from jaxlm.model.transformer import build_model
from jaxlm.train.optim import build_optimizer, learning_rate_schedule, parameter_groups

SHAPE = {"vocab_size": 300, "context_length": 16, "d_model": 32, "num_layers": 2, "num_heads": 4, "d_ff": 48}
MUON = {**SHAPE, "optimizer": "muon", "max_iterations": 10, "warmup_iters": 2, "weight_decay": 0.3,
        "muon_weight_decay": 0.1}  # fmt: skip
NS_COEFFS = (3.4445, -4.775, 2.0315)  # the quintic Newton-Schulz coefficients of Jordan's Muon


def flat(tree) -> dict[str, object]:
    return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def params_of(values: dict):
    return nnx.state(build_model(build_config(values)), nnx.Param)


@pytest.mark.parametrize("extra", [{}, {"tie_embeddings": True, "ffn": "silu"}], ids=["baseline", "tied-silu"])
def test_muon_gets_the_blocks_matrices_and_adamw_everything_else(extra):
    labels = flat(parameter_groups(params_of({**MUON, **extra})))
    muon = sorted(k for k, v in labels.items() if v == "muon")
    ffn = ("w1", "w2") if extra.get("ffn") == "silu" else ("w1", "w2", "w3")
    expected = [f"['layers'][{i}]['attn']['{m}']['weight'].value" for i in range(2)
                for m in ("k_proj", "output_proj", "q_proj", "v_proj")]  # fmt: skip
    expected += [f"['layers'][{i}]['ffn']['{w}']['weight'].value" for i in range(2) for w in ffn]
    assert muon == sorted(expected)
    adamw = {k for k, v in labels.items() if v == "adamw"}
    assert "['token_embeddings'].value" in adamw and "['ln_final']['weight'].value" in adamw
    assert ("['lm_head']['weight'].value" in adamw) == (not extra)  # tied: the embedding is the head
    assert len(adamw) + len(muon) == len(labels)


def numpy_muon_first_update(g: np.ndarray, p: np.ndarray, lr: float, beta: float, wd: float, steps: int) -> np.ndarray:
    """Muon's first update, written from its definition: Nesterov momentum with bias correction, the
    Frobenius-normalised momentum orthogonalised by `steps` quintic Newton-Schulz iterations (on the
    wide orientation), scaled by sqrt(max(1, fan_out / fan_in)), decoupled weight decay, times -lr."""
    g = g.astype(np.float64)
    mu = (1 - beta) * g  # the momentum after one gradient, from zero
    nesterov = beta * mu / (1 - beta**2) + (1 - beta) * g / (1 - beta)
    x = nesterov.T if nesterov.shape[0] > nesterov.shape[1] else nesterov
    x = x / (np.linalg.norm(x) + 1e-8)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    o = x.T if nesterov.shape[0] > nesterov.shape[1] else x
    fan_in, fan_out = p.shape
    return -lr * (np.sqrt(max(1.0, fan_out / fan_in)) * o + wd * p)


def test_one_update_is_muon_for_the_matrices_and_the_baselines_adamw_for_the_rest():
    c_muon = build_config({**MUON, "muon_learning_rate": 0.05, "muon_momentum": 0.9, "muon_ns_steps": 4})
    c_adamw = build_config({**MUON, "optimizer": "adamw"})
    params = params_of(MUON)
    keys = iter(jax.random.split(jax.random.key(3), 64))
    grads = jax.tree.map(lambda p: 1e-3 * jax.random.normal(next(keys), p.shape), params)  # under the clip
    updates = {}
    for c in (c_muon, c_adamw):
        tx = build_optimizer(c, learning_rate_schedule(c))
        updates[c.optimizer] = flat(jax.jit(tx.update)(grads, tx.init(params), params)[0])
    labels, g, p = flat(parameter_groups(params)), flat(grads), flat(params)
    lr = 0.05 / c_muon.learning_rate * float(learning_rate_schedule(c_muon)(1))  # update 1's rate, at Muon's peak
    for name, label in labels.items():
        if label == "adamw":
            assert np.array_equal(updates["muon"][name], updates["adamw"][name]), name
        else:
            expected = numpy_muon_first_update(np.asarray(g[name]), np.asarray(p[name]), lr, 0.9, 0.1, 4)
            np.testing.assert_allclose(np.asarray(updates["muon"][name]), expected, rtol=2e-4, atol=1e-7)


def test_the_default_optimizer_state_is_the_baselines():
    """No Muon state, no partition: checkpoints of existing configs keep their layout."""
    c = build_config(SHAPE)
    state = build_optimizer(c, learning_rate_schedule(c)).init(params_of(SHAPE))
    assert [type(s).__name__ for s in state] == ["EmptyState", "AdamWState"]


@pytest.fixture()
def muon_config(tmp_path):
    config = {
        **RANDOM_TOKENS_RUN,
        "optimizer": "muon",
        "train_data_path": str(write_tokens(tmp_path / "train.npy", 20_000)),
        "val_data_path": str(write_tokens(tmp_path / "val.npy", 2_000, seed=1)),
    }
    path = tmp_path / "muon.json"
    path.write_text(json.dumps(config))
    return path


def train(config_file, out, name: str, *sets: str) -> int:
    argv = ["--config", str(config_file), "--name", name, "--output-dir", str(out), "--quiet"]
    return launch.main(argv + [a for s in sets for a in ("--set", s)])


@pytest.mark.slow
def test_a_muon_run_resumes_bit_for_bit(muon_config, tmp_path):
    assert train(muon_config, tmp_path, "straight") == EXIT_OK
    assert train(muon_config, tmp_path, "split", "max_iterations=6") == EXIT_OK
    assert launch.main(["--resume", str(tmp_path / "split"), "--quiet", "--set", "max_iterations=12"]) == EXIT_OK
    resumed = rows(tmp_path / "split", after=6)
    assert [int(r["step"]) for r in resumed] == [8, 10, 12]
    assert resumed == rows(tmp_path / "straight", after=6)  # every loss string identical
    assert summary(tmp_path / "split")["resumed_from_step"] == 6
    straight = [float(r["train_loss"]) for r in rows(tmp_path / "straight")]
    assert straight[-1] < straight[0]  # and it trains


def test_muon_needs_a_positive_rate_and_a_momentum_below_one():
    from jaxlm.errors import ConfigError

    bad_values = ({"muon_learning_rate": 0}, {"muon_momentum": 1.0}, {"muon_ns_steps": 0}, {"optimizer": "sgd"},
                  {"muon_weight_decay": -0.1})  # fmt: skip
    for bad in bad_values:
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build_config({**SHAPE, **bad})


def test_muon_keeps_the_matrices_orthogonal_scale():
    """A sanity check of the wiring, independent of the transcription: Muon's update of a matrix has
    singular values near one (times lr and the shape scale), whatever the gradient's scale."""
    c = build_config({**MUON, "muon_weight_decay": 0.0})
    params = params_of(MUON)
    keys = iter(jax.random.split(jax.random.key(5), 64))
    for scale in (1e-6, 1e-3):
        grads = jax.tree.map(lambda p, s=scale: s * jax.random.normal(next(keys), p.shape), params)
        tx = build_optimizer(c, learning_rate_schedule(c))
        u = flat(tx.update(grads, tx.init(params), params)[0])["['layers'][0]['attn']['q_proj']['weight'].value"]
        lr = c.muon_learning_rate / c.learning_rate * float(learning_rate_schedule(c)(1))
        singular = jnp.linalg.svd(np.asarray(u) / lr, compute_uv=False)
        assert 0.3 < float(singular.min()) and float(singular.max()) < 1.5, singular
