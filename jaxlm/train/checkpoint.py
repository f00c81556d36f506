"""Orbax checkpoints of a run: periodic + best-by-validation, saved asynchronously.

Layout, plain Orbax (`ocp.CheckpointManager(run_dir / "checkpoints")` reads it):

    checkpoints/<step>/params/     StandardSave of the model's `nnx.Param` state
    checkpoints/<step>/opt_state/  StandardSave of the optax state (clip -> CS336 AdamW)
    checkpoints/<step>/meta/       JSON: step, seed, train token count, wall-clock, divergence
                                   baseline, best-so-far, the open log window's train losses
    checkpoints/<step>/metrics/    JSON {"val_loss": ...} on checkpoints written at an eval

Batches are `batch_at(seed, step)` and training draws no other randomness, so
params + optimizer state + step + seed continue a run bit for bit.

Retention is one Orbax preservation policy: the latest `keep_checkpoints`, plus
the one with the lowest validation loss (BestN over the checkpoints that carry
metrics). Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it
when complete, so a process killed mid-save leaves only a temporary directory;
it is never listed as a step and is deleted when the run's manager next opens.

Damage that a power loss or a full disk leaves in a finished step (a missing, empty or
torn file: `jaxlm.tracking.runs.checkpoint_damage`) hides that step from Orbax
(`_IntactSteps`): it is skipped with one warning line, and resume, `--resume-step`,
generate, evaluate and export use the intact ones. A resumed run that saves that
step again first moves the damaged folder aside, to `<step>.damaged` (kept, never deleted).
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from jaxlm.config import IDENTITY_KEYS, Config
from jaxlm.errors import ConfigError, UserError
from jaxlm.rundir import NO_CHECKPOINT, RunDir
from jaxlm.tracking.runs import checkpoint_damage
from jaxlm.train import distributed

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
SPACE_MARGIN, SPACE_SLACK_BYTES = 1.05, 2**20  # a save needs the last checkpoint's size times this, plus this


class CheckpointError(UserError):
    """No checkpoint to resume from, an unknown step, or an unreadable checkpoint."""


def _val_loss(metrics: dict) -> float:
    return metrics["val_loss"]


class _QuietMissingMetrics(logging.Filter):
    """Orbax warns on every save without metrics (ours are only on eval steps, by design) and on
    every read-only open (how `load` reads a run); neither tells the user anything. A second stop
    signal raises KeyboardInterrupt wherever the main thread is, possibly inside Orbax, which logs it
    with a traceback before passing it on: the command reports that abort itself, in one line."""

    NOISE = ("did not provide metrics", "read_only=True, setting save_interval_steps", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            return False
        return not any(text in record.getMessage() for text in self.NOISE)


def _quiet_orbax() -> None:
    absl_log = logging.getLogger("absl")
    if not any(isinstance(f, _QuietMissingMetrics) for f in absl_log.filters):
        absl_log.addFilter(_QuietMissingMetrics())


class _IntactSteps(ocp.step.NameFormat):
    """Orbax's standard step names (`checkpoints/<step>`), but a damaged step is not a step: Orbax never
    lists, reads or picks it as latest or best (it would fail to parse its metrics when the manager opens,
    or fail deep inside tensorstore on restore). Each damaged folder is one warning, once per process."""

    warned: set[str] = set()

    def __init__(self):
        self.standard = ocp.step.standard_name_format()

    def build_name(self, step: int) -> str:
        return self.standard.build_name(step)

    def intact(self, metadata) -> bool:
        damage = checkpoint_damage(Path(metadata.path))
        if damage is not None and damage not in self.warned:
            self.warned.add(damage)
            log.warning("checkpoint at step %d skipped: %s", metadata.step, damage)
        return damage is None

    def find_all(self, base_path):
        return iter([m for m in self.standard.find_all(base_path) if self.intact(m)])

    def find_step(self, base_path, step: int):
        metadata = self.standard.find_step(base_path, step)
        if not self.intact(metadata):
            raise ValueError(f"checkpoint at step {step} is damaged")
        return metadata


def open_manager(run_dir: str | Path, keep: int = 3, *, read_only: bool = False) -> ocp.CheckpointManager:
    """The run's CheckpointManager: async saves, latest `keep` + best-by-val_loss preserved."""
    _quiet_orbax()
    retention = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=_val_loss, reverse=True, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        best_fn=_val_loss,
        best_mode="min",  # makes Orbax store the metrics; retention is the policy above
        preservation_policy=None if read_only else retention,
        enable_async_checkpointing=True,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
        step_name_format=_IntactSteps(),
    )
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINTS, options=options)


