"""A short probe of the train step for `launch --dry-run --estimate`: build the step the Trainer runs
(same mesh, shardings, donation, accumulation; jaxlm.train.sharding), compile it, run it on one batch
of random tokens, and time a few steps, so the training time of a config can be estimated on this
device before any data exists. `jaxlm.bench` reports the same probe with more statistics."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from jaxlm.config import Config


@dataclass(frozen=True)
class Probe:
    """What timing the train step found: compile and warmup seconds, each timed step's seconds."""

    compile_s: float
    warmup_s: float
    times: tuple[float, ...]  # each timed step, blocked on
    params: int  # parameter count
    devices: tuple  # the mesh's devices, in mesh order
    final_loss: float  # the last timed step's loss

    @property
    def steps(self) -> int:
        return len(self.times)

    @property
    def step_s(self) -> float:
        return statistics.median(self.times)

    def estimate_s(self, c: Config) -> float:
        """Training time of `c`: its steps at the probed rate, plus its evaluations (a forward pass over
        `eval_batches` batches is about a third of a train step's work, per batch)."""
        evals = c.max_iterations // max(c.eval_interval, 1) + 1
        return self.step_s * (c.max_iterations + evals * c.eval_batches / 3)


def probe_train_step(c: Config, steps: int = 3, warmup: int = 1) -> Probe:
    """Compile and time `steps` train steps of `c` after `warmup` untimed ones."""
    import jax
    import numpy as np

    from jaxlm.train.optim import build_optimizer, learning_rate_schedule
    from jaxlm.train.sharding import build_mesh, compile_train_step, init_state

    mesh = build_mesh(c)
    tx = build_optimizer(c, learning_rate_schedule(c))
    graphdef, params, opt_state, layout = init_state(c, tx, mesh)
    n_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    t0 = time.perf_counter()
    train_step = compile_train_step(c, graphdef, tx, layout, params, opt_state)
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(c.seed)
    x, y = (rng.integers(0, c.vocab_size, (c.batch_size, c.context_length), dtype=np.int32) for _ in range(2))
    rows = layout.local_rows(c.batch_size)
    x, y = layout.put_batch(x[rows], y[rows], c.batch_size)
    t0 = time.perf_counter()
    for _ in range(warmup):
        params, opt_state, metrics = train_step(params, opt_state, x, y)
    jax.block_until_ready((params, opt_state))
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, opt_state, metrics = train_step(params, opt_state, x, y)
        jax.block_until_ready((params, opt_state, metrics))
        times.append(time.perf_counter() - t0)
    return Probe(compile_s, warmup_s, tuple(times), n_params, tuple(mesh.devices.flat), float(metrics["loss"]))


def describe_estimate(c: Config) -> str:
    """`launch --dry-run --estimate`'s line: the probed step time and the training time it implies."""
    probe = probe_train_step(c)
    total = probe.estimate_s(c)
    tokens = c.tokens_per_step * c.max_iterations
    return (
        f"estimate: {probe.step_s * 1e3:,.1f} ms per step (median of {probe.steps}, random tokens, this device; "
        f"compiled in {probe.compile_s:.1f} s) -> about {total / 3600:.2f} h ({total:,.0f} s) for "
        f"{c.max_iterations:,} steps ({tokens:,} tokens), evaluations included"
    )
