"""Helpers shared by the tests (imported as `helpers`; pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.config import build_config
from jaxlm.data.tokens import meta_path
from jaxlm.tracking.protocol import NullTracker

REPO_ROOT = Path(__file__).resolve().parent.parent

# The model and batch shape of the multi-device and multi-process tests: 2 heads and 8 rows divide over
# 2 or 4 devices, FSDP and 2 micro-batches.
MULTI_DEVICE_SHAPE = {
    "vocab_size": 300,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 2,
    "d_ff": 64,
    "context_length": 32,
    "batch_size": 8,
}

TINY_MODEL = {
    "vocab_size": 300,
    "context_length": 32,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "d_ff": 64,
    "batch_size": 4,
    "max_iterations": 20,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "log_interval": 1,
    "eval_interval": 10,
    "checkpoint_interval": 10,
    "eval_batches": 2,
    "sample_tokens": 8,
}


TIMING_COLUMNS = ("wallclock_s", "tokens_per_sec", "mfu")  # differ between runs that must otherwise be equal


def metric_rows(run_dir: Path, after: int = -1) -> list[dict]:
    """metrics.csv rows (as raw strings) with step > after, timing columns removed: two runs that trained
    the same steps give equal lists, every loss string identical."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f) if int(r["step"]) > after
        ]


def run_summary(run_dir: Path) -> dict:
    """summary.json (raises when it is missing: a test expects the run to have written it)."""
    return json.loads((run_dir / "summary.json").read_text())


class RecordingTracker(NullTracker):
    """A tracker that writes nothing but keeps every logged row, for tests that compare trajectories."""

    def __init__(self, name: str, run_dir: str | Path):
        super().__init__(name, run_dir)
        self.rows: list[dict[str, Any]] = []

    def log_step(self, step: int, **row: Any) -> dict[str, Any]:
        self.rows.append({"step": step, **row})
        return self.rows[-1]


def shared_token_cache(tmp_path_factory, values: dict):
    """Generator for a module-scoped fixture: one token cache, prepared once for `values`, that the
    module's runs (and subprocesses, which inherit the environment) all read."""
    import os

    from jaxlm.data.sources import prepare

    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("JAXLM_CACHE_DIR")
    os.environ["JAXLM_CACHE_DIR"] = str(path)
    try:
        prepare(build_config(values))
        yield path
    finally:
        if old is None:
            os.environ.pop("JAXLM_CACHE_DIR")
        else:
            os.environ["JAXLM_CACHE_DIR"] = old


CACHE_PARTS = ("__pycache__", ".pytest_cache", ".ruff_cache", ".venv")  # what running Python leaves, by design


def working_tree_paths(root: Path) -> set[str] | None:
    """The untracked and ignored paths of the git checkout at `root` (an ignored or untracked folder counts
    as one path), leaving out interpreter and tool caches; None outside a git checkout. A path in a later
    set and not in an earlier one was written into the working tree between them. (Tracked files are left
    out: a developer editing the code while the tests run is not debris.)"""
    import subprocess

    proc = subprocess.run(
        ["git", "status", "--porcelain=v1", "--ignored", "-z"], cwd=root, capture_output=True, timeout=60
    )
    if proc.returncode != 0:
        return None
    paths = set()
    for entry in proc.stdout.decode(errors="replace").split("\0"):
        path = entry[3:]
        if entry[:2] in ("??", "!!") and not any(part.startswith(CACHE_PARTS) for part in Path(path).parts):
            paths.add(path)
    return paths


@contextlib.contextmanager
def group_umask():
    """Run with umask 027 (group may read, others nothing), as on a shared course cluster, so a test can
    tell modes a library chose (0600 files, 0700 folders) from the ones the umask gives (0640, 0750)."""
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and of everything below it, by path relative to `root`."""
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


# A tiny run over random tokens (the resume tests'): 12 steps, checkpoints at 6 and 12.
RANDOM_TOKENS_RUN = {
    "vocab_size": 256,
    "context_length": 16,
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "d_ff": 64,
    "batch_size": 4,
    "max_iterations": 12,
    "cosine_cycle_iters": 12,
    "warmup_iters": 2,
    "log_interval": 2,
    "eval_interval": 4,
    "checkpoint_interval": 6,
    "eval_batches": 2,
}


def write_tokens(path: Path, n: int, vocab: int = 256, seed: int = 0) -> Path:
    """A prepared token file of `n` random ids below `vocab`, with its meta file."""
    tokens = np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)
    np.save(path, tokens)
    meta = {
        "vocab_size": vocab,
        "dtype": "uint16",
        "num_tokens": n,
        "num_bytes": 3 * n,
        "max_token_id": int(tokens.max()),
    }
    meta_path(path).write_text(json.dumps(meta))
    return path


def cached_logits(model, ids_BxT, prefill: int = 5) -> np.ndarray:
    """Logits of `ids_BxT` through the KV cache: `prefill` tokens at once, then one token at a time to the
    end of the window (what the tests compare with the full forward)."""
    from flax import nnx

    from jaxlm.model.decode import forward_cached, init_cache

    b, t = ids_BxT.shape
    step = nnx.jit(forward_cached)
    logits, cache = step(model, ids_BxT[:, :prefill], init_cache(model, b, t), 0)
    pieces = [np.asarray(logits)]
    for pos in range(prefill, t):
        logits, cache = step(model, ids_BxT[:, pos : pos + 1], cache, pos)
        pieces.append(np.asarray(logits))
    return np.concatenate(pieces, axis=1)
