"""Full evaluation: the mean next-token loss over every token of a token file, streamed.

A file of N tokens holds N - 1 predictions (token i + 1 from tokens 0..i of its
window). They are cut into non-overlapping windows of the context length T:
window w predicts tokens wT + 1 .. wT + T from inputs wT .. wT + T - 1, so the
windows tile the predictions exactly once. The last window holds what is left
(1..T predictions): its inputs and targets are padded with token 0 and the
padded positions masked out of the sum. Windows go to the devices B at a time
(a global batch, sharded like training's); the last batch is padded with fully
masked windows, so one compiled program serves every batch.

Each batch is one contiguous span of the file, read with `os.pread` into a
buffer of B * T + 1 tokens (never through the memory map, whose read-ahead would
make resident memory grow with the file; see `jaxlm.data.tokens.read_windows`),
so memory stays flat in the file size. The step returns the batch's summed
negative log-likelihood; the host adds the sums in float64.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.errors import DataError
from jaxlm.train.distributed import is_primary
from jaxlm.train.sharding import Layout, batch_spec
from jaxlm.train.steps import model_loss


@dataclass(frozen=True)
class FullEval:
    """What a full evaluation measured."""

    loss: float  # mean negative log-likelihood, nats per predicted token
    tokens: int  # predictions evaluated: the file's token count - 1
    windows: int
    seconds: float  # evaluation time, compilation excluded
    compile_s: float
    bytes_per_token: float | None  # of the source text, when the file's metadata knows it

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bpb(self) -> float | None:
        """Bits per byte, as training's val_bpb computes it: loss / ln 2 / (bytes / token)."""
        return self.loss / math.log(2) / self.bytes_per_token if self.bytes_per_token else None

    def numbers(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bpb": self.bpb,
            "tokens": self.tokens,
            "windows": self.windows,
            "tokens_per_sec": self.tokens / max(self.seconds, 1e-9),
            "seconds": self.seconds,
            "compile_s": self.compile_s,
        }


