"""Hugging Face export: HF Llama names and config, and a NumPy forward pass written from HF Llama's
conventions (rotate-half RoPE, `model.layers.{i}.self_attn.*` layout, its RMSNorm) over the exported
tensors that matches jaxlm's logits. No torch needed; scripts/check_hf_export.py checks against real
`transformers` in a separate environment."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file
from tokenizers import Tokenizer

import jaxlm.export as export
from helpers import group_umask, modes
from jaxlm.data.tokenizer import hf_tokenizer_files, train_tokenizer
from jaxlm.errors import UserError
from jaxlm.model.hf_weights import check_llama_compatible, export_hf, rotate_half_permutation
from jaxlm.model.transformer import build_model


def hf_rmsnorm(x, weight, eps):
    """LlamaRMSNorm: hidden * rsqrt(mean(hidden^2) + eps), then weight * hidden."""
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return weight * (x / np.sqrt(variance + eps))


def hf_rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def hf_rope(x_HxTxD, theta):
    """LlamaRotaryEmbedding + apply_rotary_pos_emb: emb = cat(freqs, freqs); x*cos + rotate_half(x)*sin."""
    _, t, d = x_HxTxD.shape
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    freqs = np.arange(t)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return x_HxTxD * np.cos(emb)[None] + hf_rotate_half(x_HxTxD) * np.sin(emb)[None]


def hf_llama_forward(w: dict, cfg: dict, ids_T: np.ndarray) -> np.ndarray:
    """LlamaForCausalLM's forward over its safetensors, as transformers' modeling_llama computes it."""
    lin = lambda x, name: x @ w[name].T  # nn.Linear(bias=False)
    eps, heads, hd = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["head_dim"]
    x = w["model.embed_tokens.weight"][ids_T]
    t = x.shape[0]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = hf_rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q, k, v = (lin(h, p + f"self_attn.{n}_proj.weight").reshape(t, heads, hd).transpose(1, 0, 2) for n in "qkv")
        q, k = hf_rope(q, cfg["rope_theta"]), hf_rope(k, cfg["rope_theta"])
        scores = q @ k.transpose(0, 2, 1) * hd**-0.5
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + lin((probs @ v).transpose(1, 0, 2).reshape(t, heads * hd), p + "self_attn.o_proj.weight")
        h = hf_rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = lin(h, p + "mlp.gate_proj.weight")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(h, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return hf_rmsnorm(x, w["model.norm.weight"], eps) @ head.T


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from jaxlm.data.sources import BUNDLED

    train_txt, _ = BUNDLED["tinystories-sample"]
    return train_tokenizer([train_txt], 300, tmp_path_factory.mktemp("tok"))


def test_permutation_maps_adjacent_pairs_to_halves():
    perm = rotate_half_permutation(16, 2)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_hf_llama_numpy_forward_matches_jaxlm(tiny_config, tmp_path, tokenizer, tied):
    c = tiny_config(d_model=32, d_ff=48, num_layers=2, num_heads=4, tie_embeddings=tied, rope_theta=500.0)
    model = build_model(c)
    files = hf_tokenizer_files(tokenizer, c.context_length)
    out = export_hf(nnx.state(model, nnx.Param), c, files, tokenizer.token_to_id("<|endoftext|>"), tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (32, 48, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 4, 8)
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 500.0 and cfg["hidden_act"] == "silu"
    assert cfg["max_position_embeddings"] == c.context_length and cfg["tie_word_embeddings"] is tied
    assert not cfg["attention_bias"] and not cfg["mlp_bias"]
    assert cfg["bos_token_id"] == cfg["eos_token_id"] == tokenizer.token_to_id("<|endoftext|>")
    assert cfg["pad_token_id"] == cfg["eos_token_id"]  # not null: generate() with padding works

    w = {k: v.astype(np.float64) for k, v in load_file(str(out / "model.safetensors")).items()}
    assert ("lm_head.weight" in w) is not tied
    assert w["model.layers.1.self_attn.q_proj.weight"].shape == (32, 32)
    assert w["model.layers.0.mlp.down_proj.weight"].shape == (32, 48)
    ids_T = np.asarray(jax.random.randint(jax.random.key(1), (c.context_length,), 0, c.vocab_size))
    want = hf_llama_forward(w, cfg, ids_T)
    got = np.asarray(model(ids_T[None]))[0]
    assert np.max(np.abs(got - want)) <= 1e-4

    # The tokenizer files: tokenizer.json is the run's, the config names the fast tokenizer class.
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_cfg["eos_token"] == tok_cfg["bos_token"] == "<|endoftext|>" and not tok_cfg["add_bos_token"]
    reloaded = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "Once upon a time<|endoftext|>"
    assert reloaded.encode(text).ids == tokenizer.encode(text).ids


@pytest.mark.parametrize(
    "ablation,key",
    [
        ({"norm": "none"}, "norm"),
        ({"norm_position": "post"}, "norm_position"),
        ({"position_embedding": "none"}, "position_embedding"),
        ({"ffn": "silu", "d_ff": None}, "ffn"),
    ],
)
def test_ablations_llama_cannot_express_are_refused(tiny_config, ablation, key):
    with pytest.raises(UserError, match=f"config key '{key}'"):
        check_llama_compatible(tiny_config(**ablation))


def test_cli_hf_format(tiny_config, tmp_path, monkeypatch, capsys, tokenizer):
    import jaxlm
    import jaxlm.train.checkpoint as checkpoint

    c = tiny_config()
    model = build_model(c)
    monkeypatch.setattr(checkpoint, "load", lambda run_dir, which: (model, c))
    monkeypatch.setattr(jaxlm, "load_tokenizer", lambda run_dir: tokenizer)
    out = tmp_path / "hf"
    with group_umask():
        assert export.main(["--run", str(tmp_path), "--format", "hf", "--out", str(out)]) == 0
    assert set(modes(out).values()) == {0o750, 0o640}  # the folder, then files safetensors alone makes 0600
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert export.main(["--run", str(tmp_path), "--format", "hf", "--out", str(out)]) == 2  # not empty: refused
    assert "not an empty directory" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    post = tiny_config(norm_position="post")
    monkeypatch.setattr(checkpoint, "load", lambda run_dir, which: (build_model(post), post))
    assert export.main(["--run", str(tmp_path), "--format", "hf", "--out", str(tmp_path / "post")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'norm_position'") and err.count("\n") == 1
    assert not (tmp_path / "post").exists()
