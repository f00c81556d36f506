"""Process-wide settings for the jaxlm commands.

* Huge pages for XLA:CPU's host buffers: see jaxlm/hostenv.py, applied when the
  `jaxlm` package is imported by `python -m jaxlm.<command>`.
* The compilation cache (`JAXLM_COMPILATION_CACHE=0` turns it off). Compiled
  executables are kept under `<JAXLM_CACHE_DIR or ~/.cache/jaxlm>/xla`, so a
  second run of the same shape skips XLA compilation. A directory that
  JAX_COMPILATION_CACHE_DIR already names is left as it is.

`python -m jaxlm.launch --config FILE --dry-run` prints what is in effect.
"""

from __future__ import annotations

import os

from jaxlm.hostenv import wants_host_tuning


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at jaxlm's cache directory; returns the directory in use."""
    import jax

    if os.environ.get("JAXLM_COMPILATION_CACHE", "1") == "0":
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    from jaxlm.data.sources import cache_root

    path = str(cache_root() / "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every executable: on the CPU the steps of small models compile in about a second, under
    # JAX's default 1 s threshold, and all of that is start-up time a re-run can skip.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return path


def prepare_process() -> None:
    """Called at the top of each command's main, before the first JAX computation."""
    enable_compilation_cache()


def describe_process() -> str:
    """One line on what is in effect, for `python -m jaxlm.launch --dry-run`."""
    import jax

    return (f"runtime: GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')} (huge pages wanted: "
            f"{wants_host_tuning()}); compilation cache: {jax.config.jax_compilation_cache_dir or 'off'}")


