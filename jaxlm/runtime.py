"""Process setup shared by every jaxlm command: `run_command(main)` is each command's entry.

* Huge pages for XLA:CPU's host buffers (`JAXLM_HOST_MALLOC=system` turns this
  off). XLA:CPU allocates each step's temporary buffers with one large
  posix_memalign and frees them when the step ends; glibc serves allocations that
  large with a fresh mmap, so every step page-faults that memory in again, 4 KiB
  at a time. glibc's `glibc.malloc.hugetlb=1` tunable asks for transparent huge
  pages on those mappings, which removes most of the faults without changing
  numerics or memory use (docs/performance.md has the measurements). glibc reads
  tunables only when a process starts, so a command that finds the tunable
  missing re-executes itself with it: same PID, same arguments. Your own scripts
  and notebooks get it by starting Python with
  `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment.
* The compilation cache (`JAXLM_COMPILATION_CACHE=0` turns it off). Compiled
  executables are kept under `<JAXLM_CACHE_DIR or ~/.cache/jaxlm>/xla`, so a
  second run of the same shape skips XLA compilation. A directory that
  JAX_COMPILATION_CACHE_DIR already names is left as it is.

Importing jaxlm does neither: only `run_command` (a command started from the
shell, `python -m jaxlm.<command>` or the `jaxlm` console script) changes the
process. `python -m jaxlm.launch --config FILE --dry-run` prints what is in effect.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


class CommandParser(argparse.ArgumentParser):
    """argparse for every jaxlm command: a usage error is one line on stderr, exit 2, like every other
    bad input (argparse's own prints the whole usage block first). `--help` is unchanged. Sub-commands
    made with `add_subparsers` are of this class too (argparse copies the parser's class)."""

    def error(self, message: str):
        from jaxlm.errors import EXIT_USAGE

        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def host_tuning_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` (default: this process's) with the huge-pages tunable added to GLIBC_TUNABLES."""
    env = dict(os.environ if environ is None else environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):  # keep a user's own choice
        env["GLIBC_TUNABLES"] = ":".join(tunables + [HUGE_PAGES_TUNABLE])
    return env


def wants_host_tuning() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("JAXLM_HOST_MALLOC", "hugepages") != "system"


def reexec_with_host_tuning() -> None:
    """Re-execute this process, same arguments, with the huge-pages tunable added, once; else do nothing.

    Only for a command started from the shell (`run_command`): a test or notebook that calls a
    command's `main` keeps its process."""
    if not wants_host_tuning():
        return
    env = host_tuning_env()
    if env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES"):
        return  # already in effect (or the user chose their own hugetlb setting)
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at jaxlm's cache directory; returns the directory in use.

    Before JAX is imported this only sets JAX's own environment variables (read when it is imported),
    so a command that refuses its input at once (a run directory in use, a bad config) does so without
    paying for the JAX import; after it, JAX's config is updated."""
    if os.environ.get("JAXLM_COMPILATION_CACHE", "1") == "0":
        return None
    jax = sys.modules.get("jax")
    current = jax.config.jax_compilation_cache_dir if jax else os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if current:
        return current
    from jaxlm.data.cache import cache_root

    path = str(cache_root() / "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # JAXLM_CACHE_DIR is a file or read-only: run without the cache (the data says why)
        return None
    # Cache every executable: on the CPU the steps of small models compile in about a second, under
    # JAX's default 1 s threshold, and all of that is start-up time a re-run can skip.
    if jax is None:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    else:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return path


def run_command(main: Callable[[], int]) -> None:
    """Run a command's `main` as the process: host tuning (re-executing once, before JAX is imported)
    and the compilation cache, then exit with main's code. After a second stop signal (exit 130)
    the process exits at once, without waiting for background checkpoint writers. After any failure,
    stderr is closed once main's one line is written, so teardown noise never follows it."""
    from jaxlm.errors import EXIT_ABORTED

    reexec_with_host_tuning()
    enable_compilation_cache()
    sys.unraisablehook = quiet_abandoned_readers(sys.unraisablehook)
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0:
        # The failure has been reported in its one line. Readers that Orbax and tensorstore abandoned (a
        # torn checkpoint's array reads) finish in their own threads while the interpreter shuts down and
        # print a traceback each ("Event loop is closed", "Exception ignored in: <coroutine ...>").
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    if code == EXIT_ABORTED:
        os._exit(code)
    sys.exit(code)


def quiet_abandoned_readers(hook: Callable) -> Callable:
    """`hook` (sys.unraisablehook) without the noise of Orbax's and tensorstore's abandoned async readers:
    when a read fails (a torn checkpoint's arrays), the readers still in flight post their results to an
    event loop that is already closed, and Python would print each one's traceback ("Event loop is closed",
    "Exception ignored in: <coroutine ...>") around the command's one error line, at any moment before
    the process ends. Everything else goes to `hook`."""
    import inspect

    def quiet(unraisable) -> None:
        closed_loop = isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
            unraisable.exc_value
        )
        if not (closed_loop or inspect.iscoroutine(unraisable.object)):
            hook(unraisable)

    return quiet


@contextlib.contextmanager
def exit_on_signal(what: str, cleanup: Callable[[], None] | None = None, outcome: str = "nothing was written"):
    """Inside the block, SIGINT/SIGTERM/SIGHUP end the process at once with one line: for phases (data
    preparation, compilation) that hold no state worth saving, where a KeyboardInterrupt unwinding
    through JAX or a Rust tokenizer trainer prints tracebacks or crashes. Ctrl-C exits 130 (the user
    stopped it); SIGTERM and SIGHUP exit 75 (a scheduler or a closed terminal stopped it: a preempted
    SLURM job's script requeues on 75, and its `--resume-if-exists` starts the run again). `cleanup`
    removes what the command created so far; `os._exit` skips XLA's teardown of half-built
    executables (the source of the crashes)."""
    from jaxlm.errors import EXIT_ABORTED, EXIT_INTERRUPTED, STOP_SIGNALS

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if cleanup is not None:
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - exiting anyway; the message below is what matters
                pass
        os.write(2, f"\nerror: {signal.Signals(signum).name} during {what}: stopped; {outcome}\n".encode())
        os._exit(EXIT_ABORTED if signum == signal.SIGINT else EXIT_INTERRUPTED)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class ChildStops:
    """Stop signals of a command that runs jaxlm commands as children, one at a time (the sweep's points).

    Inside the block, a SIGINT, SIGTERM or SIGHUP sent to this process (Ctrl-C, `kill PID`, a closed
    terminal) is passed once to the running child's process group, so the child saves a checkpoint and
    stops (a second signal aborts it, as for a launch); `received` names the first, and the caller starts
    nothing more. Each child runs in its own process group (a Ctrl-C reaches it only through this
    process, never twice) and, on Linux, is sent SIGTERM should this process die without passing a
    signal on (`kill -9`): no child trains on as an orphan."""

    def __init__(self):
        self.received: str | None = None
        self.child: subprocess.Popen | None = None
        self._previous: dict = {}

    def __enter__(self) -> ChildStops:
        from jaxlm.errors import STOP_SIGNALS

        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signum)

    def run(self, command: list[str]) -> int:
        """Run `command` to its end (its output goes straight to this process's); its exit code."""
        self.child = subprocess.Popen(command, process_group=0, preexec_fn=_stop_with_parent)
        try:
            return self.child.wait()
        finally:
            self.child = None


def _stop_with_parent() -> None:
    """In a child, before it runs: SIGTERM when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def describe_process() -> str:
    """One line on what is in effect, for `python -m jaxlm.launch --dry-run`."""
    import jax

    return (
        f"runtime: GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')} (huge pages wanted: "
        f"{wants_host_tuning()}); compilation cache: {jax.config.jax_compilation_cache_dir or 'off'}"
    )
