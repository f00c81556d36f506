"""Train-step speed benchmark, printed as one JSON line.

Mirrors ../shared/bench/torch_reference.py (same model shape from a config, AdamW
with clipping on random tokens, same FLOPs count) so the two can be run side by
side and compared as a ratio:

    python -m jaxlm.bench --config configs/quickstart.json --steps 10
    python ../shared/bench/torch_reference.py --config configs/quickstart.json --steps 10
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from flax import nnx

from jaxlm.config import load_config
from jaxlm.flops import flops_per_token, param_counts
from jaxlm.model import build_model
from jaxlm.optim import build_optimizer
from jaxlm.runtime import prepare_process
from jaxlm.steps import make_train_step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m jaxlm.bench", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    prepare_process()
    overrides = list(a.overrides) + ([f"batch_size={a.batch_size}"] if a.batch_size else [])
    c = load_config(a.config, overrides)
    graphdef, params = nnx.split(build_model(c), nnx.Param)
    tx = build_optimizer(c)
    opt_state = tx.init(params)
    rng = np.random.default_rng(0)
    x = rng.integers(0, c.vocab_size, (c.batch_size, c.context_length), dtype=np.int32)
    y = rng.integers(0, c.vocab_size, (c.batch_size, c.context_length), dtype=np.int32)
    t0 = time.perf_counter()
    step = make_train_step(graphdef, tx).lower(params, opt_state, x, y).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.warmup):
        params, opt_state, m = step(params, opt_state, x, y)
    jax.block_until_ready(m)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        params, opt_state, m = step(params, opt_state, x, y)
    loss = float(m["loss"])
    dt = (time.perf_counter() - t0) / a.steps
    tokens = c.batch_size * c.context_length
    print(json.dumps({
        "impl": "jaxlm-jit", "jax": jax.__version__, "backend": jax.default_backend(),
        "params": param_counts(c)["total"], "batch_size": c.batch_size, "context_length": c.context_length,
        "dtype": c.dtype, "step_ms": round(dt * 1e3, 1), "tokens_per_sec": round(tokens / dt, 1),
        "gflops_per_sec": round(flops_per_token(c) * tokens / dt / 1e9, 2),
        "compile_s": round(compile_s, 2), "warmup_s": round(warm_s, 2), "final_loss": round(loss, 4),
    }))


if __name__ == "__main__":
    main()
