"""The config-only memory estimate (jaxlm.train.memory) against what XLA plans for the real steps.

    uv run python scripts/calibrate_memory.py [--rss] [--only SUBSTRING] [--json FILE]

For each point (a config file plus overrides) the script builds the train step and the eval step
exactly as the Trainer does (`jaxlm.train.sharding.compile_train_step` / `compile_eval_step`),
but lowers them with abstract params, optimizer state and batches, so nothing of the model's size
is allocated, and reads XLA's buffer assignment from `compiled.memory_analysis()`.

The measured figure is what one device holds at the worst moment of a run:

    train  = arguments + outputs + temporaries - aliased (params and optimizer state are donated)
    eval   = the same for the eval step + the optimizer state, which stays resident while it runs
    device = max(train, eval) + the validation batches the Trainer keeps on the device

The estimate compared with it is `estimate(c)["total"]`. The tokenizer trainer's host memory
(a separate phase, before any array exists) is not part of either.

`--rss` also runs real train steps of two small points, each in a fresh subprocess, and reports
how much the process's peak resident memory grew during them, next to XLA's planned step buffers
(temporaries + outputs - aliased): a cross-check that the plan is what the CPU backend touches.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxlm.config import Config, load_config
from jaxlm.model.transformer import build_model
from jaxlm.train.memory import estimate
from jaxlm.train.optim import build_optimizer, learning_rate_schedule
from jaxlm.train.sharding import Layout, build_mesh, compile_eval_step, compile_train_step, init_state

QS, TS = "configs/quickstart.json", "configs/tinystories_17m.json"
POINTS: list[tuple[str, str, list[str]]] = [
    ("qs", QS, []),
    ("qs bf16", QS, ["dtype=bfloat16"]),
    ("qs accum4", QS, ["grad_accum_steps=4"]),
    ("qs B64 accum16", QS, ["batch_size=64", "grad_accum_steps=16"]),  # the eval step is the peak
    ("qs T64", QS, ["context_length=64"]),
    ("qs T256", QS, ["context_length=256"]),
    ("qs V32k", QS, ["vocab_size=32000"]),
    ("qs V50k B8", QS, ["vocab_size=50257", "batch_size=8"]),
    ("ts B8 T64", TS, ["batch_size=8", "context_length=64"]),
    ("ts B8 T256", TS, ["batch_size=8", "context_length=256"]),
    ("ts B32 T64", TS, ["batch_size=32", "context_length=64"]),
    ("ts B32 T256", TS, []),
    ("ts B32 T256 bf16", TS, ["dtype=bfloat16"]),
    ("ts B32 T256 accum4", TS, ["grad_accum_steps=4"]),
    ("ts B32 T256 bf16 accum4", TS, ["dtype=bfloat16", "grad_accum_steps=4"]),
    ("ts B32 T256 accum8", TS, ["grad_accum_steps=8"]),
    ("ts B8 T256 V50k", TS, ["batch_size=8", "vocab_size=50257"]),
    ("ts B8 T256 V50k bf16", TS, ["batch_size=8", "vocab_size=50257", "dtype=bfloat16"]),
    ("silu ablation B8", "configs/ablation_silu.json", ["batch_size=8"]),
    ("owt leaderboard", "configs/leaderboard_owt.json", ["device=null"]),
]
RSS_POINTS = ("qs", "ts B8 T256")
MIB = 2**20


def nbytes(tree) -> int:
    return sum(leaf.size * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def abstract_state(c: Config):
    """What `init_state` builds, as shapes only: (graphdef, optimizer, params, opt_state, layout)."""
    tx = build_optimizer(c, learning_rate_schedule(c))
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(c)), nnx.Param)
    opt_state = jax.eval_shape(tx.init, params)
    return graphdef, tx, params, opt_state, Layout.for_mesh(build_mesh(c), params, opt_state)


def in_use(stats) -> int:
    """Bytes live while the program runs, by XLA's buffer assignment (donated arguments counted once)."""
    return (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )


