"""The Trainer: one run's data, model, optimizer state and compiled steps, and the pieces the loop
uses (a batch, an evaluation, a sample, a checkpoint restore). The loop itself is
`jaxlm.train.loop.TrainingLoop`, which the Trainer inherits: `Trainer(config).run(tracker)`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import jax

from jaxlm.config import Config
from jaxlm.data.sources import prepare
from jaxlm.data.token_check import fingerprint
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.data.tokens import batch_at, eval_batches, open_tokens
from jaxlm.errors import ConfigError
from jaxlm.model.decode import Decoder
from jaxlm.model.transformer import abstract_model
from jaxlm.model.weights import import_safetensors
from jaxlm.tracking.protocol import RunTracker
from jaxlm.train.checkpoint import RunCheckpoints, identity
from jaxlm.train.distributed import primary_first
from jaxlm.train.full_eval import compile_nll_sum, evaluate_tokens
from jaxlm.train.hardware import peak_flops_for
from jaxlm.train.kernels import compile_with_attention
from jaxlm.train.loop import TrainingLoop
from jaxlm.train.meter import Meter
from jaxlm.train.optim import build_optimizer, learning_rate_schedule
from jaxlm.train.samples import generate_texts
from jaxlm.train.sharding import build_mesh, compile_eval_step, compile_train_step, init_state
from jaxlm.train.stopping import DivergenceGuard

log = logging.getLogger(__name__)


class Trainer(TrainingLoop):
    """One run: owns params, optimizer state and the compiled steps."""

    def __init__(self, c: Config, *, progress: bool = False):
        self.c, self.progress = c, progress
        self.mesh = build_mesh(c)  # all devices of all processes; see jaxlm/train/sharding.py
        self.device = self.mesh.local_devices[0]
        self.peak_flops = peak_flops_for(self.device, c.dtype)
        self._open_data(c)
        self.schedule = learning_rate_schedule(c)
        tx = build_optimizer(c, self.schedule)
        self.graphdef, self.params, self.opt_state, self.layout = init_state(c, tx, self.mesh)
        if c.init_from:
            self.params = jax.device_put(import_safetensors(c.init_from, c)[0], self.layout.params)
        self.rows = self.layout.local_rows(c.batch_size)  # this process's rows of every global batch
        self.val_set = [self.layout.put_batch(x[self.rows], y[self.rows], c.batch_size) for x, y in self.val_set]
        t0 = time.perf_counter()
        # the attention kernel is chosen here, once: the model is rebuilt with the one that compiled
        (self.graphdef, self.train_step), self.attention = compile_with_attention(
            c, self.device.platform, lambda kernel_config: self._compile_train_step(kernel_config, tx)
        )
        self.train_compile_s = time.perf_counter() - t0
        self.eval_step = compile_eval_step(c, self.graphdef, self.layout, self.params)
        self.compile_s = time.perf_counter() - t0
        self.decoder: Decoder | None = None
        self.full_eval_step = None  # compiled on the first full evaluation
        self.step = 0  # updates applied so far
        self.tracker: RunTracker | None = None
        self.checkpoints: RunCheckpoints | None = None
        self.resumed: dict = {}  # meta of the restored checkpoint, when resuming
        log.info("compiled in %.1fs", self.compile_s)

    def _compile_train_step(self, c: Config, tx):
        graphdef = abstract_model(c)[0]
        return graphdef, compile_train_step(c, graphdef, tx, self.layout, self.params, self.opt_state)

    def _open_data(self, c: Config) -> None:
        files = primary_first(lambda: prepare(c, progress=self.progress))  # one process fills a shared cache
        self.train_tokens = open_tokens(files.train, c.vocab_size, c.context_length).tokens
        self.train_file = {
            "path": str(Path(files.train).resolve()),
            "bytes": Path(files.train).stat().st_size,
            "fingerprint": fingerprint(files.train),
        }
        val = open_tokens(files.val, c.vocab_size, c.context_length)
        self.val_set = eval_batches(val.tokens, c.eval_batches, c.batch_size, c.context_length)
        self.val_tokens = val.tokens  # memory-mapped; the full evaluation streams it
        self.val_bytes_per_token = val.bytes_per_token
        self.tokenizer_path = files.tokenizer
        self.tokenizer = load_tokenizer(files.tokenizer) if files.tokenizer else None

    def restore(self, run_dir, which: str | int = "latest") -> int:
        """Continue from a checkpoint of `run_dir` ("latest", "best" or a step); returns its step.

        Checkpoints newer than the restored one are deleted: the resumed run rewrites that future.
        """
        self.checkpoints = RunCheckpoints(run_dir, self.c.keep_checkpoints)
        self.params, self.opt_state, self.resumed = self.checkpoints.restore(which, self.params, self.opt_state)
        self.step = self.resumed["step"]
        self._check_same_data(self.resumed.get("train_file") or {}, self.resumed.get("train_tokens"))
        self.checkpoints.drop_after(self.step)
        return self.step

    def _check_same_data(self, saved: dict, saved_tokens: int | None) -> None:
        """ConfigError unless the training file holds what it held at the checkpoint: the same content
        (its fingerprint; a moved copy is the same data), else, for checkpoints from before fingerprints,
        the same path and size. The data order is `batch_at(seed, step)` over these tokens."""
        now = self.train_file
        keys = ("fingerprint", "bytes") if "fingerprint" in saved else ("path", "bytes")
        changed = [k for k in keys if k in saved and saved[k] != now[k]]
        if saved_tokens is not None and saved_tokens != len(self.train_tokens):
            changed.append("tokens")
        if changed:
            raise ConfigError(
                f"training data changed since the checkpoint ({saved_tokens} tokens in {saved.get('path')}, "
                f"now {len(self.train_tokens)} in {now['path']}; differs in its {' and '.join(changed)}): the "
                f"data order would not continue"
            )

    def checkpoint_meta(self, meter: Meter, guard: DivergenceGuard, best: dict) -> dict:
        """Everything besides params/opt_state that continuing bit for bit needs (data order = seed + step)."""
        return {
            "seed": self.c.seed,
            "identity": identity(self.c),
            "train_file": self.train_file,
            "train_tokens": len(self.train_tokens),
            "wallclock_s": meter.elapsed(),
            "initial_loss": guard.initial_loss,
            "best_val_loss": best["val_loss"],
            "best_val_step": best["step"],
            "window_losses": list(meter.losses),
        }

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """Global batch `step`, sharded over the mesh; this process reads only its own rows."""
        c = self.c
        x, y = batch_at(self.train_tokens, c.seed, step, c.batch_size, c.context_length, rows=self.rows)
        return self.layout.put_batch(x, y, c.batch_size)

    def evaluate(self) -> dict[str, float]:
        """Mean loss over the fixed validation batches, as nats/token, perplexity and bits/byte."""
        total = sum(self.eval_step(self.params, x, y) for x, y in self.val_set)
        loss = float(total) / len(self.val_set)
        out = {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}
        if self.val_bytes_per_token:
            out["val_bpb"] = loss / math.log(2) / self.val_bytes_per_token
        return out

    def evaluate_full(self) -> dict[str, float]:
        """Every token of the validation file (`jaxlm.train.full_eval`), as `full_val_*` row fields; batches
        of batch_size / grad_accum_steps windows, the micro-batch training already fits in memory."""
        c = self.c
        batch = c.batch_size // c.grad_accum_steps
        if self.full_eval_step is None:
            self.full_eval_step = compile_nll_sum(
                self.graphdef, self.layout, self.params, batch, c.context_length, c.loss_chunk_tokens
            )
        r = evaluate_tokens(
            self.val_tokens,
            self.graphdef,
            self.params,
            self.layout,
            batch_size=batch,
            context_length=c.context_length,
            vocab_size=c.vocab_size,
            bytes_per_token=self.val_bytes_per_token,
            step_fn=self.full_eval_step,
        )
        out = {"full_val_loss": r.loss, "full_val_perplexity": r.perplexity, "full_val_tokens": r.tokens}
        if r.bpb is not None:
            out["full_val_bpb"] = r.bpb
        return {**out, "full_val_seconds": r.seconds}

    def sample(self, seed: int | None = None) -> str | None:
        c = self.c
        if self.tokenizer is None or c.sample_tokens == 0:
            return None
        if self.decoder is None:
            self.decoder = Decoder(self.graphdef, temperature=0.8, top_p=0.9)
        with jax.default_device(self.device):
            return generate_texts(
                self.graphdef,
                self.params,
                self.tokenizer,
                c.sample_prompt,
                context_length=c.context_length,
                max_new_tokens=c.sample_tokens,
                seed=c.seed if seed is None else seed,
                decode_step=self.decoder,
            )[0]
