"""The training loop: a jitted, donated train step; eval, logging and sampling around it.

Metrics come to the host one step late: step s+1 is dispatched before step s's
loss is read, so the device never waits on Python.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlm.config import Config
from jaxlm.data.sources import prepare
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.data.tokens import batch_at, eval_batches, open_tokens
from jaxlm.errors import ConfigError
from jaxlm.flops import flops_per_token, param_counts
from jaxlm.generate import generate_text
from jaxlm.model import build_model, cross_entropy
from jaxlm.optim import build_optimizer, schedule_for
from jaxlm.tracking import ExperimentTracker

log = logging.getLogger(__name__)


def select_device(c: Config) -> jax.Device:
    """The first device of the configured backend (or JAX's default); ConfigError if absent."""
    if c.device is None:
        return jax.devices()[0]
    try:
        return jax.devices(c.device)[0]
    except RuntimeError:
        raise ConfigError(f"config key 'device': no '{c.device}' backend here (available: {jax.default_backend()})") from None


def make_loss_fn(graphdef: nnx.GraphDef):
    def loss_fn(params, x_BxT, y_BxT):
        return cross_entropy(nnx.merge(graphdef, params)(x_BxT), y_BxT)

    return loss_fn


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
    """(params, opt_state, x, y) -> (params, opt_state, {loss, grad_norm}); state buffers donated."""
    grad_fn = jax.value_and_grad(make_loss_fn(graphdef))

    def train_step(params, opt_state, x_BxT, y_BxT):
        loss, grads = grad_fn(params, x_BxT, y_BxT)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return jax.jit(train_step, donate_argnums=(0, 1))


def make_eval_step(graphdef: nnx.GraphDef):
    return jax.jit(make_loss_fn(graphdef))


@dataclass
class RunResult:
    status: str
    summary: dict[str, Any]
    sample: str | None


def run(c: Config, tracker: ExperimentTracker, *, progress: bool = False) -> RunResult:
    """Train `c` to max_iterations, logging through `tracker`; returns the final summary."""
    from tqdm import tqdm

    device = select_device(c)
    files = prepare(c, progress=progress)
    train_tokens = open_tokens(files.train, c.vocab_size, c.context_length)
    val_tokens = open_tokens(files.val, c.vocab_size, c.context_length)
    tokenizer = load_tokenizer(files.tokenizer) if files.tokenizer else None
    val_set = eval_batches(val_tokens.tokens, c.eval_batches, c.batch_size, c.context_length)
    bytes_per_token = val_tokens.bytes_per_token
    schedule = schedule_for(c)
    counts = param_counts(c)
    flops_tok = flops_per_token(c)

    with jax.default_device(device):
        model = build_model(c)
        graphdef, params = nnx.split(model, nnx.Param)
        tx = build_optimizer(c)
        opt_state = tx.init(params)
        train_step, eval_step = make_train_step(graphdef, tx), make_eval_step(graphdef)

        t0 = time.perf_counter()
        x0, y0 = batch_at(train_tokens.tokens, c.seed, 0, c.batch_size, c.context_length)
        train_step = train_step.lower(params, opt_state, x0, y0).compile()
        eval_step = eval_step.lower(params, *val_set[0]).compile()
        compile_s = time.perf_counter() - t0
        log.info("compiled in %.1fs", compile_s)

        def evaluate(p) -> dict[str, float]:
            total = sum(eval_step(p, x, y) for x, y in val_set)
            loss = float(total) / len(val_set)
            out = {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}
            if bytes_per_token:
                out["val_bpb"] = loss / math.log(2) / bytes_per_token
            return out

        tracker.write_summary(compile_s=compile_s, params_total=counts["total"],
                              params_non_embedding=counts["non_embedding"], device_kind=device.device_kind,
                              device_count=1, jax_version=jax.__version__, max_iterations=c.max_iterations)
        bar = tqdm(total=c.max_iterations, desc=tracker.name, disable=not progress, unit="step")
        start = time.perf_counter()
        last_log_time, last_log_step = start, 0
        pending = None  # (step, metrics on device) of the step whose numbers are not yet read
        window_losses: list[float] = []
        final_train_loss = float("nan")
        best = {"val_loss": math.inf, "step": None}
        status = "completed"

        def consume(step_done: int, metrics, evals: dict | None) -> None:
            nonlocal final_train_loss, last_log_time, last_log_step, eval_seconds
            m = jax.device_get(metrics)
            loss = float(m["loss"])
            final_train_loss = loss
            window_losses.append(loss)
            if not (evals or step_done % c.log_interval == 0 or step_done == c.max_iterations):
                return
            now = time.perf_counter()
            train_time = max(now - last_log_time - eval_seconds, 1e-9)
            tok_s = (step_done - last_log_step) * c.tokens_per_step / train_time
            row = {"train_loss": float(np.mean(window_losses)), "grad_norm": float(m["grad_norm"]),
                   "learning_rate": float(schedule(step_done)), "tokens_per_sec": tok_s,
                   "tokens": step_done * c.tokens_per_step, "wallclock_s": now - start, **(evals or {})}
            window_losses.clear()
            tracker.log_step(step_done, **row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=f"{tok_s:,.0f}")
            last_log_time, last_log_step, eval_seconds = now, step_done, 0.0

        eval_seconds = 0.0
        for step in range(c.max_iterations):
            x, y = batch_at(train_tokens.tokens, c.seed, step, c.batch_size, c.context_length)
            params, opt_state, metrics = train_step(params, opt_state, x, y)
            done = step + 1
            if pending is not None:
                consume(*pending)
            evals = None
            if done % c.eval_interval == 0 or done == c.max_iterations:
                t_eval = time.perf_counter()
                evals = evaluate(params)
                eval_seconds += time.perf_counter() - t_eval
                if evals["val_loss"] < best["val_loss"]:
                    best.update(val_loss=evals["val_loss"], step=done)
            pending = (done, metrics, evals)
            bar.update(1)
        if pending is not None:
            consume(*pending)
        bar.close()
        wallclock = time.perf_counter() - start
        jax.block_until_ready(params)

        sample = None
        if tokenizer is not None and c.sample_tokens > 0:
            sample = generate_text(graphdef, params, tokenizer, c.sample_prompt, context_length=c.context_length,
                                   max_new_tokens=c.sample_tokens, seed=c.seed)

    last = tracker.rows[-1] if tracker.rows else {}
    summary = tracker.finalize(
        status=status, steps=c.max_iterations, tokens=c.max_iterations * c.tokens_per_step,
        wallclock_s=wallclock, final_train_loss=final_train_loss, final_val_loss=last.get("val_loss"),
        final_val_perplexity=last.get("val_perplexity"), final_val_bpb=last.get("val_bpb"),
        best_val_loss=best["val_loss"], best_val_step=best["step"],
        mean_tokens_per_sec=c.max_iterations * c.tokens_per_step / wallclock,
        flops_per_token=flops_tok, sample=sample)
    return RunResult(status, summary, sample)
