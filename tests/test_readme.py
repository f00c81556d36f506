"""Every Python and shell snippet in README.md runs, as a newcomer would paste it, on a tiny trained run.

The snippets are read from README.md itself (indented command blocks and ```python blocks), so a
snippet added there is run here too. They run in a temporary folder that holds `configs/` (the
repository's), so every `runs/...` path is a fresh runs folder. `uv run python` is this
interpreter. A launch of the quickstart config gets `--set` overrides that make it a tiny model
trained for a few steps (the README's own numbers are measured separately); commands that cannot
finish inside a test are named in SKIPPED with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
SKIPPED = {
    "uv run pytest": "the test suite itself",
    "uv run ruff": "lint: run by CI on every change",
    "uv run tensorboard": "a server that runs until stopped",
    "uv sync": "installs packages",
}
TINY = ["d_model=32", "num_layers=1", "num_heads=2", "d_ff=64", "vocab_size=300", "context_length=32"]
TINY += ["batch_size=4", "max_iterations=6", "warmup_iters=1", "eval_interval=3", "checkpoint_interval=3"]
TINY += ["eval_batches=2", "sample_tokens=8", "log_interval=1"]


def shell_snippets(text: str) -> list[str]:
    """The commands of the README's indented blocks (continuation lines joined, comments dropped)."""
    commands, current = [], ""
    for line in text.splitlines():
        if not line.startswith("    ") or not line.strip():
            current = ""
            continue
        part = line.strip()
        current = f"{current} {part}" if current else part
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        commands.append(current)
        current = ""
    commands = [shlex.join(shlex.split(c, comments=True)) for c in commands if c.startswith("uv ")]
    return list(dict.fromkeys(commands))  # each once: the README shows the quickstart twice


def python_snippets(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def argv(command: str) -> list[str]:
    """`uv run python -m X ...` -> this interpreter; a quickstart launch made tiny."""
    words = shlex.split(command, comments=True)
    assert words[:3] == ["uv", "run", "python"] or words[:3] == ["uv", "run", "jaxlm"], command
    words = [sys.executable, *words[3:]] if words[2] == "python" else [sys.executable, "-m", "jaxlm.cli", *words[3:]]
    if "jaxlm.launch" in words and "configs/quickstart.json" in words and "--dry-run" not in words:
        words += [x for kv in TINY for x in ("--set", kv)] + ["--quiet"]
    return words


def test_the_readme_has_the_snippets_this_test_runs():
    text = README.read_text()
    commands = shell_snippets(text)
    assert "uv run python -m jaxlm.launch --config configs/quickstart.json" in commands  # once
    assert any(c.startswith("uv run jaxlm runs") for c in commands)
    assert len(python_snippets(text)) == 1


@pytest.mark.slow
def test_every_snippet_runs_on_a_tiny_trained_run(tmp_path):
    text = README.read_text()
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    ran = []
    for command in shell_snippets(text):
        if any(command.startswith(prefix) for prefix in SKIPPED):
            continue
        proc = subprocess.run(argv(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        ran.append(command)
    assert len(ran) >= 5, ran
    for snippet in python_snippets(text):
        proc = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{snippet}\n{proc.stderr[-3000:]}"
        assert "Once upon a time" in proc.stdout
