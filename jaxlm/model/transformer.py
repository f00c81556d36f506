"""The CS336 assignment-1 transformer in Flax NNX, with its section-7 ablation switches and the
leaderboard switches (QK-norm, squared-ReLU FFN, logit soft-cap, zero-initialised output projections).

Weights are stored float32 and cast to the compute dtype at use; norms, softmax
and logits are computed in float32 whatever the compute dtype. Linear weights
are kept as (d_in, d_out) so a layer is `x @ W`; export transposes them to the
PyTorch (out_features, in_features) layout.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import Config
from jaxlm.model.attention import self_attention

RMS_EPS = 1e-5


def truncated_normal(key: jax.Array, shape: tuple[int, ...], std: float) -> jax.Array:
    """N(0, std^2) truncated at +-3 std, as CS336 initialises weights."""
    return std * jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32)


class Linear(nnx.Module):
    """Bias-free linear layer, weight (d_in, d_out), sigma^2 = 2 / (d_in + d_out)."""

    def __init__(self, d_in: int, d_out: int, *, dtype: str, rngs: nnx.Rngs):
        self.weight = nnx.Param(truncated_normal(rngs.params(), (d_in, d_out), math.sqrt(2.0 / (d_in + d_out))))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) @ self.weight[...].astype(self.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, returned in the input's dtype."""

    def __init__(self, d: int):
        self.weight = nnx.Param(jnp.ones((d,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + RMS_EPS)
        return (y * self.weight[...]).astype(x.dtype)


def zeroed(layer: Linear) -> Linear:
    """`layer` with its weight replaced by zeros. The random weight is drawn first all the same, so the
    rng stream (and every other weight's init) is the same whether a block's outputs start at zero or not."""
    layer.weight = nnx.Param(jnp.zeros_like(layer.weight[...]))
    return layer


def cap_logits(z: jax.Array, cap: float | None) -> jax.Array:
    """`cap * tanh(z / cap)` in float32 (logits bounded to (-cap, cap), near-identity for |z| << cap); None = z."""
    if cap is None:
        return z
    return cap * jnp.tanh(z.astype(jnp.float32) / cap)


def einsum_f32(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum of compute-dtype operands accumulated into and returned as float32 (attention scores,
    logits), whose backward pass still runs as compute-dtype matmuls rather than float32 ones."""
    if a.dtype == jnp.float32 and b.dtype == jnp.float32:
        return jnp.einsum(eq, a, b)
    return _einsum_f32(eq, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32(eq, a, b):
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def _einsum_f32_fwd(eq, a, b):
    return _einsum_f32(eq, a, b), (a, b)


def _einsum_f32_bwd(eq, ab, g):
    a, b = ab
    _, vjp = jax.vjp(lambda a, b: jnp.einsum(eq, a, b), a, b)
    return vjp(g.astype(jnp.result_type(a, b)))


_einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)


def apply_rope(x_BxTxHxD: jax.Array, positions_T: jax.Array, theta: float) -> jax.Array:
    """Rotate adjacent pairs (x[2j], x[2j+1]) by angle pos * theta^(-2j/d)."""
    d = x_BxTxHxD.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angle_TxD2 = positions_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
    cos, sin = jnp.cos(angle_TxD2)[None, :, None, :], jnp.sin(angle_TxD2)[None, :, None, :]
    x32 = x_BxTxHxD.astype(jnp.float32)
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    rotated = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return rotated.reshape(x_BxTxHxD.shape).astype(x_BxTxHxD.dtype)


class Attention(nnx.Module):
    """Multi-head causal self-attention; with `qk_norm`, each head's queries and keys are RMS-normed
    (`q_norm`, `k_norm`: gains of size head_dim) after the head split and before RoPE."""

    def __init__(self, c: Config, *, rngs: nnx.Rngs):
        d = c.d_model
        self.q_proj = Linear(d, d, dtype=c.dtype, rngs=rngs)
        self.k_proj = Linear(d, d, dtype=c.dtype, rngs=rngs)
        self.v_proj = Linear(d, d, dtype=c.dtype, rngs=rngs)
        self.output_proj = Linear(d, d, dtype=c.dtype, rngs=rngs)
        if c.zero_init_output:
            zeroed(self.output_proj)
        self.q_norm = RMSNorm(c.head_dim) if c.qk_norm else None
        self.k_norm = RMSNorm(c.head_dim) if c.qk_norm else None
        self.num_heads = c.num_heads
        self.rope_theta = c.rope_theta if c.position_embedding == "rope" else None
        self.implementation = c.attention

    def project_qkv(self, x_BxTxD: jax.Array, positions_T: jax.Array):
        b, t, d = x_BxTxD.shape
        split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
        q, k, v = split(self.q_proj(x_BxTxD)), split(self.k_proj(x_BxTxD)), split(self.v_proj(x_BxTxD))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_theta is not None:
            q, k = apply_rope(q, positions_T, self.rope_theta), apply_rope(k, positions_T, self.rope_theta)
        return q, k, v

    def __call__(self, x_BxTxD: jax.Array, positions_T: jax.Array) -> jax.Array:
        q, k, v = self.project_qkv(x_BxTxD, positions_T)
        out = self_attention(q, k, v, self.implementation)
        return self.output_proj(out.reshape(x_BxTxD.shape))


class FeedForward(nnx.Module):
    """SwiGLU `w2(silu(w1 x) * w3 x)`, the SiLU ablation `w2(silu(w1 x))`, or squared ReLU `w2(relu(w1 x)^2)`."""

    def __init__(self, c: Config, *, rngs: nnx.Rngs):
        self.w1 = Linear(c.d_model, c.ffn_dim, dtype=c.dtype, rngs=rngs)
        self.w2 = Linear(c.ffn_dim, c.d_model, dtype=c.dtype, rngs=rngs)
        if c.zero_init_output:
            zeroed(self.w2)
        self.w3 = Linear(c.d_model, c.ffn_dim, dtype=c.dtype, rngs=rngs) if c.ffn == "swiglu" else None
        self.squared_relu = c.ffn == "relu2"

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.squared_relu:
            return self.w2(jnp.square(jax.nn.relu(self.w1(x))))
        h = jax.nn.silu(self.w1(x))
        if self.w3 is not None:
            h = h * self.w3(x)
        return self.w2(h)


class Identity(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def make_norm(c: Config) -> nnx.Module:
    return RMSNorm(c.d_model) if c.norm == "rmsnorm" else Identity()


class Block(nnx.Module):
    """Pre-norm `x + attn(ln1 x)` then `+ ffn(ln2 .)`, or post-norm `ln(x + f(x))`."""

    def __init__(self, c: Config, *, rngs: nnx.Rngs):
        self.ln1 = make_norm(c)
        self.attn = Attention(c, rngs=rngs)
        self.ln2 = make_norm(c)
        self.ffn = FeedForward(c, rngs=rngs)
        self.post_norm = c.norm_position == "post"

    def __call__(self, x_BxTxD: jax.Array, positions_T: jax.Array, attend=None) -> jax.Array:
        """`attend(attn, h_BxTxD)` stands in for `attn(h_BxTxD, positions_T)` when given: the KV cache
        (jaxlm.model.decode) passes its cached attention, so the block's wiring exists once."""
        if attend is None:
            attend = lambda attn, h: attn(h, positions_T)  # noqa: E731
        if self.post_norm:
            z = self.ln1(x_BxTxD + attend(self.attn, x_BxTxD))
            return self.ln2(z + self.ffn(z))
        h = x_BxTxD + attend(self.attn, self.ln1(x_BxTxD))
        return h + self.ffn(self.ln2(h))


class Transformer(nnx.Module):
    """Token ids (B, T) -> float32 logits (B, T, V)."""

    def __init__(self, c: Config, *, rngs: nnx.Rngs):
        self.token_embeddings = nnx.Param(truncated_normal(rngs.params(), (c.vocab_size, c.d_model), 1.0))
        self.layers = nnx.List([Block(c, rngs=rngs) for _ in range(c.num_layers)])
        self.ln_final = make_norm(c)
        self.lm_head = None if c.tie_embeddings else Linear(c.d_model, c.vocab_size, dtype=c.dtype, rngs=rngs)
        self.dtype = c.dtype
        self.logit_softcap = c.logit_softcap  # static: the cap is part of the compiled function
        self.context_length = c.context_length  # longest sequence it was trained on

    def embed(self, ids_BxT: jax.Array) -> jax.Array:
        return jnp.take(self.token_embeddings[...], ids_BxT, axis=0).astype(self.dtype)

    def head_weight(self) -> jax.Array:
        """The LM head's (d_model, vocab) float32 weight (the embedding's transpose when tied)."""
        return self.token_embeddings[...].T if self.lm_head is None else self.lm_head.weight[...]

    def head_input(self, x_BxTxD: jax.Array) -> jax.Array:
        """The last blocks' output, normed and in the compute dtype: what the head multiplies."""
        return self.ln_final(x_BxTxD).astype(self.dtype)

    def logits(self, x_BxTxD: jax.Array) -> jax.Array:
        """The head matmul runs in the compute dtype but accumulates and returns float32 (no bf16 logits),
        soft-capped when `logit_softcap` is set (the chunked loss, jaxlm.model.loss, caps the same way)."""
        z = einsum_f32("btd,dv->btv", self.head_input(x_BxTxD), self.head_weight().astype(self.dtype))
        return cap_logits(z, self.logit_softcap)

    def trunk(self, ids_BxT: jax.Array) -> jax.Array:
        """Token ids (B, T) -> the last block's output (B, T, d_model), before the final norm and head."""
        positions_T = jnp.arange(ids_BxT.shape[1])
        x = self.embed(ids_BxT)
        for block in self.layers:
            x = block(x, positions_T)
        return x

    def __call__(self, ids_BxT: jax.Array) -> jax.Array:
        return self.logits(self.trunk(ids_BxT))


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood in nats, computed in float32.

    As logsumexp minus the target's logit: never materialises the (B, T, V)
    log-probabilities (cheaper on the CPU; see docs/performance.md)."""
    logits = logits_BxTxV.astype(jnp.float32)
    target_logit_BxT = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - target_logit_BxT)


def build_model(c: Config, seed: int | None = None) -> Transformer:
    return Transformer(c, rngs=nnx.Rngs(c.seed if seed is None else seed))


def abstract_model(c: Config) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract params) of the config's model, with no array allocated."""
    return nnx.split(nnx.eval_shape(lambda: build_model(c)), nnx.Param)
