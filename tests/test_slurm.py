"""jaxlm on a real SLURM cluster: the one-node cluster of launch/local_slurm.sh (`.ci/run` starts it).

The recipe launch/slurm_cpu.sbatch runs a 2-task job (jax.distributed from SLURM's environment,
Gloo on the CPU) that equals the 1-process result; `scancel --signal=TERM` and a SIGTERM to one
task stop both tasks at one step with a checkpoint, the job requeues itself and resumes with
metrics equal to the uninterrupted run's; a 3-point `jaxlm.sweep --slurm` (one point diverging)
runs as one job array and reports what a local sweep reports. Skipped when no cluster is up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import MULTI_DEVICE_SHAPE, shared_token_cache
from helpers import metric_rows as rows
from helpers import run_summary as summary
from jaxlm.tracking.runs import saved_checkpoint_steps as checkpoints

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "launch" / "local_slurm.sh"
RECIPE = ROOT / "launch" / "slurm_cpu.sbatch"
LONG = 60
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
    "checkpoint_interval": 1000,
}


def cluster_env() -> dict[str, str] | None:
    """The environment for SLURM clients, or None when no cluster answers."""
    env = dict(os.environ)
    if "SLURM_CONF" not in env and os.access(CLUSTER, os.X_OK):
        out = subprocess.run([str(CLUSTER), "env"], capture_output=True, text=True).stdout
        if m := re.search(r"SLURM_CONF=(\S+)", out):
            env["SLURM_CONF"] = m[1]
    if shutil.which("sinfo") is None:
        return None
    try:
        up = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    return env if up.returncode == 0 and re.search(r"idle|mixed|allocated", up.stdout) else None


ENV = cluster_env()
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(ENV is None, reason="no SLURM cluster is up (as root: launch/local_slurm.sh start)"),
]


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    yield from shared_token_cache(tmp_path_factory, TINY)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, token_cache) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def job_env() -> dict[str, str]:
    env = {
        **ENV,
        "JAX_PLATFORMS": "cpu",
        "JAXLM_PYTHON": sys.executable,
        "JAXLM_CACHE_DIR": os.environ["JAXLM_CACHE_DIR"],
    }
    for key in ("XLA_FLAGS", "JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID", "JAXLM_DISTRIBUTED"):
        env.pop(key, None)
    return env


def sbatch(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=job_env(), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def submit_run(config_file: Path, tmp_path: Path, name: str) -> str:
    """sbatch launch/slurm_cpu.sbatch for the tiny config as run `name` (2 tasks, the recipe's default)."""
    return sbatch(
        f"--output={tmp_path / name}.out",
        str(RECIPE),
        str(config_file),
        *("--name", name, "--output-dir", str(tmp_path / "runs"), "--no-experiment-log"),
    )


def show_job(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, env=ENV).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0])) if out.strip() else {}


