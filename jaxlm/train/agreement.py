"""Decisions every process takes together: stop on a signal, stop at the wall-clock budget, the
size of a wall-clock schedule.

A multi-process run must choose the same next collective on every process. A
stop signal, however, reaches each process on its own (a scheduler's preemption
across nodes is milliseconds apart, or reaches one node only), and each process
reads its own clock; a process that left the loop to save (a collective) while
another dispatched the next train step (another collective) hangs both. So the
loop never acts on its own flags: `Agreement.exchange` all-reduces (max) a small
vector of local flags over every device of every process, and the loop acts on
the agreed vector, which is the same everywhere.

The training loop agrees only at the steps where it reads its metrics anyway
(log, evaluation and checkpoint steps, the same step numbers on every process):
`agree` all-reduces and waits, so the agreed flags of step s are acted on at
step s by everyone, at one tiny collective per log interval. `exchange` is the
pipelined form (dispatched now, read at the next exchange: no host wait of its
own), which `scripts/bench_agreement.py` measures per step. A single-process run
has nothing to agree on: both hand its flags back at once and touch no device.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


class Agreement:
    """All-reduce (max) of a fixed-length float vector of per-process flags: now (`agree`) or one
    exchange late (`exchange`)."""

    def __init__(self, size: int, *, force: bool = False):
        self.size = size
        self.active = force or jax.process_count() > 1  # force: the benchmark measures it on one process
        self._pending: jax.Array | None = None
        if self.active:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(np.array(jax.devices()), ("p",))
            self._in = NamedSharding(mesh, PartitionSpec("p"))
            self._local_devices = len(mesh.local_devices)
            self._reduce = jax.jit(lambda x: x.max(axis=0), out_shardings=NamedSharding(mesh, PartitionSpec()))

    def exchange(self, flags: Sequence[float]) -> np.ndarray:
        """Contribute this step's `flags`; return the agreed (max over processes) flags of the previous
        exchange, zeros on the first. Single-process: `flags` themselves, at once."""
        local = np.asarray(flags, dtype=np.float32)
        assert local.shape == (self.size,)
        if not self.active:
            return local
        agreed = self.result()
        rows = np.broadcast_to(local, (self._local_devices, self.size))
        self._pending = self._reduce(jax.make_array_from_process_local_data(self._in, rows))
        return agreed

    def agree(self, flags: Sequence[float]) -> np.ndarray:
        """The max over processes of this step's `flags`, now (waits for the device queue and the
        other processes). Single-process: `flags` themselves."""
        local = np.asarray(flags, dtype=np.float32)
        assert local.shape == (self.size,) and self._pending is None
        if not self.active:
            return local
        rows = np.broadcast_to(local, (self._local_devices, self.size))
        return np.asarray(self._reduce(jax.make_array_from_process_local_data(self._in, rows)))

    def result(self) -> np.ndarray:
        """The agreed flags of the latest exchange not yet read (zeros if none); waits for it."""
        if self._pending is None:
            return np.zeros(self.size, np.float32)
        agreed, self._pending = np.asarray(self._pending), None
        return agreed


def agree_on_process_0(values: Sequence[float]) -> np.ndarray:
    """Process 0's `values` on every process (blocking; for one-off decisions such as the size of a
    wall-clock schedule, which each process would otherwise compute from its own timings)."""
    local = np.asarray(values, dtype=np.float64)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(local))
