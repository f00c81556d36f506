"""Per-step cost of the multi-process stop agreement (jaxlm/train/agreement.py), as a ratio against
no agreement, on a 4-device CPU mesh.

    uv run python scripts/bench_agreement.py [--config configs/quickstart.json] [--set KEY=VALUE ...]
        [--steps 20] [--repeats 3]

Runs in a subprocess with 4 forced CPU devices (one process: the agreement is forced on, so the
same all-reduce a multi-process run pays for runs over the 4 devices). Times blocks of train steps
driven as the loop drives them (dispatch step s+1, then read step s's loss), with and without one
`Agreement.exchange` per step, alternating, and prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def child(config_path: str, sets: list[str], steps: int, repeats: int) -> None:
    import jax
    import numpy as np

    from jaxlm.config import load_config
    from jaxlm.train.agreement import Agreement
    from jaxlm.train.optim import build_optimizer, learning_rate_schedule
    from jaxlm.train.sharding import build_mesh, compile_train_step, init_state

    c = load_config(config_path, ["mesh_fsdp=2", *sets])
    mesh = build_mesh(c)
    tx = build_optimizer(c, learning_rate_schedule(c))
    graphdef, params, opt_state, layout = init_state(c, tx, mesh)
    step_fn = compile_train_step(c, graphdef, tx, layout, params, opt_state)
    rng = np.random.default_rng(0)
    x = rng.integers(0, c.vocab_size, (c.batch_size, c.context_length)).astype(np.int32)
    x, y = layout.put_batch(x, x, c.batch_size)
    agreement = Agreement(2, force=True)

    def block(agree: bool) -> float:
        nonlocal params, opt_state
        pending = None
        t0 = time.perf_counter()
        for _ in range(steps):
            params, opt_state, metrics = step_fn(params, opt_state, x, y)
            if pending is not None:
                float(pending["loss"])  # the loop reads the previous step's loss here
            if agree:
                agreement.exchange([0.0, 0.0])
            pending = metrics
        float(pending["loss"])
        agreement.result()
        return (time.perf_counter() - t0) / steps

    block(True), block(False)  # warm up both paths
    plain, agreed = [], []
    for _ in range(repeats):
        plain.append(block(False))
        agreed.append(block(True))
        print(f"block: {plain[-1] * 1e3:.2f} ms/step without, {agreed[-1] * 1e3:.2f} ms/step with", flush=True)
    alone = []  # one exchange and the wait for its result, with no train step around it
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            agreement.exchange([0.0, 0.0])
            agreement.result()
        alone.append((time.perf_counter() - t0) / steps)
    p, a = statistics.median(plain) * 1e3, statistics.median(agreed) * 1e3
    n = sum(leaf.size for leaf in jax.tree.leaves(params))
    print(f"model: {config_path} {sets} ({n:,} params), mesh {dict(mesh.shape)} on {jax.device_count()} CPU devices")
    print(f"train step without agreement: {p:.2f} ms; with one agreement per step: {a:.2f} ms")
    print(f"ratio (with / without): {a / p:.3f}  (median of {repeats} blocks of {steps} steps each)")
    print(f"one agreement alone (all-reduce dispatched and read back): {statistics.median(alone) * 1e3:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.json")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.config, args.sets, args.steps, args.repeats)
        return
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    argv = [sys.executable, __file__, "--child", "--config", args.config, *(f"--set={s}" for s in args.sets)]
    sys.exit(subprocess.call(argv + ["--steps", str(args.steps), "--repeats", str(args.repeats)], env=env))


if __name__ == "__main__":
    main()
