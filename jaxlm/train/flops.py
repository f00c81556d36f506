"""Parameter counts and training FLOPs per token, from the config alone (no JAX work)."""

from __future__ import annotations

from jaxlm.config import Config


def param_counts(c: Config) -> dict[str, int]:
    """{"total", "embedding", "non_embedding"}; non-embedding includes the LM head (as CS336 counts)."""
    d, f = c.d_model, c.ffn_dim
    norm = d if c.norm == "rmsnorm" else 0
    attn = 4 * d * d + (2 * c.head_dim if c.qk_norm else 0)
    ffn = (3 if c.ffn == "swiglu" else 2) * d * f
    per_layer = attn + ffn + 2 * norm
    embedding = c.vocab_size * d
    head = 0 if c.tie_embeddings else c.vocab_size * d
    total = embedding + c.num_layers * per_layer + norm + head
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def flops_per_token(c: Config) -> int:
    """Training FLOPs per token: 6 N + 12 L T d (forward + backward, attention scores),
    counted as ../shared/bench/torch_reference.py counts them."""
    return 6 * param_counts(c)["total"] + 12 * c.num_layers * c.context_length * c.d_model
