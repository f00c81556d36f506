"""Checkpoints, bit-exact resume, SIGTERM, kill -9 and divergence, on a tiny model over random tokens.

The subprocess tests run `python -m jaxlm.launch` for real and signal it once
metrics.jsonl shows it is training; the resumed runs must then log exactly the
rows an uninterrupted run logs (timing columns aside).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from helpers import RANDOM_TOKENS_RUN, write_tokens
from helpers import metric_rows as rows
from helpers import run_summary as summary
from jaxlm import launch
from jaxlm.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_OK
from jaxlm.train.checkpoint import RunCheckpoints, load

LONG = 400  # steps of the runs that get signalled


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Share compiled steps between this file's runs (and its subprocesses) via JAX's persistent cache."""
    cache = str(tmp_path_factory.mktemp("xla-cache"))
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    env_before = {
        k: os.environ.get(k) for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    }
    os.environ.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    yield
    for k, v in before.items():
        jax.config.update(k, v)
    for k, v in env_before.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    config = {
        **RANDOM_TOKENS_RUN,
        "train_data_path": str(write_tokens(d / "train.npy", 20_000)),
        "val_data_path": str(write_tokens(d / "val.npy", 2_000, seed=1)),
    }
    path = d / "tiny.json"
    path.write_text(json.dumps(config))
    return path


def train(config_file: Path, out: Path, name: str, *sets: str) -> int:
    argv = ["--config", str(config_file), "--name", name, "--output-dir", str(out), "--quiet"]
    return launch.main(argv + [a for s in sets for a in ("--set", s)])


def resume(run_dir: Path, *args: str) -> int:
    return launch.main(["--resume", str(run_dir), "--quiet", *args])


@pytest.mark.slow
def test_resume_continues_bit_for_bit(config_file, tmp_path):
    assert train(config_file, tmp_path, "straight") == EXIT_OK
    assert train(config_file, tmp_path, "split", "max_iterations=6") == EXIT_OK
    first_half_wallclock = float(rows_with_time(tmp_path / "split")[-1]["wallclock_s"])
    assert resume(tmp_path / "split", "--set", "max_iterations=12") == EXIT_OK
    resumed = rows(tmp_path / "split", after=6)
    assert [int(r["step"]) for r in resumed] == [8, 10, 12]
    assert resumed == rows(tmp_path / "straight", after=6)  # every loss string identical
    # no duplicate or out-of-order rows; wall-clock continues instead of restarting
    steps = [int(r["step"]) for r in rows(tmp_path / "split")]
    assert steps == sorted(set(steps))
    assert float(rows_with_time(tmp_path / "split")[-3]["wallclock_s"]) > first_half_wallclock
    s = summary(tmp_path / "split")
    assert s["status"] == "completed" and s["resumed_from_step"] == 6 and s["steps"] == 12
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == steps