def measure(c: Config) -> dict:
    graphdef, tx, params, opt_state, layout = abstract_state(c)
    t0 = time.perf_counter()
    train = compile_train_step(c, graphdef, tx, layout, params, opt_state).memory_analysis()
    evals = compile_eval_step(c, graphdef, layout, params).memory_analysis()
    seconds = time.perf_counter() - t0
    val_set = c.eval_batches * 2 * c.batch_size * c.context_length * 4  # int32 (x, y) pairs
    train_bytes = in_use(train)
    eval_bytes = in_use(evals) + nbytes(opt_state)
    return {
        "state": nbytes(params) + nbytes(opt_state),
        "train_args": train.argument_size_in_bytes,
        "train_out": train.output_size_in_bytes,
        "train_alias": train.alias_size_in_bytes,
        "train_temp": train.temp_size_in_bytes,
        "train_peak_xla": getattr(train, "peak_memory_in_bytes", None),
        "train_generated_code": train.generated_code_size_in_bytes,
        "train": train_bytes,
        "eval_temp": evals.temp_size_in_bytes,
        "eval": eval_bytes,
        "val_set": val_set,
        "device": max(train_bytes, eval_bytes) + val_set,
        "compile_s": seconds,
    }


def hwm_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def rss_child(config: str, overrides: list[str], steps: int = 3) -> dict:
    """Real steps in this (fresh) process, on random tokens: how much the peak resident set grows over
    `steps` steps, measured after the state is allocated and one warm-up step has run, so it holds
    the steps' own buffers (XLA:CPU allocates a step's temporaries when it starts and frees them when it ends)."""
    c = load_config(config, overrides)
    graphdef, tx, params, opt_state, layout = abstract_state(c)
    step = compile_train_step(c, graphdef, tx, layout, params, opt_state)
    _, params, opt_state, _ = init_state(c, tx, layout.mesh)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, c.vocab_size, (c.batch_size, c.context_length), dtype=np.int32) for _ in range(2))
    xb, yb = layout.put_batch(x, y, c.batch_size)
    params, opt_state, metrics = step(params, opt_state, xb, yb)
    jax.block_until_ready(metrics)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS
    base, _ = hwm_kib()
    for _ in range(steps):
        params, opt_state, metrics = step(params, opt_state, xb, yb)
        jax.block_until_ready(metrics)
    _, peak = hwm_kib()
    return {"rss_step_growth": (peak - base) * 1024, "steps": steps}


def rss(config: str, overrides: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", config, *overrides], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rss", action="store_true", help=f"also measure real steps of {', '.join(RSS_POINTS)}")
    p.add_argument("--only", help="only the points whose label contains this")
    p.add_argument("--json", help="also write every measurement to this file")
    p.add_argument("--rss-child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rss_child:
        print(json.dumps(rss_child(a.rss_child[0], a.rss_child[1:])))
        return
    print(f"jax {jax.__version__}, XLA:{jax.default_backend().upper()}, {jax.device_count()} device(s); MiB\n")
    print(
        "| point | est. params+opt | act. | logits | val set | **est. total** "
        "| XLA args | temps | train step | eval step | **XLA device** | est/XLA |"
    )
    print("|---" * 12 + "|")
    rows = []
    for label, config, overrides in POINTS:
        if a.only and a.only not in label:
            continue
        c = load_config(config, overrides)
        e, m = estimate(c), measure(c)
        if a.rss and label in RSS_POINTS:
            m.update(rss(config, overrides))
        rows.append({"label": label, "config": config, "overrides": overrides, "estimate": e, "measured": m})
        est = [e[k] / MIB for k in ("params_and_optimizer", "activations", "logits", "eval_batches", "total")]
        xla = [m[k] / MIB for k in ("train_args", "train_temp", "train", "eval", "device")]
        cells = [label, *(f"{v:.1f}" for v in est + xla), f"{e['total'] / m['device']:.2f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    ratios = [r["estimate"]["total"] / r["measured"]["device"] for r in rows]
    print(f"\nest/XLA: min {min(ratios):.2f}, max {max(ratios):.2f} over {len(rows)} points")
    measured = [r for r in rows if "rss_step_growth" in r["measured"]]
    if measured:
        print("\n| point | peak RSS growth over 3 real steps | XLA's step buffers (temps + outputs - aliased) |")
        print("|---|---|---|")
    for r in measured:
        m = r["measured"]
        print(f"| {r['label']} | {m['rss_step_growth'] / MIB:.1f} | {(m['train'] - m['train_args']) / MIB:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"jax": jax.__version__, "backend": jax.default_backend(), "points": rows}, f, indent=1)


if __name__ == "__main__":
    main()
