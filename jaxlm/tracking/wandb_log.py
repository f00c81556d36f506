"""Weights & Biases as a second sink beside TensorBoard (optional extra: `uv sync --extra wandb`).

Turned on by the config key `wandb_project`; `ExperimentTracker` calls it as it calls
`TensorBoardLog`. It logs the same scalars under the same names as TensorBoard, with
`step` (the training step, also W&B's own step) and `wallclock_s` defined as x-axes, the
resolved config, the summary fields and the run's status at the end, and the generated
samples as a table. Mode: the config's `wandb_mode`, else online when an API key is
configured (WANDB_API_KEY or a netrc entry) and offline otherwise, so nothing blocks on
the network; an offline run lies in `<run>/wandb/offline-run-*` (`wandb sync` uploads it).

A run keeps its W&B id in `<run>/wandb.json` with the last step it logged: a resumed
run continues the same W&B run (same id, `resume="allow"`) and skips the rows it
already logged, so the steps redone after a resume leave no duplicate points (training
is deterministic, so their losses are the ones already there).
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxlm.tracking.fmt import as_float, write_json
from jaxlm.tracking.tensorboard import FINAL_METRIC_TAGS, SCALAR_TAGS

STATE_FILE = "wandb.json"
X_AXES = ("step", "wallclock_s")
SUMMARY_SKIP = ("name",)  # summary fields that W&B shows elsewhere


def missing_package() -> str | None:
    """Why W&B cannot be used here (None when it can): the optional extra is not installed."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return "W&B logging needs the wandb package: install it with `uv sync --extra wandb` (or set it to null)"
    return None


def has_api_key() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def new_run_id() -> str:
    """A W&B run id: 8 random lowercase letters and digits (the form W&B itself generates)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def resolve_mode(config: Mapping[str, Any]) -> str:
    return config.get("wandb_mode") or ("online" if has_api_key() else "offline")


class WandbLog:
    """One W&B run per run directory; `resumed` reopens the id stored in `<run>/wandb.json`."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], name: str, resumed: bool):
        import wandb

        self.run_dir = Path(run_dir)
        state_path = self.run_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if resumed and state_path.is_file() else {}
        self.state = {"id": state.get("id") or new_run_id(), "logged_through": state.get("logged_through")}
        self.mode = resolve_mode(config)
        self.run = wandb.init(
            project=config["wandb_project"],
            entity=config.get("wandb_entity"),
            group=config.get("wandb_group"),
            name=name,
            id=self.state["id"],
            resume="allow",
            dir=str(self.run_dir),
            mode=self.mode,
            config=dict(config),
            notes=config.get("description") or None,
            settings=wandb.Settings(console="off", silent=True, save_code=False),
        )
        for axis in X_AXES:
            self.run.define_metric(axis)
        for tag in SCALAR_TAGS.values():
            self.run.define_metric(tag, step_metric="step")
        self.samples: list[list[Any]] = []
        self._save_state()

    def _save_state(self) -> None:
        write_json(self.run_dir / STATE_FILE, {**self.state, "mode": self.mode})

    def log_row(self, row: Mapping[str, Any]) -> None:
        """The row's scalars under TensorBoard's tags at W&B step = the training step; a step already
        logged before a resume is skipped."""
        step = int(row["step"])
        if self.state["logged_through"] is not None and step <= self.state["logged_through"]:
            return
        data: dict[str, float] = {"step": step}
        wall = as_float(row.get("wallclock_s"))
        if wall is not None:
            data["wallclock_s"] = wall
        for column, tag in SCALAR_TAGS.items():
            value = as_float(row.get(column))
            if value is not None:
                data[tag] = value
        self.run.log(data, step=step)
        self.state["logged_through"] = step
        self._save_state()

    def log_sample(self, step: int, prompt: str, text: str) -> None:
        """All samples so far as one table (W&B tables are immutable: each log is a new version)."""
        import wandb

        self.samples.append([step, prompt, text])
        self.run.log({"samples": wandb.Table(columns=["step", "prompt", "text"], data=list(self.samples))})

    def finish(self, summary: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        """Summary fields (final metrics under TensorBoard's `final/...` tags as well), the final config
        and the status; exit code 0 only for a completed run."""
        self.run.config.update(dict(config), allow_val_change=True)
        for key, value in summary.items():
            if key not in SUMMARY_SKIP and value is not None:
                self.run.summary[key] = value
        for field, tag in FINAL_METRIC_TAGS.items():
            value = as_float(summary.get(field))
            if value is not None:
                self.run.summary[tag] = value
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
