"""The hostile-input table: every bad input and fault a user can cause, through the real CLI.

Each case runs one command (its `main`, in this process, or a real subprocess for
the fault cases) and checks three things: the documented exit code, stderr that is
one line starting "error:" with no traceback, and that no file in the working folder
changed except the ones the case expects (the folder is hashed before and after).
Cases share one finished tiny run and one token cache, so the module stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO_ROOT, TINY_MODEL, shared_token_cache
from jaxlm import bench, compare, evaluate, export, generate, launch, runs, sweep
from jaxlm.data import __main__ as data_cli
from jaxlm.errors import EXIT_ABORTED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from jaxlm.tracking import runlock

RUN = {**TINY_MODEL, "max_iterations": 10, "cosine_cycle_iters": 10, "eval_interval": 5, "checkpoint_interval": 5}
COMMANDS = {"launch": launch.main, "export": export.main, "compare": compare.main, "generate": generate.main}
COMMANDS["data"] = data_cli.main
COMMANDS["sweep"] = sweep.main
COMMANDS |= {"evaluate": evaluate.main, "runs": runs.main, "bench": bench.main}


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    yield from shared_token_cache(tmp_path_factory, RUN)


@pytest.fixture(autouse=True)
def isolated_cache(token_cache, monkeypatch):  # overrides conftest's: every case reads the shared cache
    monkeypatch.setenv("JAXLM_CACHE_DIR", str(token_cache))
    return token_cache


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, **kw) -> subprocess.Popen:
    """A real `python -m jaxlm.<command>` process."""
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd or REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, token_cache) -> Path:
    """One finished tiny run (checkpoints at 5 and 10) that cases copy; also the lone-run reference."""
    base = tmp_path_factory.mktemp("finished")
    (base / "run.json").write_text(json.dumps(RUN))
    proc = cli("jaxlm.launch", "--config", str(base / "run.json"), "--output-dir", str(base / "runs"), "--quiet")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_OK, err
    return base / "runs" / "run"


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_tokens(path: Path, values: np.ndarray) -> Path:
    np.save(path, values)
    return path


# --- the table ------------------------------------------------------------------------------------


@dataclass
class Case:
    """`setup(work, finished)` prepares the folder and returns the command's arguments."""

    command: str
    setup: Callable[[Path, Path], list[str]]
    words: tuple[str, ...]
    code: int = EXIT_USAGE
    may_change: tuple[str, ...] = ()  # paths (relative to the work folder) the case may create or change
    needs_run: bool = False
    extra: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # environment variables set for the case (a path is under work)
    absent: tuple[str, ...] = ()  # words the message must not hold (advice to destroy something)


def config_file(work: Path, text: str | bytes | dict, name: str = "c.json") -> str:
    path = work / name
    if isinstance(text, dict):
        text = json.dumps(text)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def new_run(work: Path, config, *more: str, name: str = "r") -> list[str]:
    return ["--config", config_file(work, config), "--name", name, "--output-dir", str(work / "runs"), "--quiet", *more]


def copy_run(work: Path, finished: Path, name: str = "old") -> Path:
    target = work / "runs" / name
    shutil.copytree(finished, target)
    return target


def edit_config(run: Path, **changes) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **changes}))


def _locked(work: Path, finished: Path, args: Callable[[Path], list[str]]) -> list[str]:
    run = copy_run(work, finished)
    HELD.append(runlock.acquire(run))  # this test process plays the live run
    return args(run)


HELD: list[runlock.RunLock] = []


