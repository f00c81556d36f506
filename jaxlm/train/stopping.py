"""What stops a run early and cleanly: divergence and SIGTERM/SIGINT/SIGHUP (the wall-clock
budget is `jaxlm.train.budget`'s).

Each rule only *decides*; the training loop acts (skips the checkpoint, saves one,
writes the status), so no signal handler ever touches JAX or the run directory.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading

from jaxlm.errors import STOP_SIGNALS

log = logging.getLogger(__name__)


class DivergenceGuard:
    """Trips on a NaN/inf loss or gradient norm, or, after warmup, a train or validation loss
    above factor x the initial loss.

    The initial loss is the first update's loss (the untrained model's); it is
    saved in checkpoints so a resumed run judges by the same baseline.
    """

    def __init__(self, factor: float, warmup_iters: int, initial_loss: float | None = None):
        self.factor, self.warmup_iters = factor, warmup_iters
        self.initial_loss = initial_loss
        self.tripped: dict | None = None  # {"step", "loss", "reason"} of the first divergence seen

    def check(self, step: int, loss: float, grad_norm: float) -> bool:
        """Judge one update's train loss; True while training may go on."""
        if math.isfinite(loss) and math.isfinite(grad_norm) and self.initial_loss is None:
            self.initial_loss = loss
        if not math.isfinite(grad_norm):
            return self._trip(step, loss, f"gradient norm is {grad_norm}")
        return self._judge(step, loss, "train loss")

    def check_val(self, step: int, val_loss: float) -> bool:
        """Judge a validation loss the same way (its params are about to be checkpointed)."""
        return self._judge(step, val_loss, "validation loss")

    def _judge(self, step: int, loss: float, what: str) -> bool:
        if not math.isfinite(loss):
            return self._trip(step, loss, f"{what} is {loss}")
        if self.initial_loss is not None and step > self.warmup_iters and loss > self.factor * self.initial_loss:
            return self._trip(step, loss, f"{what} {loss:.4g} > {self.factor:g} x initial loss {self.initial_loss:.4g}")
        return True

    def _trip(self, step: int, loss: float, reason: str) -> bool:
        if self.tripped is None:
            self.tripped = {"step": step, "loss": loss, "reason": reason}
            log.warning("diverged at step %d: %s", step, reason)
        return False


class Aborted(KeyboardInterrupt):
    """The second stop signal: abort at once, without a checkpoint."""


class StopSignals:
    """Context manager: the first SIGTERM/SIGINT/SIGHUP sets `requested`; a second raises `Aborted` at once.

    Python swallows an exception raised where the main thread runs a callback it cannot raise from
    (a garbage-collection callback, a `__del__`) and prints it as "Exception ignored". Such an abort is
    silenced instead and kept in `aborted`; the loop raises it at its next step (`raise_if_aborted`).

    Once `finishing` is set (the last step is done and saved; only the run's final records are left to
    write) a signal is noted in `late` and the records are finished: a completed run stays completed
    (exit 0), whatever arrives while its summary, plots and log entry are written.

    Handlers are installed only in the main thread (Python allows no other) and
    the previous ones are restored on exit.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self):
        self.requested: str | None = None  # name of the first signal received
        self.signum: int = 0  # its number (0: none), what the loop's agreement carries to the other processes
        self._previous: dict = {}
        self.finishing = False
        self.late: str | None = None  # a signal that arrived while finishing
        self.aborted: str | None = None  # the second signal's name
        self._previous_hook = None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.finishing:
            self.late = self.late or name
            log.warning("%s received while writing the run's final records: finishing them first", name)
            return
        if self.requested is not None:
            self.aborted = name
            raise Aborted(f"second stop signal ({name})")
        self.requested, self.signum = name, signum
        log.warning(
            "%s received: finishing this step, saving a checkpoint, then stopping (send it again to abort at once)",
            name,
        )

    def raise_if_aborted(self) -> None:
        """Raise the second signal's abort where it was swallowed (see the class docstring)."""
        if self.aborted is not None:
            raise Aborted(f"second stop signal ({self.aborted})")

    def _unraisable(self, unraisable) -> None:
        if not isinstance(unraisable.exc_value, Aborted):
            self._previous_hook(unraisable)

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._previous_hook is not None:
            sys.unraisablehook, self._previous_hook = self._previous_hook, None
