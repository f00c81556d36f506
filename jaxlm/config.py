"""The run configuration: one flat, typed, frozen dataclass.

Every key a user can write in a config JSON is a field here, with its default.
`load_config` turns JSON + `--set` overrides into a validated `Config`, raising
`ConfigError` (a one-line message naming the key) for anything wrong, before any
JAX work happens.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from jaxlm.errors import ConfigError, file_problem


class Resume(enum.Enum):
    """What a config key may do on `--resume`, declared on each field below as its type's wrapper."""

    IDENTITY = "identity"
    """What the checkpoint was trained with (model, data, optimizer): changing it is refused."""
    SAFE = "safe"
    """How long the run goes and what it records: may change; the trajectory up to the resumed step is the same."""
    LAYOUT = "layout"
    """How the same computation is laid out (device, mesh, micro-batches, kernels): may change; the checkpoint is
    restored into the new layout and the losses stay equal to float32 rounding."""


T = typing.TypeVar("T")
Identity, Safe, Layout = (Annotated[T, role] for role in (Resume.IDENTITY, Resume.SAFE, Resume.LAYOUT))


@dataclasses.dataclass(frozen=True)
class Config:
    """All knobs of a run. The seed's keys keep their names and meaning."""

    # --- the seed's keys ---
    description: Safe[str] = ""
    """What this run tests: the hypothesis, shown in the summary and the experiment log."""
    dataset: Identity[str] = "tinystories-sample"
    """Dataset name; the bundled `tinystories-sample` is used when both data paths are null."""
    vocab_size: Identity[int] = 10000
    """Tokenizer and embedding size, `<|endoftext|>` included (byte-level BPE needs at least 257)."""
    context_length: Identity[int] = 256
    """Tokens per training window."""
    d_model: Identity[int] = 512
    """Width of the residual stream."""
    num_layers: Identity[int] = 4
    """Number of transformer blocks."""
    num_heads: Identity[int] = 16
    """Attention heads; must divide `d_model`, and with RoPE the head dimension must be even."""
    d_ff: Identity[int | None] = 1344
    """Feed-forward hidden size; null = 8/3 `d_model` rounded to a multiple of 64 (SwiGLU) or 4 `d_model` (SiLU)."""
    rope_theta: Identity[float] = 10000.0
    """RoPE base theta: pair j rotates with inverse frequency theta^(-2j/d)."""
    batch_size: Identity[int] = 32
    """Sequences per optimizer step: the global batch, over all devices and micro-batches."""
    max_iterations: Safe[int] = 5000
    """Optimizer steps to train."""
    learning_rate: Identity[float] = 1e-3
    """Peak learning rate, reached at the end of warmup."""
    min_learning_rate: Identity[float] = 1e-4
    """Final learning rate, at and after `cosine_cycle_iters`; at most `learning_rate`."""
    warmup_iters: Identity[int] = 100
    """Steps of linear warmup from 0 to `learning_rate`; at most `max_iterations`."""
    weight_decay: Identity[float] = 0.1
    """Decoupled AdamW weight decay: each step scales the weights by (1 - lr x weight_decay)."""
    beta1: Identity[float] = 0.9
    """AdamW decay rate of the first moment (the gradient mean)."""
    beta2: Identity[float] = 0.95
    """AdamW decay rate of the second moment (the squared gradient)."""
    grad_clip: Identity[float] = 1.0
    """Gradients are scaled down to this global L2 norm when their norm is above it."""
    train_data_path: Identity[str | None] = None
    """Training text (`.txt`) or token file (`.npy`); null = the bundled dataset."""
    val_data_path: Identity[str | None] = None
    """Validation text (`.txt`) or token file (`.npy`); null = the bundled dataset."""
    device: Layout[Literal["cpu", "gpu", "tpu"] | None] = None
    """Backend to run on; null = JAX's default."""
    dtype: Identity[Literal["float32", "bfloat16"]] = "float32"
    """Compute dtype of matmuls and attention; params, norms, softmax, logits and loss stay float32."""
    seed: Identity[int] = 0
    """Seeds the parameter init and the batch order (`batch_at(seed, step)`); training uses no other randomness."""
    log_interval: Safe[int] = 10
    """Steps between logged metric rows."""
    eval_interval: Safe[int] = 500
    """Steps between evaluations; there is always one at the end."""
    checkpoint_interval: Safe[int] = 1000
    """Steps between periodic checkpoints."""

    # --- training details ---
    eval_batches: Safe[int] = 20
    """(At most 10,000.) Fixed validation batches per evaluation, the same ones every time so evaluations compare."""
    final_eval: Safe[Literal["sample", "full"]] = "sample"
    """The evaluation at the end of training: `"sample"` = the `eval_batches` windows like every other one;
    `"full"` = also every token of the validation file (`full_val_loss`, `full_val_bpb`, ... in the final row
    and summary.json), as `python -m jaxlm.evaluate` computes it."""
    cosine_cycle_iters: Safe[int | None] = None
    """Step where the cosine reaches `min_learning_rate`; null = `max_iterations`."""
    loss_chunk_tokens: Layout[int | None] = None
    """Sequence positions per chunk of the cross-entropy (jaxlm/model/loss.py; must divide `context_length`):
    float32 logits exist for batch x this many positions at a time and are recomputed in the backward pass;
    null = automatic: all positions at once while batch x context x vocab is at most 64M logits (256 MiB),
    else the largest divisor of `context_length` that keeps a chunk under that. Same loss to float32 rounding."""
    adam_eps: Identity[float] = 1e-8
    """AdamW epsilon, added to the square root of the second moment to avoid dividing by zero."""
    sample_tokens: Safe[int] = 96
    """Tokens generated for the text sample at each evaluation (at most 4096); 0 = no samples."""
    sample_prompt: Safe[str] = "Once upon a time"
    """Prompt of those samples."""
    special_tokens: Identity[tuple[str, ...]] = ("<|endoftext|>",)
    """Special tokens of the trained tokenizer, each one token id, in this order from id 0; the first ends a
    document (the corpus separates documents with it) and stops generation."""
    init_from: Identity[str | None] = None
    """Start from these weights: a `.safetensors` file with the CS336 PyTorch names (as `jaxlm.export` writes);
    its shapes must match the config."""

    profile_steps: Safe[tuple[int, int] | None] = None
    """`[start, stop]`: write a `jax.profiler` trace of the updates after step `start` up to step `stop` into
    `<run>/profile/` (TensorBoard's profile plugin and Perfetto open it; see docs/performance.md); null = none."""

    # --- wall-clock budget ---
    max_wallclock_seconds: Safe[float | None] = None
    """Training-time budget (evals included, compile excluded); when spent, the run stops cleanly with a final
    eval, status `completed` and `stopped_by: "wallclock"`."""
    schedule_by: Safe[Literal["steps", "wallclock"]] = "steps"
    """`"wallclock"`: size `cosine_cycle_iters` and `max_iterations` so the cosine, the final evaluation and the
    last save end with `max_wallclock_seconds`: planned from the first warm steps, then again from the first
    whole checkpoint intervals (at least 100 steps), which pay for the saves (the values chosen go into
    config.json; docs/performance.md, "The wall-clock plan")."""

    # --- Weights & Biases (optional: `uv sync --extra wandb`), a second sink beside TensorBoard ---
    wandb_project: Safe[str | None] = None
    """W&B project to log the run to; null = no W&B."""
    wandb_entity: Safe[str | None] = None
    """W&B entity (user or team); null = the account's default."""
    wandb_group: Safe[str | None] = None
    """W&B group of the run; a sweep sets it to its name prefix so its runs group together."""
    wandb_mode: Safe[Literal["online", "offline"] | None] = None
    """`"offline"` writes the W&B run to disk only (`wandb sync` uploads it later); null = online when a W&B API
    key is configured, offline otherwise, so nothing blocks on the network."""

    # --- checkpoints and run safety ---
    keep_checkpoints: Safe[int] = 3
    """Latest periodic checkpoints kept; the best-by-validation one is kept besides."""
    divergence_factor: Safe[float] = 3.0
    """Stop as `diverged` when a loss after warmup exceeds this many times the initial loss (NaN/inf always stops)."""

    # --- architecture ablations (CS336 section 7); defaults are the baseline ---
    norm: Identity[Literal["rmsnorm", "none"]] = "rmsnorm"
    """Ablation: RMSNorm (eps 1e-5, in float32) or no normalization."""
    norm_position: Identity[Literal["pre", "post"]] = "pre"
    """Ablation: pre-norm `x + f(norm(x))` or post-norm `norm(x + f(x))`."""
    position_embedding: Identity[Literal["rope", "none"]] = "rope"
    """Ablation: RoPE or no position information (NoPE; causal masking is the only position signal)."""
    ffn: Identity[Literal["swiglu", "silu"]] = "swiglu"
    """Ablation: SwiGLU `w2(silu(w1 x) * w3 x)` or SiLU `w2(silu(w1 x))`."""
    tie_embeddings: Identity[bool] = False
    """Ablation: reuse the token embedding as the LM head."""

    # --- kernels ---
    attention: Layout[Literal["auto", "cudnn", "jaxlm"]] = "auto"
    """`"auto"`: cuDNN flash attention for bf16/fp16 on NVIDIA GPUs, jaxlm's kernel elsewhere or when cuDNN fails
    to compile the train step (logged, and recorded in summary.json as `attention_kernel` and
    `attention_reason`); `"cudnn"`: cuDNN or a one-line error; `"jaxlm"`: always jaxlm's kernel."""

    # --- scale-out (jaxlm/train/sharding.py): device mesh and micro-batching ---
    mesh_data: Layout[int] = -1
    """Size of the mesh's data-parallel axis; -1 = all devices the other axis leaves."""
    mesh_fsdp: Layout[int] = 1
    """Size of the mesh axis params and optimizer state are sharded over (FSDP); -1 = all remaining devices."""
    grad_accum_steps: Layout[int] = 1
    """Micro-batches per update, accumulated inside the jitted step; the update equals the full-batch one."""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ffn_dim(self) -> int:
        """d_ff, or the CS336 default for the chosen FFN when d_ff is null."""
        if self.d_ff is not None:
            return self.d_ff
        if self.ffn == "silu":
            return 4 * self.d_model
        return max(64, int(round(8 * self.d_model / 3 / 64)) * 64)

    @property
    def schedule_end(self) -> int:
        return self.cosine_cycle_iters if self.cosine_cycle_iters is not None else self.max_iterations

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}