def mine(path: Path, folder: bool = False) -> Path:
    """A file (or folder) of the user's that a command must leave alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if folder else path.write_text("the user's own\n")
    return path


def _data_prepare(work: Path, train: bytes, out: str = "prepared", make_out: bool = False) -> list[str]:
    (work / "train.txt").write_bytes(train)
    (work / "valid.txt").write_text("Once upon a time there was a cat.\n")
    if make_out:
        (work / out).write_text("a file, not a folder")
    return ["prepare", "--train", str(work / "train.txt"), "--valid", str(work / "valid.txt"), "--out",
            str(work / out), "--vocab-size", "300", "--quiet"]  # fmt: skip


CASES = {
    "config-not-utf8": Case("launch", lambda w, f: new_run(w, b'{"seed": "\xff"}'), ("not UTF-8",)),
    "config-nan": Case("launch", lambda w, f: new_run(w, '{"min_learning_rate": NaN}'), ("NaN", "finite")),
    "config-infinity": Case("launch", lambda w, f: new_run(w, '{"weight_decay": Infinity}'), ("Infinity",)),
    "set-infinity": Case(
        "launch", lambda w, f: new_run(w, RUN, "--set", "weight_decay=Infinity"), ("weight_decay", "Infinity")
    ),
    "config-is-directory": Case(
        "launch", lambda w, f: ["--config", str(w), "--name", "x", "--output-dir", str(w / "runs")], ("directory",)
    ),
    "empty-name": Case("launch", lambda w, f: new_run(w, RUN, name=""), ("--name ''",)),
    "escaping-name": Case("launch", lambda w, f: new_run(w, RUN, name="../escaped"), ("--name",)),
    "data-path-is-directory": Case(
        "launch", lambda w, f: new_run(w, {**RUN, "train_data_path": str(w)}), ("train_data_path", "is a directory")
    ),
    "negative-token-ids": Case(
        "launch",
        lambda w, f: new_run(
            w,
            {
                **RUN,
                "train_data_path": str(write_tokens(w / "neg.npy", np.arange(-5, 995, dtype=np.int64))),
                "val_data_path": str(write_tokens(w / "val.npy", np.arange(1000, dtype=np.int64) % 300)),
            },
        ),
        ("neg.npy", "negative token id -5"),
    ),
    "corrupt-token-meta": Case(
        "launch",
        lambda w, f: (
            write_tokens(w / "t.npy", np.arange(1000, dtype=np.uint16) % 300),
            (w / "t.meta.json").write_text("{not json"),
            new_run(w, {**RUN, "train_data_path": str(w / "t.npy"), "val_data_path": str(w / "t.npy")}),
        )[-1],
        ("t.meta.json", "not JSON"),
    ),
    "device-gpu-missing": Case(
        "launch",
        lambda w, f: new_run(w, RUN, "--set", "device=gpu"),
        ("'device'", '"gpu"', "found only cpu", "uv sync"),
    ),
    "device-gpu-missing-dry-run": Case(
        "launch", lambda w, f: new_run(w, RUN, "--set", "device=gpu", "--dry-run"), ("'device'", "--extra cuda13")
    ),
    "device-tpu-missing": Case(
        "launch", lambda w, f: new_run(w, RUN, "--set", "device=tpu"), ("'device'", "--extra tpu")
    ),
    "attention-cudnn-on-cpu": Case(
        "launch", lambda w, f: new_run(w, {**RUN, "attention": "cudnn"}), ("'attention'", "cuDNN attention failed")
    ),
    "attention-unknown": Case("launch", lambda w, f: new_run(w, {**RUN, "attention": "flash"}), ("attention",)),
    "sample-tokens-huge": Case("launch", lambda w, f: new_run(w, {**RUN, "sample_tokens": 10**9}), ("sample_tokens",)),
    "existing-name": Case(  # a finished run is never offered --overwrite
        "launch",
        lambda w, f: (copy_run(w, f, "r"), new_run(w, RUN))[-1],
        ("already exists", "--resume", "max_iterations"),
        needs_run=True,
        absent=("--overwrite",),
    ),
    "existing-name-without-checkpoint": Case(
        "launch",
        lambda w, f: (shutil.rmtree(copy_run(w, f, "r") / "checkpoints"), new_run(w, RUN))[-1],
        ("already exists", "saved no checkpoint", "--overwrite"),
        needs_run=True,
    ),
    "existing-name-not-a-run": Case(
        "launch",
        lambda w, f: (mine(w / "runs" / "r" / "notes.txt"), new_run(w, RUN))[-1],
        ("already exists", "not a jaxlm run"),
        absent=("--overwrite",),
    ),
    "overwrite-not-a-run": Case(
        "launch",
        lambda w, f: (
            ((w / "runs" / "r").mkdir(parents=True), (w / "runs" / "r" / "mine.txt").write_text("x"))
            and new_run(w, RUN, "--overwrite")
        ),
        ("not a jaxlm run directory", "refusing"),
    ),
    "overwrite-locked-run": Case(
        "launch",
        lambda w, f: _locked(w, f, lambda r: new_run(w, RUN, "--overwrite", name="old")),
        ("in use by PID", f"{os.getpid()}"),
        needs_run=True,
    ),
    "resume-locked-run": Case(
        "launch",
        lambda w, f: _locked(w, f, lambda r: ["--resume", str(r), "--set", "max_iterations=12"]),
        ("in use by PID", f"{os.getpid()}"),
        needs_run=True,
    ),
    "resume-edited-seed": Case(
        "launch",
        lambda w, f: (r := copy_run(w, f), edit_config(r, seed=7), ["--resume", str(r), "--set", "max_iterations=12"])[
            -1
        ],
        ("'seed'", "7"),
        needs_run=True,
    ),
    "resume-edited-beta1": Case(
        "launch",
        lambda w, f: (
            r := copy_run(w, f),
            edit_config(r, beta1=0.8),
            ["--resume", str(r), "--set", "max_iterations=12"],
        )[-1],
        ("'beta1'", "0.8", "0.9"),
        needs_run=True,
    ),
    "resume-set-identity-key": Case(
        "launch",
        lambda w, f: ["--resume", str(copy_run(w, f)), "--set", "beta2=0.99"],
        ("'beta2'", "cannot change on --resume", "mesh_fsdp"),
        needs_run=True,
    ),
    "resume-edited-data-path": Case(
        "launch",
        lambda w, f: (
            np.save(w / "other.npy", np.arange(5000, dtype=np.uint16) % 300),
            r := copy_run(w, f),
            edit_config(r, train_data_path=str(w / "other.npy"), val_data_path=str(w / "other.npy")),
            ["--resume", str(r), "--set", "max_iterations=12"],
        )[-1],
        ("'train_data_path'", "other.npy"),
        needs_run=True,
        may_change=("other.npy",),
    ),
    "memory-vocab-huge": Case("launch", lambda w, f: new_run(w, {**RUN, "vocab_size": 20_000_000}), ("needs about",)),
    "memory-batch-huge": Case("launch", lambda w, f: new_run(w, {**RUN, "batch_size": 1_000_000}), ("needs about",)),
    "memory-vocab-1e9-tokenizer": Case(
        "launch", lambda w, f: new_run(w, {**RUN, "vocab_size": 1_000_000_000}), ("needs about",)
    ),
    "sweep-report-not-ours": Case(
        "sweep",
        lambda w, f: (
            mine(w / "runs" / ".reports" / "p_sweep.md"),
            [
                "--config",
                config_file(w, RUN),
                "--grid",
                "learning_rate=1e-3,2e-3",
                "--name-prefix",
                "p",
                "--output-dir",
                str(w / "runs"),
                "--quiet",
            ],
        )[-1],  # fmt: skip
        ("not this sweep's report", "--force"),
    ),
    "resume-corrupt-config": Case(
        "launch",
        lambda w, f: (r := copy_run(w, f), (r / "config.json").write_bytes(b"\xff{"), ["--resume", str(r)])[-1],
        ("config.json", "not valid JSON"),
        needs_run=True,
    ),
    "resume-no-checkpoint": Case(
        "launch",
        lambda w, f: (
            r := copy_run(w, f),
            shutil.rmtree(r / "checkpoints"),
            ["--resume", str(r), "--set", "max_iterations=12"],
        )[-1],
        ("interrupted before the first checkpoint", "--overwrite"),
        needs_run=True,
    ),
    "generate-corrupt-config": Case(
        "generate",
        lambda w, f: (r := copy_run(w, f), (r / "config.json").write_text("{"), ["--run", str(r), "--prompt", "a"])[-1],
        ("config.json",),
        needs_run=True,
    ),
    "generate-temperature-nan": Case(
        "generate",
        lambda w, f: ["--run", str(copy_run(w, f)), "--prompt", "a", "--temperature", "nan"],
        ("--temperature",),
        needs_run=True,
    ),
    "export-into-run": Case(
        "export",
        lambda w, f: ["--run", str(r := copy_run(w, f)), "--out", str(r / "config.safetensors")],
        ("inside run directory",),
        needs_run=True,
    ),
    "export-existing": Case(
        "export",
        lambda w, f: (
            (w / "m.safetensors").write_text("mine"),
            ["--run", str(copy_run(w, f)), "--out", str(w / "m.safetensors")],
        )[-1],  # fmt: skip
        ("already exists", "--force"),
        needs_run=True,
    ),
    "export-to-directory": Case(
        "export",
        lambda w, f: ((w / "d.safetensors").mkdir(), ["--run", str(copy_run(w, f)), "--out", str(w / "d.safetensors")])[
            -1
        ],  # fmt: skip
        ("is a directory",),
        needs_run=True,
    ),
    "export-unwritable": Case(
        "export",
        lambda w, f: ["--run", str(copy_run(w, f)), "--out", "/proc/jaxlm/m.safetensors"],
        ("/proc",),
        needs_run=True,
    ),
    "compare-experiment-log": Case(
        "compare",
        lambda w, f: (
            (w / "EXPERIMENT_LOG.md").write_text("# my log\n"),
            [str(copy_run(w, f)), "-o", str(w / "EXPERIMENT_LOG.png")],
        )[-1],  # fmt: skip
        ("experiment log",),
        needs_run=True,
    ),
    "compare-existing": Case(
        "compare",
        lambda w, f: ((w / "c.png").write_text("mine"), [str(copy_run(w, f)), "-o", str(w / "c.png")])[-1],
        ("already exists",),
        needs_run=True,
    ),
    "compare-to-directory": Case(
        "compare",
        lambda w, f: ((w / "c.png").mkdir(), [str(copy_run(w, f)), "-o", str(w / "c.png")])[-1],
        ("is a directory",),
        needs_run=True,
    ),
    "compare-into-run": Case(
        "compare",
        lambda w, f: [str(r := copy_run(w, f)), "-o", str(r / "loss_curves.png")],
        ("inside run directory",),
        needs_run=True,
    ),
    "compare-unwritable": Case(
        "compare", lambda w, f: [str(copy_run(w, f)), "-o", "/proc/jaxlm/c.png"], ("/proc",), needs_run=True
    ),
    "prepare-not-utf8": Case("data", lambda w, f: _data_prepare(w, b"Once upon a \xff\xfe time.\n" * 50), ("UTF-8",)),
    "prepare-out-is-file": Case(
        "data", lambda w, f: _data_prepare(w, b"Once upon a time.\n", make_out=True), ("is a file",)
    ),
    "prepare-out-exists": Case(
        "data",
        lambda w, f: (
            (w / "prepared").mkdir(),
            (w / "prepared" / "keep.txt").write_text("x"),
            _data_prepare(w, b"Once upon a time.\n"),
        )[-1],  # fmt: skip
        ("already exists", "--force"),
    ),
}


def _damaged(work: Path, finished: Path, args: Callable[[Path], list[str]]) -> list[str]:
    """A copy of the finished run whose step-10 checkpoint lost a file's contents (a power loss)."""
    run = copy_run(work, finished)
    (run / "checkpoints" / "10" / "params" / "_METADATA").write_bytes(b"")
    return args(run)


