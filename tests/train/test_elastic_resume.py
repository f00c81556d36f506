"""A run resumes on another device count or mesh (layout keys may change), and a resume refuses every
identity key changed since the checkpoint, edited in config.json or passed with --set.

The runs on forced host devices happen in `python -m jaxlm.launch` subprocesses started with
XLA_FLAGS=--xla_force_host_platform_device_count=N (the flag must be set before JAX starts); the
1-device segments run here. The losses after the resume must equal an uninterrupted 1-device run's
to float32 rounding (a data-parallel mean adds its terms in another order).
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

from helpers import RANDOM_TOKENS_RUN, write_tokens
from jaxlm import launch
from jaxlm.errors import EXIT_OK, EXIT_USAGE


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("elastic")
    config = {
        **RANDOM_TOKENS_RUN,
        "sample_tokens": 0,
        "train_data_path": str(write_tokens(d / "train.npy", 20_000)),
        "val_data_path": str(write_tokens(d / "val.npy", 2_000, seed=1)),
    }
    path = d / "tiny.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def straight(config_file, tmp_path_factory) -> Path:
    """12 uninterrupted steps on this process's one device."""
    out = tmp_path_factory.mktemp("straight")
    assert launch_here("--config", str(config_file), "--name", "straight", "--output-dir", str(out)) == EXIT_OK
    return out / "straight"


def launch_here(*argv: str) -> int:
    return launch.main([*argv, "--quiet"])


def launch_on(devices: int, *argv: str) -> None:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "jaxlm.launch", *argv, "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(run_dir: Path, after: int) -> dict[int, tuple[float, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) > after]
    return {int(r["step"]): (float(r["train_loss"]), float(r["val_loss"] or "nan")) for r in rows}


def assert_same_trajectory(resumed: Path, straight: Path) -> None:
    got, want = losses(resumed, after=6), losses(straight, after=6)
    assert sorted(got) == sorted(want) == [8, 10, 12]
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 6


@pytest.mark.slow
def test_two_devices_resume_on_one(config_file, straight, tmp_path):
    launch_on(
        2, "--config", str(config_file), "--name", "split", "--output-dir", str(tmp_path), "--set", "max_iterations=6"
    )
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["device_count"] == 2
    assert launch_here("--resume", str(tmp_path / "split"), "--set", "max_iterations=12") == EXIT_OK
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["device_count"] == 1
    assert_same_trajectory(tmp_path / "split", straight)


@pytest.mark.slow
def test_one_device_resumes_on_four_with_another_mesh(config_file, straight, tmp_path):
    argv = ("--config", str(config_file), "--name", "split", "--output-dir", str(tmp_path))
    assert launch_here(*argv, "--set", "max_iterations=6") == EXIT_OK
    launch_on(4, "--resume", str(tmp_path / "split"), "--set", "max_iterations=12", "--set", "mesh_fsdp=2")
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["device_count"] == 4
    assert json.loads((tmp_path / "split" / "config.json").read_text())["mesh_fsdp"] == 2
    assert_same_trajectory(tmp_path / "split", straight)


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run but its lock (which names the process holding it)."""
    paths = (p for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in paths}


@pytest.mark.slow
def test_an_identity_key_changed_since_the_checkpoint_is_refused(config_file, tmp_path, capsys):
    argv = ("--config", str(config_file), "--name", "run", "--output-dir", str(tmp_path))
    assert launch_here(*argv, "--set", "max_iterations=6") == EXIT_OK
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "beta1": 0.8}))  # beta1 was not checked before
    before = files(run)
    capsys.readouterr()
    assert launch_here("--resume", str(run), "--set", "max_iterations=12") == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'beta1'" in err[0] and "0.8" in err[0] and "0.9" in err[0]
    assert files(run) == before  # nothing rewritten
    (run / "config.json").write_text(json.dumps(config))
    assert launch_here("--resume", str(run), "--set", "beta2=0.99") == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'beta2'" in err[0] and "cannot change on --resume" in err[0]


def test_every_config_key_declares_its_resume_role():
    from jaxlm.config import FIELDS, IDENTITY_KEYS, RESUME_ROLES, Resume

    assert set(RESUME_ROLES) == set(FIELDS)
    assert {"beta1", "beta2", "seed", "d_model", "train_data_path"} <= set(IDENTITY_KEYS)
    assert RESUME_ROLES["mesh_fsdp"] is RESUME_ROLES["grad_accum_steps"] is Resume.LAYOUT
    assert RESUME_ROLES["max_iterations"] is Resume.SAFE
