"""The learning-rate schedule and the optax chain: global-norm clipping -> CS336 AdamW.

The schedule is one optax schedule, built once per run by `learning_rate_schedule`
and handed to the optimizer (and, as numbers, to the tracker's plot).

AdamW follows CS336 Algorithm 1 exactly (the bias correction folded into the
step size, epsilon added to sqrt(v) before correction) rather than optax.adamw,
whose epsilon sits after the correction; the difference is tiny but a
transcription test of Algorithm 1 should hold to float precision. Weight decay is
decoupled and uses the scheduled rate: theta -= lr_t * lambda * theta, applied to
the parameters as they were before this step (as torch.optim.AdamW does).

`optimizer: "muon"` (a leaderboard switch, docs/leaderboard.md) splits the parameters in two:
the blocks' hidden matrices go to `optax.contrib.muon` (momentum orthogonalised by Newton-Schulz),
everything else (the embedding, the LM head, the norm gains) to the AdamW above, exactly as the
baseline trains it. Muon's own AdamW branch is left empty: it would be optax's Nesterov AdamW, a
different optimizer from the baseline's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import Config


def learning_rate_schedule(c: Config) -> optax.Schedule:
    """CS336's schedule: linear warmup from 0 over `warmup_iters`, cosine from `learning_rate` to
    `min_learning_rate` ending at `cosine_cycle_iters` (default `max_iterations`), then constant."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=c.learning_rate,
        warmup_steps=c.warmup_iters,
        decay_steps=max(c.schedule_end, c.warmup_iters + 1),
        end_value=c.min_learning_rate,
    )


def planned_learning_rates(schedule: optax.Schedule, max_iterations: int) -> list[float]:
    """The schedule's rate at steps 0, 1, ..., max_iterations, as plain floats (for the tracker)."""
    return jax.device_get(jax.jit(jax.vmap(schedule))(jnp.arange(max_iterations + 1))).astype(float).tolist()


class AdamWState(NamedTuple):
    count: jax.Array  # number of updates applied so far
    mu: optax.Updates
    nu: optax.Updates


def cs336_adamw(
    schedule: Callable, b1: float, b2: float, eps: float, weight_decay: float
) -> optax.GradientTransformation:
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
            lambda m, v, p: -(step_size * m / (jnp.sqrt(v) + eps)) - lr * weight_decay * p, mu, nu, params
        )
        return updates, AdamWState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init, update)


MUON, ADAMW = "muon", "adamw"


def _is_hidden_matrix(path: tuple, leaf: jax.Array) -> bool:
    """A block's 2-D weight (attention q/k/v/output, FFN w1/w2/w3): what Muon orthogonalises."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    return leaf.ndim == 2 and "layers" in keys


def parameter_groups(params: optax.Params) -> optax.Params:
    """The tree of "muon" / "adamw" labels `optimizer: "muon"` gives the parameters (`_is_hidden_matrix`)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: MUON if _is_hidden_matrix(p, x) else ADAMW, params)


def muon(c: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """optax.contrib.muon for the hidden matrices only (every leaf it is given is one), at `muon_learning_rate`
    on the run's schedule: update n (0-based here, as optax counts) uses the rate AdamW's update n + 1 uses."""
    scale = c.muon_learning_rate / c.learning_rate
    return optax.contrib.muon(
        learning_rate=lambda n: scale * schedule(n + 1),
        ns_steps=c.muon_ns_steps,
        beta=c.muon_momentum,
        weight_decay=c.muon_weight_decay,
        nesterov=True,
    )


def build_optimizer(c: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    adamw = cs336_adamw(schedule, c.beta1, c.beta2, c.adam_eps, c.weight_decay)
    if c.optimizer == MUON:
        adamw = optax.partition({MUON: muon(c, schedule), ADAMW: adamw}, parameter_groups)
    return optax.chain(optax.clip_by_global_norm(c.grad_clip), adamw)
