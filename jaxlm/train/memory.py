"""The memory a config needs, estimated from the config alone, and the check made before anything
is allocated: a run that cannot fit is refused with one line giving the estimate and the limit.

The estimate is an upper-bound sketch, not a measurement (XLA fuses and reuses buffers):

* parameters, gradients and AdamW's two moments: 4 x params x 4 bytes (float32 master state);
* activations kept for the backward pass: per layer about 16 x batch x context x d_model values
  plus the attention scores, batch x heads x context^2 (twice: scores and probabilities);
* the logits: batch x context x vocab, three copies (logits, softmax, their gradient);
* the validation set, kept on the device: eval_batches x batch x context x 2 int32;
* the BPE trainer's working set when a tokenizer is trained (dataset configs): ~4 KiB per
  vocabulary entry (merges, pair counts), a guard against typos like vocab_size=1e9.

The device limit is the accelerator's `bytes_limit` where JAX reports one; on the CPU backend the
device memory is host memory, so the limit is the host's total RAM.
"""

from __future__ import annotations

import os

from jaxlm.config import Config
from jaxlm.errors import ConfigError
from jaxlm.train.flops import param_counts

TOKENIZER_BYTES_PER_VOCAB = 4096


def estimate(c: Config) -> dict[str, int]:
    """Bytes by part ({"params_and_optimizer", "activations", "logits", "eval_batches", "tokenizer", "total"})."""
    value = 2 if c.dtype == "bfloat16" else 4
    b, t, d = c.batch_size // max(c.grad_accum_steps, 1), c.context_length, c.d_model
    parts = {
        "params_and_optimizer": 4 * param_counts(c)["total"] * 4,
        "activations": c.num_layers * (16 * b * t * d + 2 * b * c.num_heads * t * t) * value,
        "logits": 3 * b * t * c.vocab_size * 4,
        "eval_batches": c.eval_batches * c.batch_size * t * 2 * 4,
        "tokenizer": c.vocab_size * TOKENIZER_BYTES_PER_VOCAB if c.train_data_path is None else 0,
    }
    parts["total"] = sum(parts.values())
    return parts


def host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory_bytes() -> int | None:
    """One device's memory limit as JAX reports it; host RAM on the CPU backend."""
    import jax

    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return host_memory_bytes()
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = {}
    return stats.get("bytes_limit")


def gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def describe(c: Config) -> str:
    """One line for --dry-run: the estimate by part."""
    parts = estimate(c)
    detail = ", ".join(f"{k.replace('_', ' ')} {gib(v)}" for k, v in parts.items() if k != "total" and v)
    return f"memory estimate: {gib(parts['total'])} ({detail})"


def check_fits(c: Config, devices: int = 1) -> None:
    """ConfigError with the estimate and the limit when the run cannot fit; call before allocating.

    `devices`: the devices the batch and state are spread over (the estimate per device shrinks
    with data parallelism only for activations, logits and the eval set)."""
    parts = estimate(c)
    spread = parts["activations"] + parts["logits"] + parts["eval_batches"]
    per_device = parts["params_and_optimizer"] + spread // max(devices, 1)
    limit = device_memory_bytes()
    if limit and per_device > limit:
        raise ConfigError(
            f"config needs about {gib(per_device)} per device (params+optimizer {gib(parts['params_and_optimizer'])}, "
            f"activations {gib(parts['activations'])}, logits {gib(parts['logits'])}, eval batches "
            f"{gib(parts['eval_batches'])}), more than the {gib(limit)} a device has: lower batch_size, "
            f"context_length, vocab_size, eval_batches or the model size"
        )
    host = host_memory_bytes()
    if host and parts["tokenizer"] > host:
        raise ConfigError(
            f"config key 'vocab_size': training a {c.vocab_size:,}-token tokenizer needs about "
            f"{gib(parts['tokenizer'])}, more than the host's {gib(host)}"
        )
