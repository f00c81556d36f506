"""launch/gpu_check.sh: the rehearsal runs every part on the CPU and prints the one table, so the script
that runs once on a lent GPU cannot rot; bad options and a machine without a GPU get one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

GPU_CHECK = REPO_ROOT / "launch" / "gpu_check.sh"
OUT_FILES = {
    "env.log",
    "correct.log",
    "bench.log",
    "torch.log",
    "quickstart.log",
    "parts.jsonl",
    "quickstart_summary.json",
    "report.md",
}


def run(args: list[str], env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU_CHECK), *args], env=env, capture_output=True, text=True, timeout=timeout)


def table_rows(text: str) -> list[list[str]]:
    """The cells of the markdown table's body rows in `text`."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    return [[cell.strip() for cell in ln.strip("|").split("|")] for ln in lines[1:]]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    p = run(["--rehearse", "--out", str(out), "--python", sys.executable], timeout=900)
    return p, out


@pytest.mark.slow  # the whole rehearsal: ~100 s of CPU
def test_the_rehearsal_prints_one_table_of_every_part(rehearsal):
    p, out = rehearsal
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert report.strip() in p.stdout  # the table printed is the one saved
    assert p.stdout.count("| part | case | result | limit | status |") == 1
    rows = table_rows(report)
    assert all(len(r) == 5 for r in rows), rows
    assert all(r[4] in ("ok", "info", "skipped") for r in rows), rows
    by_part = {}
    for r in rows:
        by_part.setdefault(r[0], []).append(r)
    assert {"env", "train", "attention", "kv_cache", "speed", "quickstart", "total"} <= set(by_part)
    train = [r[1] for r in by_part["train"]]
    assert any("float32 (highest) vs cpu" in c for c in train) and any("bfloat16" in c for c in train)
    assert [r[1].split(" vs jaxlm ")[1].split(",")[0] for r in by_part["attention"]] == ["forward", "dq", "dk", "dv"]
    jax_speed = [r for r in by_part["speed"] if r[1].startswith("jaxlm ")]
    assert sorted(r[1].split()[-1] for r in jax_speed) == ["bfloat16", "float32"]
    assert all("tok/s" in r[2] and "MFU" in r[2] and "compile" in r[2] for r in jax_speed)
    try:
        import torch  # noqa: F401

        assert any(r[1].startswith("torch-compile") and "jaxlm/torch" in r[3] for r in by_part["speed"])
    except ImportError:
        assert "torch: not installed, skipped" in p.stdout
        assert ["torch", "the part itself", "torch: not installed, skipped", "0 s", "skipped"] in rows
    (quickstart,) = by_part["quickstart"]
    assert quickstart[2].startswith("completed after 6 steps: val loss ") and "bits/byte" in quickstart[2]
    assert "bfloat16" in quickstart[1]
    assert by_part["total"][0][1] == "rehearsal (CPU)"
    assert p.stdout.rstrip().endswith("gpu_check: all parts passed (logs and report.md in " + str(out) + ")")