# Keys a run directory's config.json holds besides the Config's own; reading such a file
# as a config ignores them, so a run's config.json can be launched again as it is.
RUN_METADATA_KEYS = ("name", "jaxlm_version", "git_commit", "git_dirty", "start_time", "config_file", "overrides")
_HINTS = typing.get_type_hints(Config)


_ANNOTATED = typing.get_type_hints(Config, include_extras=True)


def _resume_role(name: str) -> Resume:
    """A field's Resume role, read from its annotation (a field without one is a bug: it fails here, at import)."""
    for mark in getattr(_ANNOTATED[name], "__metadata__", ()):
        if isinstance(mark, Resume):
            return mark
    raise TypeError(
        f"Config field {name!r} has no resume role: wrap its type in Identity[...], Safe[...] or Layout[...]"
    )


RESUME_ROLES: dict[str, Resume] = {name: _resume_role(name) for name in FIELDS}
IDENTITY_KEYS = tuple(name for name, role in RESUME_ROLES.items() if role is Resume.IDENTITY)

POSITIVE_INT_KEYS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "batch_size",
                     "max_iterations", "log_interval", "eval_interval", "checkpoint_interval", "eval_batches",
                     "keep_checkpoints", "grad_accum_steps", "d_ff")  # fmt: skip
NON_NEGATIVE_KEYS = ("seed", "warmup_iters", "weight_decay", "sample_tokens")
POSITIVE_FLOAT_KEYS = ("rope_theta", "learning_rate", "grad_clip", "adam_eps", "divergence_factor")


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


