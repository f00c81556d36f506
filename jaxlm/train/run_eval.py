"""Evaluate a finished run's checkpoint on a whole token file (`python -m jaxlm.evaluate`).

`plan_eval` does every check that needs no compile (the run, the checkpoint step, the data, the
batch against the devices), so bad input fails in a second with nothing written; `run_eval` then
restores the params straight into their shards on the training mesh (`jaxlm.train.sharding`) and
streams the file through `jaxlm.train.full_eval`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jaxlm.config import Config
from jaxlm.data.sources import eval_token_file
from jaxlm.data.tokens import TokenFile, open_tokens
from jaxlm.errors import UserError
from jaxlm.rundir import RunDir
from jaxlm.tracking.evals import data_name, eval_time
from jaxlm.train.checkpoint import check_resumable, restore_params
from jaxlm.train.devices import run_devices
from jaxlm.train.distributed import primary_first
from jaxlm.train.full_eval import evaluate_tokens
from jaxlm.train.memory import check_eval_fits
from jaxlm.train.sharding import Layout, build_mesh


@dataclass(frozen=True)
class EvalPlan:
    run_dir: Path
    config: Config  # the run's config with the evaluation's batch size and context length
    checkpoint: str | int  # as asked: "best", "latest" or a step
    step: int  # the saved step it resolves to
    token_file: TokenFile
    data_name: str
    source: Path  # the file asked for (text or tokens)


def plan_eval(
    run_dir: Path,
    checkpoint: str | int = "best",
    data: Path | None = None,
    *,
    context_length: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> EvalPlan:
    """Resolve and check everything an evaluation needs; UserError (one line) on anything wrong."""
    for flag, value in (("--context-length", context_length), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be a positive integer")
    config = RunDir(run_dir).config()
    devices = len(run_devices(config))
    fsdp = config.mesh_fsdp if config.mesh_fsdp > 0 and devices % config.mesh_fsdp == 0 else 1
    config = dataclasses.replace(
        config,
        context_length=context_length or config.context_length,
        batch_size=batch_size or config.batch_size,
        grad_accum_steps=1,
        mesh_data=-1,
        mesh_fsdp=fsdp,  # the run's FSDP split when it fits these devices, else plain data parallel
    )
    if config.batch_size % devices:
        raise UserError(
            f"--batch-size {config.batch_size}: must be a multiple of the {devices} devices the evaluation runs on"
        )
    check_eval_fits(config, devices)
    step = check_resumable(run_dir, checkpoint)
    # one process fills a shared token cache, the others then find it done
    source, path = primary_first(lambda: eval_token_file(run_dir, config, data, progress=progress))
    token_file = open_tokens(path, config.vocab_size, 1)  # any file of >= 2 tokens; the vocab is checked
    return EvalPlan(run_dir, config, checkpoint, step, token_file, data_name(data), source)


def restore_sharded(plan: EvalPlan) -> tuple[nnx.GraphDef, Any, Layout]:
    """(graphdef, params, layout): the checkpoint's params read directly into their shards on the mesh."""
    from jaxlm.model.transformer import abstract_model

    c = plan.config
    mesh = build_mesh(c)
    graphdef, abstract = abstract_model(c)
    layout = Layout.for_mesh(mesh, abstract, None)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, layout.params)
    params, _ = restore_params(plan.run_dir, plan.step, target)
    return graphdef, params, layout


def run_eval(plan: EvalPlan, *, progress: bool = False) -> dict[str, Any]:
    """Evaluate the planned checkpoint on every token of the planned file; the record to store."""
    c = plan.config
    graphdef, params, layout = restore_sharded(plan)
    result = evaluate_tokens(
        plan.token_file.tokens,
        graphdef,
        params,
        layout,
        batch_size=c.batch_size,
        context_length=c.context_length,
        vocab_size=c.vocab_size,
        bytes_per_token=plan.token_file.bytes_per_token,
        progress=progress,
    )
    return {
        "data_name": plan.data_name,
        "data": str(plan.source),
        "token_file": str(plan.token_file.path),
        "checkpoint": plan.checkpoint,
        "step": plan.step,
        **result.numbers(),
        "file_tokens": len(plan.token_file.tokens),
        "context_length": c.context_length,
        "batch_size": c.batch_size,
        "device_count": layout.mesh.size,
        "device_kind": layout.mesh.devices.flat[0].device_kind,
        "last_window": "partial windows are padded with token 0 and the padding masked out of the mean",
        "time": eval_time(),
    }
