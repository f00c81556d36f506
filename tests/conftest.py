"""Shared test fixtures: tiny configs and an isolated token cache.

Every test runs with JAXLM_CACHE_DIR pointing into its own tmp dir, so tests never
read or write ~/.cache/jaxlm and never see each other's tokenizers; and the session fails when the
tests left anything in the checkout (`no_debris_in_the_working_tree`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO_ROOT, TINY_MODEL, working_tree_paths
from jaxlm.config import Config, build_config


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/ from this run")


@pytest.fixture(scope="session", autouse=True)
def no_debris_in_the_working_tree():
    """Fails the session (an error at the last test's teardown) when the tests left a new file or folder
    in the checkout, ignored ones such as `runs/t/` included. Tests write only under their tmp_path;
    caches of Python and pytest are left out."""
    before = working_tree_paths(REPO_ROOT)
    yield
    if before is not None:
        left = sorted((working_tree_paths(REPO_ROOT) or set()) - before)
        assert not left, f"the tests left these in the working tree {REPO_ROOT}: {', '.join(left)}"


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache for the whole session, in-process and for subprocesses
    (they inherit JAX_COMPILATION_CACHE_DIR): the many runs of the same tiny shapes compile once."""
    import os

    import jax

    path = str(tmp_path_factory.mktemp("xla-cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Point the token/tokenizer cache at a fresh tmp dir for every test."""
    cache = tmp_path_factory.mktemp("jaxlm-cache")
    monkeypatch.setenv("JAXLM_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def tiny_config():
    """Factory: `tiny_config(**overrides)` -> a small validated Config (tiny model, tiny batches)."""

    def make(**overrides) -> Config:
        return build_config({**TINY_MODEL, **overrides})

    return make
