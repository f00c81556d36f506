"""PyTorch interop: jaxlm params <-> safetensors with the CS336 assignment-1 names and shapes.

`export_safetensors` (the `python -m jaxlm.export` command) writes `model.safetensors`
(float32 tensors named `token_embeddings.weight`,
`layers.{i}.attn.q_proj.weight`, ..., `lm_head.weight`; linear weights as
(out_features, in_features), the PyTorch `nn.Linear` layout) and `model.json`
(the model's config keys). `import_safetensors` reads such a file (ours, or one
saved from a CS336 PyTorch model) back into jaxlm params, so training can go on here.

jaxlm keeps linear weights as (d_in, d_out); they are transposed on the way out and in.
A tied-embedding model is written with `lm_head.weight` = the embedding, so an
untied PyTorch model loads it unchanged. With `qk_norm` each layer also holds the 1-D gains
`layers.{i}.attn.q_norm.weight` and `layers.{i}.attn.k_norm.weight` (head_dim each); a model
with `logit_softcap` or `qk_norm` needs those keys (model.json records them) to compute the same logits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxlm.config import Config, build_config
from jaxlm.errors import DataError, UserError, file_problem

EMBEDDING = "token_embeddings.weight"
LM_HEAD = "lm_head.weight"
MODEL_KEYS = (
    "vocab_size",
    "context_length",
    "d_model",
    "num_layers",
    "num_heads",
    "d_ff",
    "rope_theta",
    "norm",
    "norm_position",
    "position_embedding",
    "ffn",
    "tie_embeddings",
    "qk_norm",
    "logit_softcap",
)  # what the function computed depends on (init-only and training-only keys are left out)


def torch_name(path: tuple) -> str:
    """('layers', 0, 'attn', 'q_proj', 'weight') -> 'layers.0.attn.q_proj.weight'."""
    name = ".".join(str(p) for p in path)
    return EMBEDDING if name == "token_embeddings" else name


def _is_linear(name: str, value: np.ndarray) -> bool:
    return value.ndim == 2 and name != EMBEDDING


def to_cs336_tensors(params: nnx.State) -> dict[str, np.ndarray]:
    """jaxlm params -> {CS336 name: float32 array in PyTorch layout}."""
    out = {}
    for path, var in nnx.to_flat_state(params):
        name = torch_name(path)
        value = np.asarray(jax.device_get(var[...]), dtype=np.float32)
        out[name] = np.ascontiguousarray(value.T if _is_linear(name, value) else value)
    if LM_HEAD not in out:  # tied: the head is the embedding
        out[LM_HEAD] = out[EMBEDDING].copy()
    return out


def from_cs336_tensors(tensors: dict[str, np.ndarray], config: Config) -> nnx.State:
    """{CS336 name: array} -> jaxlm params for `config`; DataError naming any missing, extra or misshapen tensor."""
    from jaxlm.model.transformer import build_model

    tensors = dict(tensors)
    abstract = nnx.eval_shape(lambda: build_model(config))
    params = nnx.state(abstract, nnx.Param)
    if config.tie_embeddings and LM_HEAD in tensors:
        head = tensors.pop(LM_HEAD)
        if EMBEDDING in tensors and not np.array_equal(head, tensors[EMBEDDING]):
            raise DataError(f"tensor '{LM_HEAD}': differs from '{EMBEDDING}' but the config ties them")
    flat = list(nnx.to_flat_state(params))
    expected = {torch_name(path) for path, _ in flat}
    if missing := sorted(expected - tensors.keys()):
        raise DataError(f"safetensors file lacks {len(missing)} tensor(s) the config needs, e.g. '{missing[0]}'")
    if extra := sorted(tensors.keys() - expected):
        raise DataError(f"safetensors file has {len(extra)} tensor(s) the config does not use, e.g. '{extra[0]}'")
    pure: dict = {}
    for path, var in flat:
        name = torch_name(path)
        value = np.asarray(tensors[name], dtype=np.float32)
        if _is_linear(name, value):
            value = value.T
        if value.shape != var.shape:
            raise DataError(f"tensor '{name}': shape {tuple(value.shape)} does not fit the config's {var.shape}")
        node = pure
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jax.numpy.asarray(value)
    nnx.replace_by_pure_dict(params, pure)
    return params


def model_config_dict(config: Config) -> dict:
    return {key: getattr(config, key) for key in MODEL_KEYS}


def save_tensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' `save_file`, then the mode a plain `open` would give (safetensors makes files 0600,
    which the rest of a course group on a shared cluster cannot read)."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def export_safetensors(params: nnx.State, config: Config, out: str | Path) -> tuple[Path, Path]:
    """Write `out` (.safetensors, config in its metadata) and the config JSON beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model_config = model_config_dict(config)
    config_path = out.with_suffix(".json")
    tmp_out, tmp_config = (p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in (out, config_path))
    try:  # both written to temporary names first: a failure leaves no half file under either name
        save_tensors(to_cs336_tensors(params), tmp_out, {"jaxlm_config": json.dumps(config.to_dict())})
        tmp_config.write_text(json.dumps(model_config, indent=2, allow_nan=False) + "\n")
        os.replace(tmp_out, out)
        os.replace(tmp_config, config_path)
    finally:
        tmp_out.unlink(missing_ok=True)
        tmp_config.unlink(missing_ok=True)
    return out, config_path


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict | None]:
    """Tensors and the jaxlm config stored in the file's metadata (None if it was not written by us)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if problem := file_problem(path):
        raise DataError(f"safetensors file '{path}': {problem}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise DataError(f"safetensors file '{path}': unreadable ({e})") from None
    config = json.loads(meta["jaxlm_config"]) if "jaxlm_config" in meta else None
    return tensors, config


def import_safetensors(path: str | Path, config: Config | None = None) -> tuple[nnx.State, Config]:
    """jaxlm params (and their Config) from a CS336-named safetensors file.

    `config` is needed for files saved outside jaxlm (e.g. from PyTorch); otherwise
    the config stored in the file is used, then a `<stem>.json` beside it.
    """
    path = Path(path)
    tensors, stored = read_safetensors(path)
    if config is None:
        if stored is None and path.with_suffix(".json").is_file():
            stored = json.loads(path.with_suffix(".json").read_text())
        if stored is None:
            raise UserError(f"safetensors file '{path}': holds no config; pass one (e.g. --config)")
        config = build_config({k: v for k, v in stored.items() if k != "name"})
    return from_cs336_tensors(tensors, config), config
