"""Incremental decoding: the transformer's forward pass with a key/value cache.

The model's own modules do the work (`Attention.project_qkv`, the norms, the FFN,
`causal_attention`); this module only threads a cache through them, so the
parameter layout is the model's. A cached forward over positions
[start, start+T) gives the same logits as the full forward over [0, start+T)
(tests/test_generate.py checks this at every position).

Cache slots beyond what has been written may hold anything: a query at position
p attends only to keys at positions <= p, and the key at p is written in the
same call that reads it, so stale slots are never seen. That lets generation
prefill a fixed-length, padded prompt buffer with one compiled program.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxlm.attention import causal_attention
from jaxlm.model import Attention, Block, Transformer


class KVCache(NamedTuple):
    """Keys and values per layer, one slot per position: tuples of (B, S, heads, head_dim) arrays.

    Per-layer arrays (not one stacked array) let XLA update each in place.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[1]


def init_cache(model: Transformer, batch_size: int, max_len: int) -> KVCache:
    """An all-zero cache for `batch_size` sequences of up to `max_len` tokens, in the compute dtype."""
    attn = model.layers[0].attn
    d_model = model.token_embeddings.shape[1]
    shape = (batch_size, max_len, attn.num_heads, d_model // attn.num_heads)
    layers = tuple(jnp.zeros(shape, jnp.dtype(model.dtype)) for _ in model.layers)
    return KVCache(layers, layers)


def _attend(attn: Attention, x_BxTxD: jax.Array, positions_T: jax.Array, k_BxSxHxD: jax.Array,
            v_BxSxHxD: jax.Array, start: jax.Array):
    """Attention for new positions: write their k/v into the cache, attend over the cache."""
    q, k, v = attn.project_qkv(x_BxTxD, positions_T)
    k_BxSxHxD = jax.lax.dynamic_update_slice(k_BxSxHxD, k.astype(k_BxSxHxD.dtype), (0, start, 0, 0))
    v_BxSxHxD = jax.lax.dynamic_update_slice(v_BxSxHxD, v.astype(v_BxSxHxD.dtype), (0, start, 0, 0))
    k_positions_S = jnp.arange(k_BxSxHxD.shape[1])
    out = causal_attention(q, k_BxSxHxD, v_BxSxHxD, positions_T, k_positions_S)
    return attn.output_proj(out.reshape(x_BxTxD.shape)), k_BxSxHxD, v_BxSxHxD


def _block(block: Block, x_BxTxD: jax.Array, positions_T: jax.Array, k, v, start):
    """`Block.__call__` with the attention swapped for its cached form (pre- or post-norm)."""
    if block.post_norm:
        a, k, v = _attend(block.attn, x_BxTxD, positions_T, k, v, start)
        z = block.ln1(x_BxTxD + a)
        return block.ln2(z + block.ffn(z)), k, v
    a, k, v = _attend(block.attn, block.ln1(x_BxTxD), positions_T, k, v, start)
    h = x_BxTxD + a
    return h + block.ffn(block.ln2(h)), k, v


def forward_cached(model: Transformer, ids_BxT: jax.Array, cache: KVCache, start: jax.Array | int):
    """Logits (B, T, V) float32 for tokens at positions [start, start+T), and the updated cache.

    `start` may be traced (one compiled program serves every position); the caller
    keeps start + T <= cache.max_len.
    """
    start = jnp.asarray(start, jnp.int32)
    positions_T = start + jnp.arange(ids_BxT.shape[1], dtype=jnp.int32)
    x = model.embed(ids_BxT)
    ks, vs = [], []
    for i, block in enumerate(model.layers):
        x, k, v = _block(block, x, positions_T, cache.keys[i], cache.values[i], start)
        ks.append(k)
        vs.append(v)
    return model.logits(x), KVCache(tuple(ks), tuple(vs))