def rows_with_time(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_checkpoints_are_plain_orbax_and_load_returns_the_model(config_file, tmp_path):
    assert train(config_file, tmp_path, "run", "keep_checkpoints=1", "checkpoint_interval=2") == EXIT_OK
    run = tmp_path / "run"
    s = summary(run)
    # latest 1 kept, plus the best by validation loss (which may be the same step)
    assert 12 in s["checkpoint_steps"] and s["best_val_step"] in s["checkpoint_steps"]
    assert len(s["checkpoint_steps"]) <= 2 and s["best_checkpoint_step"] == s["best_val_step"]
    model, config = load(run, "latest")
    assert config.d_model == 32
    # plain Orbax, no jaxlm: the arrays and the JSON metadata
    with ocp.CheckpointManager(run / "checkpoints") as mngr:
        assert mngr.latest_step() == 12
        raw = mngr.restore(12, args=ocp.args.Composite(params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    assert raw.meta["step"] == 12 and raw.meta["seed"] == config.seed
    np.testing.assert_array_equal(
        np.asarray(raw.params["lm_head"]["weight"]["value"]), np.asarray(model.lm_head.weight[...])
    )
    best_model, _ = load(run, "best")
    x = np.zeros((1, 16), np.int32)
    assert np.isfinite(np.asarray(best_model(x))).all()


def test_retention_keeps_latest_n_and_the_best(tmp_path):
    ckpts = RunCheckpoints(tmp_path, keep=2)
    params = {"w": jax.numpy.ones(3)}
    for step, val in [(1, None), (2, 1.0), (3, None), (4, 2.0), (5, None), (6, 3.0)]:
        ckpts.save(step, params, {"count": jax.numpy.zeros([])}, {}, val_loss=val)
    ckpts.close()
    assert RunCheckpoints(tmp_path, keep=2).steps == [2, 5, 6]
    assert RunCheckpoints(tmp_path, keep=2).best_step() == 2


@pytest.mark.slow
def test_divergence_stops_without_a_nan_checkpoint(config_file, tmp_path):
    code = train(
        config_file,
        tmp_path,
        "hot",
        "learning_rate=300",
        "min_learning_rate=300",
        "warmup_iters=3",
        "grad_clip=1000",
        "max_iterations=200",
        "cosine_cycle_iters=null",
        "eval_interval=1",
        "checkpoint_interval=1000",
    )
    assert code == EXIT_DIVERGED
    run = tmp_path / "hot"
    s = summary(run)
    assert s["status"] == "diverged" and 3 < s["diverged_step"] < 200 and s["divergence_reason"]
    # the best checkpoint is kept, nothing at or after the diverged step was written
    assert s["best_checkpoint_step"] == s["best_val_step"] < s["diverged_step"]
    assert s["checkpoint_steps"] and all(step < s["diverged_step"] for step in s["checkpoint_steps"])
    for step in s["checkpoint_steps"]:
        model, _ = load(run, step)
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(nnx.state(model)))
    logged = rows(run)
    assert int(logged[-1]["step"]) == s["diverged_step"]  # the diverging row is on record


# --- real processes, real signals ---------------------------------------------------------------------------


def start(config_file: Path, out: Path, name: str, *extra: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "jaxlm.launch",
        "--config",
        str(config_file),
        "--name",
        name,
        "--output-dir",
        str(out),
        "--quiet",
        "--set",
        f"max_iterations={LONG}",
        "--set",
        f"cosine_cycle_iters={LONG}",
        "--set",
        "log_interval=5",
        "--set",
        "eval_interval=100",
        "--set",
        "checkpoint_interval=40",
        *extra,
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 90.0) -> int:
    """Poll metrics.jsonl until a row at or past `step` appears; returns the newest logged step."""
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.is_file():
            lines = path.read_text().splitlines()
            if lines and (last := json.loads(lines[-1])["step"]) >= step:
                return last
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no step {step} within {timeout}s")


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory) -> Path:
    """The uninterrupted long run the signalled ones must match."""
    out = tmp_path_factory.mktemp("ref")
    assert (
        train(
            config_file,
            out,
            "ref",
            f"max_iterations={LONG}",
            f"cosine_cycle_iters={LONG}",
            "log_interval=5",
            "eval_interval=100",
            "checkpoint_interval=40",
        )
        == EXIT_OK
    )
    return out / "ref"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_saves_and_resume_matches(config_file, tmp_path, reference, sig):
    """SIGHUP (a closed terminal or SSH session) is handled like SIGTERM."""
    proc = start(config_file, tmp_path, "term")
    wait_for_step(proc, tmp_path / "term", 30)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    run = tmp_path / "term"
    s = summary(run)
    stopped = s["steps"]
    assert s["status"] == "interrupted" and s["interrupted_by"] == sig.name and 30 <= stopped < LONG
    assert stopped in s["checkpoint_steps"]  # the step it stopped at was saved
    assert resume(run) == EXIT_OK
    assert summary(run)["status"] == "completed"
    assert rows(run, after=stopped) == rows(reference, after=stopped)


@pytest.mark.slow
def test_resume_if_exists_one_command_line_for_start_and_every_restart(config_file, tmp_path, reference):
    proc = start(config_file, tmp_path, "again", "--resume-if-exists")  # runs/again does not exist: a fresh start
    wait_for_step(proc, tmp_path / "again", 30, timeout=300)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED
    run = tmp_path / "again"
    stopped = summary(run)["steps"]
    proc = start(config_file, tmp_path, "again", "--resume-if-exists")  # the same command line continues it
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK, err
    s = summary(run)
    assert s["status"] == "completed" and s["resumes"] == 1 and s["resumed_from_step"] == stopped
    assert [seg["from_step"] for seg in s["segments"]] == [0, stopped]
    assert all(seg["start_time"] for seg in s["segments"])
    assert rows(run) == rows(reference)  # bit-exact with the uninterrupted run
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    proc = start(config_file, tmp_path, "again", "--resume-if-exists")  # once more: nothing left to do
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK and "already completed" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.slow
def test_resume_if_exists_starts_over_a_run_that_never_saved(config_file, tmp_path, capsys):
    argv = ["--config", str(config_file), "--name", "n", "--output-dir", str(tmp_path), "--quiet"]
    assert launch.main(argv + ["--resume-if-exists"]) == EXIT_OK
    shutil.rmtree(tmp_path / "n" / "checkpoints")  # as if killed before its first checkpoint
    (tmp_path / "n" / "summary.json").unlink()
    assert launch.main(argv + ["--resume-if-exists"]) == EXIT_OK
    assert "no checkpoint saved yet; starting it again" in capsys.readouterr().err
    assert summary(tmp_path / "n")["status"] == "completed" and "resumes" not in summary(tmp_path / "n")
    with pytest.raises(SystemExit) as exc:  # argparse: --resume and --resume-if-exists exclude each other
        launch.main(argv[2:] + ["--resume-if-exists", "--resume", str(tmp_path / "n")])
    assert exc.value.code == 2


@pytest.mark.slow
def test_kill_9_then_resume_from_newest_complete_checkpoint(config_file, tmp_path, reference):
    proc = start(config_file, tmp_path, "killed")
    wait_for_step(proc, tmp_path / "killed", 90)
    proc.kill()  # SIGKILL: no handler, no cleanup, possibly mid-save
    proc.wait()
    run = tmp_path / "killed"
    complete = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert complete and complete[-1] >= 40  # 80's save may have been cut short: then 40 is the newest complete
    # a half-written checkpoint, newer than all others, as a kill during a save leaves it
    half = run / "checkpoints" / f"{complete[-1] + 25}.orbax-checkpoint-tmp-1234567890"
    half.mkdir()
    (half / "params").mkdir()
    assert resume(run) == EXIT_OK
    assert not any("tmp" in p.name for p in (run / "checkpoints").iterdir())
    s = summary(run)
    assert s["status"] == "completed" and s["resumed_from_step"] == complete[-1]
    assert rows(run, after=complete[-1]) == rows(reference, after=complete[-1])
    steps = [int(r["step"]) for r in rows(run)]
    assert steps == sorted(set(steps))


def test_second_signal_aborts_at_once():
    from jaxlm.train.stopping import StopSignals

    previous = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.requested == "SIGINT"  # first: a request, training goes on to the end of the step
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_second_signal_inside_a_callback_that_cannot_raise_aborts_at_the_next_step(monkeypatch):
    """Python swallows an exception raised inside `__del__` or a gc callback (jax has one) and prints it as
    "Exception ignored" with a traceback: the abort was lost and the traceback shown (seen in CI)."""
    from jaxlm.train.stopping import Aborted, StopSignals

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside __del__

    printed = []  # what Python would print as "Exception ignored ..."
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        SignalledWhileCollected()
        assert stop.aborted == "SIGINT"
        with pytest.raises(Aborted):
            stop.raise_if_aborted()
    assert printed == []
    assert sys.unraisablehook == printed.append  # restored


def test_divergence_guard_rules():
    from jaxlm.train.stopping import DivergenceGuard

    guard = DivergenceGuard(factor=3.0, warmup_iters=5, initial_loss=None)
    assert guard.check(1, 5.0, 1.0) and guard.initial_loss == 5.0
    assert guard.check(4, 40.0, 1.0)  # a spike during warmup is tolerated
    assert guard.check(6, 14.9, 1.0)
    assert not guard.check(7, 15.1, 1.0) and guard.tripped["step"] == 7
    assert not DivergenceGuard(3.0, 5).check(1, math.nan, 1.0)
    assert not DivergenceGuard(3.0, 5, initial_loss=5.0).check(2, 5.0, math.inf)
    assert not DivergenceGuard(3.0, 5, initial_loss=5.0).check_val(9, 16.0)


def test_resume_refuses_when_the_training_data_changed(config_file, tmp_path, capsys):
    """The data order is batch_at(seed, step) over the token file: a different file cannot continue it."""
    config = json.loads(config_file.read_text())
    config["train_data_path"] = str(write_tokens(tmp_path / "train.npy", 20_000))
    (tmp_path / "own.json").write_text(json.dumps(config))
    assert train(tmp_path / "own.json", tmp_path / "runs", "run", "max_iterations=6") == EXIT_OK
    write_tokens(tmp_path / "train.npy", 30_000)  # the corpus grew since the checkpoint
    before = (tmp_path / "runs" / "run" / "metrics.csv").read_text()
    assert resume(tmp_path / "runs" / "run", "--set", "max_iterations=12") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training data changed" in err and "20000" in err and "30000" in err
    assert (tmp_path / "runs" / "run" / "metrics.csv").read_text() == before  # nothing rewritten
    write_tokens(tmp_path / "train.npy", 20_000, seed=1)  # rewritten in place: same path, size and count
    assert resume(tmp_path / "runs" / "run", "--set", "max_iterations=12") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training data changed" in err and "fingerprint" in err, err
    write_tokens(tmp_path / "train.npy", 20_000)  # the original content again: it continues
    assert resume(tmp_path / "runs" / "run", "--set", "max_iterations=8") == EXIT_OK


@pytest.mark.slow
def test_power_loss_in_the_newest_checkpoint_resumes_from_the_previous_one(config_file, tmp_path, caplog):
    """A power loss (or a full disk) leaves a checkpoint's files empty: each file of the newest checkpoint,
    emptied in turn, makes that step skipped with one warning, and every reader uses the previous one."""
    from jaxlm.tracking.runs import saved_checkpoint_steps
    from jaxlm.train.checkpoint import CheckpointError, check_resumable, load_with_step

    assert train(config_file, tmp_path, "straight", "checkpoint_interval=3") == EXIT_OK
    assert train(config_file, tmp_path, "cut", "checkpoint_interval=3", "max_iterations=9") == EXIT_OK
    cut = tmp_path / "cut"
    *older, newest = saved_checkpoint_steps(cut)
    previous = older[-1]
    assert newest == 9
    files = sorted(p.relative_to(cut) for p in (cut / "checkpoints" / "9").rglob("*") if p.is_file())
    assert len(files) > 20  # the params, optimizer state and meta items, with Orbax's metadata
    for rel in files:
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(cut, work)
        (work / rel).write_bytes(b"")
        caplog.clear()
        assert check_resumable(work, "latest") == previous, rel  # what --resume, evaluate, --resume-if-exists use
        assert load_with_step(work, "latest")[2] == previous, rel  # what generate, export and jaxlm.load use
        assert saved_checkpoint_steps(work) == older, rel  # what the sweep and the run's records use
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings == [f"checkpoint at step 9 skipped: {work / rel} is empty"], (rel, warnings)
        with pytest.raises(
            CheckpointError,
            match=rf"step 9 is damaged .*{rel.name} is empty.*\(intact steps: {re.escape(str(older))}\)",
        ):
            check_resumable(work, 9)
    # the run resumes from the previous checkpoint, trains the same steps as a run that was never cut, and
    # saves step 9 again, keeping the damaged folder aside
    damaged = max(files, key=lambda rel: (cut / rel).stat().st_size)  # the biggest array file
    (cut / damaged).write_bytes(b"")
    assert resume(cut, "--set", "max_iterations=12") == EXIT_OK
    assert rows(cut, after=previous) == rows(tmp_path / "straight", after=previous)
    assert (cut / "checkpoints" / "9.damaged" / damaged.relative_to("checkpoints/9")).stat().st_size == 0
    assert 9 in summary(cut)["checkpoint_steps"] and summary(cut)["resumed_from_step"] == previous
