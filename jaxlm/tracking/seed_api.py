"""The seed project's tracking API, kept for its users (a PyTorch loop can use it: no JAX here).

    config = ExperimentConfig(experiment_name="baseline", d_model=512, ...)
    logger = ExperimentLogger("baseline", config, "runs")
    logger.log_training_step(step, train_loss, learning_rate, tokens_per_sec)
    logger.log_validation_step(step, val_loss, val_perplexity)
    logger.finalize()
    compare_experiments(["runs/a", "runs/b"], "comparison.png")

Everything goes through the same ExperimentTracker the jaxlm training loop uses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxlm.tracking.compare import compare_runs
from jaxlm.tracking.tracker import ExperimentTracker


@dataclasses.dataclass
class ExperimentConfig:
    """The seed's experiment fields: a name and id plus its config keys (same names, same meaning)."""

    experiment_name: str = "experiment"
    experiment_id: str = ""  # default: <experiment_name>_<YYYYmmdd_HHMMSS>
    description: str = ""
    dataset: str = "tinystories"
    vocab_size: int = 10000
    context_length: int = 256
    d_model: int = 512
    num_layers: int = 4
    num_heads: int = 16
    d_ff: int | None = 1344
    rope_theta: float = 10000.0
    batch_size: int = 32
    max_iterations: int = 5000
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    train_data_path: str | None = None
    val_data_path: str | None = None
    device: str | None = None
    dtype: str = "float32"
    seed: int = 0
    log_interval: int = 10
    eval_interval: int = 500
    checkpoint_interval: int = 1000

    def __post_init__(self) -> None:
        if not self.experiment_id:
            self.experiment_id = f"{self.experiment_name}_{dt.datetime.now():%Y%m%d_%H%M%S}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ExperimentLogger:
    """Tracker + plots + a Python `logging` logger per experiment that also writes `<run dir>/train.log`."""

    def __init__(
        self,
        experiment_name: str,
        config: Any,
        output_dir: str | Path = "runs",
        python_logger: logging.Logger | None = None,
        **tracker_kwargs: Any,
    ):
        self.experiment_name = experiment_name
        self.tracker = ExperimentTracker(experiment_name, config, output_dir, **tracker_kwargs)
        self.output_dir = self.tracker.run_dir
        self.logger = python_logger or logging.getLogger(f"jaxlm.experiment.{experiment_name}")
        self.logger.setLevel(min(self.logger.level or logging.INFO, logging.INFO))
        self._log_file = logging.FileHandler(self.output_dir / "train.log")
        self._log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(self._log_file)
        self.best_val_loss = math.inf
        self.best_val_step: int | None = None
        self.logger.info("experiment %s started in %s", experiment_name, self.output_dir)

    def log_training_step(
        self, step: int, train_loss: float, learning_rate: float, tokens_per_sec: float | None = None, **extra: Any
    ) -> None:
        self.tracker.log_step(
            step, train_loss=train_loss, learning_rate=learning_rate, tokens_per_sec=tokens_per_sec, **extra
        )
        self.logger.info("step %d: train loss %.4f, lr %.3g", step, train_loss, learning_rate)

    def log_validation_step(
        self, step: int, val_loss: float, val_perplexity: float | None = None, **extra: Any
    ) -> None:
        self.tracker.log_step(step, val_loss=val_loss, val_perplexity=val_perplexity, **extra)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_val_step = val_loss, step
            self.logger.info("step %d: new best validation loss %.4f", step, val_loss)
        else:
            self.logger.info("step %d: validation loss %.4f", step, val_loss)

    def plot_loss_curves(self) -> None:
        self.tracker.write_plots()

    def plot_learning_rate_schedule(self) -> None:
        self.tracker.write_plots()

    def finalize(self, status: str = "completed", **fields: Any) -> dict[str, Any]:
        """Write summary, metrics.json and the plots; close train.log."""
        summary = self.tracker.finalize(status, **fields)
        if self.best_val_step is not None:
            self.logger.info(
                "experiment %s %s: best validation loss %.4f at step %d",
                self.experiment_name,
                status,
                self.best_val_loss,
                self.best_val_step,
            )
        self.logger.removeHandler(self._log_file)
        self._log_file.close()
        return summary


def compare_experiments(
    experiment_dirs: Sequence[str | Path],
    output_path: str | Path,
    experiment_names: Sequence[str] | None = None,
    metric: str = "val_loss",
) -> str:
    """Plot the runs together into `output_path`, write the markdown table beside it, return the table."""
    return compare_runs(experiment_dirs, output_path, experiment_names, metric)