DAMAGED_WORDS = ("step 10 is damaged", "_METADATA is empty", "intact steps: [5]")
CASES |= {  # an explicit damaged step is refused by every command that reads checkpoints
    f"{command}-damaged-step": Case(
        command, lambda w, f, a=args: _damaged(w, f, lambda r: [*a(r), "10"]), DAMAGED_WORDS, needs_run=True
    )
    for command, args in {
        "launch": lambda r: ["--resume", str(r), "--resume-step"],
        "evaluate": lambda r: ["--run", str(r), "--checkpoint"],
        "generate": lambda r: ["--run", str(r), "--checkpoint"],
        "export": lambda r: ["--run", str(r), "--out", str(r.parent.parent / "m.safetensors"), "--checkpoint"],
    }.items()
}

CASES |= {  # the leaderboard switches (docs/leaderboard.md)
    f"config-{key}-{label}": Case(
        "launch", lambda w, f, kv={key: value}: new_run(w, {**RUN, **kv}), (f"'{key}'", *words)
    )
    for key, value, label, words in (
        ("optimizer", "sgd", "unknown", ("'adamw', 'muon'",)),
        ("muon_momentum", 1.0, "one", ("[0, 1)",)),
        ("muon_learning_rate", 0, "zero", ("positive",)),
        ("muon_ns_steps", 0, "zero", ("positive",)),
        ("muon_weight_decay", -0.1, "negative", (">= 0",)),
        ("logit_softcap", -30, "negative", ("positive",)),
        ("z_loss", -1e-4, "negative", (">= 0",)),
        ("ffn", "relu3", "unknown", ("'relu2'",)),
        ("qk_norm", "yes", "string", ("expected bool",)),
    )
}

