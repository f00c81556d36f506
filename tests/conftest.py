"""Shared test fixtures: tiny configs and an isolated token cache.

Every test runs with JAXLM_CACHE_DIR pointing into its own tmp dir, so tests never
read or write ~/.cache/jaxlm and never see each other's tokenizers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxlm.config import Config, build_config

REPO_ROOT = Path(__file__).resolve().parent.parent

TINY_MODEL = {
    "vocab_size": 300,
    "context_length": 32,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "d_ff": 64,
    "batch_size": 4,
    "max_iterations": 20,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "log_interval": 1,
    "eval_interval": 10,
    "checkpoint_interval": 10,
    "eval_batches": 2,
    "sample_tokens": 8,
}


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


def shared_token_cache(tmp_path_factory, values: dict):
    """Generator for a module-scoped fixture: one token cache, prepared once for `values`, that the
    module's runs (and subprocesses, which inherit the environment) all read."""
    import os

    from jaxlm.data.sources import prepare

    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("JAXLM_CACHE_DIR")
    os.environ["JAXLM_CACHE_DIR"] = str(path)
    try:
        prepare(build_config(values))
        yield path
    finally:
        if old is None:
            os.environ.pop("JAXLM_CACHE_DIR")
        else:
            os.environ["JAXLM_CACHE_DIR"] = old
