"""PyTorch interop: CS336 names and shapes, exact round trip, and a NumPy forward pass over the
exported tensors (written here from the CS336 handout) that matches jaxlm's logits."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from helpers import group_umask, modes
from jaxlm.errors import DataError
from jaxlm.model.transformer import build_model
from jaxlm.model.weights import export_safetensors, import_safetensors


def np_rmsnorm(x, g, eps=1e-5):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def np_rope(x_TxHxD, theta):
    t, _, d = x_TxHxD.shape
    angle = np.arange(t)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    x1, x2 = x_TxHxD[..., 0::2], x_TxHxD[..., 1::2]
    out = np.empty_like(x_TxHxD)
    out[..., 0::2], out[..., 1::2] = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    return out


def np_forward(w: dict, ids_T: np.ndarray, num_layers: int, num_heads: int, theta: float) -> np.ndarray:
    """The CS336 pre-norm transformer on PyTorch-layout weights: y = x @ W.T."""
    lin = lambda x, name: x @ w[name].T
    x = w["token_embeddings.weight"][ids_T]
    t, d = x.shape
    hd = d // num_heads
    for i in range(num_layers):
        p = f"layers.{i}."
        h = np_rmsnorm(x, w[p + "ln1.weight"])
        q, k, v = (lin(h, p + f"attn.{n}_proj.weight").reshape(t, num_heads, hd) for n in "qkv")
        q, k = np_rope(q, theta), np_rope(k, theta)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + lin(np.einsum("hts,shd->thd", probs, v).reshape(t, d), p + "attn.output_proj.weight")
        h = np_rmsnorm(x, w[p + "ln2.weight"])
        a = lin(h, p + "ffn.w1.weight")
        x = x + lin(a / (1 + np.exp(-a)) * lin(h, p + "ffn.w3.weight"), p + "ffn.w2.weight")
    return lin(np_rmsnorm(x, w["ln_final.weight"]), "lm_head.weight")


def test_export_names_shapes_and_numpy_forward_match(tiny_config, tmp_path):
    c = tiny_config(d_model=32, d_ff=48, vocab_size=300, num_layers=2, num_heads=4)
    model = build_model(c)
    out, config_path = export_safetensors(nnx.state(model, nnx.Param), c, tmp_path / "model.safetensors")
    w = {k: v.astype(np.float64) for k, v in load_file(str(out)).items()}

    expected = {"token_embeddings.weight": (300, 32), "ln_final.weight": (32,), "lm_head.weight": (300, 32)}
    for i in range(2):
        expected |= {
            f"layers.{i}.ln1.weight": (32,),
            f"layers.{i}.ln2.weight": (32,),
            f"layers.{i}.ffn.w1.weight": (48, 32),
            f"layers.{i}.ffn.w3.weight": (48, 32),
            f"layers.{i}.ffn.w2.weight": (32, 48),
        }
        expected |= {f"layers.{i}.attn.{n}.weight": (32, 32) for n in ("q_proj", "k_proj", "v_proj", "output_proj")}
    assert {k: v.shape for k, v in w.items()} == expected
    assert json.loads(config_path.read_text())["d_ff"] == 48

    ids_T = np.asarray(jax.random.randint(jax.random.key(0), (20,), 0, 300))
    want = np_forward(w, ids_T, 2, 4, c.rope_theta)
    got = np.asarray(model(ids_T[None]))[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "ablation",
    [{}, {"norm": "none", "ffn": "silu", "d_ff": None, "tie_embeddings": True}],
    ids=["baseline", "no_norm_silu_tied"],
)
def test_round_trip_is_exact(tiny_config, tmp_path, ablation):
    c = tiny_config(**ablation)
    params = nnx.state(build_model(c), nnx.Param)
    out, _ = export_safetensors(params, c, tmp_path / "m.safetensors")
    back, back_config = import_safetensors(out)
    assert back_config == c
    flat_a, flat_b = dict(nnx.to_flat_state(params)), dict(nnx.to_flat_state(back))
    assert flat_a.keys() == flat_b.keys()
    for path in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[path][...]), np.asarray(flat_b[path][...]), err_msg=str(path))
    if c.tie_embeddings:  # written for untied PyTorch models, accepted back when equal
        w = load_file(str(out))
        np.testing.assert_array_equal(w["lm_head.weight"], w["token_embeddings.weight"])


def test_import_pytorch_file_without_metadata_and_errors(tiny_config, tmp_path):
    c = tiny_config()
    params = nnx.state(build_model(c), nnx.Param)
    out, _ = export_safetensors(params, c, tmp_path / "m.safetensors")
    tensors = load_file(str(out))
    bare = tmp_path / "torch.safetensors"  # as PyTorch's save_file would write it: no jaxlm metadata
    save_file(tensors, str(bare))
    with pytest.raises(Exception, match="holds no config"):
        import_safetensors(bare)
    back, _ = import_safetensors(bare, c)
    model = nnx.merge(nnx.graphdef(build_model(c)), back)
    ids = np.arange(10)[None]
    np.testing.assert_array_equal(
        np.asarray(model(ids)), np.asarray(nnx.merge(nnx.graphdef(build_model(c)), params)(ids))
    )

    del tensors["layers.1.ffn.w3.weight"]
    save_file(tensors, str(bare))
    with pytest.raises(DataError, match="layers.1.ffn.w3.weight"):
        import_safetensors(bare, c)
    with pytest.raises(DataError, match="does not fit"):
        import_safetensors(out, tiny_config(d_ff=96))


def test_cli_writes_weights_and_config(tiny_config, tmp_path, monkeypatch, capsys):
    import jaxlm.export as export

    c = tiny_config()
    model = build_model(c)
    import jaxlm.train.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "load", lambda run_dir, which: (model, c))
    out = tmp_path / "out" / "m.safetensors"
    with group_umask():
        assert export.main(["--run", str(tmp_path), "--out", str(out)]) == 0
    assert modes(out.parent) == {".": 0o750, "m.safetensors": 0o640, "m.json": 0o640}  # safetensors says 0600
    assert load_file(str(out))["token_embeddings.weight"].shape == (c.vocab_size, c.d_model)
    assert json.loads(out.with_suffix(".json").read_text())["num_layers"] == c.num_layers
    assert export.main(["--run", str(tmp_path), "--out", str(tmp_path / "m.pt")]) == 2
