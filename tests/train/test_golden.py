"""Golden numbers: a tiny config's first 20 train losses and its final validation loss on the CPU.

A change to a kernel, the optimizer, the data order or the initialisation that moves
these numbers fails here instead of surprising someone later. When a change is meant
to move them, regenerate the file on purpose and say why in the commit:

    uv run pytest tests/train/test_golden.py --update-golden
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import REPO_ROOT, RecordingTracker, shared_token_cache
from jaxlm.config import build_config

GOLDEN = REPO_ROOT / "tests" / "golden" / "tiny_cpu_losses.json"
CONFIG = {
    "vocab_size": 300,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 2,
    "d_ff": 64,
    "context_length": 32,
    "batch_size": 8,
    "max_iterations": 20,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "eval_interval": 20,
    "eval_batches": 2,
    "log_interval": 1,
    "checkpoint_interval": 1000,
    "sample_tokens": 0,
    "seed": 3,
}
RTOL = 1e-4  # float32 on the CPU; a real change to the maths moves the losses by far more


@pytest.fixture(scope="module", autouse=True)
def token_cache(tmp_path_factory):
    yield from shared_token_cache(tmp_path_factory, CONFIG)


def train_tiny(tmp_path) -> dict:
    from jaxlm.train.trainer import Trainer

    tracker = RecordingTracker("golden", tmp_path / "golden")
    result = Trainer(build_config(CONFIG)).run(tracker)
    return {
        "config": CONFIG,
        "train_losses": [r["train_loss"] for r in tracker.rows],
        "final_val_loss": result.summary["final_val_loss"],
    }


@pytest.mark.slow
def test_tiny_run_matches_the_golden_numbers(tmp_path, request):
    got = train_tiny(tmp_path)
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
        pytest.skip(f"wrote {GOLDEN.relative_to(REPO_ROOT)}")
    want = json.loads(GOLDEN.read_text())
    assert want["config"] == CONFIG, "the config changed: regenerate with --update-golden"
    assert len(got["train_losses"]) == 20
    np.testing.assert_allclose(got["train_losses"], want["train_losses"], rtol=RTOL)
    assert got["final_val_loss"] == pytest.approx(want["final_val_loss"], rel=RTOL)
