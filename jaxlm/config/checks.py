"""Range and cross-field checks of a `Config`: `validate` raises a one-line ConfigError naming the key."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from jaxlm.errors import ConfigError, file_problem

if TYPE_CHECKING:
    from jaxlm.config.fields import Config

POSITIVE_INT_KEYS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "batch_size",
                     "max_iterations", "log_interval", "eval_interval", "checkpoint_interval", "eval_batches",
                     "keep_checkpoints", "grad_accum_steps", "d_ff", "muon_ns_steps")  # fmt: skip
NON_NEGATIVE_KEYS = ("seed", "warmup_iters", "weight_decay", "sample_tokens", "z_loss", "muon_weight_decay")
POSITIVE_FLOAT_KEYS = ("rope_theta", "learning_rate", "grad_clip", "adam_eps", "divergence_factor",
                       "muon_learning_rate", "logit_softcap")  # fmt: skip
MAX_EVAL_BATCHES = 10_000  # each is kept on the device for the whole run
MAX_SAMPLE_TOKENS = 4096  # a sample is a glance at the model at each eval, not a generation job


def validate(c: Config) -> None:
    """Cross-field and range checks; raise ConfigError naming the key."""
    for key in POSITIVE_INT_KEYS:
        if getattr(c, key) is not None and getattr(c, key) <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {getattr(c, key)}")
    for key in POSITIVE_FLOAT_KEYS:
        value = getattr(c, key)
        if value is not None and not (value > 0 and math.isfinite(value)):
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
    for key in ("beta1", "beta2", "muon_momentum"):
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
