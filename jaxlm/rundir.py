"""The run directory as the commands see it: `RunDir` reads a run's config back, and the checks that
keep runs safe (valid names, writable outputs, `--overwrite`, `--resume` configs).

The records inside a run (metrics, summary, plots, TensorBoard) are written by
`jaxlm.tracking`; checkpoints by `jaxlm.train.checkpoint`. Everything here either
checks (raising a one-line UserError before anything is written) or acts only
once all checks have passed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from jaxlm.config import FIELDS, RESUME_ROLES, Config, Resume, build_config, config_values, loads_strict, parse_override
from jaxlm.errors import ConfigError, UserError
from jaxlm.tracking import runlock
from jaxlm.tracking.fmt import write_json

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._=-]+$")


class RunDir:
    """A run directory `runs/<name>/`: where its files are, and its config read back as a Config."""

    CONFIG = "config.json"

    def __init__(self, path: str | Path, what: str = "--run"):
        self.path = Path(path)
        self.what = what  # the flag that named it, for error messages

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    def raw_config(self) -> dict:
        """config.json as stored (config keys and run metadata); UserError when missing or unreadable."""
        if not self.path.is_dir():
            raise UserError(f"{self.what} '{self.path}': no such run directory")
        if not self.config_path.is_file():
            raise UserError(f"{self.what} '{self.path}': no config.json there (is it a jaxlm run directory?)")
        try:
            raw = loads_strict(self.config_path.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as e:
            raise UserError(f"{self.what} '{self.path}': config.json is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{self.what} '{self.path}': config.json does not hold a JSON object")
        return raw

    def config(self, overrides: dict | None = None) -> Config:
        """The validated Config the run was started with (run metadata such as `name` left out)."""
        return build_config(config_values(self.raw_config()), overrides)

    def save_config(self, config: Config) -> None:
        """Rewrite config.json with `config`'s values, keeping the run metadata (atomic)."""
        raw = self.raw_config()
        raw.update(config.to_dict())
        write_json(self.config_path, raw)


NO_CHECKPOINT = "interrupted before the first checkpoint"


def parse_checkpoint(text: str) -> str | int:
    """A `--checkpoint` value: "best", "latest" or a step number."""
    if text.isdigit():
        return int(text)
    if text not in ("best", "latest"):
        raise UserError(f"--checkpoint {text!r}: expected best, latest or a step number")
    return text


MAX_NAME_BYTES = 200  # a file name is at most 255 bytes; the rest is room for `.<name>.tmp-<pid>` and the like


def check_name(name: str) -> None:
    if name in (".", "..") or not NAME_PATTERN.match(name):
        raise UserError(f"--name '{name}': use only letters, digits and . _ = - (no path separators or '..')")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UserError(f"--name '{name[:40]}...': {len(name.encode())} bytes long, at most {MAX_NAME_BYTES}")


def check_writable(output_dir: str | Path) -> None:
    """UserError unless a run directory could be created under `output_dir` (probe leaves nothing behind)."""
    path = Path(output_dir).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--output-dir '{output_dir}': '{existing}' is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".jaxlm-probe-", dir=existing))
    except OSError as e:
        raise UserError(f"--output-dir '{output_dir}': cannot write in '{existing}' ({e.strerror})") from None


RUN_FILES = ("summary.json", "metrics.csv", "metrics.jsonl")  # with config.json: what makes a jaxlm run


def is_jaxlm_run(path: Path) -> bool:
    """A directory a jaxlm run wrote: its config.json plus a summary or metrics file."""
    return path.is_dir() and (path / RunDir.CONFIG).is_file() and any((path / f).is_file() for f in RUN_FILES)


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """The cheap checks before compile (the claim itself, `claim_run`, is atomic and comes later)."""
    if not run_dir.exists() and not run_dir.is_symlink() or _abandoned_claim(run_dir):
        return
    if not overwrite:
        raise UserError(f"run directory '{run_dir}' already exists: {_ways_on(run_dir)}")
    if run_dir.is_symlink() or not is_jaxlm_run(run_dir):
        raise UserError(
            f"--overwrite: '{run_dir}' is not a jaxlm run directory (no config.json with summary.json or "
            f"metrics.csv); refusing to delete it"
        )
    who = runlock.holder(run_dir)
    if who is not None:
        raise UserError(f"--overwrite: run directory '{run_dir}' is in use by {who}")


def _ways_on(run_dir: Path) -> str:
    """What to do about an existing run directory, never advising to delete a run worth keeping: only
    a jaxlm run that saved no checkpoint is offered --overwrite (there is nothing to resume)."""
    from jaxlm.tracking.runs import saved_checkpoint_steps

    if not is_jaxlm_run(run_dir) or run_dir.is_symlink():
        return "it is not a jaxlm run; choose another --name or --output-dir"
    if saved_checkpoint_steps(run_dir):
        return f"choose another --name, or continue it with --resume {run_dir} (--set max_iterations=N: longer)"
    return "it saved no checkpoint; choose another --name, or start it again with --overwrite"