MAX_INT = 2**31 - 1  # steps, counts and seeds reach JAX as int32 (a larger one fails inside jit)


def _in_int32(key: str, value: int) -> int:
    if abs(value) > MAX_INT:
        raise ConfigError(f"config key '{key}': at most {MAX_INT:,} in size, got {value:.3g}")
    return value


def _coerce(key: str, value: Any) -> Any:
    """Check `value` against the field's type; ints are accepted for floats."""
    hint, optional = _unwrap_optional(_HINTS[key])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}': must not be null")
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if _is_int(value):
            return _in_int32(key, value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key '{key}': {value} is not a finite number")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif typing.get_args(hint) == (int, int):  # tuple[int, int]: a JSON list of two integers
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
            return tuple(_in_int32(key, int(v)) for v in value)
        raise ConfigError(f"config key '{key}': expected a list of two integers, got {value!r}")
    elif typing.get_origin(hint) is tuple:  # tuple[str, ...]: a JSON list of strings
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"config key '{key}': expected a list of strings, got {value!r}")
    else:  # pragma: no cover - a new field type nobody taught _coerce
        raise AssertionError(f"unsupported field type {hint} for {key}")
    raise ConfigError(f"config key '{key}': expected {hint.__name__}, got {type(value).__name__} {value!r}")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the CLI; the value is typed by the field (JSON where it parses)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    _check_known(key)
    hint, _ = _unwrap_optional(_HINTS[key])
    if raw in ("null", "None"):
        return key, None
    if hint is str or (typing.get_origin(hint) is Literal and all(isinstance(c, str) for c in typing.get_args(hint))):
        return key, raw
    if hint is bool and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
        return key, raw.lower() in ("true", "1", "yes")
    try:
        return key, loads_strict(raw)
    except ValueError:
        raise ConfigError(f"config key '{key}': cannot parse {raw!r} as {getattr(hint, '__name__', hint)}") from None


