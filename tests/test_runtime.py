"""jaxlm.runtime: huge pages for XLA's host buffers, the persistent compilation cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from jaxlm.runtime import host_tuning_env

REPO_ROOT = Path(__file__).resolve().parent.parent

# A jitted function whose 64 MB intermediate (the matmul's output) lives in XLA's per-call
# temporary buffer; prints the page faults per call once warm.
FAULTS_PER_CALL = """
import os, resource
print(os.environ.get("GLIBC_TUNABLES"))
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x @ x.T)))
x = jnp.ones((4096, 512))
for _ in range(2):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def run_python(args: list[str], **env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXLM_HOST_MALLOC", "GLIBC_TUNABLES")}
    env.update(env_changes)
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True, timeout=300
    ).stdout


@pytest.mark.slow
def test_jaxlm_commands_reexecute_with_huge_pages_unless_told_not_to():
    def state(**env) -> str:
        out = run_python(["-m", "jaxlm.launch", "--config", "configs/quickstart.json", "--dry-run"], **env)
        return re.search(r"^runtime: GLIBC_TUNABLES=(\S+) ", out, re.M).group(1)

    assert state() == "glibc.malloc.hugetlb=1"
    assert state(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert state(GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"  # the user's choice stands
    assert state(JAXLM_HOST_MALLOC="system") == "None"
    # Importing jaxlm, or calling a command's main from a script, never re-executes the process.
    imported = "import jaxlm, jaxlm.launch, os; print(os.environ.get('GLIBC_TUNABLES'))"
    assert run_python(["-c", imported]).strip() == "None"
    called = (
        "import os, jaxlm.launch as l; l.main(['--config', 'configs/quickstart.json', '--dry-run']); "
        "print('AFTER', os.environ.get('GLIBC_TUNABLES'))"
    )
    assert run_python(["-c", called]).strip().endswith("AFTER None")


def test_console_script_is_a_command_with_the_same_entry():
    out = run_python(
        [
            "-c",
            "import sys; from jaxlm.cli import main; sys.argv = ['jaxlm', 'launch', "
            "'--config', 'configs/quickstart.json', '--dry-run']; main()",
        ]
    )
    assert re.search(r"^runtime: GLIBC_TUNABLES=glibc.malloc.hugetlb=1 ", out, re.M)
    assert "run: quickstart" in out


def test_importing_jaxlm_imports_no_jax():
    code = "import sys, jaxlm; sys.exit(1 if 'jax' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.slow
@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="needs transparent huge pages (Linux)")
def test_huge_pages_stop_xla_faulting_its_buffers_in_on_every_call():
    calls = lambda **env: run_python(["-c", FAULTS_PER_CALL], **env).split()
    tunable, tuned = calls(**host_tuning_env({}))
    none, system = calls()
    assert (tunable, none) == ("glibc.malloc.hugetlb=1", "None")
    assert float(system) > 10_000  # 64 MB of fresh 4 KiB pages per call: ~16,000 faults
    assert float(tuned) < float(system) / 20  # measured: about 180 (2 MiB pages)


@pytest.mark.slow
def test_compilation_cache_goes_to_jaxlm_cache_dir_unless_jax_has_one(tmp_path):
    code = "from jaxlm.runtime import enable_compilation_cache; print(enable_compilation_cache())"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    run = lambda **extra: subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env={**env, **extra}, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run(JAXLM_CACHE_DIR=str(tmp_path)) == str(tmp_path / "xla")
    assert run(JAXLM_CACHE_DIR=str(tmp_path), JAX_COMPILATION_CACHE_DIR="/somewhere/else") == "/somewhere/else"
    assert run(JAXLM_CACHE_DIR=str(tmp_path), JAXLM_COMPILATION_CACHE="0") == "None"
    # set before JAX is imported (so a command refused at once never imports it), JAX reads it then
    code = "from jaxlm.runtime import enable_compilation_cache as e; import sys; print(e(), 'jax' in sys.modules)"
    code += "; import jax; print(jax.config.jax_compilation_cache_dir)"
    code += "; print(jax.config.jax_persistent_cache_min_compile_time_secs)"
    assert run(JAXLM_CACHE_DIR=str(tmp_path)).split("\n") == [f"{tmp_path / 'xla'} False", str(tmp_path / "xla"), "0.0"]
    code = "import jax; from jaxlm.runtime import enable_compilation_cache as e; e()"
    code += "; print(jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)"
    assert run(JAXLM_CACHE_DIR=str(tmp_path)) == f"{tmp_path / 'xla'} 0"  # JAX imported first


def test_abandoned_readers_are_quiet_and_everything_else_is_not():
    """What a torn checkpoint's abandoned async readers raise where nothing can catch it is dropped; any
    other unraisable exception still reaches the hook it was going to."""
    from jaxlm.runtime import quiet_abandoned_readers

    seen = []
    quiet = quiet_abandoned_readers(seen.append)

    async def reader():
        pass

    coroutine = reader()
    unraisable = lambda e, obj=None: types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=None,  # noqa: E731
                                                           err_msg=None, object=obj)  # fmt: skip
    closed = unraisable(RuntimeError("Event loop is closed"))
    abandoned = unraisable(RuntimeError("coroutine ignored GeneratorExit"), coroutine)
    other = unraisable(ValueError("a real problem"))
    for args in (closed, abandoned, other):
        quiet(args)
    coroutine.close()
    assert seen == [other]
