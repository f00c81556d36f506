"""`python tests/train/agree_worker.py ARGS...`: `python -m jaxlm.launch ARGS...`, instrumented for the
agreement tests (tests/train/test_agreement.py, tests/test_slurm.py).

- On exit, one line on stderr: `agree-worker: process P of N ended at step S of M, exit E`, so a test
  sees where every process stopped (process 1+ write no run records).
- JAXLM_TEST_CLOCK_SCALE=P:k: process P's `time.perf_counter` runs k times as fast, so its own
  reading of the wall-clock budget differs from the others', as a skewed node's would.
"""

from __future__ import annotations

import os
import sys
import time

process, _, scale = os.environ.get("JAXLM_TEST_CLOCK_SCALE", "0:1").partition(":")
rank = os.environ.get("JAXLM_PROCESS_ID", os.environ.get("SLURM_PROCID", "0"))
if rank == process and float(scale) != 1:
    scale = float(scale)
    _real, _t0 = time.perf_counter, time.perf_counter()
    time.perf_counter = lambda: _t0 + (_real() - _t0) * scale

from jaxlm import launch  # noqa: E402

_train = launch.train


def _reporting_train(trainer, *args):
    import jax

    code = _train(trainer, *args)
    print(
        f"agree-worker: process {jax.process_index()} of {jax.process_count()} ended at step {trainer.step} "
        f"of {trainer.c.max_iterations}, exit {code}",
        file=sys.stderr,
        flush=True,
    )
    return code


launch.train = _reporting_train
if __name__ == "__main__":
    sys.exit(launch.main(sys.argv[1:]))
