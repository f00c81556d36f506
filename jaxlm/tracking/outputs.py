"""The one check every command makes before writing a file the user named (`export --out`,
`compare -o`, `sweep --report`, the tracking API's run directory): it never replaces
what the command did not create.

* an existing file is refused unless the caller passes `force` (the `--force` flags);
* a directory where a file is expected is called a directory;
* a path inside a run directory, or an experiment log, is refused even with `force`:
  those are records other commands own (a run's config.json, metrics, summary);
* a folder that cannot be written is named before anything is produced.

Standard library only (tracking room), so commands and the tracking API share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from jaxlm.tracking.runs import is_run_dir

PROTECTED_NAMES = ("EXPERIMENT_LOG.md",)


class OutputError(ValueError):
    """An output path the command must not or cannot write; the message is one line naming it."""


def inside_run_dir(path: Path) -> Path | None:
    """The run directory that holds `path` (at any depth), or None."""
    for parent in Path(path).absolute().parents:
        if is_run_dir(parent) or (parent / "config.json").is_file() and (parent / "summary.json").is_file():
            return parent
    return None


def check_output_file(path: str | Path, *, force: bool = False, flag: str = "--out") -> Path:
    """`path` if a new file may be written there; OutputError (one line, naming `flag`) otherwise."""
    path = Path(path)
    if path.name in PROTECTED_NAMES:
        raise OutputError(f"{flag} '{path}': that is an experiment log; refusing to write over it")
    run = inside_run_dir(path)
    if run is not None:
        raise OutputError(f"{flag} '{path}': inside run directory '{run}', whose records are not to be replaced")
    if path.is_dir():
        raise OutputError(f"{flag} '{path}': is a directory (expected a file name)")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputError(f"{flag} '{path}': already exists (choose another name, or pass --force to replace it)")
    folder = path.absolute().parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} '{path}': '{existing}' is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} '{path}': cannot write in '{existing}' (permission denied)")
    return path


def check_output_files(paths: Iterable[str | Path], *, force: bool = False, flag: str = "--out") -> None:
    """`check_output_file` for each of a command's outputs, all before any is written."""
    for path in paths:
        check_output_file(path, force=force, flag=flag)
