"""Multi-process runs: start `jax.distributed` when the environment says so; only process 0 writes.

A run spans processes when it is launched with JAXLM_COORDINATOR,
JAXLM_NUM_PROCESSES and JAXLM_PROCESS_ID (launch/local_multiprocess.sh), by
`srun` with more than one task (SLURM), or with JAXLM_DISTRIBUTED=auto (TPU pod
slices and anything else `jax.distributed.initialize()` detects by itself).
Every process then runs the same program on its share of the global batch;
collectives (NCCL, ICI/DCN, Gloo on CPU) come from XLA. Process 0 alone writes
the run directory; the others get a `jaxlm.tracking.protocol.NullTracker`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

from jaxlm.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_COORDINATOR = "JAXLM_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "JAXLM_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXLM_PROCESS_ID"
ENV_AUTO = "JAXLM_DISTRIBUTED"  # "auto": let jax.distributed.initialize() read the cluster environment
EXPLICIT = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise UserError(f"environment variable {key}={env[key]!r}: expected an integer") from None


def launch_mode(env: Mapping[str, str] | None = None) -> str | None:
    """ "explicit", "auto" or None (a single-process run), from the environment."""
    env = os.environ if env is None else env
    present = [k for k in EXPLICIT if env.get(k)]
    if present:
        missing = [k for k in EXPLICIT if k not in present]
        if missing:
            raise UserError(f"environment variable {missing[0]}: required when {present[0]} is set")
        return "explicit" if _int_env(env, ENV_NUM_PROCESSES) > 1 else None
    if env.get(ENV_AUTO, "").lower() in ("1", "true", "auto"):
        return "auto"
    # srun with several tasks: SLURM_STEP_NUM_TASKS is set by srun, not by sbatch alone (so a
    # plain `python` inside a multi-task allocation stays single-process instead of hanging).
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS") or 1) > 1:
        return "auto"
    return None


def initialize_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Call `jax.distributed.initialize` if the run spans processes; True if it did.

    Must run before anything touches a JAX backend. Blocks until every process
    has joined, which also orders all processes' pre-flight checks before any write.
    """
    env = os.environ if env is None else env
    mode = launch_mode(env)
    if mode is None:
        return False
    import jax

    if mode == "explicit":
        jax.distributed.initialize(
            coordinator_address=env[ENV_COORDINATOR],
            num_processes=_int_env(env, ENV_NUM_PROCESSES),
            process_id=_int_env(env, ENV_PROCESS_ID),
        )
    else:
        jax.distributed.initialize()
    keep_cpu_collectives_out_of_the_cache(jax)
    log.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count())
    return True


def keep_cpu_collectives_out_of_the_cache(jax) -> None:
    """A multi-process run on the CPU compiles its steps afresh instead of loading them from the
    persistent compilation cache. With jaxlib 0.12.1, executables whose Gloo collectives come from
    the cache hang in their first collectives (docs/jax-versions.md has the reproduction;
    0.10.2, 0.11.2 and 0.12.0.1 are not affected). CPU steps compile in seconds, so this costs
    little; GPU and TPU runs keep the cache."""
    if jax.process_count() > 1 and jax.devices()[0].platform == "cpu":
        jax.config.update("jax_enable_compilation_cache", False)


def _jax_if_imported():
    """JAX if this process imported it. A multi-process run has (initialize_from_env); without it the
    process is alone, which a command that refuses its input at once can learn without the import."""
    return sys.modules.get("jax")


def is_primary() -> bool:
    """True on the process that writes the run directory (process 0, or the only one)."""
    jax = _jax_if_imported()
    return jax is None or jax.process_index() == 0


ERROR_BYTES = 1024  # the longest error message one process hands the others at start-up


def raise_if_any_failed(
    error: Exception | None, others: Callable[[str], Exception] = UserError, what: str = "start the run"
) -> None:
    """A check before a collective (start-up, a checkpoint save), agreed: every process learns whether
    any process's check failed, so that all of them stop together (one process leaving before a
    collective would leave the others waiting in it until a timeout). Raises `error` on the process
    that had it and `others(message)` naming the first failed process on the others; single-process
    runs just raise `error`."""
    jax = _jax_if_imported()
    if jax is not None and jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        text = str(error).encode("utf-8", "replace")[:ERROR_BYTES] if error is not None else b""
        local = np.zeros(ERROR_BYTES + 1, np.uint8)
        local[0], local[1 : 1 + len(text)] = error is not None, np.frombuffer(text, np.uint8)
        rows = np.asarray(multihost_utils.process_allgather(local))
        failed = [i for i in range(rows.shape[0]) if rows[i, 0]]
        if error is None and failed:
            message = rows[failed[0], 1:].tobytes().rstrip(b"\0").decode("utf-8", "ignore")
            raise others(f"process {failed[0]} cannot {what}: {message}")
    if error is not None:
        raise error


def primary_first(fn: Callable[[], T]) -> T:
    """Run `fn` on process 0, then (after a barrier) on the others: for work such as tokenizing into
    a shared cache, which the others then find done instead of racing to write it."""
    import jax

    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result = fn() if is_primary() else None
    multihost_utils.sync_global_devices("jaxlm.primary_first")
    return result if is_primary() else fn()