def wait_done(job: str, timeout: float = 600) -> dict[str, str]:
    """Wait until SLURM no longer lists `job` (all array elements); its `scontrol show job` fields."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = subprocess.run(["squeue", "-h", "-r", "-j", job], capture_output=True, text=True, env=ENV).stdout
        if not left.strip():
            return show_job(job)
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=ENV)
    raise AssertionError(f"job {job} still queued after {timeout}s")


def wait_for_step(run_dir: Path, step: int, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.is_file() and (lines := path.read_text().splitlines()) and json.loads(lines[-1])["step"] >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s: {log.read_text() if log.exists() else ''}")


@pytest.fixture(scope="module")
def slurm_reference(tmp_path_factory, config_file) -> Path:
    """An uninterrupted 2-task run of the recipe."""
    out = tmp_path_factory.mktemp("slurm-ref")
    job = submit_run(config_file, out, "ref")
    state = wait_done(job)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", (out / "ref.out").read_text()
    return out / "runs" / "ref"


def test_two_task_job_equals_one_process(slurm_reference, config_file, tmp_path):
    s = summary(slurm_reference)
    assert s["status"] == "completed" and (s["process_count"], s["device_count"]) == (2, 2)
    env = {**job_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env.pop("SLURM_CONF", None)
    argv = [sys.executable, "-m", "jaxlm.launch", "--config", str(config_file), "--name", "one", "--quiet"]
    proc = subprocess.run(
        argv + ["--output-dir", str(tmp_path), "--no-experiment-log"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = rows(tmp_path / "one"), rows(slurm_reference)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    np.testing.assert_allclose([float(r["train_loss"]) for r in two], [float(r["train_loss"]) for r in one], rtol=1e-5)


def task_pid(job: str, rank: int) -> int:
    """PID of the jaxlm process of task `rank` of `job` (the test cluster is this machine)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(
                kv.split("=", 1) for kv in environ.read_bytes().decode(errors="replace").split("\0") if "=" in kv
            )
            cmd = (environ.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("SLURM_PROCID") == str(rank) and b"jaxlm.launch" in cmd:
            return int(environ.parent.name)
    raise AssertionError(f"no task {rank} of job {job}")


@pytest.mark.parametrize("how", ["scancel", "one-task"])
def test_signal_stops_both_tasks_and_the_requeued_job_resumes(slurm_reference, config_file, tmp_path, how):
    job = submit_run(config_file, tmp_path, "pre")
    run_dir, log = tmp_path / "runs" / "pre", tmp_path / "pre.out"
    wait_for_step(run_dir, 15, log)
    if how == "scancel":
        subprocess.run(["scancel", "--signal=TERM", job], env=ENV, check=True)  # every task, never srun
    else:
        os.kill(task_pid(job, 1), 15)  # one task only: process 1, which writes nothing itself
    state = wait_done(job)
    text = log.read_text()
    assert "srun exited 75" in text and f"requeue {job}" in text, text
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", state
    s = summary(run_dir)
    stopped = s["resumed_from_step"]
    assert s["status"] == "completed" and s["resumes"] == 1 and 15 <= stopped < LONG
    assert [(seg["from_step"], seg.get("slurm_restart_count")) for seg in s["segments"]] == [(0, None), (stopped, "1")]
    assert checkpoints(run_dir) == [stopped, LONG]  # one checkpoint of the stop, one of the end
    assert rows(run_dir) == rows(slurm_reference)  # bit-exact with the uninterrupted job


def sweep_args(config_file: Path, out: Path) -> list[str]:
    return [
        *("--config", str(config_file), "--name-prefix", "sw", "--output-dir", str(out)),
        *("--grid", "learning_rate=1e-3,3e-3,1e3", "--set", "max_iterations=12", "--set", "divergence_factor=1.5"),
        *("--quiet", "--no-experiment-log"),
    ]


def report_rows(path: Path) -> list[list[str]]:
    """The sweep table without the timing columns (wall-clock, tokens/s) and links."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    keep = [i for i, c in enumerate(cells[0]) if c not in ("wall-clock (s)", "tokens/s")]
    return [[re.sub(r"\]\([^)]*\)", "]", row[i]) for i in keep] for row in cells]


def test_sweep_as_a_job_array_reports_like_a_local_sweep(config_file, tmp_path):
    env = job_env()
    cmd = [sys.executable, "-m", "jaxlm.sweep"]
    local = subprocess.run(cmd + sweep_args(config_file, tmp_path / "local"), env=env, capture_output=True, text=True)
    assert local.returncode == 0, local.stderr[-3000:]
    args = sweep_args(config_file, tmp_path / "slurm") + ["--slurm", "--max-parallel", "2"]
    first = subprocess.run(cmd + args, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    job = re.search(r"submitted SLURM job array (\d+)", first.stdout)[1]
    script = (tmp_path / "slurm" / ".reports" / "sw_sweep.sbatch").read_text()
    assert "#SBATCH --array=0,1,2%2" in script and script.count("--resume-if-exists") == 3
    elements = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i"], env=ENV, capture_output=True, text=True)
    assert len(elements.stdout.split()) in (0, 1, 2, 3)
    wait_done(job)
    done = subprocess.run(cmd + args, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = {p.name: summary(p)["status"] for p in (tmp_path / "slurm").iterdir() if (p / "summary.json").exists()}
    assert sorted(statuses.values()) == ["completed", "completed", "diverged"]
    assert report_rows(tmp_path / "slurm" / ".reports" / "sw_sweep.md") == report_rows(
        tmp_path / "local" / ".reports" / "sw_sweep.md"
    )
