"""What `python -m jaxlm.launch --dry-run` prints about a config before anything runs: the resolved
config, parameter and FLOP counts, tokens, the memory estimate and the data files (no device, no data
read)."""

from __future__ import annotations

import dataclasses
import json

from jaxlm.config import Config
from jaxlm.data.sources import data_report
from jaxlm.train import memory
from jaxlm.train.flops import flops_per_token, param_counts
from jaxlm.train.hardware import device_peak

ASSUMED_MFU = 0.4  # of the GPU's dense bf16 peak: what a --dry-run plans a wall-clock budget with
PLANNING_GPUS = ("H100", "B200")


def describe(config: Config, name: str) -> str:
    counts = param_counts(config)
    lines = [
        f"run: {name}",
        json.dumps(dataclasses.asdict(config), indent=2),
        f"parameters: {counts['total']:,} total, {counts['non_embedding']:,} non-embedding "
        f"({counts['embedding']:,} in the token embedding)",
        f"FLOPs per token (train): {flops_per_token(config):,}",
        f"tokens per step: {config.tokens_per_step:,}; total: {config.tokens_per_step * config.max_iterations:,}",
        memory.describe(config),
        *budget_plan(config),
        *data_report(config),
    ]
    return "\n".join(lines)


def budget_plan(config: Config) -> list[str]:
    """For a wall-clock budget: the steps it holds on each planning GPU at ASSUMED_MFU of its bf16 peak
    (a stated assumption; `schedule_by: "wallclock"` sizes the real run from its own timed steps)."""
    if config.max_wallclock_seconds is None:
        return []
    lines = []
    for gpu in PLANNING_GPUS:
        tokens_s = ASSUMED_MFU * device_peak(gpu).bf16 / flops_per_token(config)
        steps = int(tokens_s * config.max_wallclock_seconds / config.tokens_per_step)
        lines.append(
            f"budget {config.max_wallclock_seconds:g} s on one {gpu} at {ASSUMED_MFU:.0%} of its bf16 peak: "
            f"{tokens_s:,.0f} tokens/s, about {steps:,} steps ({steps * config.tokens_per_step:,} tokens)"
        )
    return lines