def window_count(num_tokens: int, context_length: int) -> int:
    """Windows that cover the file's num_tokens - 1 predictions, the last one possibly partial."""
    return -(-(num_tokens - 1) // context_length)


def _read_span(tokens: np.ndarray, fd: int | None, start: int, length: int) -> np.ndarray:
    """int32 tokens[start : start + length], zero-padded past the end of the file."""
    out = np.zeros(length, dtype=np.int32)
    stop = min(start + length, len(tokens))
    if stop <= start:
        return out
    if fd is None:
        out[: stop - start] = tokens[start:stop]
    else:
        itemsize = tokens.dtype.itemsize
        raw = os.pread(fd, (stop - start) * itemsize, tokens.offset + start * itemsize)
        out[: stop - start] = np.frombuffer(raw, dtype=tokens.dtype)
    return out


def read_eval_batch(
    tokens: np.ndarray, fd: int | None, batch: int, batch_size: int, context_length: int, rows: slice | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, mask) of global batch `batch`, only this process's `rows`; mask is 1.0 on real predictions."""
    t, n = context_length, len(tokens)
    row_ids = np.arange(batch_size)[rows]
    if isinstance(rows, slice) and len(row_ids):  # contiguous rows: one read for all of them
        first = batch * batch_size + int(row_ids[0])
        span = _read_span(tokens, fd, first * t, len(row_ids) * t + 1)
        x = span[:-1].reshape(len(row_ids), t)
        y = span[1:].reshape(len(row_ids), t)
    else:
        windows = [_read_span(tokens, fd, (batch * batch_size + int(r)) * t, t + 1) for r in row_ids]
        w = np.stack(windows) if windows else np.zeros((0, t + 1), np.int32)
        x, y = w[:, :-1], w[:, 1:]
    # target of (window w, position j) is token w*T + j + 1; it exists while that index is <= n - 1
    target_index = (batch * batch_size + row_ids)[:, None] * t + np.arange(t)[None, :] + 1
    mask = (target_index <= n - 1).astype(np.float32)
    return x, y, mask


def nll_sum_fn(graphdef: nnx.GraphDef, chunk: int | None = None):
    """(params, x, y, mask) -> sum over unmasked positions of the next-token NLL (float32), per position
    as training computes it (`jaxlm.train.steps.model_loss`: chunked, logsumexp minus the target's logit)."""

    def nll_sum(params, x_BxT, y_BxT, mask_BxT):
        nll_BxT = model_loss(nnx.merge(graphdef, params), x_BxT, y_BxT, chunk)[1]["nll"]
        return jnp.sum(jnp.where(mask_BxT > 0, nll_BxT, 0.0))

    return nll_sum


def compile_nll_sum(
    graphdef: nnx.GraphDef, layout: Layout, params: Any, batch_size: int, context_length: int, chunk: int | None = None
):
    """AOT-compiled `nll_sum_fn`, sharded like training's eval step (batch over all devices)."""
    jitted = jax.jit(
        nll_sum_fn(graphdef, chunk),
        in_shardings=(layout.params, layout.batch, layout.batch, layout.batch),
        out_shardings=layout.replicated,
    )
    xy = batch_spec(layout, batch_size, context_length)
    mask = jax.ShapeDtypeStruct(xy.shape, jnp.float32, sharding=layout.batch)
    return jitted.lower(params, xy, xy, mask).compile()


def evaluate_tokens(
    tokens: np.ndarray,
    graphdef: nnx.GraphDef,
    params: Any,
    layout: Layout,
    *,
    batch_size: int,
    context_length: int,
    vocab_size: int,
    bytes_per_token: float | None = None,
    progress: bool = False,
    step_fn=None,
) -> FullEval:
    """Mean loss over all len(tokens) - 1 predictions of `tokens` (1-D, usually a memmap); see the module
    docstring. `step_fn` reuses an already compiled `compile_nll_sum` program of the same shapes."""
    from tqdm import tqdm

    n = len(tokens)
    if n < 2:
        raise DataError(f"token file: {n} token(s) hold no prediction (need at least 2)")
    t0 = time.perf_counter()
    step_fn = step_fn or compile_nll_sum(graphdef, layout, params, batch_size, context_length)
    compile_s = time.perf_counter() - t0
    windows = window_count(n, context_length)
    batches = -(-windows // batch_size)
    rows = layout.local_rows(batch_size)
    mapped = isinstance(tokens, np.memmap) and isinstance(tokens.base, mmap.mmap) and tokens.filename
    fd = os.open(tokens.filename, os.O_RDONLY) if mapped else None
    bar = tqdm(total=n - 1, unit="tok", unit_scale=True, desc="evaluate", disable=not (progress and is_primary()))
    total, pending = 0.0, None
    t0 = time.perf_counter()
    try:
        for b in range(batches):
            x, y, mask = read_eval_batch(tokens, fd, b, batch_size, context_length, rows)
            if x.size and int(max(x.max(), y.max())) >= vocab_size:
                raise DataError(f"token file: token id {int(max(x.max(), y.max()))} >= vocab_size={vocab_size}")
            shape = (batch_size, context_length)
            xs, ys = layout.put_batch(x, y, batch_size)
            ms = jax.make_array_from_process_local_data(layout.batch, mask, shape)
            result = step_fn(params, xs, ys, ms)  # dispatched; the previous batch is read while this one runs
            if pending is not None:
                total += float(pending[0])
                bar.update(pending[1])
            pending = (result, int(min(n - 1 - b * batch_size * context_length, batch_size * context_length)))
        total += float(pending[0])
        bar.update(pending[1])
    finally:
        if fd is not None:
            os.close(fd)
        bar.close()
    seconds = time.perf_counter() - t0
    return FullEval(total / (n - 1), n - 1, windows, seconds, compile_s, bytes_per_token)
