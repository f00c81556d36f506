"""Runs tiny trainings in a fresh process (so XLA_FLAGS can force N CPU devices) and prints JSON.

Used by tests/train/test_sharding.py: `python tests/train/scale_worker.py '<json spec>'`, where the spec is
{"config": {...base keys...}, "runs": {"name": {...overrides...}, ...}}. For each run it prints
the per-step train losses, the final val loss and how one FFN weight is sharded.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers


def run_one(values: dict) -> dict:
    from helpers import RecordingTracker
    from jaxlm.config import build_config
    from jaxlm.train.trainer import Trainer

    c = build_config(values)
    trainer = Trainer(c)
    with tempfile.TemporaryDirectory() as run_dir:  # checkpoints go there, removed afterwards
        return measure(trainer, RecordingTracker("worker", run_dir))


def measure(trainer, tracker) -> dict:
    """Where one FFN weight and the embedding live, then the run's losses (placement read before `run`)."""
    w1 = trainer.params["layers"][0]["ffn"]["w1"]["weight"][...]
    emb = trainer.params["token_embeddings"][...]
    placement = {
        "w1_spec": list(w1.sharding.spec),
        "w1_shard_shapes": [list(s.data.shape) for s in w1.addressable_shards],
        "emb_spec": list(emb.sharding.spec),
    }  # read now: run() donates these buffers
    result = trainer.run(tracker)
    rows = tracker.rows
    return {
        "losses": [r["train_loss"] for r in rows],
        "val_loss": result.summary["final_val_loss"],
        **placement,
        "device_count": result.summary["device_count"],
        "mesh_shape": result.summary["mesh_shape"],
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    out = {name: run_one({**spec["config"], **overrides}) for name, overrides in spec["runs"].items()}
    out["_devices"] = jax.device_count()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
