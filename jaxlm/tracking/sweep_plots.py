"""The figures of a sweep, drawn to answer its question ("which value gives the lowest loss, and where
does training diverge?"):

* `plot_sweep_curves`: train and validation loss against steps, one colour per point. The y-axis is
  fitted to the points that did not diverge, so their curves fill the plot; a diverged point's curve
  runs up to the top edge and ends in a ×, its step in the legend.
* `plot_by_value`: best and final validation loss against the swept value (a one-key numeric grid),
  log x when the values span more than 10×, diverged points as × on the top edge, the best point ringed.
* `plot_heatmap`: best validation loss over a two-key grid; diverged cells marked ×.

Built on `jaxlm.tracking.plots` (matplotlib's object API on the Agg canvas).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxlm.tracking.plots import METRIC_LABELS, _maybe_log_y, _new_figure, _save, series

TOP_PAD = 0.06  # fraction of the y-range left free above the highest non-diverged value, where × sit
BOTTOM_PAD = 0.08


@dataclass(frozen=True)
class PointCurves:
    """One sweep point as the figures need it."""

    label: str
    rows: Sequence[dict[str, Any]]
    diverged_step: int | None = None  # None: did not diverge
    values: dict[str, str] = field(default_factory=dict)  # grid key -> value as written

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None


def _limits(values: Sequence[float], log: bool) -> tuple[float, float]:
    """(bottom, top) around `values` with a margin (in log space on a log axis)."""
    lo, hi = min(values), max(values)
    if log:
        lo_l, hi_l = math.log(lo), math.log(hi)
        span = max(hi_l - lo_l, 1e-3)
        return math.exp(lo_l - BOTTOM_PAD * span), math.exp(hi_l + TOP_PAD * span)
    span = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
    return lo - BOTTOM_PAD * span, hi + TOP_PAD * span


def _fit_y(ax, values: Sequence[float]) -> tuple[float, float]:
    """Log-scale (as run plots do) and limit the y-axis to `values`; returns the limits."""
    _maybe_log_y(ax, values)
    bottom, top = _limits(values, ax.get_yscale() == "log")
    ax.set_ylim(bottom, top)
    return bottom, top


def _to_edge(xs: list[float], ys: list[float], top: float, step: float) -> tuple[list[float], list[float]]:
    """A diverged curve: its values while they stay inside the axis, then a line up to the top edge at the
    diverged step (or at the first value beyond the edge, if that comes first)."""
    for i, y in enumerate(ys):
        if y > top:
            return [*xs[:i], min(xs[i], step)], [*ys[:i], top]
    return [*xs, max(xs[-1], step) if xs else step], [*ys, top]


def plot_sweep_curves(points: Sequence[PointCurves], path: Path, title: str):
    """Two panels: train loss and validation loss against gradient steps (see the module docstring);
    returns the Figure."""
    fig, axes = _new_figure(12, 4.6, ncols=2)
    colors = [f"C{i % 10}" for i in range(len(points))]
    for ax, metric in zip(axes, ("train_loss", "val_loss")):
        fit = [y for p in points if not p.diverged for y in series(p.rows, metric)[1]]
        fit = fit or [y for p in points for y in series(p.rows, metric)[1]]  # every point diverged
        if not fit:
            ax.set_title(f"{METRIC_LABELS[metric]}: no values yet", fontsize=9)
            continue
        _, top = _fit_y(ax, fit)
        for p, color in zip(points, colors):
            xs, ys = series(p.rows, metric)
            label = p.label if not p.diverged else f"{p.label} (diverged, step {p.diverged_step})"
            marker = "o" if metric == "val_loss" else None
            if not p.diverged:
                if xs:
                    ax.plot(xs, ys, color=color, marker=marker, ms=3, lw=1.3, label=label)
                continue
            xs, ys = _to_edge(xs, ys, top, float(p.diverged_step))
            spot = (xs[-1], ys[-1])
            ax.plot(xs, ys, color=color, lw=1.0, ls="--", alpha=0.8)
            ax.plot(*spot, "x", color=color, ms=10, mew=2.5, clip_on=False, label=label)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (nats/token)")
        ax.set_title(METRIC_LABELS[metric], fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return fig


def numeric(values: Sequence[str]) -> list[float] | None:
    """The values as floats when every one parses, else None."""
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


@dataclass(frozen=True)
class ValuePoint:
    """One point of a one-key grid: the swept value and what its run reached."""

    value: float
    best: float | None  # best validation loss
    final: float | None  # last validation loss
    diverged_step: int | None = None


def plot_by_value(points: Sequence[ValuePoint], key: str, path: Path, title: str):
    """Best and final validation loss against the swept value (see the module docstring); returns the Figure."""
    fig, (ax,) = _new_figure(7.5, 4.6)
    ok = sorted((p for p in points if p.diverged_step is None and p.best is not None), key=lambda p: p.value)
    xs_all = [p.value for p in points]
    if len(xs_all) > 1 and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10:
        ax.set_xscale("log")
    ys = [y for p in ok for y in (p.best, p.final) if y is not None and math.isfinite(y)]
    top = _limits(ys, False)[1] if ys else 1.0
    if ys:
        ax.set_ylim(_limits(ys, False)[0], top)
        ax.plot([p.value for p in ok], [p.best for p in ok], "o-", color="C0", label="best val loss")
        finals = [(p.value, p.final) for p in ok if p.final is not None]
        ax.plot(*zip(*finals), "s--", color="C1", ms=5, label="final val loss")
        best = min(ok, key=lambda p: p.best)
        ax.plot(best.value, best.best, "o", ms=16, mfc="none", mec="C3", mew=2, label=f"best: {key}={best.value:g}")
        ax.annotate(f"{best.best:.3f}", (best.value, best.best), textcoords="offset points", xytext=(12, -3),
                    ha="left", fontsize=8, color="C3")  # fmt: skip
    diverged = [p for p in points if p.diverged_step is not None or p.best is None]
    for i, p in enumerate(diverged):
        label = "diverged / no val loss" if i == 0 else None
        ax.plot(p.value, top, "x", color="C3", ms=11, mew=2.5, clip_on=False, label=label)
        what = f"diverged, step {p.diverged_step}" if p.diverged_step is not None else "no val loss"
        ax.annotate(what, (p.value, top), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7)
    ax.margins(x=0.08)
    ax.set_xlabel(key)
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _save(fig, path)
    return fig


def plot_heatmap(
    keys: tuple[str, str],
    xs: Sequence[str],
    ys: Sequence[str],
    cells: dict[tuple[str, str], Any],
    path: Path,
    title: str,
):
    """Best validation loss over a two-key grid: `cells[(x, y)]` is a float, "diverged" or None (missing);
    returns the Figure."""
    import numpy as np

    fig, (ax,) = _new_figure(1.6 + 1.1 * len(xs), 1.4 + 0.7 * len(ys))
    fig.subplots_adjust(left=0.2, right=0.95, bottom=0.2, top=0.85)
    grid = np.full((len(ys), len(xs)), np.nan)
    for (x, y), v in cells.items():
        if isinstance(v, float) and math.isfinite(v):
            grid[ys.index(y), xs.index(x)] = v
    ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r", aspect="auto")
    finite = grid[np.isfinite(grid)]
    best = finite.min() if finite.size else None
    for (x, y), v in cells.items():
        text = "×" if v == "diverged" else "n/a" if not isinstance(v, float) else f"{v:.3f}"
        weight = "bold" if best is not None and v == best else "normal"
        ax.text(xs.index(x), ys.index(y), text, ha="center", va="center", fontsize=9, weight=weight, color="black"
                if v == "diverged" else "white")  # fmt: skip
    ax.set_xticks(range(len(xs)), list(xs))
    ax.set_yticks(range(len(ys)), list(ys))
    ax.set_xlabel(keys[0])
    ax.set_ylabel(keys[1])
    ax.set_title(title, fontsize=10)
    _save(fig, path)
    return fig
