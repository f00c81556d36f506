"""The config-only memory estimate: within its calibrated band of what XLA plans for the real steps,
the pre-flight refusal, and how it moves with gradient accumulation."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from helpers import REPO_ROOT, TINY_MODEL
from jaxlm.config import build_config, load_config
from jaxlm.errors import ConfigError
from jaxlm.train import memory
from jaxlm.train.flops import param_counts

# The band docs/performance.md states: the estimate may sit up to 25% above XLA's figure, and
# should not fall more than 10% under it (too low lets a run fail at its first step).
LOW, HIGH = 0.9, 1.25
QUICKSTART = REPO_ROOT / "configs" / "quickstart.json"


def load_calibration():
    """scripts/calibrate_memory.py as a module (scripts/ is not a package): its `measure` compiles the
    Trainer's train and eval steps with abstract inputs and reads XLA's buffer assignment."""
    spec = importlib.util.spec_from_file_location("calibrate_memory", REPO_ROOT / "scripts" / "calibrate_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


calibration = load_calibration()


@pytest.mark.slow
@pytest.mark.parametrize(
    "values",
    [
        TINY_MODEL,
        # bf16, micro-batches of one row and a vocabulary large enough that the eval step's whole-batch
        # logits, not the train step, are the peak: the estimate has to pick that step too
        {**TINY_MODEL, "dtype": "bfloat16", "batch_size": 8, "grad_accum_steps": 8, "vocab_size": 4096},
    ],
    ids=["tiny", "tiny-bf16-accum8-v4096"],
)
def test_estimate_is_within_the_calibrated_band_of_xla(values):
    c = build_config(values)
    measured = calibration.measure(c)
    estimated = memory.estimate(c)["total"]
    assert LOW <= estimated / measured["device"] <= HIGH, (estimated, measured)


def test_the_eval_step_sets_the_peak_with_many_micro_batches():
    c = build_config({**TINY_MODEL, "batch_size": 8, "grad_accum_steps": 8, "vocab_size": 4096})
    parts = memory.estimate(c)
    assert parts["logits"] == c.batch_size * c.context_length * c.vocab_size * 4  # one whole-batch copy
    assert parts["params_and_optimizer"] == 12 * param_counts(c)["total"]  # no gradients in the eval step


def test_estimate_scales_with_grad_accum_steps():
    c1 = load_config(QUICKSTART)
    c4 = load_config(QUICKSTART, ["grad_accum_steps=4"])
    e1, e4 = memory.estimate(c1), memory.estimate(c4)
    # micro-batches of a quarter of the rows: a quarter of the activations and logits ...
    assert e4["activations"] == pytest.approx(e1["activations"] / 4, rel=1e-6)
    assert e4["logits"] == pytest.approx(e1["logits"] / 4, rel=1e-6)
    # ... plus one float32 gradient accumulator; the validation set is the whole batch either way
    assert e4["params_and_optimizer"] - e1["params_and_optimizer"] == 4 * param_counts(c1)["total"]
    assert e4["eval_batches"] == e1["eval_batches"]
    assert e4["total"] < e1["total"]
    assert e1["total"] == sum(e1[k] for k in ("params_and_optimizer", "activations", "logits", "eval_batches"))


def test_check_fits_refuses_an_impossible_config_naming_estimate_and_limit():
    c = load_config(QUICKSTART, ["vocab_size=20000000"])
    parts = memory.estimate(c)
    limit = memory.device_memory_bytes()
    assert limit and parts["total"] > limit
    with pytest.raises(ConfigError) as e:
        memory.check_fits(c)
    message = str(e.value)
    assert "\n" not in message
    assert f"config needs about {memory.gib(parts['total'])} per device" in message
    assert f"more than the {memory.gib(limit)} a device has" in message


def test_check_fits_accepts_quickstart():
    memory.check_fits(load_config(QUICKSTART))
    memory.check_fits(load_config(QUICKSTART), devices=4)


def test_devices_share_the_batch_but_not_the_state(monkeypatch):
    """With a limit between the one-device and the eight-device figure, one device is refused and
    eight are not: activations, logits and the eval set are split over the devices, the state is not."""
    c = load_config(QUICKSTART)
    parts = memory.estimate(c)
    spread = parts["activations"] + parts["logits"] + parts["eval_batches"]
    limit = parts["params_and_optimizer"] + spread // 4
    monkeypatch.setattr(memory, "device_memory_bytes", lambda: limit)
    with pytest.raises(ConfigError, match=f"more than the {memory.gib(limit)} a device has"):
        memory.check_fits(c, devices=1)
    memory.check_fits(c, devices=8)


def test_describe_gives_the_total_and_keeps_the_tokenizer_apart():
    line = memory.describe(load_config(QUICKSTART))
    parts = memory.estimate(load_config(QUICKSTART))
    assert line.startswith(f"memory estimate: {memory.gib(parts['total'])} on one device (params and optimizer ")
    assert f"tokenizer trainer {memory.gib(parts['tokenizer'])} of host memory" in line
