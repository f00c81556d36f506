"""The pure, jitted computations of training: loss, train step, eval step."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from jaxlm.model import cross_entropy


def make_loss_fn(graphdef: nnx.GraphDef):
    def loss_fn(params, x_BxT, y_BxT):
        return cross_entropy(nnx.merge(graphdef, params)(x_BxT), y_BxT)

    return loss_fn


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
    """(params, opt_state, x, y) -> (params, opt_state, {loss, grad_norm}); state buffers donated."""
    grad_fn = jax.value_and_grad(make_loss_fn(graphdef))

    def train_step(params, opt_state, x_BxT, y_BxT):
        loss, grads = grad_fn(params, x_BxT, y_BxT)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(train_step, donate_argnums=(0, 1))


def make_eval_step(graphdef: nnx.GraphDef):
    """(params, x, y) -> mean loss of the batch."""
    return jax.jit(make_loss_fn(graphdef))
