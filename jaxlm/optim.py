"""Learning-rate schedule and the optax chain: global-norm clipping -> CS336 AdamW.

AdamW follows CS336 Algorithm 1 exactly (the bias correction folded into the
step size, epsilon added to sqrt(v) before correction) rather than optax.adamw,
whose epsilon sits after the correction; the difference is tiny but a
transcription test of Algorithm 1 should hold to float precision. Weight decay is
decoupled and uses the scheduled rate: theta -= lr_t * lambda * theta, applied to
the parameters as they were before this step (as torch.optim.AdamW does).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import Config


def cosine_schedule(t, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int):
    """CS336 schedule: linear warmup t/T_w * max, cosine to min at T_c, then min."""
    t = jnp.asarray(t, jnp.float32)
    warm = max_lr * t / max(warmup_iters, 1)
    span = max(cosine_cycle_iters - warmup_iters, 1)
    progress = jnp.clip((t - warmup_iters) / span, 0.0, 1.0)
    cosine = min_lr + 0.5 * (1.0 + jnp.cos(math.pi * progress)) * (max_lr - min_lr)
    return jnp.where(t < warmup_iters, warm, jnp.where(t > cosine_cycle_iters, min_lr, cosine))


def schedule_for(c: Config) -> Callable[[jax.Array], jax.Array]:
    return lambda t: cosine_schedule(t, c.learning_rate, c.min_learning_rate, c.warmup_iters, c.schedule_end)


class AdamWState(NamedTuple):
    count: jax.Array  # number of updates applied so far
    mu: optax.Updates
    nu: optax.Updates


def cs336_adamw(schedule: Callable, b1: float, b2: float, eps: float, weight_decay: float) -> optax.GradientTransformation:
    """AdamW as CS336 Algorithm 1 writes it; update number t (1-based) uses lr = schedule(t)."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
        return AdamWState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(grads, state, params):
        t_int = state.count + 1
        lr = schedule(t_int)
        t = t_int.astype(jnp.float32)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        step_size = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        updates = jax.tree.map(
            lambda m, v, p: -(step_size * m / (jnp.sqrt(v) + eps)) - lr * weight_decay * p, mu, nu, params)
        return updates, AdamWState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init, update)


def build_optimizer(c: Config) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(c.grad_clip),
        cs336_adamw(schedule_for(c), c.beta1, c.beta2, c.adam_eps, c.weight_decay),
    )
