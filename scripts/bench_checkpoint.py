"""How much wall-clock one checkpoint save adds to a training step.

    uv run python scripts/bench_checkpoint.py [--config configs/quickstart.json] [--blocks 6]

Times blocks of train steps with and without one async Orbax save in them (the
block waits for the background write, so all of a save's cost is counted), and
the part of a save the training loop itself waits for (device-to-host copy and
dispatch). Random tokens, so no data preparation; the model is the config's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from jaxlm.config import load_config
from jaxlm.model.transformer import build_model
from jaxlm.train.checkpoint import RunCheckpoints
from jaxlm.train.optim import build_optimizer, learning_rate_schedule
from jaxlm.train.steps import make_train_step

BLOCK = 5  # steps per timed block; one save per block


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.json")
    p.add_argument("--blocks", type=int, default=6)
    args = p.parse_args()
    c = load_config(args.config)
    graphdef, params = nnx.split(build_model(c), nnx.Param)
    tx = build_optimizer(c, learning_rate_schedule(c))
    opt_state = tx.init(params)
    step_fn = make_train_step(graphdef, tx)
    rng = np.random.default_rng(0)
    x = rng.integers(0, c.vocab_size, (c.batch_size, c.context_length)).astype(np.int32)
    y = rng.integers(0, c.vocab_size, (c.batch_size, c.context_length)).astype(np.int32)

    def one_step():
        nonlocal params, opt_state
        params, opt_state, metrics = step_fn(params, opt_state, x, y)
        jax.block_until_ready(metrics)

    def block(ckpts=None, step=0) -> tuple[float, float]:
        """Seconds for BLOCK steps (with a save after the first when `ckpts`), and the save's blocking part."""
        t0 = time.perf_counter()
        one_step()
        blocking = 0.0
        if ckpts is not None:
            t = time.perf_counter()
            ckpts.save(step, params, opt_state, {"seed": c.seed})
            blocking = time.perf_counter() - t
        for _ in range(BLOCK - 1):
            one_step()
        if ckpts is not None:
            ckpts.mngr.wait_until_finished()  # the background write counts too
        return time.perf_counter() - t0, blocking

    for _ in range(3):
        one_step()
    plain = [block()[0] for _ in range(args.blocks)]
    with tempfile.TemporaryDirectory() as run_dir:
        ckpts = RunCheckpoints(run_dir, keep=2)
        saved = [block(ckpts, i + 1) for i in range(args.blocks)]
        ckpts.close()
    step_ms = statistics.median(plain) / BLOCK * 1e3
    added_ms = (statistics.median(t for t, _ in saved) - statistics.median(plain)) * 1e3
    blocking_ms = statistics.median(b for _, b in saved) * 1e3
    n_params = sum(a.size for a in jax.tree.leaves(params))
    print(f"model: {args.config} ({n_params:,} params; params + AdamW state = {3 * n_params * 4 / 2**20:.1f} MiB)")
    print(f"train step: {step_ms:.1f} ms (median over {args.blocks} blocks of {BLOCK} steps)")
    print(
        f"one checkpoint save adds {added_ms:.1f} ms of wall-clock ({100 * added_ms / step_ms:.0f}% of a step); "
        f"the loop itself blocks {blocking_ms:.1f} ms, the rest is the background write"
    )


if __name__ == "__main__":
    main()
