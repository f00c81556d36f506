"""Train-step speed benchmark: one JSON line per point, comparable with the PyTorch reference script
(kept outside the repository).

    python -m jaxlm.bench --config configs/quickstart.json --steps 10 [--batch-size B] [--dtype bfloat16]
    python -m jaxlm.bench --suite [--steps N] [--dtype bfloat16]      # quickstart and 17M, two batches each
    python -m jaxlm.bench --memory [--memory-big-mb 4096] [--memory-small-mb 4]   # see jaxlm/bench_memory.py
    python -m jaxlm.bench --xla-memory --config C [--batch-size B] [--set K=V]   # XLA's plan, no step run

`--xla-memory` compiles the train step for abstract inputs (jaxlm.train.xla_memory: nothing of the
model's size is allocated) and prints one JSON line from `compiled.memory_analysis()`: temp_bytes,
argument_bytes, output_bytes, alias_bytes (one device's buffers, as XLA assigns them).

What is timed is the train step the Trainer runs, built by jaxlm.train.probe as the Trainer
builds it (jaxlm.train.sharding's build_mesh, init_state, compile_train_step: same mesh, shardings,
donation, gradient accumulation; the probe `launch --dry-run --estimate` uses), so any speed
work in the model or the step shows up here. It runs on one fixed batch of random tokens already
on the device, as the torch reference does: host-side batch reading is not timed (`--memory` exercises that path).

Timing: after `--warmup` steps, each of the `--steps` timed steps is dispatched and then
blocked on (params, optimizer state and metrics all ready) before the next starts, as the
torch reference's per-step `loss.item()` does; `step_ms` is the median of those steps
(mean and min are printed too). The Trainer itself overlaps a step's dispatch with the
previous step's execution, so for very short steps it can be slightly faster than this.

FLOPs per token are jaxlm.train.flops' count, which is the torch reference's
6 * N + 12 * L * T * d_model with N every parameter (embeddings and LM head included);
`params` is counted from the initialised parameter tree itself. MFU is achieved model
FLOP/s over `peak_gflops_per_sec`: on GPUs/TPUs the datasheet peak (jaxlm.train.hardware) of all
devices for the run's dtype, None for a device the table lacks; on the CPU, which has no
datasheet figure, the best of a few float32 2048^3 matmuls measured in this process
(`peak_source` says which). The persistent compile cache (jaxlm.runtime) applies, so a
repeated shape shows a short `compile_s`; JAXLM_COMPILATION_CACHE=0 measures a cold compile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jaxlm.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UserError
from jaxlm.runtime import CommandParser, run_command
from jaxlm.tracking.fmt import markdown_table, number

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE = (
    ("configs/quickstart.json", 16),
    ("configs/quickstart.json", 64),
    ("configs/tinystories_17m.json", 8),
    ("configs/tinystories_17m.json", 32),
)
CPU_PEAK_SOURCE = "measured 2048^3 float32 matmul"
DATASHEET = "datasheet"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CommandParser(prog="python -m jaxlm.bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", help="config JSON (required for one point; --memory defaults to configs/quickstart.json)"
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling (default 2)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the config's)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable; with --suite/--memory, applied to every run)",
    )
    p.add_argument(
        "--suite", action="store_true", help="quickstart at batch 16/64 and 17M at 8/32, one subprocess each"
    )
    p.add_argument("--memory", action="store_true", help="peak RSS of 20 training steps on a big vs a small token file")
    p.add_argument("--memory-big-mb", type=int, default=4096, help="size of the big token file in MiB (default 4096)")
    p.add_argument("--memory-small-mb", type=int, default=4, help="size of the small token file in MiB (default 4)")
    p.add_argument(
        "--xla-memory", action="store_true", help="XLA's planned buffers of the compiled train step (no step is run)"
    )
    p.add_argument("--memory-dir", help="where to write the token files (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the --memory files and runs")
    a = p.parse_args(argv)
    if sum((a.suite, a.memory, a.xla_memory)) > 1:
        p.error("--suite, --memory and --xla-memory are separate modes: pick one")
    if a.xla_memory and not a.config:
        p.error("--xla-memory needs --config")
    if a.suite and (a.config or a.batch_size):
        p.error("--suite runs its own configs and batch sizes: drop --config/--batch-size")
    if not (a.suite or a.memory or a.config):
        p.error("--config is required (or --suite, or --memory)")
    return a


def overrides_of(a: argparse.Namespace) -> list[str]:
    """--set strings plus those that --batch-size and --dtype stand for."""
    extra = [f"batch_size={a.batch_size}"] if a.batch_size else []
    return list(a.overrides) + extra + ([f"dtype={a.dtype}"] if a.dtype else [])


def measure_cpu_peak(n: int = 2048, repeats: int = 5) -> float:
    """This process's float32 matmul FLOP/s: best of `repeats` jitted n^3 matmuls after a warm-up call."""
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    ka, kb = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(k, (n, n), jnp.float32), cpu) for k in (ka, kb))
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def bench_point(c, steps: int, warmup: int) -> dict:
    """Compile and time the Trainer's train step for config `c`; the JSON line's fields."""
    import jax

    from jaxlm.tracking.records import mfu
    from jaxlm.train.flops import flops_per_token
    from jaxlm.train.hardware import peak_flops_for
    from jaxlm.train.probe import probe_train_step

    probe = probe_train_step(c, steps, warmup)
    step_s, times, n_devices = probe.step_s, probe.times, len(probe.devices)
    tokens_per_sec = c.batch_size * c.context_length / step_s
    fpt = flops_per_token(c)
    device = probe.devices[0]
    if device.platform == "cpu":  # no datasheet peak: the matmul peak of this process (all its cores)
        peak, source = measure_cpu_peak(), CPU_PEAK_SOURCE
        util = mfu(tokens_per_sec, fpt, 1, peak)
    else:
        per_device = peak_flops_for(device, c.dtype)
        peak, source = (None, None) if per_device is None else (per_device * n_devices, DATASHEET)
        util = mfu(tokens_per_sec, fpt, n_devices, per_device)
    return {
        "impl": "jaxlm",
        "jax": jax.__version__,
        "backend": device.platform,
        "device_kind": device.device_kind,
        "devices": n_devices,
        "params": probe.params,
        "batch_size": c.batch_size,
        "context_length": c.context_length,
        "dtype": c.dtype,
        "flops_per_token": fpt,
        "compile_s": round(probe.compile_s, 3),
        "warmup_s": round(probe.warmup_s, 3),
        "steps": steps,
        "timing": f"median of {steps} steps, each blocked on",
        "step_ms": round(step_s * 1e3, 3),
        "step_ms_mean": round(statistics.fmean(times) * 1e3, 3),
        "step_ms_min": round(min(times) * 1e3, 3),
        "tokens_per_sec": round(tokens_per_sec, 1),
        "gflops_per_sec": round(fpt * tokens_per_sec / 1e9, 3),
        "peak_gflops_per_sec": None if peak is None else round(peak / 1e9, 1),
        "peak_source": source,
        "mfu": None if util is None else round(util, 5),
        "final_loss": round(probe.final_loss, 4),
    }