@pytest.mark.slow  # the whole rehearsal: ~100 s of CPU
def test_the_rehearsal_leaves_few_files_and_one_line_per_part(rehearsal):
    """At most 8 files (what the device tool brings back from $OUT), and each part's state recorded."""
    _, out = rehearsal
    assert {p.name for p in out.iterdir()} <= OUT_FILES
    parts = [json.loads(ln) for ln in (out / "parts.jsonl").read_text().splitlines()]
    names = [p["part"] for p in parts]
    assert names[:2] == ["env", "correct"] and names[-1] == "gpu_check"
    assert sum(n.startswith("bench ") for n in names) == 2 and names.index("quickstart") < names.index("torch")
    assert all(p["state"] in ("ok", "skipped") for p in parts if p["part"] != "gpu_check")
    summary = json.loads((out / "quickstart_summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["dtype"]) == ("completed", 6, "bfloat16")


def fake_nvidia_smi(tmp_path) -> dict:
    """A PATH entry whose nvidia-smi fails as it does on a machine without a driver."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def one_line(p: subprocess.CompletedProcess, start: str) -> None:
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.startswith(start) and p.stderr.count("\n") == 1, p.stderr


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    p = run(["--out", str(tmp_path / "out")], env=fake_nvidia_smi(tmp_path))
    one_line(p, "gpu_check: no NVIDIA GPU found (nvidia-smi -L lists none); --rehearse runs every part on the CPU")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "args, start",
    [
        (["--budget", "soon"], "gpu_check: --budget: 'soon' is not a whole number"),
        (["--wheels", "/no/such/dir"], "gpu_check: --wheels: '/no/such/dir' is not a folder"),
        (["--python", "/no/such/python", "--rehearse"], "gpu_check: --python: '/no/such/python' is not a program"),
        (["--out"], "gpu_check: --out needs a value"),
        (["--fast"], "gpu_check: unknown option '--fast'"),
    ],
)
def test_bad_options_get_one_line_and_exit_2(args, start):
    one_line(run(args), start)


def test_a_missing_module_without_wheels_is_one_line_and_leaves_the_old_logs(tmp_path):
    """A python that lacks tensorboardX (as the lent machines do) and no --wheels: nothing is run or replaced."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "tensorboardX.py").write_text("raise ImportError('not on this machine')\n")
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH:{blocker}" exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("the last run's table\n")
    p = run(["--rehearse", "--python", str(python), "--out", str(out)])
    one_line(p, f"gpu_check: {python} lacks tensorboardX: give --wheels DIR (launch/gpu_wheels.sh DIR")
    assert [f.name for f in out.iterdir()] == ["report.md"]
    assert (out / "report.md").read_text() == "the last run's table\n"


@pytest.mark.slow  # an install and the env part (~15 s)
def test_wheels_are_installed_first_and_a_spent_budget_skips_parts(tmp_path):
    """A module the python lacks comes from --wheels (here a stand-in tensorboardX wheel); a budget too small
    for any part gives a table of skipped parts and exit 1."""
    pip_python = getattr(sys, "_base_executable", sys.executable)  # a venv made by uv has no pip; its base may
    if subprocess.run([pip_python, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no interpreter with pip here to install with")
    import zipfile

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "tensorboardX.py").write_text("raise ImportError('not on this machine')\n")
    python = tmp_path / "python"  # the test's python without tensorboardX; its pip is pip_python's
    python.write_text(
        f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then shift 2; exec {pip_python} -m pip "$@"; fi\n'
        f'PYTHONPATH="$PYTHONPATH:{blocker}" exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    info = "tensorboardx-0.0.dist-info"
    with zipfile.ZipFile(wheels / "tensorboardx-0.0-py3-none-any.whl", "w") as whl:
        whl.writestr("tensorboardX/__init__.py", "__version__ = '0.0'\n")
        whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tensorboardX\nVersion: 0.0\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    out = tmp_path / "out"
    p = run(["--rehearse", "--python", str(python), "--wheels", str(wheels), "--out", str(out), "--budget", "10"])
    assert p.returncode == 1, p.stdout + p.stderr
    assert "installed from " in p.stdout and "tensorboardx-0.0-py3-none-any.whl" in p.stdout
    rows = table_rows((out / "report.md").read_text())
    # how far 10 s go depends on the machine (an idle one finished env and a train part inside them): every
    # part that started was cut to what was left of the budget, and the budget ran out before the last part
    later = [r for r in rows if r[0] not in ("env", "total")]
    assert later and any(r[4] == "skipped" for r in later), rows
    parts = [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines()]
    assert all(part["limit"] <= 10 for part in parts if part.get("state", "skipped") != "skipped"), parts
    assert p.stderr.strip() == f"gpu_check: FAILED (logs in {out})"
