"""Peak resident memory of `python -m jaxlm.evaluate` on a large token file against a small one.

    uv run python scripts/bench_eval_memory.py [--big-mb 1024] [--small-mb 1] [--workdir DIR]

Trains a tiny model for two steps (its own run directory under --workdir), writes two uint16 token
files of random ids (--small-mb and --big-mb megabytes, 1 MB = 2^20 bytes), then runs the evaluate
command on each in a fresh process and reads that process's peak RSS from the kernel (`os.wait4`
ru_maxrss). The files are written by a child process of their own: Python starts children with vfork,
and Linux carries the parent's peak RSS over into the child's ru_maxrss at exec, so a parent that had
written a gigabyte through a memory map would count it against the evaluation. The evaluation
streams the file (`jaxlm.train.full_eval`): the two peaks should differ by far less than the files do.
Prints both peaks, their difference, tokens and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 16
BATCH = 8192  # windows per evaluation batch: few large batches, so the host loop is not the bottleneck
# A deliberately minute model: the benchmark measures memory against file size, and must get through
# a gigabyte of tokens on a CPU in minutes.
MODEL = {
    "vocab_size": VOCAB,
    "context_length": 16,
    "d_model": 8,
    "num_layers": 1,
    "num_heads": 1,
    "d_ff": 8,
    "batch_size": 8,
    "max_iterations": 2,
    "warmup_iters": 1,
    "eval_interval": 2,
    "checkpoint_interval": 2,
    "eval_batches": 1,
    "sample_tokens": 0,
}


def write_tokens(path: Path, megabytes: float) -> int:
    """A uint16 token file of `megabytes` MiB of random ids below VOCAB, written in 64 MiB pieces."""
    n = int(megabytes * (1 << 20)) // 2
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n,))
    rng = np.random.default_rng(0)
    piece = 1 << 25
    for start in range(0, n, piece):
        arr[start : start + piece] = rng.integers(0, VOCAB, size=min(piece, n - start), dtype=np.uint16)
    arr.flush()
    del arr
    return n


def peak_rss(command: list[str], log: Path) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of `command` run as a child process (output to `log`), from wait4."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed ({proc.returncode}): {log.read_text().strip()[-500:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big-mb", type=float, default=1024)
    p.add_argument("--small-mb", type=float, default=1)
    p.add_argument("--workdir", type=Path, help="where the run and token files go (default: a temporary folder)")
    p.add_argument("--write", nargs=2, metavar=("PATH", "MB"), help=argparse.SUPPRESS)  # the file-writing child
    args = p.parse_args()
    if args.write:
        print(write_tokens(Path(args.write[0]), float(args.write[1])))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="jaxlm-eval-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    np.save(work / "train.npy", rng.integers(0, VOCAB, size=200_000).astype(np.uint16))
    np.save(work / "valid.npy", rng.integers(0, VOCAB, size=20_000).astype(np.uint16))
    config = {**MODEL, "train_data_path": str(work / "train.npy"), "val_data_path": str(work / "valid.npy")}
    (work / "tiny.json").write_text(json.dumps(config))
    run = work / "runs" / "tiny"
    if not run.is_dir():
        launch = [sys.executable, "-m", "jaxlm.launch", "--config", str(work / "tiny.json")]
        subprocess.run([*launch, "--output-dir", str(work / "runs"), "--quiet", "--no-experiment-log"], check=True)
    results = {}
    for label, mb in (("small", args.small_mb), ("big", args.big_mb)):
        path = work / f"{label}.npy"
        writer = [sys.executable, __file__, "--write", str(path), str(mb)]
        n = int(subprocess.run(writer, check=True, capture_output=True, text=True).stdout)
        evaluate = [sys.executable, "-m", "jaxlm.evaluate", "--run", str(run), "--data", str(path)]
        rss, seconds = peak_rss(
            [*evaluate, "--quiet", "--no-experiment-log", "--batch-size", str(BATCH)], work / "log.txt"
        )
        record = json.loads((run / "evals" / f"{label}-2.json").read_text())
        results[label] = rss
        print(
            f"{label}: {path.stat().st_size / (1 << 20):,.1f} MiB file, {n:,} tokens -> peak RSS "
            f"{rss / (1 << 20):,.1f} MiB; {record['tokens']:,} tokens evaluated in {record['seconds']:.1f} s "
            f"({record['tokens_per_sec']:,.0f} tokens/s; process {seconds:.1f} s)"
        )
        path.unlink()
    diff = (results["big"] - results["small"]) / (1 << 20)
    sizes = args.big_mb - args.small_mb
    print(f"peak RSS difference big - small: {diff:,.1f} MiB (the files differ by {sizes:,.0f} MiB)")


if __name__ == "__main__":
    main()
