"""Run-directory safety for the CLI: valid names, writable outputs, `--overwrite`, `--resume` configs.

Everything here either checks (raising a one-line UserError before anything is
written) or acts only once all checks have passed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from jaxlm.config import FIELDS, Config, build_config, parse_override
from jaxlm.errors import ConfigError, UserError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._=-]+$")

# Keys a resumed run may change: they affect how long it runs and what it records,
# never the model, the data order or the optimizer trajectory up to the resumed step.
RESUME_SAFE_KEYS = frozenset({
    "description", "max_iterations", "log_interval", "eval_interval", "checkpoint_interval", "keep_checkpoints",
    "eval_batches", "sample_tokens", "sample_prompt", "divergence_factor", "device", "max_wallclock_seconds",
})


def check_name(name: str) -> None:
    if name in (".", "..") or not NAME_PATTERN.match(name):
        raise UserError(f"--name '{name}': use only letters, digits and . _ = - (no path separators or '..')")


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


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not overwrite:
        raise UserError(f"run directory '{run_dir}' already exists: choose another --name, "
                        f"continue it with --resume {run_dir}, or replace it with --overwrite")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory '{run_dir}' exists and is not a directory")


def clear_for_new_run(run_dir: Path) -> None:
    """Remove an old run directory (`--overwrite`), renaming it first so a crash mid-delete leaves no half run."""
    if run_dir.exists():
        doomed = run_dir.with_name(f".{run_dir.name}.overwritten-{os.getpid()}")
        os.replace(run_dir, doomed)
        shutil.rmtree(doomed)


def resume_config(run_dir: str | Path, overrides: list[str]) -> Config:
    """The run's own config with `--set` overrides restricted to RESUME_SAFE_KEYS; ConfigError otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise UserError(f"--resume '{run_dir}': no such run directory")
    if not path.is_file():
        raise UserError(f"--resume '{run_dir}': no config.json there (is it a jaxlm run directory?)")
    saved = {k: v for k, v in json.loads(path.read_text()).items() if k in FIELDS}
    changes = dict(parse_override(o) for o in overrides)
    for key, value in changes.items():
        if key not in RESUME_SAFE_KEYS and value != saved.get(key, FIELDS[key].default):
            raise ConfigError(f"config key '{key}': cannot change on --resume (it changes the model, data or "
                              f"optimizer); safe keys: {', '.join(sorted(RESUME_SAFE_KEYS))}")
    return build_config(saved, changes)


def save_config(run_dir: Path, config: Config) -> None:
    """Rewrite a resumed run's config.json with its (safe) changes, keeping non-config keys such as `name`."""
    path = run_dir / "config.json"
    raw = json.loads(path.read_text())
    raw.update(config.to_dict())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    os.replace(tmp, path)
