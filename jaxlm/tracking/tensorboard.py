"""TensorBoard event files for a run (tensorboardX; no TensorFlow, no JAX).

`tensorboard --logdir runs` then shows every run's scalars, its samples as
text and, in the HParams tab, its config beside its final metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxlm.tracking.fmt import as_float

# metrics row column -> TensorBoard scalar tag
SCALAR_TAGS = {
    "train_loss": "train/loss",
    "val_loss": "val/loss",
    "val_perplexity": "val/perplexity",
    "val_bpb": "val/bpb",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_sec": "perf/tokens_per_sec",
    "mfu": "perf/mfu",
    "z_loss": "train/z_loss",
}
# summary field -> hparams metric tag (written as scalars at the final step, so the HParams tab has values)
FINAL_METRIC_TAGS = {
    "final_val_loss": "final/val_loss",
    "best_val_loss": "final/best_val_loss",
    "final_val_bpb": "final/val_bpb",
    "final_train_loss": "final/train_loss",
    "mean_tokens_per_sec": "final/tokens_per_sec",
}

# summary fields that say what the run ran on, shown beside the config keys in the HParams tab
SUMMARY_HPARAMS = ("device_platform", "device_kind", "attention_kernel", "attention_reason")


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


class TensorBoardLog:
    """One SummaryWriter on the run directory. `purge_step` hides stale events after a resume."""

    def __init__(self, run_dir: Path, purge_step: int | None = None, segment: int = 0):
        """`segment` (0, then 1 per resume) goes into the file name: tensorboardX names event files by the
        second, so a resume within the same second would otherwise overwrite the previous file."""
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(
            logdir=str(run_dir), purge_step=purge_step, flush_secs=30, filename_suffix=f".{segment}"
        )

    def log_row(self, row: Mapping[str, Any]) -> None:
        step = int(row["step"])
        for column, tag in SCALAR_TAGS.items():
            value = as_float(row.get(column))
            if value is not None:
                self.writer.add_scalar(tag, value, step)

    def log_sample(self, step: int, prompt: str, text: str) -> None:
        self.writer.add_text("samples", f"**prompt:** {prompt}\n\n{text}", step)

    def log_hparams(self, config: Mapping[str, Any], summary: Mapping[str, Any], step: int) -> None:
        """Config keys as hparams; the final metrics as scalars tagged `final/...`, referenced by the hparams."""
        from tensorboardX.summary import hparams

        metrics = {}
        for field, tag in FINAL_METRIC_TAGS.items():
            value = as_float(summary.get(field))
            if value is not None:
                metrics[tag] = value
                self.writer.add_scalar(tag, value, step)
        hparam_dict = {k: _hparam_value(v) for k, v in config.items() if not isinstance(v, (dict, list))}
        hparam_dict["status"] = str(summary.get("status"))
        hparam_dict.update({k: _hparam_value(summary[k]) for k in SUMMARY_HPARAMS if summary.get(k) is not None})
        _experiment, session_start, session_end = hparams(hparam_dict, metrics)
        # No per-run experiment summary: TensorBoard then builds one over all runs under --logdir.
        self.writer.file_writer.add_summary(session_start)
        self.writer.file_writer.add_summary(session_end)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