def run_point(a: argparse.Namespace, c) -> int:
    print(json.dumps({"config": a.config, **bench_point(c, a.steps, a.warmup)}), flush=True)
    return EXIT_OK


def run_suite(a: argparse.Namespace) -> int:
    """Each point in its own subprocess (fresh compile state and memory); JSON lines, then a table."""
    from jaxlm.config import load_config

    for config, batch in SUITE:  # bad --set/--dtype values fail here, before any subprocess
        load_config(REPO_ROOT / config, overrides_of(a) + [f"batch_size={batch}"])
    rows, failed = [], []
    for config, batch in SUITE:
        cmd = [
            sys.executable,
            "-m",
            "jaxlm.bench",
            "--config",
            str(REPO_ROOT / config),
            "--batch-size",
            str(batch),
            "--steps",
            str(a.steps),
            "--warmup",
            str(a.warmup),
        ]
        cmd += (["--dtype", a.dtype] if a.dtype else []) + [arg for o in a.overrides for arg in ("--set", o)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            failed.append(f"{config} batch {batch}")
            print(f"suite: {config} batch {batch} failed (exit {proc.returncode})", file=sys.stderr, flush=True)
            continue
        row = {**json.loads(lines[-1]), "config": config}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(suite_table(rows))
    if failed:
        print(f"suite: {len(failed)} of {len(SUITE)} points failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def suite_table(rows: list[dict]) -> str:
    header = ("config", "batch", "dtype", "compile_s", "step_ms", "tokens/s", "GFLOP/s", "MFU")
    cells = [
        [
            Path(r["config"]).stem,
            r["batch_size"],
            r["dtype"],
            number(r["compile_s"], ".2f"),
            number(r["step_ms"], ".1f"),
            number(r["tokens_per_sec"], ",.0f"),
            number(r["gflops_per_sec"], ",.1f"),
            "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%",
        ]
        for r in rows
    ]
    table = markdown_table(header, cells)
    if rows:
        table += (
            f"\nMFU against: {rows[0]['peak_source'] or 'no known peak'} "
            f"({rows[0]['device_kind']}, {rows[0]['devices']} device(s))"
        )
    return table.rstrip("\n")


def memory_mode(a: argparse.Namespace, config: str, c) -> int:
    """--memory: one JSON line and a one-line verdict; exit 0 on pass, 1 on fail or a failed child run."""
    from jaxlm.data.memory_check import run_memory

    try:
        result, verdict = run_memory(a, config, c, overrides_of(a))
    except RuntimeError as e:
        print(f"memory: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result), flush=True)
    print(verdict)
    return EXIT_OK if result["passed"] else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        if a.steps < 1:
            raise UserError(f"--steps: must be at least 1, got {a.steps}")
        if a.warmup < 0:
            raise UserError(f"--warmup: must be >= 0, got {a.warmup}")
        if a.suite:
            return run_suite(a)  # no JAX work here: each point runs in its own process
        from jaxlm.config import load_config

        config = a.config or str(REPO_ROOT / "configs" / "quickstart.json")
        c = load_config(config, overrides_of(a))
        if a.memory:
            return memory_mode(a, config, c)
        if a.xla_memory:
            from jaxlm.train.xla_memory import train_step_memory

            fields = {"batch_size": c.batch_size, "vocab_size": c.vocab_size, "dtype": c.dtype}
            print(json.dumps({"config": a.config, **fields, **train_step_memory(c)}), flush=True)
            return EXIT_OK
        return run_point(a, c)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    run_command(main)
