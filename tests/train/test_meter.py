"""The training loop's meter: rows hold the mean train loss since the previous row, the progress bar
shows that loss with the latest validation loss, and the summary's `final_train_loss` is the last
row's (the number metrics.csv and the bar show, not the last batch alone)."""

from __future__ import annotations

import json

import pytest

from helpers import RecordingTracker
from jaxlm.train.meter import Meter


class Bar:
    def __init__(self):
        self.postfixes = []

    def set_postfix(self, **fields):
        self.postfixes.append(fields)


def test_rows_average_the_window_and_the_bar_carries_the_latest_val_loss(tiny_config, tmp_path):
    c = tiny_config(log_interval=2, max_iterations=6)
    bar, tracker = Bar(), RecordingTracker("m", tmp_path)
    meter = Meter(c, lambda step: 1e-3, tracker, bar, start_step=0)
    for step, loss in enumerate([4.0, 2.0, 3.0, 1.0, 5.0, 3.0], start=1):
        evals = {"val_loss": 2.5} if step == 4 else None
        meter.record(step, {"loss": loss, "grad_norm": 1.0})
        if meter.row_due(step, evals):  # the loop drains at every step that logs, evaluates or saves
            assert meter.drain()
            meter.log_row(step, evals)
    assert [r["train_loss"] for r in tracker.rows] == [3.0, 2.0, 4.0]  # means of (4, 2), (3, 1), (5, 3)
    assert [p["loss"] for p in bar.postfixes] == ["3.000", "2.000", "4.000"]
    assert [p.get("val") for p in bar.postfixes] == [None, "2.500", "2.500"]  # kept until the next eval
    assert meter.last_row["train_loss"] == 4.0 and meter.last_loss == 3.0  # the row's mean, not the batch


@pytest.mark.slow
def test_the_summary_final_train_loss_is_the_last_rows(tmp_path, tiny_config):
    from jaxlm.train.trainer import Trainer

    c = tiny_config(max_iterations=6, log_interval=3, eval_interval=6, checkpoint_interval=6)
    tracker = RecordingTracker("t", tmp_path)
    result = Trainer(c).run(tracker)
    assert result.summary["final_train_loss"] == tracker.rows[-1]["train_loss"]
    json.dumps(result.summary)
