"""Errors a user can cause, and the process exit codes the CLIs map them to.

Each error's message is one line that names what is wrong (a config key, a file).
"""

import signal
import stat
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected exception inside training
EXIT_USAGE = 2  # bad config, bad data, bad arguments: nothing was written
EXIT_DIVERGED = 3  # the loss went NaN/inf or above divergence_factor x initial; best checkpoint kept
EXIT_INTERRUPTED = 75  # SIGTERM/SIGINT: checkpoint saved, `--resume` continues (sysexits EX_TEMPFAIL)
EXIT_ABORTED = 130  # a second SIGINT/SIGTERM: stopped at once, no checkpoint of the current step (128 + SIGINT)

# The signals that stop a run cleanly. SIGHUP (a closed terminal or SSH session) is handled like SIGTERM:
# checkpoint, status interrupted, exit 75; only SIGINT (Ctrl-C, the user) is told apart where it matters.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class UserError(ValueError):
    """A problem the user can fix; the CLI prints the message and exits with EXIT_USAGE."""


class ConfigError(UserError):
    """A bad config key, value or file."""


class DataError(UserError):
    """A missing, malformed or incompatible data or tokenizer file."""


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as a regular file, for a message ("does not exist", "is a directory, not
    a file", "is a FIFO, not a regular file"), or None when it can. A FIFO is not missing: reading one
    would wait for a writer forever."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        return f"is {kind}, not a regular file"
    return None