def choose_step(mngr: ocp.CheckpointManager, which: str | int, run_dir: str | Path) -> int:
    """Resolve "latest" | "best" | a step number to a saved step; CheckpointError if there is none."""
    steps = sorted(mngr.all_steps())
    if not steps:
        raise CheckpointError(f"run '{run_dir}' has no checkpoint to resume or load from")
    if which == "latest":
        return steps[-1]
    if which == "best":
        best = mngr.best_step()
        return best if best is not None else steps[-1]
    step = int(which)
    if step not in steps:
        folder = Path(run_dir) / CHECKPOINTS / str(step)
        damage = checkpoint_damage(folder) if folder.is_dir() else None
        what = f"its checkpoint at step {step} is damaged ({damage})" if damage else f"has no checkpoint at step {step}"
        raise CheckpointError(f"run '{run_dir}': {what} (intact steps: {steps})")
    return step


def identity(c: Config) -> dict[str, Any]:
    """The config values a checkpoint must be resumed with (the keys declared Identity[...] in jaxlm/config/fields.py),
    for its meta."""
    values = c.to_dict()
    # as the checkpoint's JSON meta holds them (a tuple reads back as a list), so the two compare equal
    return json.loads(json.dumps({k: values[k] for k in IDENTITY_KEYS if k in values}))


def check_identity(meta: dict[str, Any], c: Config, run_dir: str | Path) -> None:
    """ConfigError naming the first key where `c` disagrees with what the checkpoint was trained with."""
    saved = dict(meta.get("identity") or {})
    saved.setdefault("seed", meta.get("seed", c.seed))  # checkpoints from before the identity record
    now = identity(c)
    for key, value in saved.items():
        if key in now and now[key] != value:
            raise ConfigError(
                f"--resume '{run_dir}': config key '{key}' is {now[key]!r} in config.json but the checkpoint "
                f"was trained with {value!r}; resuming would train something else (restore config.json, or "
                f"start a new run)"
            )


def unreadable(run_dir: str | Path, step: int, error: Exception, steps, flag: str) -> CheckpointError:
    """The one-line error for a checkpoint whose files are whole but whose contents cannot be read
    (array bytes torn inside a file: only tensorstore finds that, on restore), naming the older steps
    that `flag` can pick instead."""
    detail = (str(error).splitlines() or [type(error).__name__])[0].split(". See full TensorStore")[0][:160]
    older = [s for s in steps if s < step]
    hint = f"; pick an older one with {flag} (saved: {older})" if older else "; no older checkpoint exists"
    return CheckpointError(
        f"checkpoint at step {step} in '{Path(run_dir) / CHECKPOINTS}' is corrupt or unreadable ({detail}){hint}"
    )


