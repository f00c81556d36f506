"""Every process stops at the same step: 2 local processes (launch/local_multiprocess.sh, Gloo on
127.0.0.1) signalled 150 ms apart or one of them only, and a wall-clock budget read by clocks that
disagree. Without the agreement (jaxlm/train/agreement.py) these runs hang in mismatched
collectives; with it both processes end at one step, with one checkpoint, and resume bit-exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import MULTI_DEVICE_SHAPE, shared_token_cache
from helpers import metric_rows as rows
from helpers import run_summary as summary
from jaxlm.errors import EXIT_INTERRUPTED, EXIT_OK
from jaxlm.tracking.runs import saved_checkpoint_steps as checkpoints

pytestmark = pytest.mark.multiprocess  # .ci/run runs these on every jax version it tests

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "local_multiprocess.sh"
WORKER = Path(__file__).with_name("agree_worker.py")
LONG = 100
TINY = {
    **MULTI_DEVICE_SHAPE,
    "max_iterations": LONG,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "eval_interval": 1000,
    "eval_batches": 1,
    "log_interval": 1,
    "sample_tokens": 0,
    "mesh_fsdp": 2,
    "checkpoint_interval": 1000,
}
ENDED = re.compile(r"agree-worker: process (\d) of 2 ended at step (\d+) of (\d+), exit (\d+)")


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    yield from shared_token_cache(tmp_path_factory, TINY)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, token_cache) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def env(logs: Path) -> dict:
    e = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXLM_CPU_DEVICES": "2", "JAXLM_LOG_DIR": str(logs)}
    for key in ("JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID", "JAXLM_DISTRIBUTED", "XLA_FLAGS"):
        e.pop(key, None)
    return e


def start(cwd: Path, *args: str, **extra_env: str) -> subprocess.Popen:
    argv = ["bash", str(SCRIPT), "2", sys.executable, str(WORKER), "--quiet", "--output-dir", "runs", *args]
    logs = cwd / "logs"
    return subprocess.Popen(
        argv, cwd=cwd, env={**env(logs), **extra_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, cwd: Path, timeout: float) -> tuple[int, dict[int, tuple[int, int, int]]]:
    """Exit status of the launcher and {process: (step, max_iterations, exit)}; kills all on a hang."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in workers(proc):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"hung: still running after {timeout}s\n{err[-3000:]}") from None
    err += "".join(p.read_text() for p in sorted((cwd / "logs").glob("*.log")))
    ended = {int(m[1]): (int(m[2]), int(m[3]), int(m[4])) for m in ENDED.finditer(err)}
    assert len(ended) == 2, err[-4000:]
    return proc.returncode, ended


def workers(proc: subprocess.Popen) -> list[int]:
    """PIDs of the launcher's processes (process 0 first)."""
    path = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        path = run_dir / "metrics.jsonl"
        if path.is_file() and (lines := path.read_text().splitlines()) and json.loads(lines[-1])["step"] >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"no step {step} within {timeout}s")


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory) -> Path:
    """The uninterrupted 2-process run the signalled ones must match."""
    cwd = tmp_path_factory.mktemp("ref")
    code, ended = finish(start(cwd, "--config", str(config_file), "--name", "ref"), cwd, 300)
    assert code == EXIT_OK and ended[0] == ended[1] == (LONG, LONG, EXIT_OK)
    return cwd / "runs" / "ref"


def signalled_run(config_file: Path, cwd: Path, targets: list[int]) -> tuple[Path, int, float]:
    """Start a 2-process run, SIGTERM `targets` (process indexes) 150 ms apart once it trains; returns
    the run directory, the step both stopped at and the seconds from the first signal to both exits."""
    proc = start(cwd, "--config", str(config_file), "--name", "sig")
    run_dir = cwd / "runs" / "sig"
    wait_for_step(proc, run_dir, 15)
    pids = workers(proc)
    assert len(pids) == 2
    t0 = time.monotonic()
    for i, target in enumerate(targets):
        if i:
            time.sleep(0.150)
        os.kill(pids[target], signal.SIGTERM)
    code, ended = finish(proc, cwd, 60)
    took = time.monotonic() - t0
    assert code == EXIT_INTERRUPTED
    assert ended[0][0] == ended[1][0] and ended[0][2] == ended[1][2] == EXIT_INTERRUPTED, ended
    stopped = ended[0][0]
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["interrupted_by"] == "SIGTERM" and s["steps"] == stopped
    assert checkpoints(run_dir) == [stopped] and s["checkpoint_steps"] == [stopped]  # one checkpoint, of that step
    return run_dir, stopped, took


@pytest.mark.slow
def test_sigterm_150ms_apart_stops_both_at_one_step_and_resumes_bit_exactly(config_file, tmp_path, reference):
    run_dir, stopped, took = signalled_run(config_file, tmp_path, [0, 1])
    print(f"150 ms skew: both processes stopped at step {stopped}, {took:.1f}s after the first SIGTERM")
    assert took < 30  # about 7 s on a 2-core machine shared with three other test runs (load ~15)
    code, ended = finish(start(tmp_path, "--resume", str(run_dir)), tmp_path, 300)
    assert code == EXIT_OK and ended[0] == ended[1] == (LONG, LONG, EXIT_OK)
    assert summary(run_dir)["status"] == "completed"
    assert rows(run_dir, after=stopped) == rows(reference, after=stopped)  # every loss string identical
    assert rows(run_dir, after=-1) == rows(reference, after=-1)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both(config_file, tmp_path):
    _, stopped, took = signalled_run(config_file, tmp_path, [1])  # process 1 only: process 0 writes the records
    print(f"one process signalled: both stopped at step {stopped}, {took:.1f}s after the SIGTERM")
    assert took < 30  # about 7 s on a 2-core machine shared with three other test runs (load ~15)


@pytest.mark.slow
def test_wallclock_budget_ends_both_processes_at_one_step(config_file, tmp_path):
    """Process 1's clock runs 1.6x fast: on its own it would size a shorter schedule and run out of
    time earlier than process 0, and the two would wait on each other's collectives forever."""
    args = ("--config", str(config_file), "--name", "wc", "--set", "max_wallclock_seconds=6")
    sets = ("--set", "schedule_by=wallclock", "--set", f"max_iterations={LONG * 100}")
    proc = start(tmp_path, *args, *sets, JAXLM_TEST_CLOCK_SCALE="1:1.6")
    code, ended = finish(proc, tmp_path, 180)
    assert code == EXIT_OK, ended
    assert ended[0] == ended[1], ended  # same step, same sized schedule
    s = summary(tmp_path / "runs" / "wc")
    assert s["status"] == "completed" and s["steps"] == ended[0][0]
