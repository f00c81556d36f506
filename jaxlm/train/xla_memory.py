"""What XLA plans to hold for one compiled train step, without running it or allocating the model.

The step is built exactly as the Trainer builds it (`compile_train_step`: same mesh, shardings,
donation, gradient accumulation and loss chunking) but lowered with abstract params, optimizer state
and batches (`jax.eval_shape`), so a shape this machine could never train still compiles, and
`compiled.memory_analysis()` gives XLA's own buffer assignment for one device.
"""

from __future__ import annotations

import time

import jax
from flax import nnx

from jaxlm.config import Config
from jaxlm.model.loss import positions_per_chunk
from jaxlm.model.transformer import build_model
from jaxlm.train.optim import build_optimizer, learning_rate_schedule
from jaxlm.train.sharding import Layout, build_mesh, compile_train_step


def train_step_memory(c: Config) -> dict:
    """{temp_bytes, argument_bytes, output_bytes, alias_bytes, ...} of the compiled train step of `c`."""
    tx = build_optimizer(c, learning_rate_schedule(c))
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(c)), nnx.Param)
    opt_state = jax.eval_shape(tx.init, params)
    layout = Layout.for_mesh(build_mesh(c), params, opt_state)
    t0 = time.perf_counter()
    stats = compile_train_step(c, graphdef, tx, layout, params, opt_state).memory_analysis()
    micro_batch = c.batch_size // c.grad_accum_steps
    return {
        "temp_bytes": stats.temp_size_in_bytes,
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "alias_bytes": stats.alias_size_in_bytes,
        "temp_mib": round(stats.temp_size_in_bytes / 2**20, 1),
        "loss_chunk_positions": positions_per_chunk(micro_batch, c.context_length, c.vocab_size, c.loss_chunk_tokens),
        "compile_s": round(time.perf_counter() - t0, 2),
    }
