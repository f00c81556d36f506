"""Causal softmax attention: a block-causal kernel with a hand-written backward pass.

`self_attention` (training and evaluation) is where the CPU time goes. Three
choices make it cheaper than differentiating plain `softmax(q k^T) v`
(docs/performance.md has the measurements):

* Heads first. q, k and v are moved to (B, H, T, D) once, so every attention
  matmul has its batch dimensions leading and XLA adds no transposes per matmul.
* Block-causal. Queries are split into blocks of `block_size(T)` rows, and a
  block is scored only against the keys at or before its last row. The
  all-masked upper-right blocks are never computed or exponentiated: with 4
  blocks that is 3/8 of the scores.
* Flash-attention residuals. The forward keeps only q, k, v, the output and
  each row's log-sum-exp. The backward recomputes the probabilities,
      P = exp(S - lse),  dV = P^T dO,  dP = dO V^T,
      dS = P * (dP - rowsum(dO * O)),  dQ = dS K * scale,  dK = dS^T Q * scale,
  rather than letting autodiff save (B, H, T, S) intermediates such as the
  broadcast softmax denominator.

Scores, softmax and log-sum-exp are float32 whatever the compute dtype.

On an NVIDIA GPU in bfloat16/float16, `self_attention` can use cuDNN's flash attention
through `jax.nn.dot_product_attention` instead. The config key `attention` says which:
"auto" (cuDNN where it applies), "cudnn" or "jaxlm" (the kernel here everywhere). A
training run chooses once, when its train step is compiled, and falls back to the
kernel here when cuDNN fails to trace or compile (`jaxlm.train.kernels`); the
model is then built with the kernel that compiled, so nothing re-decides mid-run.

`causal_attention` is the general masked form, with explicit positions; the KV
cache of `jaxlm.generate` uses it.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)


def cudnn_applies(dtype, platform: str) -> bool:
    """cuDNN flash attention is offered for half-precision attention on an NVIDIA GPU."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return half and platform == "gpu"


def attention_implementation(dtype, choice: str = "auto", platform: str | None = None) -> str:
    """ "cudnn" or "jaxlm": the kernel `choice` (the config's `attention`) means for attention in
    `dtype` on `platform` (default: JAX's default backend)."""
    if choice in ("cudnn", "jaxlm"):
        return choice
    return "cudnn" if cudnn_applies(dtype, platform or jax.default_backend()) else "jaxlm"


def cudnn_attention(q_BxTxHxD: jax.Array, k_BxTxHxD: jax.Array, v_BxTxHxD: jax.Array) -> jax.Array:
    return jax.nn.dot_product_attention(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, is_causal=True, implementation="cudnn")


def self_attention(
    q_BxTxHxD: jax.Array, k_BxTxHxD: jax.Array, v_BxTxHxD: jax.Array, implementation: str = "auto"
) -> jax.Array:
    """Causal attention of a whole sequence over itself (training and evaluation). `implementation`
    "cudnn" (the kernel a training run chose) lets cuDNN's failures through to the caller that chose
    it; "auto" (a model built outside a training run) falls back here when cuDNN fails to trace."""
    if attention_implementation(q_BxTxHxD.dtype, implementation) == "cudnn":
        if implementation == "cudnn":
            return cudnn_attention(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD)
        try:
            return cudnn_attention(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD)
        except Exception as e:  # unsupported shape, dtype or cuDNN version: same maths, XLA kernels
            log.warning("cuDNN attention unavailable (%s); using jaxlm's attention", e)
    heads_first = lambda x: x.transpose(0, 2, 1, 3)
    out_BxHxTxD = _block_causal(block_size(q_BxTxHxD.shape[1]), *map(heads_first, (q_BxTxHxD, k_BxTxHxD, v_BxTxHxD)))
    return heads_first(out_BxHxTxD)


