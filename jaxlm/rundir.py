"""The run directory as the commands see it: `RunDir` reads a run's config back, and the checks that
keep runs safe (valid names, writable outputs, `--overwrite`, `--resume` configs).

The records inside a run (metrics, summary, plots, TensorBoard) are written by
`jaxlm.tracking`; checkpoints by `jaxlm.train.checkpoint`. Everything here either
checks (raising a one-line UserError before anything is written) or acts only
once all checks have passed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from jaxlm.config import FIELDS, Config, build_config, config_values, parse_override
from jaxlm.errors import ConfigError, UserError
from jaxlm.tracking.fmt import write_json

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._=-]+$")

# Keys a resumed run may change: they affect how long it runs and what it records,
# never the model, the data order or the optimizer trajectory up to the resumed step.
RESUME_SAFE_KEYS = frozenset(
    {
        "description",
        "max_iterations",
        "log_interval",
        "eval_interval",
        "checkpoint_interval",
        "keep_checkpoints",
        "eval_batches",
        "final_eval",
        "sample_tokens",
        "sample_prompt",
        "divergence_factor",
        "device",
        "max_wallclock_seconds",
        "wandb_project",
        "wandb_entity",
        "wandb_group",
        "wandb_mode",
    }
)


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
            raw = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
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


def parse_checkpoint(text: str) -> str | int:
    """A `--checkpoint` value: "best", "latest" or a step number."""
    if text.isdigit():
        return int(text)
    if text not in ("best", "latest"):
        raise UserError(f"--checkpoint {text!r}: expected best, latest or a step number")
    return text


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
        raise UserError(
            f"run directory '{run_dir}' already exists: choose another --name, "
            f"continue it with --resume {run_dir}, or replace it with --overwrite"
        )
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
    run = RunDir(run_dir, "--resume")
    saved = config_values(run.raw_config())
    changes = dict(parse_override(o) for o in overrides)
    for key, value in changes.items():
        if key not in RESUME_SAFE_KEYS and value != saved.get(key, FIELDS[key].default):
            raise ConfigError(
                f"config key '{key}': cannot change on --resume (it changes the model, data or "
                f"optimizer); safe keys: {', '.join(sorted(RESUME_SAFE_KEYS))}"
            )
    return build_config(saved, changes)
