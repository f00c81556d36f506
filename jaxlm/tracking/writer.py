"""Background writers for a run's records, so that writing them never blocks the training step.

A `Lane` is one daemon thread that runs the jobs handed to it in the order they came. The tracker
keeps two: the row lane (metrics.csv, metrics.jsonl, summary.json, samples.txt, TensorBoard, W&B:
quick writes, in order, so a row is on disk milliseconds after it was logged) and the refresh lane
(metrics.json and the two plots: slow, and only the newest rows matter, so a refresh asked for
while another still waits replaces it). Every job is a snapshot: the caller hands over finished
values, the lane never reads state the caller goes on changing.

A job marked `essential` (the metric files, the summary) that fails keeps its exception for the
caller, raised by `check` (the tracker calls it at the next row and at the end), so a full disk
still fails the run; any other job's failure is one warning line (plots, TensorBoard and W&B are
records, not the run). `drain` waits for everything handed over so far; the process's exit drains
too (atexit), so a crash or a stop signal that ends the process normally loses no queued row.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_open_lanes: weakref.WeakSet[Lane] = weakref.WeakSet()


def safely(what: str, fn: Callable[[], Any]) -> None:
    """Run a record's job: a failure is logged as one warning line, never raised."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        log.warning("could not write %s: %s: %s", what, type(e).__name__, e)


class Lane:
    """One thread running jobs in order; `latest_only` keeps just the newest job not yet started.
    `threaded=False` runs every job at once in the caller's thread (an essential job's failure is
    then raised there and then): the same calls, for a tracker whose caller wants files written
    before each call returns."""

    def __init__(self, name: str, latest_only: bool = False, threaded: bool = True):
        self.name, self.latest_only = name, latest_only
        self._jobs: collections.deque[tuple[str, Callable[[], Any], bool]] = collections.deque()
        self._cv = threading.Condition()
        self._busy, self._closed = False, not threaded
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()
            _open_lanes.add(self)

    def submit(self, what: str, job: Callable[[], Any], essential: bool = False) -> None:
        """Hand `job` over (`what` names it in a warning). Once the lane is closed, it runs at once here."""
        with self._cv:
            if not self._closed:
                if self.latest_only:
                    self._jobs.clear()
                self._jobs.append((what, job, essential))
                self._cv.notify_all()
                return
        self._run(what, job, essential)

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                what, job, essential = self._jobs.popleft()
                self._busy = True
            try:
                self._run(what, job, essential)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _run(self, what: str, job: Callable[[], Any], essential: bool) -> None:
        if not essential:
            safely(what, job)
            return
        if threading.current_thread() is not self._thread:
            job()  # in the caller's thread: its failure is the caller's at once
            return
        try:
            job()
        except Exception as e:  # noqa: BLE001 - kept for the caller (see check)
            with self._cv:
                self._failure = self._failure or e

    def drain(self) -> None:
        """Wait until every job handed over so far has run."""
        with self._cv:
            self._cv.wait_for(lambda: not self._jobs and not self._busy)

    def busy(self) -> bool:
        """Whether a job handed over is still waiting or running."""
        with self._cv:
            return bool(self._jobs) or self._busy

    def check(self) -> None:
        """Raise (once) the first failure of an essential job."""
        with self._cv:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Drain, then stop the thread; later jobs run in the caller's thread."""
        self.drain()
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        _open_lanes.discard(self)


@atexit.register
def _drain_at_exit() -> None:
    """A process that ends without closing its tracker (a crash) still writes what it handed over."""
    for lane in list(_open_lanes):
        lane.close()
