"""The run configuration's keys: one flat, typed, frozen dataclass, each field with its default, its
documentation (docs/config.md is generated from these docstrings) and its role on a resume."""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Annotated, Any, Literal


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
    ffn: Identity[Literal["swiglu", "silu", "relu2"]] = "swiglu"
    """Ablation: SwiGLU `w2(silu(w1 x) * w3 x)`, SiLU `w2(silu(w1 x))` or squared ReLU `w2(relu(w1 x)^2)`
    (a leaderboard switch, docs/leaderboard.md)."""
    tie_embeddings: Identity[bool] = False
    """Ablation: reuse the token embedding as the LM head."""

    # --- leaderboard switches (docs/leaderboard.md); defaults are the CS336 baseline ---
    qk_norm: Identity[bool] = False
    """RMSNorm (with a learned gain per head dimension) of each head's queries and keys, before RoPE."""
    logit_softcap: Identity[float | None] = None
    """Soft-cap the logits at `c`: `c * tanh(z / c)`, in training, evaluation and generation; null = off."""
    zero_init_output: Identity[bool] = False
    """Start the attention output projections and the FFN down projections (`w2`) at zero, so every block
    starts as the identity."""
    z_loss: Identity[float] = 0.0
    """Coefficient of the z-loss `mean(logsumexp(logits)^2)` added to the training objective (logged as
    `z_loss`); the reported and compared `loss` is the cross-entropy alone. 0 = off."""
    optimizer: Identity[Literal["adamw", "muon"]] = "adamw"
    """`"adamw"`: CS336's AdamW for every parameter. `"muon"`: Muon (`optax.contrib.muon`) for the blocks'
    hidden matrices (attention q/k/v/output, FFN); CS336's AdamW (`learning_rate`, `beta1`, `beta2`,
    `adam_eps`, `weight_decay`) for the embedding, the LM head and the norm gains."""
    muon_learning_rate: Identity[float] = 0.02
    """Muon's peak learning rate; it follows the same warmup and cosine as `learning_rate`, scaled to this peak."""
    muon_momentum: Identity[float] = 0.95
    """Muon's momentum (Nesterov), in [0, 1)."""
    muon_ns_steps: Identity[int] = 5
    """Newton-Schulz iterations that orthogonalize Muon's update."""
    muon_weight_decay: Identity[float] = 0.0
    """Muon's decoupled weight decay: each step scales its matrices by (1 - Muon's rate x this). Its own key,
    since Muon's rate is ~10x AdamW's: the baseline's `weight_decay` there would decay ~10x harder."""

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
        """d_ff, or the CS336 default for the chosen FFN when d_ff is null (4 d_model for the two-matrix ones)."""
        if self.d_ff is not None:
            return self.d_ff
        if self.ffn in ("silu", "relu2"):
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
