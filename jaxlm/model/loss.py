"""The training loss without the whole float32 logits tensor: next-token cross-entropy computed from
the final hidden states and the head weight, a chunk of sequence positions at a time.

At vocab 32,000, batch 64 and context 256 the (B, T, V) float32 logits are 1.95 GiB, and the plain
loss keeps several such tensors live (the logits, their softmax for the backward pass, the head's
gradient input). Here a `lax.scan` over chunks of positions computes each chunk's logits, its
logsumexp and its target logit, and `jax.checkpoint` makes the backward pass recompute the chunk's
logits instead of storing them: at most one chunk of logits (batch x chunk x vocab) is live. The
loss and its gradient equal the plain one to float32 rounding (tests/model/test_loss.py).

Chunks run along the sequence axis, so each keeps the batch axis, and with it the batch sharding
over the mesh, whole: no chunk lives on one device only.

`chunked_cross_entropy` returns `(mean loss, extras)`; extras are per-position (B, T) float32
arrays (`logsumexp`, `nll`) for terms that sit beside the loss (a z-loss on the logsumexp, the full
evaluation's masked sums). With `softcap` set, each chunk's logits are soft-capped (`c * tanh(z / c)`,
as `Transformer.logits` does) before the logsumexp and the target's logit are taken.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.model.transformer import cap_logits, einsum_f32

MAX_CHUNK_LOGITS = 1 << 26  # float32 logits per chunk, all batch rows together: 256 MiB


def positions_per_chunk(batch: int, context: int, vocab: int, requested: int | None = None) -> int:
    """Sequence positions per chunk: `requested` when set, else every position while batch x context x
    vocab logits fit MAX_CHUNK_LOGITS, else the largest divisor of `context` that keeps a chunk under it."""
    if requested is not None:
        return requested
    if batch * context * vocab <= MAX_CHUNK_LOGITS:
        return context
    chunk = max(MAX_CHUNK_LOGITS // (batch * vocab), 1)
    while context % chunk:
        chunk -= 1
    return chunk


def _chunk_terms(
    h_BxCxD: jax.Array, w_DxV: jax.Array, t_BxC: jax.Array, cap: float | None = None
) -> tuple[jax.Array, jax.Array]:
    """(logsumexp, target logit) of one chunk of positions, from float32 logits (soft-capped at `cap`
    when set). The weight is cast to the compute dtype here, inside the chunk, so its gradient is summed
    over the chunks in w's own dtype (float32 master weights: float32 sums, not bfloat16 ones)."""
    logits = cap_logits(einsum_f32("bcd,dv->bcv", h_BxCxD, w_DxV.astype(h_BxCxD.dtype)), cap)
    target = jnp.take_along_axis(logits, t_BxC[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1), target


def chunked_cross_entropy(
    hidden_BxTxD: jax.Array,
    w_DxV: jax.Array,
    targets_BxT: jax.Array,
    chunk: int,
    *,
    softcap: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token NLL in nats of logits `hidden @ w` (float32; w cast to hidden's compute dtype),
    `chunk` positions at a time; `chunk` must divide T (one chunk of T: the whole logits at once, as
    the plain loss). `softcap` (a static float, or None = off) caps the logits at `c * tanh(z / c)`."""
    b, t, d = hidden_BxTxD.shape
    if t % chunk:
        raise ValueError(f"chunk of {chunk} positions does not divide the sequence length {t}")
    if chunk == t:
        lse_BxT, target_BxT = _chunk_terms(hidden_BxTxD, w_DxV, targets_BxT, softcap)
    else:
        n = t // chunk
        h_NxBxCxD = hidden_BxTxD.reshape(b, n, chunk, d).swapaxes(0, 1)
        t_NxBxC = targets_BxT.reshape(b, n, chunk).swapaxes(0, 1)
        # the backward pass recomputes a chunk's logits; the cap is bound here, a constant rather than a traced input
        terms = jax.checkpoint(functools.partial(_chunk_terms, cap=softcap))

        def one_chunk(_, xs):
            return None, terms(xs[0], w_DxV, xs[1])

        _, (lse_NxBxC, target_NxBxC) = jax.lax.scan(one_chunk, None, (h_NxBxCxD, t_NxBxC))
        lse_BxT = lse_NxBxC.swapaxes(0, 1).reshape(b, t)
        target_BxT = target_NxBxC.swapaxes(0, 1).reshape(b, t)
    nll_BxT = lse_BxT - target_BxT
    return jnp.mean(nll_BxT), {"logsumexp": lse_BxT, "nll": nll_BxT}
