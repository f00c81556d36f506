"""PNG plots of run metrics: loss curves, the LR schedule, multi-run comparisons.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot
global state, no display), so plotting works headless and from any thread.
matplotlib is imported on first use: importing jaxlm.tracking stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxlm.tracking.fmt import as_float

Row = Mapping[str, Any]
DPI = 100
METRIC_LABELS = {"train_loss": "train loss", "val_loss": "val loss", "val_bpb": "val bits/byte"}


def preload() -> None:
    """Import matplotlib's Agg pieces (~1.5 s on a slow CPU); the tracker runs this in a thread while the
    model compiles, so the first eval's plots do not pay for it."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.ticker  # noqa: F401


def _new_figure(width: float, height: float, ncols: int = 1):
    """A Figure with `ncols` axes and fixed margins (tight_layout would cost more than the drawing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08 if ncols > 1 else 0.12, right=0.98, bottom=0.13, top=0.88, wspace=0.22)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: Path) -> None:
    """Save through a temp file + rename, so a reader never sees a half-written PNG."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)


def series(rows: Iterable[Row], key: str, x_key: str = "step") -> tuple[list[float], list[float]]:
    """(x, y) for rows that have a finite `key` value."""
    xs, ys = [], []
    for row in rows:
        y, x = as_float(row.get(key)), as_float(row.get(x_key))
        if y is not None and x is not None and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def _maybe_log_y(ax, values: Sequence[float]) -> None:
    """Log-scale the y axis when the values span more than a factor of 3 (early loss dwarfs late loss)."""
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 3:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_loss_curves(rows: Sequence[Row], path: Path, title: str) -> None:
    """Two panels: train and val loss vs gradient steps and vs wall-clock seconds."""
    fig, (by_step, by_time) = _new_figure(11, 4.2, ncols=2)
    all_y: list[float] = []
    for ax, x_key, xlabel in ((by_step, "step", "gradient steps"), (by_time, "wallclock_s", "wall-clock (s)")):
        for key, style in (("train_loss", dict(lw=1.2, alpha=0.8)), ("val_loss", dict(marker="o", ms=4, lw=1.5))):
            xs, ys = series(rows, key, x_key)
            if xs:
                ax.plot(xs, ys, label=METRIC_LABELS[key], **style)
                all_y += ys
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats/token)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    for ax in (by_step, by_time):
        _maybe_log_y(ax, all_y)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_lr_schedule(planned: Sequence[float] | None, rows: Sequence[Row], path: Path, title: str) -> None:
    """The planned schedule (the rate at steps 0, 1, ...) as a line when known, the steps done so far
    shaded and their logged rates marked."""
    fig, (ax,) = _new_figure(7, 3.8)
    if planned:
        ax.plot(range(len(planned)), planned, lw=1.2, color="tab:blue", label="planned")
    done_x, done_y = series(rows, "learning_rate")
    if done_x:
        ax.axvspan(0, max(done_x), color="tab:green", alpha=0.12, label=f"done: {int(max(done_x))} steps")
        ax.plot(done_x, done_y, ".", ms=3, color="tab:orange", label="logged")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    ax.set_title(title, fontsize=10)
    _save(fig, path)


X_AXES = {
    "steps": ("step", "gradient steps"),
    "tokens": ("tokens", "tokens"),
    "wallclock": ("wallclock_s", "wall-clock (s)"),
}


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing running mean: point i is the mean of values i - window + 1 .. i (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_comparison(
    runs: Sequence[tuple[str, Sequence[Row]]], metric: str, path: Path, *, x: str | None = None, smooth: int = 1
) -> None:
    """`metric`, one line per run: against steps and wall-clock (two panels), or against `x` alone
    ("steps", "tokens" or "wallclock"). `smooth` > 1 draws the train loss as a running mean of that many rows."""
    panels = [X_AXES["steps"], X_AXES["wallclock"]] if x is None else [X_AXES[x]]
    fig, axes = _new_figure(12 if x is None else 7.5, 4.5, ncols=len(panels))
    all_y: list[float] = []
    marker = "o" if metric.startswith("val") else None
    for label, rows in runs:
        color = None
        for ax, (x_key, _) in zip(axes, panels):
            xs, ys = series(rows, metric, x_key)
            if not xs:
                continue
            if smooth > 1 and metric == "train_loss":
                ys = running_mean(ys, smooth)
            line = ax.plot(xs, ys, marker=marker, ms=3, label=label, color=color)[0]
            color = line.get_color()
            all_y += ys
    name = METRIC_LABELS.get(metric, metric)
    if smooth > 1 and metric == "train_loss":
        name += f" (running mean of {smooth})"
    for ax, (_, xlabel) in zip(axes, panels):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        _maybe_log_y(ax, all_y)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{name}: {len(runs)} runs", fontsize=10)
    _save(fig, path)
