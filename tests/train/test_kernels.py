"""The attention kernel is chosen once per run, when the train step compiles, and recorded.

The CPU has no cuDNN, so the tests stand in for a GPU in bfloat16: `cudnn_applies` says yes, and
`cudnn_attention` is replaced by a kernel that traces (it has a gradient) but that XLA cannot
compile, as a cuDNN version or shape it refuses would; or by one that fails while tracing.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import jaxlm.model.attention as attention
import jaxlm.train.kernels as kernels
from jaxlm import launch
from jaxlm.errors import EXIT_OK, EXIT_USAGE

TINY = {
    "vocab_size": 256,
    "context_length": 16,
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "d_ff": 64,
    "batch_size": 4,
    "max_iterations": 3,
    "warmup_iters": 1,
    "log_interval": 1,
    "eval_interval": 3,
    "eval_batches": 1,
    "sample_tokens": 0,
    "dtype": "bfloat16",
}


def _missing_kernel(x):
    return jax.ffi.ffi_call("jaxlm_test_no_such_cudnn_kernel", jax.ShapeDtypeStruct(x.shape, x.dtype))(x)


@jax.custom_vjp
def compiles_never(q, k, v):
    """Traces and differentiates, but names an FFI target no platform has: XLA refuses it at compile time."""
    return _missing_kernel(q)


compiles_never.defvjp(lambda q, k, v: (_missing_kernel(q), None), lambda _, g: (_missing_kernel(g),) * 3)


def traces_never(q, k, v):
    raise ValueError("cuDNN does not support this shape")


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXLM_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    paths = {}
    for split, n in (("train", 4000), ("val", 800)):
        np.save(tmp_path / f"{split}.npy", rng.integers(0, 256, n).astype(np.uint16))
        paths[f"{split}_data_path"] = str(tmp_path / f"{split}.npy")
    return paths


def launch_run(tmp_path, config: dict, name: str = "run") -> int:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**TINY, **config}))
    args = ["--config", str(path), "--name", name, "--output-dir", str(tmp_path / "runs"), "--quiet"]
    return launch.main([*args, "--no-experiment-log"])


def hparams(run_dir) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = event_accumulator.EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    found = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: v.string_value for k, v in found.items()}


@pytest.mark.parametrize("broken", [compiles_never, traces_never], ids=["at-compile", "at-trace"])
def test_a_failing_cudnn_falls_back_to_jaxlms_kernel_and_is_recorded(tmp_path, data, monkeypatch, caplog, broken):
    monkeypatch.setattr(kernels, "cudnn_applies", lambda dtype, platform: True)  # as on a GPU in bfloat16
    monkeypatch.setattr(attention, "cudnn_attention", broken)
    assert launch_run(tmp_path, data) == EXIT_OK
    run_dir = tmp_path / "runs" / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["attention_kernel"] == "jaxlm"
    why = "No FFI handler registered" if broken is compiles_never else "cuDNN does not support this shape"
    assert summary["attention_reason"].startswith("cuDNN failed: ") and why in summary["attention_reason"]
    warnings = [r.getMessage() for r in caplog.records if "cuDNN attention failed" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and why in warnings[0]
    recorded = hparams(run_dir)
    assert recorded["attention_kernel"] == "jaxlm" and why in recorded["attention_reason"]


def test_a_config_that_insists_on_cudnn_gets_one_line(tmp_path, data, monkeypatch, capsys):
    monkeypatch.setattr(attention, "cudnn_attention", compiles_never)
    assert launch_run(tmp_path, {**data, "attention": "cudnn"}) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config key 'attention': cuDNN attention failed") and "\n" not in err, err
    assert not (tmp_path / "runs" / "run").exists()


def test_on_the_cpu_the_run_records_jaxlms_kernel_and_its_device(tmp_path, data, capsys):
    assert launch_run(tmp_path, {**data, "dtype": "float32"}) == EXIT_OK
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert summary["attention_kernel"] == "jaxlm"
    assert summary["attention_reason"] == "jaxlm's kernel (not an NVIDIA GPU)"
    assert (summary["device_platform"], summary["device_requested"]) == ("cpu", None)
    assert f"device: 1 x cpu (cpu, jax {jax.__version__}), chosen by JAX (device: null)" in capsys.readouterr().out


def test_wanted_kernel_by_dtype_and_platform(tiny_config):
    assert kernels.wanted(tiny_config(dtype="bfloat16"), "gpu").kernel == "cudnn"
    assert kernels.wanted(tiny_config(dtype="float32"), "gpu").reason.endswith("has no float32 kernel)")
    assert kernels.wanted(tiny_config(dtype="bfloat16"), "tpu").kernel == "jaxlm"
    assert kernels.wanted(tiny_config(dtype="bfloat16", attention="jaxlm"), "gpu").kernel == "jaxlm"