CASES |= {  # values that pass a type check but would fail later, inside JAX, numpy or the file system
    "config-seed-negative": Case("launch", lambda w, f: new_run(w, {**RUN, "seed": -1}), ("'seed'", ">= 0")),
    "config-seed-too-large": Case("launch", lambda w, f: new_run(w, {**RUN, "seed": 2**70}), ("'seed'", "at most")),
    "config-count-astronomical": Case(
        "launch", lambda w, f: new_run(w, {**RUN, "max_iterations": 1e30}), ("'max_iterations'", "at most", "1e+30")
    ),
    "set-count-astronomical": Case(
        "launch", lambda w, f: new_run(w, RUN, "--set", "checkpoint_interval=1e40"), ("'checkpoint_interval'",)
    ),
    "config-deeply-nested": Case("launch", lambda w, f: new_run(w, "[" * 100_000 + "]" * 100_000), ("too deeply",)),
    "name-too-long": Case("launch", lambda w, f: new_run(w, RUN, name="n" * 300), ("300 bytes", "at most 200")),
    "config-stem-too-long": Case(
        "launch",
        lambda w, f: ["--config", config_file(w, RUN, "c" * 240 + ".json"), "--output-dir", str(w / "runs")],
        ("240 bytes", "--name"),
    ),
    "sweep-point-name-too-long": Case(
        "sweep",
        lambda w, f: [
            "--config",
            config_file(w, RUN),
            "--name",
            "s" * 195,
            "--grid",
            "seed=1,2",
            "--output-dir",
            str(w / "runs"),
        ],  # fmt: skip
        ("bytes long", "at most 200"),
    ),
    "cache-dir-is-a-file": Case(
        "launch",
        lambda w, f: ((w / "cache").write_text("a file"), new_run(w, RUN))[-1],
        ("cannot write tokens", "JAXLM_CACHE_DIR", "Not a directory"),
        env={"JAXLM_CACHE_DIR": "cache"},
    ),
    "evaluate-context-too-large": Case(
        "evaluate",
        lambda w, f: ["--run", str(copy_run(w, f)), "--context-length", "100000000"],
        ("100000000 tokens", "lower --context-length"),
        needs_run=True,
    ),
    "evaluate-batch-too-large": Case(
        "evaluate",
        lambda w, f: ["--run", str(copy_run(w, f)), "--batch-size", "100000000"],
        ("100000000 windows", "--batch-size"),
        needs_run=True,
    ),
}


def _bad_tokenizer(work: Path, finished: Path, content: bytes, args: Callable[[Path], list[str]]) -> list[str]:
    run = copy_run(work, finished)
    (run / "tokenizer.json").write_bytes(content)
    return args(run)


CASES |= {  # a run's tokenizer.json that a power loss emptied, or that was overwritten with something else
    "generate-tokenizer-empty": Case(
        "generate",
        lambda w, f: _bad_tokenizer(w, f, b"", lambda r: ["--run", str(r), "--prompt", "Once"]),
        ("tokenizer.json", "is empty"),
        needs_run=True,
    ),
    "evaluate-text-tokenizer-garbage": Case(
        "evaluate",
        lambda w, f: _bad_tokenizer(
            w, f, b'{"model": ', lambda r: ["--run", str(r), "--data", mine(w / "story.txt").as_posix()]
        ),
        ("tokenizer.json", "is damaged"),
        needs_run=True,
    ),
    "export-hf-tokenizer-not-utf8": Case(
        "export",
        lambda w, f: _bad_tokenizer(
            w, f, b"\xff\xfe", lambda r: ["--run", str(r), "--format", "hf", "--out", str(w / "hf")]
        ),
        ("tokenizer.json", "is damaged", "UTF-8"),
        needs_run=True,
    ),
}


def _lying_tokens(work: Path) -> str:
    """A token file whose metadata claims small ids, with an id beyond the vocabulary at its very end."""
    path = write_tokens(work / "tokens.npy", np.append(np.arange(5_000, dtype=np.uint16) % 256, 300))
    (work / "tokens.meta.json").write_text(json.dumps({"num_tokens": 5_001, "max_token_id": 10}))
    return str(path)


