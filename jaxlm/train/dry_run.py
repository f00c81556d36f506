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
        *data_report(config),
    ]
    return "\n".join(lines)
