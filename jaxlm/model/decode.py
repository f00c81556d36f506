"""Decoding: the transformer's forward pass with a key/value cache, token sampling, and text generation.

The cached forward reuses the model's own blocks (`Block.__call__` with the
attention's cached form passed in), so the parameter layout and the block wiring
are the model's. A cached forward over positions [start, start+T) gives the same
logits as the full forward over [0, start+T) (tests/model/test_decode.py checks
this at every position).

Cache slots beyond what has been written may hold anything: a query at position
p attends only to keys at positions <= p, and the key at p is written in the
same call that reads it, so stale slots are never seen. That lets generation
prefill a fixed-length, padded prompt buffer with one compiled program.

Two jitted programs per (batch, context_length): a prefill over a padded
(B, context_length) prompt buffer, and a one-token decode step that reads and
writes the cache in place (donated). Any prompt length reuses them. When the
cache is full, the last half-window is prefilled again at positions 0.., as the
model was trained on windows starting at position 0. The Trainer's eval samples
use the same Decoder.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.model.attention import causal_attention
from jaxlm.model.transformer import Attention, Block, Transformer


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


def _attend(
    attn: Attention,
    x_BxTxD: jax.Array,
    positions_T: jax.Array,
    k_BxSxHxD: jax.Array,
    v_BxSxHxD: jax.Array,
    start: jax.Array,
):
    """Attention for new positions: write their k/v into the cache, attend over the cache."""
    q, k, v = attn.project_qkv(x_BxTxD, positions_T)
    k_BxSxHxD = jax.lax.dynamic_update_slice(k_BxSxHxD, k.astype(k_BxSxHxD.dtype), (0, start, 0, 0))
    v_BxSxHxD = jax.lax.dynamic_update_slice(v_BxSxHxD, v.astype(v_BxSxHxD.dtype), (0, start, 0, 0))
    k_positions_S = jnp.arange(k_BxSxHxD.shape[1])
    out = causal_attention(q, k_BxSxHxD, v_BxSxHxD, positions_T, k_positions_S)
    return attn.output_proj(out.reshape(x_BxTxD.shape)), k_BxSxHxD, v_BxSxHxD


def _block(block: Block, x_BxTxD: jax.Array, positions_T: jax.Array, k, v, start):
    """The block itself, with its attention in cached form; returns the output and the updated k/v."""
    updated = {}

    def attend(attn: Attention, h_BxTxD: jax.Array) -> jax.Array:
        out, updated["k"], updated["v"] = _attend(attn, h_BxTxD, positions_T, k, v, start)
        return out

    return block(x_BxTxD, positions_T, attend), updated["k"], updated["v"]


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


def sample_token(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """One token id per row. `temperature` and `top_p` are static Python floats."""
    if temperature <= 0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits = logits_BxV.astype(jnp.float32) / temperature
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p  # the smallest prefix whose mass reaches top_p
        cutoff = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1)


class Decoder:
    """The compiled prefill and decode step for one model graph and one sampling setting."""

    def __init__(self, graphdef: nnx.GraphDef, temperature: float, top_p: float):
        self.temperature, self.top_p = float(temperature), float(top_p)

        def prefill(params, ids_BxS, length, key):
            model = nnx.merge(graphdef, params)
            cache = init_cache(model, ids_BxS.shape[0], ids_BxS.shape[1])
            logits_BxSxV, cache = forward_cached(model, ids_BxS, cache, 0)
            last_BxV = jax.lax.dynamic_index_in_dim(logits_BxSxV, length - 1, axis=1, keepdims=False)
            return sample_token(last_BxV, key, self.temperature, self.top_p), cache

        def step(params, cache, token_B, position, key):
            model = nnx.merge(graphdef, params)
            logits_Bx1xV, cache = forward_cached(model, token_B[:, None], cache, position)
            return sample_token(logits_Bx1xV[:, 0], key, self.temperature, self.top_p), cache

        self.prefill = jax.jit(prefill)
        self.step = jax.jit(step, donate_argnums=1)


def generate_batch(
    graphdef,
    params,
    prompt_ids: list[int],
    *,
    context_length: int,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 0.8,
    top_p: float = 0.9,
    seed: int = 0,
    stop_id: int | None = None,
    decode_step: Decoder | None = None,
) -> list[list[int]]:
    """`num_samples` continuations of `prompt_ids`, each up to `max_new_tokens` and ending
    at (and including) `stop_id` when it is drawn. An empty prompt starts from `stop_id`."""
    decoder = decode_step or Decoder(graphdef, temperature, top_p)
    seqs = [list(prompt_ids) or ([stop_id] if stop_id is not None else [0]) for _ in range(num_samples)]
    new: list[list[int]] = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    key = jax.random.key(seed)
    token_B, cache, position = None, None, 0
    for _ in range(max_new_tokens):
        key, sub = jax.random.split(key)
        if token_B is None or position == context_length:
            keep = len(seqs[0]) if token_B is None else context_length // 2
            keep = min(keep, context_length)
            buf_BxS = np.zeros((num_samples, context_length), np.int32)
            for row, seq in enumerate(seqs):
                buf_BxS[row, :keep] = seq[-keep:]
            token_B, cache = decoder.prefill(params, jnp.asarray(buf_BxS), jnp.int32(keep), sub)
            position = keep
        else:
            token_B, cache = decoder.step(params, cache, token_B, jnp.int32(position), sub)
            position += 1
        for row, token in enumerate(np.asarray(token_B).tolist()):
            seqs[row].append(token)
            if not done[row]:
                new[row].append(token)
                done[row] = token == stop_id
        if all(done):
            break
    return new


def generate_ids(
    graphdef,
    params,
    prompt_ids: list[int],
    *,
    context_length: int,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_p: float = 0.9,
    seed: int = 0,
    stop_id: int | None = None,
    decode_step: Decoder | None = None,
) -> list[int]:
    """One continuation of `prompt_ids` (see `generate_batch`)."""
    return generate_batch(
        graphdef,
        params,
        prompt_ids,
        context_length=context_length,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop_id=stop_id,
        decode_step=decode_step,
    )[0]