CASES["tokens-beyond-vocab-under-lying-metadata"] = Case(
    "launch",
    lambda w, f: new_run(w, {**RUN, "train_data_path": (t := _lying_tokens(w)), "val_data_path": t}),
    ("tokens.npy", "token id 300", "vocab_size=300"),
)


def fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


CASES |= {  # a FIFO where a file is expected: named for what it is (not "missing"), never opened (it would block)
    "config-is-fifo": Case(
        "launch", lambda w, f: ["--config", fifo(w / "c.json"), "--output-dir", str(w / "runs")], ("is a FIFO",)
    ),
    "train-data-is-fifo": Case(
        "launch",
        lambda w, f: new_run(w, {**RUN, "train_data_path": fifo(w / "train.txt")}),
        ("'train_data_path'", "is a FIFO, not a regular file"),
    ),
    "evaluate-data-is-fifo": Case(
        "evaluate",
        lambda w, f: ["--run", str(copy_run(w, f)), "--data", fifo(w / "story.txt")],
        ("--data", "is a FIFO"),
        needs_run=True,
    ),
}


def tear_arrays(step_dir: Path) -> None:
    """Overwrite the middle of every params data file of a checkpoint: the files are whole and their
    metadata parses, only the array bytes are wrong (what only tensorstore finds, on restore)."""
    for data in (step_dir / "params").glob("ocdbt.process_0/d/*"):
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 4 : 3 * len(raw) // 4] = b"Z" * (3 * len(raw) // 4 - len(raw) // 4)
        data.write_bytes(bytes(raw))


def _torn(work: Path, finished: Path, args: Callable[[Path], list[str]]) -> list[str]:
    run = copy_run(work, finished)
    tear_arrays(run / "checkpoints" / "10")
    return args(run)


CASES |= {  # the newest checkpoint (also the best) has torn array bytes: one line, the older step offered
    f"{command}-torn-arrays": Case(
        command,
        lambda w, f, a=args, flag=flag: _torn(w, f, a),
        ("step 10", "corrupt or unreadable", f"{flag} (saved: [5])"),
        needs_run=True,
    )
    for command, args, flag in [
        ("launch", lambda r: ["--resume", str(r), "--set", "max_iterations=12", "--quiet"], "--resume-step"),
        ("evaluate", lambda r: ["--run", str(r)], "--checkpoint"),
        ("generate", lambda r: ["--run", str(r), "--prompt", "Once"], "--checkpoint"),
        ("export", lambda r: ["--run", str(r), "--out", str(r.parent.parent / "m.safetensors")], "--checkpoint"),
    ]
}


# Usage errors (argparse's): one line naming the flag, exit 2, for every command.
for _command, (_required, _int_flag) in {
    "launch": (["--config", "c.json"], "--resume-step"),
    "sweep": (["--config", "c.json", "--grid", "seed=1,2"], "--max-parallel"),
    "evaluate": (["--run", "r"], "--batch-size"),
    "bench": (["--config", "c.json"], "--steps"),
}.items():
    CASES[f"usage-{_command}-bad-int"] = Case(
        _command, lambda w, f, a=[*_required, _int_flag, "many"]: a, (_int_flag, "invalid int value", "'many'")
    )
CASES |= {
    f"usage-{command}-unknown-flag": Case(command, lambda w, f, a=args: [*a, "--no-such-flag"], ("--no-such-flag",))
    for command, args in {
        "generate": ["--run", "r", "--prompt", "a"],
        "export": ["--run", "r", "--out", "m.safetensors"],
        "compare": ["r"],
        "runs": [],
        "launch": ["--config", "c.json"],
        "sweep": ["--config", "c.json"],
        "evaluate": ["--run", "r"],
        "bench": ["--config", "c.json"],
        "data": ["prepare", "--train", "t.txt", "--valid", "v.txt", "--out", "o"],
    }.items()
}
CASES |= {
    "usage-launch-no-config": Case("launch", lambda w, f: ["--name", "x"], ("--config",)),
    "usage-evaluate-no-run": Case("evaluate", lambda w, f: [], ("--run",)),
    "usage-generate-no-run": Case("generate", lambda w, f: ["--prompt", "a"], ("--run",)),
    "usage-data-no-subcommand": Case("data", lambda w, f: [], ("prepare",)),
    "usage-data-unknown-subcommand": Case("data", lambda w, f: ["fetch"], ("invalid choice", "'fetch'")),
    "usage-launch-resume-and-if-exists": Case(
        "launch", lambda w, f: ["--resume", "r", "--resume-if-exists"], ("--resume-if-exists", "drop --resume")
    ),
    "usage-bench-two-modes": Case("bench", lambda w, f: ["--suite", "--memory"], ("separate modes",)),
}


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_hostile_input(case_id, tmp_path, request, capsys, monkeypatch):
    case = CASES[case_id]
    finished = request.getfixturevalue("finished") if case.needs_run else None
    work = tmp_path / "work"
    work.mkdir()
    for name, value in case.env.items():
        monkeypatch.setenv(name, str(work / value))
    try:
        args = case.setup(work, finished)
        capsys.readouterr()
        before = tree_hashes(work)
        try:
            code = COMMANDS[case.command](args)
        except SystemExit as stop:  # argparse's way out
            code = stop.code
        err = capsys.readouterr().err.strip()
    finally:
        while HELD:
            HELD.pop().release()
    assert code == case.code, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for word in case.words:
        assert word in err, err
    for word in case.absent:
        assert word not in err, err
    after = tree_hashes(work)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    changed -= {p for p in changed if p.endswith("/" + runlock.LOCK_FILE)}  # records its last holder; no data
    assert not {p for p in changed if not p.startswith(case.may_change)} if case.may_change else not changed, changed


