"""Causal softmax attention with a hand-written backward pass.

Differentiating plain `softmax(q k^T) v` makes XLA keep (B, H, T, S) residuals
such as the broadcast softmax denominator and run several (B, H, T, S)
elementwise passes in the backward. On the CPU these passes cost more than the
attention matmuls themselves. This version saves only q, k, v, the output and
the per-row log-sum-exp (as flash attention does), recomputes the probabilities
in the backward, and writes the gradient with the fewest full-size passes:

    P = exp(S - lse),  dV = P^T dO,  dP = dO V^T,
    dS = P * (dP - rowsum(dO * O)),  dQ = dS K * scale,  dK = dS^T Q * scale.

Scores, softmax and log-sum-exp are float32 whatever the compute dtype.

On an NVIDIA GPU in bfloat16/float16, `self_attention` uses cuDNN's flash
attention through `jax.nn.dot_product_attention` instead; where cuDNN cannot
take the shape or dtype, it falls back to the version here.
JAXLM_ATTENTION=xla forces the version here everywhere.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)


def attention_implementation(dtype) -> str:
    """"cudnn" where self-attention in `dtype` goes to cuDNN flash attention, else "jaxlm"."""
    if os.environ.get("JAXLM_ATTENTION", "auto") == "xla":
        return "jaxlm"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and jax.default_backend() == "gpu" else "jaxlm"


def self_attention(q_BxTxHxD: jax.Array, k_BxTxHxD: jax.Array, v_BxTxHxD: jax.Array) -> jax.Array:
    """Causal attention of a whole sequence over itself (training and evaluation)."""
    if attention_implementation(q_BxTxHxD.dtype) == "cudnn":
        try:
            return jax.nn.dot_product_attention(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, is_causal=True,
                                                implementation="cudnn")
        except Exception as e:  # unsupported shape, dtype or cuDNN version: same maths, XLA kernels
            log.warning("cuDNN attention unavailable (%s); using jaxlm's attention", e)
    positions_T = jnp.arange(q_BxTxHxD.shape[1])
    return causal_attention(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, positions_T, positions_T)


def causal_attention(q_BxTxHxD: jax.Array, k_BxSxHxD: jax.Array, v_BxSxHxD: jax.Array,
                     q_positions_T: jax.Array, k_positions_S: jax.Array) -> jax.Array:
    """Softmax attention; query i sees the keys whose position is <= its own."""
    bias_TxS = jnp.where(k_positions_S[None, :] <= q_positions_T[:, None], 0.0, -jnp.inf).astype(jnp.float32)
    return _attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, bias_TxS)


def _scores(q, k, bias_TxS):
    """Float32 scaled scores (B, H, T, S) plus the mask bias."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
    return s * scale + bias_TxS


def _forward(q, k, v, bias_TxS):
    s = _scores(q, k, bias_TxS)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bhts,bshd->bthd", (p / denom).astype(v.dtype), v)
    return out, m + jnp.log(denom)


@jax.custom_vjp
def _attention(q, k, v, bias_TxS):
    return _forward(q, k, v, bias_TxS)[0]


def _attention_fwd(q, k, v, bias_TxS):
    out, lse = _forward(q, k, v, bias_TxS)
    return out, (q, k, v, bias_TxS, out, lse)


def _attention_bwd(residuals, g_BxTxHxD):
    q, k, v, bias_TxS, out, lse = residuals
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = jnp.exp(_scores(q, k, bias_TxS) - lse)
    g = g_BxTxHxD.astype(v.dtype)
    dv = jnp.einsum("bhts,bthd->bshd", p.astype(v.dtype), g)
    dp = jnp.einsum("bthd,bshd->bhts", g, v, preferred_element_type=jnp.float32)
    delta_BxTxH = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    ds = (p * (dp - delta_BxTxH.transpose(0, 2, 1)[..., None]) * scale).astype(q.dtype)
    dq = jnp.einsum("bhts,bshd->bthd", ds, k)
    dk = jnp.einsum("bhts,bthd->bshd", ds, q)
    return dq, dk, dv, jnp.zeros_like(bias_TxS)


_attention.defvjp(_attention_fwd, _attention_bwd)

