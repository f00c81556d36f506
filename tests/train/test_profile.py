"""`profile_steps`: a real run writes a jax.profiler trace of those steps into its run directory."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from jaxlm import launch
from jaxlm.config import build_config
from jaxlm.errors import ConfigError


def test_profile_steps_write_a_trace_that_names_the_train_step(tmp_path, tiny_config):
    tokens = np.random.default_rng(0).integers(0, 64, 20_000).astype(np.uint16)
    np.save(tmp_path / "train.npy", tokens)
    np.save(tmp_path / "val.npy", tokens[:2_000])
    config = {
        **tiny_config().to_dict(),
        "vocab_size": 64,
        "max_iterations": 8,
        "eval_interval": 8,
        "log_interval": 4,
        "sample_tokens": 0,
        "profile_steps": [3, 5],
        "train_data_path": str(tmp_path / "train.npy"),
        "val_data_path": str(tmp_path / "val.npy"),
    }
    (tmp_path / "prof.json").write_text(json.dumps(config))
    args = ["--config", str(tmp_path / "prof.json"), "--output-dir", str(tmp_path / "runs"), "--quiet"]
    assert launch.main([*args, "--no-experiment-log"]) == 0
    run = tmp_path / "runs" / "prof"
    assert json.loads((run / "summary.json").read_text())["steps"] == 8  # profiling did not stop the run
    xplanes = list((run / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(xplanes) == 1 and b"train_step" in xplanes[0].read_bytes()  # TensorBoard's profile plugin
    perfetto = list((run / "profile" / "plugins" / "profile").glob("*/perfetto_trace.json.gz"))
    assert len(perfetto) == 1
    events = json.loads(gzip.decompress(perfetto[0].read_bytes()))["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert any("train_step" in n for n in names)  # the compiled step ran inside the trace
    steps = {e.get("args", {}).get("step_num") for e in events if e.get("name") == "train"}
    assert steps == {"4", "5"}, steps  # exactly the updates after step 3 up to step 5


@pytest.mark.parametrize("bad", [[5, 3], [-1, 2], [1], "1,2", [1.5, 2]])
def test_profile_steps_must_be_an_increasing_pair(bad, tiny_config):
    with pytest.raises(ConfigError, match="profile_steps"):
        build_config({**tiny_config().to_dict(), "profile_steps": bad})