def check_resumable(run_dir: str | Path, which: str | int = "latest", config: Config | None = None) -> int:
    """The step a resume would restore; CheckpointError if there is none, ConfigError if `config`
    disagrees with the checkpoint's identity (cheap: reads the meta, no arrays)."""
    mngr = open_manager(run_dir, read_only=True)
    try:
        if not mngr.all_steps():
            raise CheckpointError(
                f"--resume '{run_dir}': no checkpoint yet ({NO_CHECKPOINT}): nothing to resume; "
                f"start it again with --overwrite"
            )
        step = choose_step(mngr, which, run_dir)
        if config is not None:
            try:
                meta = dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
            except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged files
                raise unreadable(run_dir, step, e, mngr.all_steps(), "--resume-step") from None
            check_identity(meta, config, run_dir)
        return step
    finally:
        mngr.close()


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class RunCheckpoints:
    """The trainer's checkpoints: save asynchronously, restore into the live state's shapes and shardings."""

    def __init__(self, run_dir: str | Path, keep: int):
        self.run_dir = Path(run_dir)
        self.mngr = open_manager(run_dir, keep)
        self.previous_written_at = 0.0  # perf_counter when the last wait for a save in flight ended

    @property
    def steps(self) -> list[int]:
        return sorted(self.mngr.all_steps())

    def best_step(self) -> int | None:
        return self.mngr.best_step() if self.steps else None

    def saving(self) -> bool:
        """An asynchronous save is still being written (this process's view)."""
        return self.mngr.is_saving_in_progress()

    def wait(self) -> None:
        """Block until the asynchronous save in flight, if any, is written."""
        self.mngr.wait_until_finished()
        self.previous_written_at = time.perf_counter()

    def save(self, step: int, params, opt_state, meta: dict[str, Any], val_loss: float | None = None) -> bool:
        """Start an async save of step `step` (no-op if it exists); returns once arrays are copied off."""
        if step in self.mngr.all_steps():
            return False
        self.wait()  # (Orbax's save would wait here too) so the free space is settled
        distributed.raise_if_any_failed(
            self._space_error(step, params, opt_state),
            lambda m: OSError(errno.ENOSPC, m, str(self.folder)),
            what=f"save the checkpoint of step {step}",
        )
        self._set_aside_damaged(step)
        metrics = {"val_loss": float(val_loss)} if val_loss is not None and math.isfinite(val_loss) else None
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave({"step": step, **meta}),
        )
        return self.mngr.save(step, args=args, metrics=metrics, force=True)

    @property
    def folder(self) -> Path:
        return self.run_dir.absolute() / CHECKPOINTS

    def _set_aside_damaged(self, step: int) -> None:
        """A damaged folder of `step` (skipped on resume; this run is writing the step again) is renamed
        to `<step>.damaged` (or `.damaged-N`), out of Orbax's way, and kept."""
        path = self.folder / str(step)
        if not (path.exists() and distributed.is_primary()):
            return
        aside = next(
            p
            for i in itertools.count()
            if not (p := path.with_name(f"{step}.damaged" + (f"-{i}" if i else ""))).exists()
        )
        path.rename(aside)
        log.warning("the damaged checkpoint at step %d was moved to %s; saving the step again", step, aside)

    def _space_error(self, step: int, params, opt_state) -> OSError | None:
        """ENOSPC before a save that would not fit: the size of the last finished checkpoint (else the
        arrays' bytes) plus a margin, against the free space. Orbax writes in background threads, where
        a full disk becomes a flood of logged tracebacks and a run that trains on without checkpoints;
        found here, it is one error in the main thread, with the previous checkpoint untouched."""
        folder = self.folder
        done = [folder / str(s) for s in self.steps]
        if done:
            need = sum(f.stat().st_size for f in done[-1].rglob("*") if f.is_file())
        else:
            need = sum(x.nbytes for x in jax.tree.leaves((params, opt_state)) if hasattr(x, "nbytes"))
        need = int(need * SPACE_MARGIN) + SPACE_SLACK_BYTES
        free = shutil.disk_usage(folder if folder.is_dir() else self.run_dir).free
        if free >= need:
            return None
        return OSError(
            errno.ENOSPC,
            f"No space left on device: the checkpoint of step {step} needs about {need / 2**20:,.1f} MiB, "
            f"{free / 2**20:,.1f} MiB free",
            str(folder),
        )

    def restore(self, which: str | int, params_like, opt_state_like) -> tuple[Any, Any, dict[str, Any]]:
        """(params, opt_state, meta) of a saved step, laid out like the given live trees."""
        step = choose_step(self.mngr, which, self.run_dir)
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params_like)),
            opt_state=ocp.args.StandardRestore(_abstract(opt_state_like)),
            meta=ocp.args.JsonRestore(),
        )
        try:
            restored = self.mngr.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types for damaged files
            raise unreadable(self.run_dir, step, e, self.steps, "--resume-step") from None
        return restored.params, restored.opt_state, dict(restored.meta)

    def drop_after(self, step: int) -> None:
        """Delete checkpoints newer than `step` (they belong to a future that a resume abandons)."""
        for s in self.steps:
            if s > step:
                self.mngr.delete(s)

    def close(self) -> None:
        """Wait for pending async saves, then release the manager."""
        self.mngr.wait_until_finished()
        self.mngr.close()


def restore_params(run_dir: str | Path, which: str | int, target: Any) -> tuple[Any, int]:
    """(params, step) of a saved checkpoint, read into `target`'s shapes, dtypes and shardings (a tree of
    `jax.ShapeDtypeStruct`); only the params are read, not the optimizer state."""
    mngr = open_manager(run_dir, read_only=True)
    try:
        step = choose_step(mngr, which, run_dir)
        try:
            params = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))).params
        except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types for damaged files
            raise unreadable(run_dir, step, e, mngr.all_steps(), "--checkpoint") from None
    finally:
        mngr.close()
    return params, step


def load(run_dir: str | Path, which: str | int = "best") -> tuple[nnx.Module, Config]:
    """The trained model of a run and its Config; `which` is "best", "latest" or a step number.

    Only the params are read (not the optimizer state); arrays land on JAX's default device.
    """
    model, config, _ = load_with_step(run_dir, which)
    return model, config


def load_with_step(run_dir: str | Path, which: str | int = "best") -> tuple[nnx.Module, Config, int]:
    """`load`, and the step of the checkpoint `which` named (what a command tells its user it used)."""
    from jaxlm.model.transformer import abstract_model

    config = RunDir(run_dir).config()
    graphdef, params_shape = abstract_model(config)
    device = jax.sharding.make_single_device_sharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), params_shape)
    params, step = restore_params(run_dir, which, target)
    return nnx.merge(graphdef, params), config, step