def _check_known(key: str) -> None:
    if key not in FIELDS:
        near = difflib.get_close_matches(key, FIELDS, n=1)
        raise ConfigError(f"config key '{key}': unknown key" + (f" (did you mean '{near[0]}'?)" if near else ""))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a config JSON file into a dict, with one-line errors for the usual mistakes."""
    path = Path(path)
    if problem := file_problem(path):
        raise ConfigError(f"config file '{path}': {problem}")
    try:
        raw = loads_strict(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}': not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}': cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file '{path}': invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise ConfigError(f"config file '{path}': {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}': expected a JSON object at the top level")
    return config_values(raw)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows (write a finite number)")


def loads_strict(text: str) -> Any:
    """json.loads without Python's NaN/Infinity extension: a config holds finite numbers only."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def config_values(stored: dict[str, Any]) -> dict[str, Any]:
    """The Config keys of a stored config.json (a run's metadata keys, such as `name`, left out)."""
    return {k: v for k, v in stored.items() if k not in RUN_METADATA_KEYS}


def build_config(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """Typed, validated Config from a dict of keys and a dict of overrides."""
    merged = {**values, **(overrides or {})}
    kwargs = {}
    for key, value in merged.items():
        _check_known(key)
        kwargs[key] = _coerce(key, value)
    config = Config(**kwargs)
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Config file + `--set key=value` strings -> validated Config."""
    parsed = dict(parse_override(o) for o in overrides or [])
    return build_config(read_config_file(path), parsed)


MAX_EVAL_BATCHES = 10_000  # each is kept on the device for the whole run
MAX_SAMPLE_TOKENS = 4096  # a sample is a glance at the model at each eval, not a generation job


def validate(c: Config) -> None:
    """Cross-field and range checks; raise ConfigError naming the key."""
    for key in POSITIVE_INT_KEYS:
        if getattr(c, key) is not None and getattr(c, key) <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {getattr(c, key)}")
    for key in POSITIVE_FLOAT_KEYS:
        value = getattr(c, key)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"config key '{key}': must be a positive number, got {value}")
    if c.d_model % c.num_heads:
        raise ConfigError(f"config key 'd_model': {c.d_model} is not divisible by num_heads={c.num_heads}")
    if c.position_embedding == "rope" and c.head_dim % 2:
        raise ConfigError(
            f"config key 'num_heads': head dimension d_model/num_heads={c.head_dim} must be even for RoPE"
        )
    for key in NON_NEGATIVE_KEYS:
        if getattr(c, key) < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {getattr(c, key)}")
    if c.warmup_iters > c.max_iterations:
        raise ConfigError(
            f"config key 'warmup_iters': {c.warmup_iters} exceeds max_iterations={c.max_iterations} "
            f"(for a short try, lower it too: --set warmup_iters={c.max_iterations // 10})"
        )
    if c.min_learning_rate < 0 or c.min_learning_rate > c.learning_rate:
        raise ConfigError(
            f"config key 'min_learning_rate': {c.min_learning_rate} must be in [0, learning_rate={c.learning_rate}]"
        )
    if c.cosine_cycle_iters is not None and c.cosine_cycle_iters < c.warmup_iters:
        raise ConfigError(
            f"config key 'cosine_cycle_iters': {c.cosine_cycle_iters} is below warmup_iters={c.warmup_iters}"
        )
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(c, key) < 1:
            raise ConfigError(f"config key '{key}': must be in [0, 1), got {getattr(c, key)}")
    if c.init_from is not None and (problem := file_problem(c.init_from)):
        raise ConfigError(f"config key 'init_from': '{c.init_from}' {problem}")
    if c.max_wallclock_seconds is not None and not c.max_wallclock_seconds > 0:
        raise ConfigError(f"config key 'max_wallclock_seconds': must be positive, got {c.max_wallclock_seconds}")
    if c.schedule_by == "wallclock" and c.max_wallclock_seconds is None:
        raise ConfigError("config key 'schedule_by': 'wallclock' needs max_wallclock_seconds to be set")
    if c.divergence_factor <= 1:
        raise ConfigError(f"config key 'divergence_factor': must be > 1, got {c.divergence_factor}")
    if c.loss_chunk_tokens is not None and (c.loss_chunk_tokens <= 0 or c.context_length % c.loss_chunk_tokens):
        raise ConfigError(
            f"config key 'loss_chunk_tokens': must be a positive divisor of context_length={c.context_length}, "
            f"got {c.loss_chunk_tokens}"
        )
    if c.profile_steps is not None and not 0 <= c.profile_steps[0] < c.profile_steps[1]:
        raise ConfigError(f"config key 'profile_steps': needs 0 <= start < stop, got {list(c.profile_steps)}")
    validate_scale_out(c)
    validate_special_tokens(c)
    for key, most in (("eval_batches", MAX_EVAL_BATCHES), ("sample_tokens", MAX_SAMPLE_TOKENS)):
        if getattr(c, key) > most:
            raise ConfigError(f"config key '{key}': at most {most:,}, got {getattr(c, key):,}")


def validate_scale_out(c: Config) -> None:
    """Mesh and micro-batch checks that need no devices (device counts are checked in jaxlm.train.sharding)."""
    for key in ("mesh_data", "mesh_fsdp"):
        if getattr(c, key) == 0 or getattr(c, key) < -1:
            raise ConfigError(
                f"config key '{key}': must be -1 (all remaining devices) or positive, got {getattr(c, key)}"
            )
    if c.mesh_data == -1 and c.mesh_fsdp == -1:
        raise ConfigError("config key 'mesh_fsdp': at most one of mesh_data and mesh_fsdp may be -1")
    if c.batch_size % c.grad_accum_steps:
        raise ConfigError(
            f"config key 'grad_accum_steps': batch_size={c.batch_size} is not divisible by {c.grad_accum_steps}"
        )


def validate_special_tokens(c: Config) -> None:
    """At least one special token, none empty, no repeats (the vocabulary room is checked when the BPE trains)."""
    if not c.special_tokens:
        raise ConfigError("config key 'special_tokens': needs at least one token (the first ends a document)")
    if any(not t for t in c.special_tokens) or len(set(c.special_tokens)) != len(c.special_tokens):
        raise ConfigError(f"config key 'special_tokens': tokens must be non-empty and distinct, got {c.special_tokens}")
