"""TensorBoard event files, read back with TensorBoard's own reader: tags, values equal to metrics.csv,
text samples, hparams, and a resume that hides the stale tail."""

from __future__ import annotations

import csv

import pytest
from tensorboard.backend.event_processing import event_accumulator

from jaxlm.tracking import ExperimentTracker
from jaxlm.tracking.tensorboard import SCALAR_TAGS

CONFIG = {
    "description": "tb test",
    "learning_rate": 1e-3,
    "min_learning_rate": 1e-4,
    "warmup_iters": 2,
    "max_iterations": 12,
    "batch_size": 2,
    "context_length": 8,
    "d_model": 16,
    "cosine_cycle_iters": None,
}


def load_events(run_dir):
    acc = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


def write_run(tmp_path, steps=12, offset=0.0, tracker=None, first=1):
    tracker = tracker or ExperimentTracker("tb", CONFIG, tmp_path, make_plots=False)
    tracker.write_summary(device_kind="TPU v4", peak_flops_per_device=275e12, device_count=1, flops_per_token=1e6)
    for step in range(first, steps + 1):
        row = {
            "train_loss": 4.0 / step + offset,
            "learning_rate": 1e-3 * step / steps,
            "grad_norm": 0.1 * step,
            "tokens_per_sec": 1000.0 + step,
            "wallclock_s": float(step),
            "z_loss": 20.0 + step,
        }
        if step % 4 == 0:
            row.update(val_loss=4.5 / step + offset, val_bpb=3.0 / step)
            tracker.log_sample(step, "Once upon a time", f"there was step {step}")
        tracker.log_step(step, **row)
    return tracker


def test_scalars_match_metrics_csv(tmp_path):
    write_run(tmp_path).finalize("completed")
    acc = load_events(tmp_path / "tb")
    assert set(SCALAR_TAGS.values()) <= set(acc.Tags()["scalars"])
    with open(tmp_path / "tb" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for column, tag in SCALAR_TAGS.items():
        expected = [(int(r["step"]), float(r[column])) for r in rows if r[column] != ""]
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in expected], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert [e.step for e in acc.Scalars("val/loss")] == [4, 8, 12]


def test_samples_are_text_and_hparams_hold_the_config(tmp_path):
    write_run(tmp_path).finalize("completed")
    acc = load_events(tmp_path / "tb")
    text_tags = [t for t in acc.Tags()["tensors"] if t.startswith("samples")]
    assert text_tags
    texts = acc.Tensors(text_tags[0])
    assert [t.step for t in texts] == [4, 8, 12]
    assert b"there was step 8" in texts[1].tensor_proto.string_val[0]

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = data.session_start_info.hparams
    assert hparams["learning_rate"].number_value == pytest.approx(1e-3)
    assert hparams["d_model"].number_value == 16 and hparams["status"].string_value == "completed"
    assert hparams["cosine_cycle_iters"].string_value == "None"
    final = {e.step: e.value for e in acc.Scalars("final/best_val_loss")}
    assert final == {12: pytest.approx(4.5 / 12)}


def test_resume_hides_the_stale_tail(tmp_path):
    first = write_run(tmp_path, steps=10)
    first.tb.flush()  # the process dies here: no finalize
    resumed = ExperimentTracker.resume(tmp_path / "tb", from_step=6, make_plots=False)
    write_run(tmp_path, steps=12, offset=100.0, tracker=resumed, first=7).finalize("completed")
    acc = load_events(tmp_path / "tb")
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 13))  # steps 7..10 of the dead process are gone
    loss = {e.step: e.value for e in events}
    assert loss[6] == pytest.approx(4.0 / 6) and loss[8] == pytest.approx(4.0 / 8 + 100.0)