def _abandoned_claim(run_dir: Path) -> bool:
    """A directory holding nothing but a free lock: a launch killed before its run began. It is
    taken over by the next launch of that name, as if it were not there."""
    try:
        return (
            run_dir.is_dir()
            and not run_dir.is_symlink()
            and {p.name for p in run_dir.iterdir()} == {runlock.LOCK_FILE}
            and runlock.holder(run_dir) is None
        )
    except OSError:
        return False


class RunClaim:
    """This process's ownership of a run directory: the lock, and what to undo if the run never starts.

    A new run's directory is created with one `mkdir` (atomic: of two launches of one name, one
    gets it) and locked at once. `--overwrite` locks the old run first and replaces it only in
    `replace_old()`, after every check and the compile have passed."""

    def __init__(self, run_dir: Path, lock: runlock.RunLock, created: bool, replaces: bool):
        self.run_dir, self.lock, self.created, self.replaces = run_dir, lock, created, replaces
        self.made_parents: Path | None = None  # the topmost folder above run_dir that claim_run created

    def replace_old(self) -> None:
        """--overwrite: move the old run aside, make and lock a fresh directory, then delete the old one."""
        if not self.replaces:
            return
        doomed = self.run_dir.with_name(f".{self.run_dir.name}.overwritten-{os.getpid()}")
        os.replace(self.run_dir, doomed)
        old = self.lock
        try:
            os.mkdir(self.run_dir)
        except FileExistsError:
            raise UserError(f"run directory '{self.run_dir}' was created by another process meanwhile") from None
        self.lock, self.created, self.replaces = _acquire(self.run_dir), True, False
        old.release()
        shutil.rmtree(doomed, ignore_errors=True)

    def abandon(self) -> None:
        """The run never started: remove the directory if this process created it and it holds only the lock."""
        try:
            if self.created and self.lock.held and {p.name for p in self.run_dir.iterdir()} <= {runlock.LOCK_FILE}:
                (self.run_dir / runlock.LOCK_FILE).unlink(missing_ok=True)
                self.run_dir.rmdir()
                folder = self.run_dir.absolute().parent
                while self.made_parents and folder != self.made_parents.parent:  # folders made for it
                    folder.rmdir()
                    folder = folder.parent
        except OSError:
            pass
        self.lock.release(remove=not self.replaces)  # an --overwrite's old run keeps its lock file


def _acquire(run_dir: Path) -> runlock.RunLock:
    try:
        return runlock.acquire(run_dir)
    except runlock.RunInUseError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"run directory '{run_dir}': cannot lock it ({e.strerror})") from None


def claim_run(run_dir: Path, *, resume: bool = False, overwrite: bool = False) -> RunClaim:
    """Own `run_dir` for this process's life: create it atomically (a new run) or lock the existing
    one (`--resume`, `--overwrite`); UserError naming the holder when another process has it."""
    if resume:
        if not run_dir.is_dir():
            raise UserError(f"--resume '{run_dir}': no such run directory")
        return RunClaim(run_dir, _acquire(run_dir), created=False, replaces=False)
    made_parents = None
    for folder in reversed(run_dir.absolute().parents):
        if not folder.exists():
            made_parents = folder
            break
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(run_dir)
    except FileExistsError:
        check_new_run_dir(run_dir, overwrite)  # raises unless --overwrite of an idle jaxlm run
        lock = _acquire(run_dir)
        if {p.name for p in run_dir.iterdir()} == {runlock.LOCK_FILE}:  # an abandoned claim, now ours
            return RunClaim(run_dir, lock, created=True, replaces=False)
        if not is_jaxlm_run(run_dir):  # changed between the check and the lock
            lock.release()
            raise UserError(f"--overwrite: '{run_dir}' is not a jaxlm run directory; refusing to delete it") from None
        return RunClaim(run_dir, lock, created=False, replaces=True)
    except OSError as e:
        raise UserError(f"run directory '{run_dir}': cannot create it ({e.strerror})") from None
    claim = RunClaim(run_dir, _acquire(run_dir), created=True, replaces=False)
    claim.made_parents = made_parents
    return claim


def resume_config(run_dir: str | Path, overrides: list[str]) -> Config:
    """The run's own config with `--set` overrides; ConfigError for a change of a key declared Identity[...]
    in jaxlm/config/fields.py (Safe and Layout keys may change)."""
    run = RunDir(run_dir, "--resume")
    saved = config_values(run.raw_config())
    changes = dict(parse_override(o) for o in overrides)
    for key, value in changes.items():
        if RESUME_ROLES.get(key) is Resume.IDENTITY and value != saved.get(key, FIELDS[key].default):
            changeable = sorted(k for k, role in RESUME_ROLES.items() if role is not Resume.IDENTITY)
            raise ConfigError(
                f"config key '{key}': cannot change on --resume (it changes the model, data or "
                f"optimizer); keys that may change: {', '.join(changeable)}"
            )
    return build_config(saved, changes)
