"""The pure computations of training: loss, train step (with gradient accumulation), eval step.

`train_step_fn` / `make_loss_fn` are plain functions; `jaxlm.train.sharding` jits them
with explicit shardings, `make_train_step` jits the train step plainly (one device).

With a z-loss coefficient > 0 the train step differentiates `ce + z_loss * mean(logsumexp^2)` and
reports `loss` (the cross-entropy alone) and `z_loss` (the unscaled mean of logsumexp^2) beside it;
with 0 the term is not built at all, so the step is the plain cross-entropy one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.model.loss import chunked_cross_entropy, positions_per_chunk


def model_loss(model, x_BxT: jax.Array, y_BxT: jax.Array, chunk: int | None = None):
    """(mean next-token loss, per-position extras) of `model` on one batch, by the chunked cross-entropy
    (jaxlm.model.loss): the (B, T, V) float32 logits are never held whole when they are large."""
    b, t = x_BxT.shape
    h_BxTxD = model.head_input(model.trunk(x_BxT))
    chunk = positions_per_chunk(b, t, model.head_weight().shape[1], chunk)
    return chunked_cross_entropy(h_BxTxD, model.head_weight(), y_BxT, chunk, softcap=model.logit_softcap)


def make_loss_fn(graphdef: nnx.GraphDef, chunk: int | None = None, z_loss: float = 0.0):
    """(params, x, y) -> mean loss; `chunk`: positions per cross-entropy chunk (None: automatic).

    `z_loss` > 0: (params, x, y) -> (ce + z_loss * mean(lse^2), {"loss": ce, "z_loss": mean(lse^2)}), the
    training objective with its metrics as aux (`jax.value_and_grad(..., has_aux=True)`); the logged
    `z_loss` is the unscaled mean of logsumexp^2, so runs with different coefficients compare."""

    def loss_fn(params, x_BxT, y_BxT):
        return model_loss(nnx.merge(graphdef, params), x_BxT, y_BxT, chunk)[0]

    def objective_fn(params, x_BxT, y_BxT):
        ce, extras = model_loss(nnx.merge(graphdef, params), x_BxT, y_BxT, chunk)
        z = jnp.mean(jnp.square(extras["logsumexp"]))
        return ce + z_loss * z, {"loss": ce, "z_loss": z}

    return objective_fn if z_loss > 0 else loss_fn


def split_microbatches(a_BxT: jax.Array, k: int, sharding: Any = None) -> jax.Array:
    """(B, T) -> (k, B/k, T), micro-batch j = rows j, j+k, j+2k, ...

    Strided rather than contiguous so that every device's block of rows holds an
    equal share of each micro-batch: the split needs no communication.
    """
    b, t = a_BxT.shape
    a_kxMxT = a_BxT.reshape(b // k, k, t).swapaxes(0, 1)
    return a_kxMxT if sharding is None else jax.lax.with_sharding_constraint(a_kxMxT, sharding)


def accumulated_value_and_grad(
    loss_fn, grad_accum_steps: int, microbatch_sharding: Any = None, *, has_aux: bool = False
):
    """value_and_grad of the mean loss over the batch, summed over `grad_accum_steps` micro-batches with
    `lax.scan`: activation memory scales with the micro-batch; the result equals the full-batch one.
    `has_aux`: `loss_fn` returns (loss, aux) with aux a pytree of scalars, averaged over the micro-batches
    like the loss; the result is then ((loss, aux), grads), as `jax.value_and_grad(has_aux=True)` gives."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)
    if grad_accum_steps == 1:
        return grad_fn

    def accumulated(params, x_BxT, y_BxT):
        xs = (
            split_microbatches(x_BxT, grad_accum_steps, microbatch_sharding),
            split_microbatches(y_BxT, grad_accum_steps, microbatch_sharding),
        )

        def add_micro(carry, xy):
            loss_sum, grad_sum = carry
            loss, grads = grad_fn(params, *xy)
            return (jax.tree.map(jnp.add, loss_sum, loss), jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        first = jax.eval_shape(grad_fn, params, *(a[0] for a in xs))[0]  # the loss (and aux) structure
        loss_zeros = jax.tree.map(lambda v: jnp.zeros(v.shape, jnp.float32), first)
        (loss_sum, grad_sum), _ = jax.lax.scan(add_micro, (loss_zeros, zeros), xs)
        mean = lambda g: g / grad_accum_steps  # noqa: E731
        return jax.tree.map(mean, loss_sum), jax.tree.map(mean, grad_sum)

    return accumulated


def train_step_fn(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    *,
    grad_accum_steps: int = 1,
    microbatch_sharding: Any = None,
    loss_chunk: int | None = None,
    z_loss: float = 0.0,
):
    """(params, opt_state, x, y) -> (params, opt_state, {loss, grad_norm}), not yet jitted; with `z_loss`
    > 0 the objective gains `z_loss * mean(lse^2)` and the metrics `z_loss` (unscaled, see make_loss_fn),
    while `loss` stays the cross-entropy."""
    loss_fn = make_loss_fn(graphdef, loss_chunk, z_loss)
    grad_fn = accumulated_value_and_grad(loss_fn, grad_accum_steps, microbatch_sharding, has_aux=z_loss > 0)

    def train_step(params, opt_state, x_BxT, y_BxT):
        if z_loss > 0:
            (_, metrics), grads = grad_fn(params, x_BxT, y_BxT)
        else:
            loss, grads = grad_fn(params, x_BxT, y_BxT)
            metrics = {"loss": loss}
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**metrics, "grad_norm": optax.tree.norm(grads)}

    return train_step


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *, grad_accum_steps: int = 1, z_loss: float = 0.0
):
    """Plain-jitted train step with donated params/opt_state (single device; see jaxlm.train.sharding for meshes)."""
    step = train_step_fn(graphdef, tx, grad_accum_steps=grad_accum_steps, z_loss=z_loss)
    return jax.jit(step, donate_argnums=(0, 1))