def block_size(t: int) -> int:
    """Query rows per block: 64, or more so that there are at most 8 blocks; the whole sequence when
    it is short or does not divide evenly (the fastest split on the CPU; see docs/performance.md)."""
    size = max(64, t // 8)
    return size if t % size == 0 else t


def _blocks(t: int, size: int):
    """(first query row, end of the visible keys, additive mask of the block's last `size` keys)."""
    rows = jnp.arange(size)
    diagonal_mask = jnp.where(rows[None, :] <= rows[:, None], 0.0, -jnp.inf).astype(jnp.float32)
    for start in range(0, t, size):
        end = start + size
        mask_TxS = jnp.concatenate([jnp.zeros((size, start), jnp.float32), diagonal_mask], axis=1)
        yield start, end, mask_TxS


def _scores(q, k, mask_TxS):
    scale = 1.0 / math.sqrt(q.shape[-1])
    return jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32) * scale + mask_TxS


def _forward(size, q, k, v):
    outs, lses = [], []
    for start, end, mask in _blocks(q.shape[2], size):
        s = _scores(q[:, :, start:end], k[:, :, :end], mask)
        m = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - m)
        denom = jnp.sum(p, axis=-1, keepdims=True)
        outs.append(jnp.einsum("bhts,bhsd->bhtd", (p / denom).astype(v.dtype), v[:, :, :end]))
        lses.append(m + jnp.log(denom))
    return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _block_causal(size, q_BxHxTxD, k_BxHxTxD, v_BxHxTxD):
    return _forward(size, q_BxHxTxD, k_BxHxTxD, v_BxHxTxD)[0]


def _block_causal_fwd(size, q, k, v):
    out, lse = _forward(size, q, k, v)
    return out, (q, k, v, out, lse)


def _block_causal_bwd(size, residuals, g_BxHxTxD):
    q, k, v, out, lse = residuals
    scale = 1.0 / math.sqrt(q.shape[-1])
    g = g_BxHxTxD.astype(v.dtype)
    delta = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    dqs, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    for start, end, mask in _blocks(q.shape[2], size):
        q_b, g_b = q[:, :, start:end], g[:, :, start:end]
        p = jnp.exp(_scores(q_b, k[:, :, :end], mask) - lse[:, :, start:end])
        dv = dv.at[:, :, :end].add(
            jnp.einsum("bhts,bhtd->bhsd", p.astype(v.dtype), g_b, preferred_element_type=jnp.float32)
        )
        dp = jnp.einsum("bhtd,bhsd->bhts", g_b, v[:, :, :end], preferred_element_type=jnp.float32)
        ds = (p * (dp - delta[:, :, start:end]) * scale).astype(q.dtype)
        dqs.append(jnp.einsum("bhts,bhsd->bhtd", ds, k[:, :, :end]))
        dk = dk.at[:, :, :end].add(jnp.einsum("bhts,bhtd->bhsd", ds, q_b, preferred_element_type=jnp.float32))
    return jnp.concatenate(dqs, axis=2), dk.astype(k.dtype), dv.astype(v.dtype)


_block_causal.defvjp(_block_causal_fwd, _block_causal_bwd)


def causal_attention(
    q_BxTxHxD: jax.Array, k_BxSxHxD: jax.Array, v_BxSxHxD: jax.Array, q_positions_T: jax.Array, k_positions_S: jax.Array
) -> jax.Array:
    """Softmax attention where query i sees the keys whose position is <= its own (any T and S)."""
    scale = 1.0 / math.sqrt(q_BxTxHxD.shape[-1])
    s = jnp.einsum("bthd,bshd->bhts", q_BxTxHxD, k_BxSxHxD, preferred_element_type=jnp.float32) * scale
    s = jnp.where(k_positions_S[None, :] <= q_positions_T[:, None], s, -jnp.inf)
    probs = jax.nn.softmax(s, axis=-1).astype(v_BxSxHxD.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs, v_BxSxHxD)
