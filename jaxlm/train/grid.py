"""The points of a sweep: a `--grid` expanded into validated configs, or the points of an earlier
sweep found again from its run directories' names (`<prefix>_<key>=<value>...`)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from jaxlm.config import FIELDS, Config, load_config, parse_override
from jaxlm.errors import UserError


@dataclass(frozen=True)
class GridPoint:
    name: str
    values: tuple[tuple[str, str], ...]  # (key, value as written on the command line)
    overrides: tuple[str, ...]  # every --set for this point: base --set, grid values, step adjustments
    config: Config

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values)


@dataclass(frozen=True)
class FoundPoint:
    """A point of an earlier sweep, known only from its run directory's name (`--report`)."""

    name: str
    values: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values)


def find_points(output_dir: Path, prefix: str) -> list[FoundPoint]:
    """The run directories `<prefix>_<key>=<value>[_<key>=<value>...]` in `output_dir`, as points ordered by
    each key's values (numerically when they are numbers); UserError when there are none."""
    from jaxlm.tracking.runs import is_run_dir

    keys = "|".join(sorted(map(re.escape, FIELDS), key=len, reverse=True))
    pair = re.compile(rf"({keys})=(.+?)(?=_(?:{keys})=|$)")
    points = []
    for path in sorted(Path(output_dir).glob(f"{glob_escape(prefix)}_*")):
        rest = path.name[len(prefix) + 1 :]
        pairs = pair.findall(rest)
        if pairs and "_".join(f"{k}={v}" for k, v in pairs) == rest and is_run_dir(path):
            points.append(FoundPoint(path.name, tuple(pairs)))
    if not points:
        raise UserError(f"--report {prefix}: no run directories named {prefix}_<key>=<value> in '{output_dir}'")

    def order(point: FoundPoint):
        out = []
        for _, value in point.values:
            try:
                out.append((0, float(value), ""))
            except ValueError:
                out.append((1, 0.0, value))
        return out

    return sorted(points, key=order)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """`key=v1,v2,...` strings -> [(key, [v1, v2, ...])]; each value type-checked against the key."""
    grid: list[tuple[str, list[str]]] = []
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"--grid {spec!r}: expected key=value1,value2,...")
        key, raw = (part.strip() for part in spec.split("=", 1))
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise UserError(f"--grid {spec!r}: no values")
        if key in (k for k, _ in grid):
            raise UserError(f"--grid {key}: given twice; put all its values in one --grid")
        for value in values:
            parse_override(f"{key}={value}")
        grid.append((key, values))
    return grid


def _scaled(value: int, factor: float) -> int:
    return max(0, round(value * factor))


def expand(
    base: str, grid: list[tuple[str, list[str]]], sets: list[str], prefix: str, constant_tokens: bool = False
) -> list[GridPoint]:
    """The grid's points in order, each validated as a full config (ConfigError names the point).

    With `constant_tokens`, a point whose tokens per step differ from the base config's
    gets `max_iterations` (and warmup/cosine lengths, proportionally) set so that it
    trains on the same number of tokens as the base config.
    """
    base_config = load_config(base, sets)
    total_tokens = base_config.tokens_per_step * base_config.max_iterations
    grid_keys = {k for k, _ in grid}
    points = []
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in grid]):
        name = "_".join([prefix, *(f"{k}={v}" for k, v in combo)])
        overrides = [*sets, *(f"{k}={v}" for k, v in combo)]
        config = load_config(base, overrides)
        if constant_tokens and config.tokens_per_step != base_config.tokens_per_step:
            steps = max(1, round(total_tokens / config.tokens_per_step))
            factor = steps / config.max_iterations
            overrides.append(f"max_iterations={steps}")
            if "warmup_iters" not in grid_keys:
                overrides.append(f"warmup_iters={min(steps, _scaled(config.warmup_iters, factor))}")
            if config.cosine_cycle_iters is not None and "cosine_cycle_iters" not in grid_keys:
                overrides.append(f"cosine_cycle_iters={_scaled(config.cosine_cycle_iters, factor)}")
            config = load_config(base, overrides)
        if config.wandb_project is not None and config.wandb_group is None:  # the sweep's runs group together
            overrides.append(f"wandb_group={prefix}")
            config = load_config(base, overrides)
        from jaxlm.rundir import check_name

        check_name(name)
        points.append(GridPoint(name, tuple(combo), tuple(overrides), config))
    return points
