"""Hugging Face `transformers` interop: a run's weights as a `LlamaForCausalLM` directory.

`export_hf` (`python -m jaxlm.export --format hf`) writes `model.safetensors` with HF
Llama's tensor names, `config.json` (LlamaForCausalLM), `generation_config.json`, and the
tokenizer as `tokenizer.json` + `tokenizer_config.json` (PreTrainedTokenizerFast), so
`LlamaForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load it.

The CS336 transformer is a bias-free pre-norm Llama (RMSNorm eps 1e-5, SwiGLU, RoPE) with
one difference: CS336's RoPE rotates adjacent pairs (x[2j], x[2j+1]) while HF Llama
rotates the halves (x[j], x[j + d/2]), both at frequency theta^(-2j/d). Permuting each
head's q and k projection rows (even rows first, then odd ones) turns one into the other;
q.k is unchanged because q and k get the same permutation. Ablations Llama cannot express
(no norm, post-norm, NoPE, the SiLU and squared-ReLU FFNs, QK-norm, logit soft-capping) are refused
with the config key named.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxlm.config import Config
from jaxlm.errors import UserError
from jaxlm.model.transformer import RMS_EPS

# CS336 tensor name (after the layer prefix) -> HF Llama name (after model.layers.{i}.).
LAYER_NAMES = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "ln1.weight": "input_layernorm.weight",
    "ln2.weight": "post_attention_layernorm.weight",
}
# What Llama cannot express: config key -> the value it would need.
LLAMA_NEEDS = {
    "norm": "rmsnorm",
    "norm_position": "pre",
    "position_embedding": "rope",
    "ffn": "swiglu",
    "qk_norm": False,
    "logit_softcap": None,
}


def check_llama_compatible(config: Config) -> None:
    """UserError naming the first ablation key a Llama model cannot represent."""
    for key, needed in LLAMA_NEEDS.items():
        value = getattr(config, key)
        if value != needed:
            raise UserError(
                f"config key '{key}': {value!r} cannot be expressed as a Hugging Face Llama (needs {needed!r}); "
                "use --format cs336"
            )


def rotate_half_permutation(d_model: int, num_heads: int) -> np.ndarray:
    """Row order that maps CS336's adjacent-pair RoPE layout to HF's rotate-half one, per head:
    new row j <- old row 2j, new row j + hd/2 <- old row 2j + 1."""
    hd = d_model // num_heads
    per_head = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    return (np.arange(num_heads)[:, None] * hd + per_head[None, :]).reshape(-1)


def to_hf_tensors(cs336: dict[str, np.ndarray], config: Config) -> dict[str, np.ndarray]:
    """{CS336 name: PyTorch-layout array} (as `weights.to_cs336_tensors` gives) -> {HF Llama name: array}.

    A tied model gets no `lm_head.weight` (transformers ties it to the embedding from config.json)."""
    perm = rotate_half_permutation(config.d_model, config.num_heads)
    out = {"model.embed_tokens.weight": cs336["token_embeddings.weight"], "model.norm.weight": cs336["ln_final.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = cs336["lm_head.weight"]
    for i in range(config.num_layers):
        for ours, theirs in LAYER_NAMES.items():
            value = cs336[f"layers.{i}.{ours}"]
            if ours in ("attn.q_proj.weight", "attn.k_proj.weight"):
                value = value[perm]
            out[f"model.layers.{i}.{theirs}"] = np.ascontiguousarray(value)
    return out


def llama_config(config: Config, eos_id: int | None) -> dict:
    """config.json of a LlamaForCausalLM equal to the jaxlm model (float32, no biases, MHA)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,  # no pad token of its own: batched generation pads with end-of-text, as GPT-2
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def _write_json(path: Path, content: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    tmp.rename(path)


def export_hf(params, config: Config, tokenizer_files: dict[str, dict], eos_id: int, out_dir: str | Path) -> Path:
    """Write a transformers LlamaForCausalLM directory for `params` (an nnx.Param state) at `out_dir`,
    with `tokenizer_files` ({file name: JSON content}, see `jaxlm.data.tokenizer.hf_tokenizer_files`) beside it.

    Refuses (UserError) an ablation Llama cannot express, or an `out_dir` that is a non-empty
    directory, before anything is written. Each file is written to a temporary name and renamed."""
    from jaxlm.model.weights import save_tensors, to_cs336_tensors

    check_llama_compatible(config)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out '{out}': exists and is not an empty directory")
    tensors = to_hf_tensors(to_cs336_tensors(params), config)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_tensors(tensors, tmp, {"format": "pt", "jaxlm_config": json.dumps(config.to_dict())})
    tmp.rename(out / "model.safetensors")
    _write_json(out / "config.json", llama_config(config, eos_id))
    _write_json(
        out / "generation_config.json", {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    )
    for name, content in tokenizer_files.items():
        _write_json(out / name, content)
    return out
