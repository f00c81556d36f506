"""Multi-process training through jax.distributed on 127.0.0.1 (Gloo CPU collectives).

Two processes x 2 CPU devices, launched by launch/local_multiprocess.sh, must give
the losses of one process with 4 devices. Both processes share the run directory
(Orbax saves checkpoints collectively into it), but only process 0 may write the
record: a stray tracker on process 1 would add a second EXPERIMENT_LOG.md entry
and a second TensorBoard event file.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import MULTI_DEVICE_SHAPE
from jaxlm.errors import UserError
from jaxlm.tracking.protocol import NullTracker
from jaxlm.train.distributed import launch_mode

pytestmark = pytest.mark.multiprocess  # .ci/run runs these on every jax version it tests

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "local_multiprocess.sh"
TINY = {
    **MULTI_DEVICE_SHAPE,
    "max_iterations": 20,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "eval_interval": 10,
    "eval_batches": 2,
    "log_interval": 1,
    "sample_tokens": 8,
    "mesh_fsdp": 2,
    "grad_accum_steps": 2,
}


def read_losses(run_dir: Path) -> tuple[list[float], list[float]]:
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["train_loss"]) for r in rows], [float(r["val_loss"]) for r in rows if r["val_loss"]]


@pytest.mark.slow
def test_two_processes_match_one_process_and_only_process_0_writes(tmp_path):
    from jaxlm.config import build_config
    from jaxlm.data.sources import prepare

    cache = tmp_path / "cache"
    env = {**os.environ, "JAXLM_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    for key in ("JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID", "JAXLM_DISTRIBUTED"):
        env.pop(key, None)
    os.environ["JAXLM_CACHE_DIR"], old = str(cache), os.environ.get("JAXLM_CACHE_DIR")
    try:
        prepare(build_config(TINY))  # tokenize once, so the timed runs below only train
    finally:
        os.environ.pop("JAXLM_CACHE_DIR") if old is None else os.environ.__setitem__("JAXLM_CACHE_DIR", old)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    launch = [sys.executable, "-m", "jaxlm.launch", "--config", str(config), "--quiet", "--output-dir", "runs"]

    for sub in ("one", "mp"):
        (tmp_path / sub).mkdir()
    # the 1-process x 4-device reference and the 2-process x 2-device run, side by side
    single = subprocess.Popen(
        launch + ["--name", "ref"],
        cwd=tmp_path / "one",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    multi = subprocess.run(
        ["bash", str(SCRIPT), "2", *launch, "--name", "mp"],
        cwd=tmp_path / "mp",
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "JAXLM_CPU_DEVICES": "2", "JAXLM_LOG_DIR": str(tmp_path / "logs")},
    )
    _, single_err = single.communicate(timeout=300)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.log")))
    assert multi.returncode == 0, multi.stderr[-3000:] + logs[-3000:]
    assert single.returncode == 0, single_err[-3000:]

    run_dir = tmp_path / "mp" / "runs" / "mp"
    assert sorted(p.name for p in (tmp_path / "mp" / "runs").iterdir()) == ["EXPERIMENT_LOG.md", "mp"]
    assert (tmp_path / "mp" / "runs" / "EXPERIMENT_LOG.md").read_text().count("\n## ") == 1  # one tracker finalized
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert (run_dir / "checkpoints").is_dir()  # saved collectively by both processes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["device_count"], summary["process_count"], summary["local_device_count"]) == (4, 2, 2)
    assert summary["mesh_shape"] == {"data": 2, "fsdp": 2}
    assert (run_dir / "samples.txt").read_text().count("=== step") == 2  # sampling ran (collectively) at each eval
    train_multi, val_multi = read_losses(run_dir)
    train_one, val_one = read_losses(tmp_path / "one" / "runs" / "ref")
    assert len(train_multi) == 20 and len(val_multi) == 2
    np.testing.assert_allclose(train_multi, train_one, rtol=1e-5)
    np.testing.assert_allclose(val_multi, val_one, rtol=1e-5)


def test_launch_mode_reads_the_environment():
    assert launch_mode({}) is None
    explicit = {"JAXLM_COORDINATOR": "127.0.0.1:1234", "JAXLM_NUM_PROCESSES": "2", "JAXLM_PROCESS_ID": "1"}
    assert launch_mode(explicit) == "explicit"
    assert launch_mode({**explicit, "JAXLM_NUM_PROCESSES": "1"}) is None
    with pytest.raises(UserError, match="JAXLM_PROCESS_ID"):
        launch_mode({"JAXLM_COORDINATOR": "127.0.0.1:1234", "JAXLM_NUM_PROCESSES": "2"})
    with pytest.raises(UserError, match="JAXLM_NUM_PROCESSES"):
        launch_mode({**explicit, "JAXLM_NUM_PROCESSES": "two"})
    assert launch_mode({"JAXLM_DISTRIBUTED": "auto"}) == "auto"
    assert launch_mode({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "16"}) == "auto"  # srun -n 16
    assert launch_mode({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) is None  # python run by sbatch itself


def test_null_tracker_writes_nothing_and_has_only_the_protocol(tmp_path):
    from jaxlm.tracking.protocol import RunTracker

    tracker = NullTracker("x", tmp_path / "runs" / "x")
    tracker.log_step(3, train_loss=1.5)
    tracker.log_sample(3, "p", "text")
    tracker.plan_learning_rate([0.0, 1.0])
    with pytest.raises(AttributeError):
        tracker.some_future_method(1, key=2)  # a misspelt call fails instead of vanishing
    summary = tracker.finalize(status="completed", steps=3)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert tracker.run_dir == tmp_path / "runs" / "x"
    assert not (tmp_path / "runs").exists()
    protocol = {name for name in vars(RunTracker) if not name.startswith("_")}
    assert protocol <= {name for name in dir(NullTracker) if not name.startswith("_")} | {"name", "run_dir"}


@pytest.mark.slow
def test_process_0_refused_the_run_directory_stops_every_process(tmp_path):
    """Process 0 alone claims the run directory; when it is refused (another command holds the run),
    process 1 must stop too, with one line, instead of waiting in its first collective."""
    import socket
    import time

    from jaxlm.tracking import runlock

    run = tmp_path / "runs" / "held"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"name": "held", **TINY}))
    (run / "summary.json").write_text(json.dumps({"name": "held", "status": "interrupted", "steps": 5}))
    holder = runlock.acquire(run)  # this test process plays the other command
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAXLM_COORDINATOR": f"127.0.0.1:{port}", "JAXLM_NUM_PROCESSES": "2", "JAX_PLATFORMS": "cpu"}
    env.pop("JAXLM_DISTRIBUTED", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxlm.launch", "--resume", str(run), "--quiet"],
            env={**env, "JAXLM_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    t0 = time.monotonic()
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
        holder.release()
    assert time.monotonic() - t0 < 240
    errors = [err.strip().splitlines() for _, err in results]
    assert [p.returncode for p in procs] == [2, 2], errors
    assert "in use by" in errors[0][-1] and f"PID {os.getpid()}" in errors[0][-1], errors
    assert errors[1][-1].startswith("error: process 0 cannot start the run: run directory"), errors
    assert all(len(e) == 1 for e in errors), errors
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"  # left as it was


@pytest.mark.slow  # two trainings twice (~50 s); still run on every jax by .ci/run (multiprocess)
def test_two_process_cpu_runs_keep_out_of_the_compilation_cache(tmp_path):
    """A 2-process CPU run compiles afresh rather than loading its collectives from the persistent
    cache (with jaxlib 0.12.1 such executables hang in Gloo: docs/jax-versions.md). The same 2-process
    job run twice on one cache directory finishes both times, and leaves the cache empty."""
    cache = tmp_path / "cache"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "max_iterations": 4, "eval_interval": 4, "sample_tokens": 0}))
    env = {**os.environ, "JAXLM_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu", "JAXLM_CPU_DEVICES": "2"}
    for key in ("JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID", "JAXLM_DISTRIBUTED"):
        env.pop(key, None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    launch = [sys.executable, "-m", "jaxlm.launch", "--config", str(config), "--quiet", "--no-experiment-log"]
    for name in ("first", "second"):
        done = subprocess.run(
            ["bash", str(SCRIPT), "2", *launch, "--output-dir", str(tmp_path / "runs"), "--name", name],
            capture_output=True,
            text=True,
            timeout=240,
            env={**env, "JAXLM_LOG_DIR": str(tmp_path / f"logs-{name}")},
        )
        assert done.returncode == 0, done.stderr[-3000:]
    xla = cache / "xla"
    assert not xla.exists() or not any(xla.iterdir()), sorted(p.name for p in xla.iterdir())
