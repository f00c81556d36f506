"""The device mesh, how params, optimizer state and batches lie on it, and the sharded steps.

One `jax.sharding.Mesh` with axes ("data", "fsdp") covers every device of every
process. The global batch is split over both axes (each device holds
batch_size / devices rows); params and optimizer state are split over "fsdp"
along their largest dimension that the fsdp size divides (replicated where none
does) and replicated over "data". XLA's SPMD partitioner then all-gathers
weights for the matmuls and reduce-scatters gradients: data parallelism plus
FSDP (ZeRO-3) with no communication code of our own. On one device every
sharding is trivial and the compiled program is the plain single-device one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm.config import Config
from jaxlm.errors import ConfigError
from jaxlm.model.transformer import abstract_model, build_model
from jaxlm.train.devices import run_devices
from jaxlm.train.steps import make_loss_fn, train_step_fn

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both mesh axes


def mesh_shape(c: Config, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes from the config, with -1 resolved; ConfigError if they do not fit the devices or batch."""
    data, fsdp = c.mesh_data, c.mesh_fsdp
    fixed_key, fixed = ("mesh_fsdp", fsdp) if data == -1 else ("mesh_data", data)
    if -1 in (data, fsdp):
        if num_devices % fixed:
            raise ConfigError(f"config key '{fixed_key}': {fixed} does not divide the {num_devices} devices")
        data, fsdp = (num_devices // fsdp, fsdp) if data == -1 else (data, num_devices // data)
    if data * fsdp != num_devices:
        raise ConfigError(
            f"config key 'mesh_data': mesh_data x mesh_fsdp = {data} x {fsdp} must equal "
            f"the number of devices ({num_devices})"
        )
    split = data * fsdp * c.grad_accum_steps
    if c.batch_size % split:
        raise ConfigError(
            f"config key 'batch_size': the global batch {c.batch_size} must be divisible by "
            f"devices x grad_accum_steps = {data * fsdp} x {c.grad_accum_steps}"
        )
    return data, fsdp


def build_mesh(c: Config) -> Mesh:
    devices = run_devices(c)
    shape = mesh_shape(c, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Split the largest dimension that `fsdp_size` divides (the first such on ties); replicate if none."""
    if fsdp_size == 1:
        return P()
    dims = [i for i, n in enumerate(shape) if n % fsdp_size == 0]
    if not dims:
        return P()
    best = max(dims, key=lambda i: (shape[i], -i))
    return P(*[("fsdp" if i == best else None) for i in range(len(shape))])


def state_shardings(mesh: Mesh, tree: Any) -> Any:
    """A NamedSharding for every array leaf of `tree` (concrete or abstract), by `fsdp_spec`."""
    return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(tuple(a.shape), mesh.shape["fsdp"])), tree)


@dataclass(frozen=True)
class Layout:
    """Where everything lives: shardings of params, optimizer state, batches and scalars."""

    mesh: Mesh
    params: Any  # pytree of NamedSharding, like the params
    opt_state: Any  # pytree of NamedSharding, like the optimizer state
    batch: NamedSharding  # (B, T): B over data x fsdp
    microbatches: NamedSharding  # (k, B/k, T) inside the accumulation scan
    replicated: NamedSharding

    @classmethod
    def for_mesh(cls, mesh: Mesh, abstract_params: Any, abstract_opt_state: Any) -> Layout:
        return cls(
            mesh,
            state_shardings(mesh, abstract_params),
            state_shardings(mesh, abstract_opt_state),
            NamedSharding(mesh, P(BATCH_AXES, None)),
            NamedSharding(mesh, P(None, BATCH_AXES, None)),
            NamedSharding(mesh, P()),
        )

    def local_rows(self, batch_size: int) -> slice | np.ndarray:
        """This process's rows of a global (batch_size, T) batch: a slice when contiguous (always, on one host)."""
        index_map = self.batch.addressable_devices_indices_map((batch_size, 1))
        starts = sorted({idx[0].indices(batch_size)[:2] for idx in index_map.values()})
        rows = np.concatenate([np.arange(lo, hi) for lo, hi in starts])
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            return slice(int(rows[0]), int(rows[0]) + len(rows))
        return rows

    def put_batch(self, x_local: np.ndarray, y_local: np.ndarray, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """Assemble the global (batch_size, T) arrays from this process's rows (`local_rows`)."""
        shape = (batch_size, x_local.shape[1])
        return (
            jax.make_array_from_process_local_data(self.batch, x_local, shape),
            jax.make_array_from_process_local_data(self.batch, y_local, shape),
        )


def init_state(c: Config, tx: optax.GradientTransformation, mesh: Mesh) -> tuple[nnx.GraphDef, Any, Any, Layout]:
    """Model params and optimizer state created directly in their shards (no host copy of the whole model)."""
    graphdef, abstract_params = abstract_model(c)
    abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
    layout = Layout.for_mesh(mesh, abstract_params, abstract_opt_state)
    params = jax.jit(lambda: nnx.split(build_model(c), nnx.Param)[1], out_shardings=layout.params)()
    opt_state = jax.jit(tx.init, out_shardings=layout.opt_state)(params)
    return graphdef, params, opt_state, layout


def batch_spec(layout: Layout, batch_size: int, context_length: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch_size, context_length), jnp.int32, sharding=layout.batch)


def compile_train_step(
    c: Config, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, layout: Layout, params: Any, opt_state: Any
):
    """AOT-compiled (params, opt_state, x, y) -> (params, opt_state, metrics); state buffers donated."""
    step = train_step_fn(
        graphdef,
        tx,
        grad_accum_steps=c.grad_accum_steps,
        microbatch_sharding=layout.microbatches,
        loss_chunk=c.loss_chunk_tokens,
        z_loss=c.z_loss,
    )
    jitted = jax.jit(
        step,
        in_shardings=(layout.params, layout.opt_state, layout.batch, layout.batch),
        out_shardings=(layout.params, layout.opt_state, layout.replicated),
        donate_argnums=(0, 1),
    )
    xy = batch_spec(layout, c.batch_size, c.context_length)
    return jitted.lower(params, opt_state, xy, xy).compile()


def compile_eval_step(c: Config, graphdef: nnx.GraphDef, layout: Layout, params: Any):
    """AOT-compiled (params, x, y) -> mean loss (replicated scalar)."""
    jitted = jax.jit(
        make_loss_fn(graphdef, c.loss_chunk_tokens),
        in_shardings=(layout.params, layout.batch, layout.batch),
        out_shardings=layout.replicated,
    )
    xy = batch_spec(layout, c.batch_size, c.context_length)
    return jitted.lower(params, xy, xy).compile()


def describe_mesh(mesh: Mesh) -> dict[str, Any]:
    """Summary fields: mesh shape and process layout."""
    return {
        "device_count": mesh.size,
        "mesh_shape": dict(mesh.shape),
        "process_count": jax.process_count(),
        "local_device_count": len(mesh.local_devices),
    }


def check_mesh(c: Config) -> tuple[int, int]:
    """Pre-flight: the mesh fits the devices and the batch (ConfigError otherwise), before anything is written."""
    return mesh_shape(c, len(run_devices(c)))