# --- faults: real processes, real signals ---------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0


def losses(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in rows]


@pytest.mark.slow
def test_two_concurrent_launches_of_one_name(tmp_path, finished):
    """The second is refused within seconds; the first finishes bit-identical to a lone run."""
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    argv = ["jaxlm.launch", "--config", str(tmp_path / "run.json"), "--output-dir", str(tmp_path), "--quiet"]
    first = cli(*argv, "--no-experiment-log")
    run = tmp_path / "run"
    wait_for(lambda: runlock.holder(run) is not None, first)
    t0 = time.monotonic()
    second = cli(*argv, "--no-experiment-log")
    _, err = second.communicate(timeout=120)
    refused_in = time.monotonic() - t0
    assert second.returncode == EXIT_USAGE and err.startswith("error: ") and err.count("\n") == 1, err
    assert "already exists" in err or "in use by" in err, err
    assert refused_in < 120, refused_in  # on a loaded 2-core machine the CLI's start-up (imports) is all of it
    _, err = first.communicate(timeout=600)
    assert first.returncode == EXIT_OK, err
    assert losses(run) == losses(finished)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_torn_checkpoint_is_one_line_to_the_end_of_the_process(tmp_path, finished):
    """Through the real process: tensorstore's abandoned readers print nothing after the error line."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    tear_arrays(run / "checkpoints" / "10")
    proc = cli("jaxlm.evaluate", "--run", str(run))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_USAGE, err
    assert err.startswith("error: checkpoint at step 10") and err.count("\n") == 1, err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, EXIT_ABORTED), (signal.SIGTERM, 75), (signal.SIGHUP, 75)])
def test_a_signal_during_compile_is_one_line_and_leaves_nothing(tmp_path, sig, code):
    """Ctrl-C exits 130; SIGTERM (a scheduler's) and SIGHUP (a closed terminal) exit 75, which a SLURM
    job's script requeues."""
    (tmp_path / "run.json").write_text(json.dumps({**RUN, "d_model": 48, "num_heads": 4}))
    proc = cli(
        "jaxlm.launch",
        "--config",
        str(tmp_path / "run.json"),
        "--output-dir",
        str(tmp_path / "runs"),
        "--quiet",
        env={"JAXLM_COMPILATION_CACHE": "0"},
    )
    wait_for(lambda: (tmp_path / "runs" / "run" / runlock.LOCK_FILE).exists(), proc)
    time.sleep(0.5)  # into data loading / compilation
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == code, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {sig.name} during"), err
    assert not (tmp_path / "runs" / "run").exists()  # the claimed directory is taken back


@pytest.mark.slow
def test_two_signals_before_the_first_checkpoint_say_so_and_sweep_restarts(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({**RUN, "max_iterations": 100000, "checkpoint_interval": 100000}))
    proc = cli("jaxlm.launch", "--config", str(tmp_path / "run.json"), "--output-dir", str(tmp_path), "--quiet")
    run = tmp_path / "run"
    wait_for(lambda: logged_steps(run) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.4)  # the second Ctrl-C of the report, during the first one's checkpoint save
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (EXIT_ABORTED, 75), err  # 75: the save finished before the second signal
    assert "Traceback" not in err, err
    if proc.returncode == EXIT_ABORTED:
        assert err.strip().splitlines()[-1].startswith("error: aborted"), err
    if proc.returncode == EXIT_ABORTED and not list((run / "checkpoints").glob("[0-9]*")):
        assert "interrupted before the first checkpoint" in err
        assert json.loads((run / "summary.json").read_text())["resume"] == "interrupted before the first checkpoint"
    from jaxlm.sweep import GridPoint, plan
    from jaxlm.tracking.runs import saved_checkpoint_steps

    action, command = plan(GridPoint("run", (), (), None), str(tmp_path / "run.json"), tmp_path, quiet=True,
                           retry_failed=False)  # fmt: skip
    assert action == ("resume" if saved_checkpoint_steps(run) else "restart"), action


@pytest.mark.slow
def test_kill_9_mid_run_shows_as_killed(tmp_path):
    from jaxlm.tracking.runs import load_run

    (tmp_path / "run.json").write_text(json.dumps({**RUN, "max_iterations": 100000}))
    proc = cli("jaxlm.launch", "--config", str(tmp_path / "run.json"), "--output-dir", str(tmp_path), "--quiet")
    run = tmp_path / "run"
    wait_for(lambda: logged_steps(run) >= 2, proc)
    assert load_run(run).status == "running"
    proc.kill()
    proc.wait()
    assert load_run(run).status == runlock.KILLED


@pytest.mark.slow
def test_disk_full_while_training_is_one_line(tmp_path, capsys, monkeypatch):
    """ENOSPC (simulated: the metrics writer's disk fills at the 4th row) ends the run with one line, exit 1."""
    import errno

    from jaxlm.errors import EXIT_FAILED
    from jaxlm.tracking import records

    real_write, rows = records.MetricFiles.write, []

    def filling_write(self, row):
        rows.append(row)
        if len(rows) >= 4:
            raise OSError(errno.ENOSPC, "No space left on device", "metrics.csv")
        real_write(self, row)

    monkeypatch.setattr(records.MetricFiles, "write", filling_write)
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    code = launch.main(["--config", str(tmp_path / "run.json"), "--output-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_FAILED, err
    assert err.startswith("error: ") and "\n" not in err and "No space left on device" in err, err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_signals_at_the_last_step_and_during_the_final_records_leave_it_completed(tmp_path, capsys, monkeypatch):
    """A SIGTERM at the last step, then a SIGHUP and a second Ctrl-C while the experiment log entry is
    written: the run is completed (exit 0, so a requeue stops), its log entry written once."""
    from jaxlm.tracking.tracker import ExperimentTracker
    from jaxlm.train.meter import Meter

    real_record, real_log = Meter.record, ExperimentTracker.append_experiment_log

    def record(self, step, metrics):
        real_record(self, step, metrics)
        if step == RUN["max_iterations"]:
            os.kill(os.getpid(), signal.SIGTERM)

    def append_experiment_log(self):
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGINT)  # a second stop signal would abort a running step
        real_log(self)

    monkeypatch.setattr(Meter, "record", record)
    monkeypatch.setattr(ExperimentTracker, "append_experiment_log", append_experiment_log)
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    code = launch.main(["--config", str(tmp_path / "run.json"), "--output-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_OK and "Traceback" not in err, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and "interrupted_by" not in summary, summary
    assert summary["steps"] == RUN["max_iterations"]
    assert (tmp_path / "EXPERIMENT_LOG.md").read_text().count("\n## ") == 1
    monkeypatch.undo()
    again = ["--config", str(tmp_path / "run.json"), "--output-dir", str(tmp_path), "--quiet", "--resume-if-exists"]
    assert launch.main(again) == EXIT_OK  # a requeue of it has nothing to do
    assert "already completed" in capsys.readouterr().err
    assert (tmp_path / "EXPERIMENT_LOG.md").read_text().count("\n## ") == 1


def test_a_resume_keeps_every_row_either_metrics_file_kept(tmp_path, finished, capsys):
    """Power loss: metrics.jsonl lost its tail and ends torn, metrics.csv has a torn line and garbage at
    the end. The resume keeps every step that one of them holds whole, then appends its own rows."""
    run = copy_run(tmp_path, finished)
    jsonl, csv_lines = (run / "metrics.jsonl").read_text().splitlines(), (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(jsonl[:4]) + "\n" + jsonl[4][:20])
    csv_lines[3] = csv_lines[3][:25]  # step 3's line, torn (its row is whole in metrics.jsonl)
    (run / "metrics.csv").write_bytes("\n".join(csv_lines).encode() + b"\n\xff\x00garbage,\n")
    assert launch.main(["--resume", str(run), "--set", "max_iterations=12", "--quiet", "--no-experiment-log"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    before = {row["step"]: row for row in map(json.loads, jsonl)}
    after = {row["step"]: row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert sorted(after) == list(range(1, 13))
    for step, row in before.items():
        assert {k: after[step].get(k) for k in ("tokens", "train_loss", "val_loss", "learning_rate")} == {
            k: row.get(k) for k in ("tokens", "train_loss", "val_loss", "learning_rate")
        }, step
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 12


def test_user_text_never_breaks_a_record_and_a_long_one_costs_what_a_short_one_does(tmp_path, capsys):
    """A 1 MB description with newlines, backticks, a table bar and the experiment log's own entry marker."""
    from jaxlm.tracking.explog import append_entry, entry_marker

    log = tmp_path / "EXPERIMENT_LOG.md"
    hostile = "line one\n## not a heading | `code` " + entry_marker("sweep-x") + "\n"
    config = {**RUN, "description": hostile + "x" * 2**20, "sample_prompt": "=== step 1 | 0 characters | prompt: ''\n"}
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert launch.main(["--config", str(tmp_path / "run.json"), "--output-dir", str(tmp_path), "--quiet"]) == EXIT_OK
    run = tmp_path / "run"
    assert (run / "summary.json").stat().st_size < 20_000  # rewritten at every refresh: bounded
    entry = log.read_text().split("\n## ", 1)[1]
    assert len(entry) < 3_000 and "\n## not a heading" not in entry and "`code`" not in entry
    assert entry_marker("sweep-x") not in log.read_text()
    assert append_entry(log, "the sweep's own entry\n", key="sweep-x")  # not mistaken for one already there
    assert compare.main([str(run), "--output", str(tmp_path / "cmp.png")]) == EXIT_OK
    assert max(len(line) for line in (tmp_path / "cmp.md").read_text().splitlines()) < 1_000
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_a_sweep_stops_its_point_with_a_checkpoint_and_leaves_no_orphan(tmp_path, sig):
    """The signal goes to the sweep's process alone (`kill PID`), not to its process group. SIGTERM: the
    sweep passes it on, the point saves and records why, no later point starts, the sweep exits 75.
    SIGKILL: the point is sent SIGTERM as its parent dies, and saves and stops the same way."""
    long = {"max_iterations": 100_000, "checkpoint_interval": 100_000, "eval_interval": 100_000}  # no best-val save
    (tmp_path / "base.json").write_text(json.dumps({**RUN, **long}))
    proc = cli("jaxlm.sweep", "--config", str(tmp_path / "base.json"), "--grid", "seed=1,2", "--name-prefix", "s",
               "--output-dir", str(tmp_path / "runs"), "--quiet", "--no-experiment-log")  # fmt: skip
    first = tmp_path / "runs" / "s_seed=1"
    wait_for(lambda: logged_steps(first) >= 3, proc)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    if sig == signal.SIGTERM:
        assert proc.returncode == EXIT_INTERRUPTED and "sweep stopped by SIGTERM" in err, err
    deadline = time.monotonic() + 300
    while runlock.holder(first) is not None:  # the point's process has ended: nothing trains on
        assert time.monotonic() < deadline, "the point kept running after its sweep was killed"
        time.sleep(0.1)
    summary = json.loads((first / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM", summary
    assert summary["checkpoint_steps"] == [summary["steps"]]
    assert not (tmp_path / "runs" / "s_seed=2").exists()


def _big_text(path: Path, megabytes: int) -> None:
    rng = np.random.default_rng(0)
    words = np.array(["once", "upon", "a", "time", "there", "was", "cat", "dog", "who", "liked", "to", "run", "."])
    line = " ".join(rng.choice(words, size=200_000)) + "\n"
    path.write_text(line * max(1, megabytes * 2**20 // len(line)))


def _staging(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if p.name.startswith(".prepared."))


@pytest.mark.slow
def test_ctrl_c_during_data_prepare_leaves_nothing_and_a_killed_one_is_cleaned_up(tmp_path):
    _big_text(tmp_path / "train.txt", 24)
    argv = ["jaxlm.data", *_data_prepare(tmp_path, (tmp_path / "train.txt").read_bytes())[:-1]]
    proc = cli(*argv, "--vocab-size", "2000", "--quiet")  # (the last --vocab-size wins)
    wait_for(lambda: bool(_staging(tmp_path)), proc, timeout=120)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_ABORTED and err.strip().startswith("error: SIGINT during data preparation"), err
    assert err.strip().count("\n") == 0, err
    assert _staging(tmp_path) == [] and not (tmp_path / "prepared").exists()

    proc = cli(*argv, "--vocab-size", "2000", "--quiet")
    wait_for(lambda: bool(_staging(tmp_path)), proc, timeout=120)
    proc.kill()  # kill -9: no handler runs, the staging folder stays ...
    proc.wait()
    left = _staging(tmp_path)
    assert len(left) == 1, left
    (tmp_path / "train.txt").write_text("Once upon a time there was a dog.\n" * 200)
    ok = cli(*argv, "--quiet")
    out, err = ok.communicate(timeout=300)
    assert ok.returncode == EXIT_OK, err
    assert _staging(tmp_path) == [] and (tmp_path / "prepared" / "train.npy").is_file()  # ... until the next run


def test_a_previous_output_moved_aside_by_a_killed_force_is_put_back(tmp_path):
    """`--force` moves the old --out aside before renaming the new one into place; a kill between the two
    renames must not lose it: the next run moves it back."""
    import socket

    from jaxlm.data.prepare import remove_staging

    dead = subprocess.Popen(["true"])
    dead.wait()
    old = tmp_path / f".prepared.old-{socket.gethostname()}-{dead.pid}-"
    old.mkdir()
    (old / "train.npy").write_text("the user's tokens")
    live = tmp_path / f".prepared.tmp-{socket.gethostname()}-{os.getpid()}-x"  # a live process's build: kept
    live.mkdir()
    remove_staging(tmp_path / "prepared", dead_only=True)
    assert (tmp_path / "prepared" / "train.npy").read_text() == "the user's tokens"
    assert _staging(tmp_path) == [live.name]


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (needs root, as CI has; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_disk_full_before_a_checkpoint_save_is_one_line_and_resumable(small_disk):
    """A real full disk (tmpfs) at a checkpoint save: one line, exit 1, the previous checkpoint intact and no
    half-written one; once there is space again the run resumes from it and completes."""
    from jaxlm.errors import EXIT_FAILED
    from jaxlm.tracking.runs import saved_checkpoint_steps

    config = small_disk / "run.json"
    # 200 steps between saves: the disk is full before the next save starts (a disk that fills during an
    # asynchronous save is another case: Orbax's writer threads print their own tracebacks)
    config.write_text(
        json.dumps(
            {**RUN, "max_iterations": 100000, "cosine_cycle_iters": 100000}
            | {"checkpoint_interval": 200, "eval_interval": 200}
        )
    )
    argv = ["--output-dir", str(small_disk / "runs"), "--quiet", "--no-experiment-log"]
    proc = cli("jaxlm.launch", "--config", str(config), *argv)
    run = small_disk / "runs" / "run"
    wait_for(lambda: bool(saved_checkpoint_steps(run)), proc)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave 1 MiB: room for the records, none for a checkpoint (~1.5 MiB)
        f.write(b"\0" * max(0, shutil.disk_usage(small_disk).free - 2**20))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_FAILED, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stopped at step"), err
    assert "No space left on device" in err and "resume from step" in err, err
    assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    filler.unlink()
    last = saved_checkpoint_steps(run)[-1]
    resumed = cli("jaxlm.launch", "--resume", str(run), "--set", f"max_iterations={last + 5}", "--quiet")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == EXIT_OK, err
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
