"""The memory a config needs, estimated from the config alone, and the check made before anything
is allocated: a run that cannot fit is refused with one line giving the estimate and the limit.

The estimate is what one device holds at the worst moment of a run: the larger of the train step
and the eval step (which runs the whole batch at once, so with gradient accumulation its logits can
outweigh a micro-batch's training), plus the validation batches kept on the device for the run.
Its coefficients were fitted to XLA's buffer assignment of the real compiled steps
(`scripts/calibrate_memory.py`; docs/performance.md has the table) and rounded up, so it is meant
to sit at or a little above what XLA plans, not at a worst case. Byte counts, for P parameters,
b rows per micro-batch (batch_size / grad_accum_steps), B = batch_size, T, d, d_ff, H, V, L:

* params_and_optimizer: float32 params, gradients and AdamW's two moments, 16 P (Muon keeps one
  moment for the matrices it trains, so for `optimizer: "muon"` this errs high); 4 P more for the
  gradient accumulator when grad_accum_steps > 1; 2 P more in bfloat16 (the weights' bf16 copies).
  The eval step holds 12 P (no gradients or accumulator).
* activations kept for the backward pass: 4 L b T (14 d + a d_ff + 1.25 H T), i.e. per layer and
  token about fourteen float32 values per model dimension (residuals, norms, q/k/v before and after
  RoPE, attention output, projections; two more with `qk_norm`), a = 4 per FFN dimension for SwiGLU
  (w1, w3, SiLU, product; a = 2.5 for SiLU and ReLU², which have no w3), and a T-long row of
  float32 scores and a quarter per head (the blockwise scores of forward and backward). bfloat16
  counts the same: XLA:CPU computes bf16 element-wise work in float32, so its activations take no
  less memory there; a GPU keeps them in bf16 and runs cuDNN attention without T x T scores, so
  there the estimate should err high. The eval step keeps no activations across layers: one
  layer's 4 B T (d + d_ff + H T).
* logits: 2.5 float32 copies of b x T x V in the train step (the logits, their gradient, the
  softmax's working buffers), one copy of B x T x V in the eval step.
* eval_batches: the validation set, kept on the device: eval_batches x batch x context x 2 int32.
* tokenizer: the BPE trainer's host memory when a tokenizer is trained (dataset configs), before
  any array exists, so it is not part of `total`: ~4 KiB per vocabulary entry, a guard against
  typos like vocab_size=1e9 rather than a measurement (the trainer's memory follows the corpus).

The device limit is the accelerator's `bytes_limit` where JAX reports one; on the CPU backend the
device memory is host memory, so the limit is the host's total RAM.
"""

from __future__ import annotations

import os

from jaxlm.config import Config
from jaxlm.errors import ConfigError, UserError
from jaxlm.train.flops import param_counts

TOKENIZER_BYTES_PER_VOCAB = 4096
FLOAT = 4  # bytes: activations, logits and optimizer state are counted as float32
# Train-step activations per layer and token: coefficients of d_model, d_ff (by FFN) and H x T (see above).
ACT_PER_D, ACT_PER_SCORE = 14, 1.25
ACT_PER_FF = {"swiglu": 4, "silu": 2.5, "relu2": 2.5}
ACT_PER_QK_NORM = 2  # qk_norm: the normed q and k, per model dimension
TRAIN_LOGIT_COPIES = 2.5
DEVICE_PARTS = ("params_and_optimizer", "activations", "logits", "eval_batches")


def _train_step(c: Config, params: int) -> dict[str, int]:
    b, t = c.batch_size // max(c.grad_accum_steps, 1), c.context_length
    state = 16 + (4 if c.grad_accum_steps > 1 else 0) + (2 if c.dtype == "bfloat16" else 0)
    per_d = ACT_PER_D + (ACT_PER_QK_NORM if c.qk_norm else 0)
    per_token = per_d * c.d_model + ACT_PER_FF[c.ffn] * c.ffn_dim + ACT_PER_SCORE * c.num_heads * t
    return {
        "params_and_optimizer": state * params,
        "activations": int(c.num_layers * b * t * per_token * FLOAT),
        "logits": int(TRAIN_LOGIT_COPIES * b * t * c.vocab_size * FLOAT),
    }


def _eval_step(c: Config, params: int) -> dict[str, int]:
    b, t = c.batch_size, c.context_length
    return {
        "params_and_optimizer": (12 + (2 if c.dtype == "bfloat16" else 0)) * params,
        "activations": b * t * (c.d_model + c.ffn_dim + c.num_heads * t) * FLOAT,
        "logits": b * t * c.vocab_size * FLOAT,
    }


def estimate(c: Config) -> dict[str, int]:
    """Bytes by part ({"params_and_optimizer", "activations", "logits", "eval_batches", "tokenizer", "total"}):
    the parts of whichever step needs more; `total` is one device's peak (the tokenizer is not in it)."""
    params = param_counts(c)["total"]
    parts = max(_train_step(c, params), _eval_step(c, params), key=lambda p: sum(p.values()))
    parts["eval_batches"] = c.eval_batches * c.batch_size * c.context_length * 2 * 4
    parts["tokenizer"] = c.vocab_size * TOKENIZER_BYTES_PER_VOCAB if c.train_data_path is None else 0
    parts["total"] = sum(parts[k] for k in DEVICE_PARTS)
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


# The GPUs a --dry-run compares the estimate with, so that a GPU config can be sized on a machine
# without the GPU.
REFERENCE_GPUS = (("an 80 GB GPU (H100)", 80e9), ("a 180 GB GPU (B200)", 180e9))


def describe(c: Config) -> str:
    """One line for --dry-run: the estimate by part, and its share of an 80 GB and a 180 GB GPU."""
    parts = estimate(c)
    detail = ", ".join(f"{k.replace('_', ' ')} {gib(parts[k])}" for k in DEVICE_PARTS if parts[k])
    shares = ", ".join(f"{parts['total'] / size:.0%} of {gpu}" for gpu, size in REFERENCE_GPUS)
    line = f"memory estimate: {gib(parts['total'])} on one device ({detail}); {shares}"
    if parts["tokenizer"]:
        line += f"; tokenizer trainer {gib(parts['tokenizer'])} of host memory, before training"
    return line


def check_eval_fits(c: Config, devices: int = 1) -> None:
    """UserError when the evaluation step of `c` (one batch of `batch_size` windows of `context_length`)
    cannot fit one device's memory; call before allocating (`python -m jaxlm.evaluate` with a large
    --context-length or --batch-size)."""
    parts = _eval_step(c, param_counts(c)["total"])
    per_device = parts["params_and_optimizer"] + (parts["activations"] + parts["logits"]) // max(devices, 1)
    limit = device_memory_bytes()
    if limit and per_device > limit:
        raise UserError(
            f"evaluating {c.batch_size} windows of {c.context_length} tokens at once needs about {gib(per_device)} "
            f"per device, more than the {gib(limit)} a device has: lower --context-length or --batch-size"
        )


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
