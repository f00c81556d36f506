"""Token sampling: temperature and nucleus (top-p) over float32 logits; greedy at temperature 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
