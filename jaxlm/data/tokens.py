"""Token files: text -> `.npy` (uint16/uint32) + metadata, memory-mapped reads, `batch_at`.

A token file `X.npy` has a sidecar `X.meta.json` with vocab size, dtype, token
count, byte count of the source text (so losses convert to bits/byte) and the
largest token id. Opening a file checks its ids against the vocabulary from the file itself
(`jaxlm.data.token_check`: one chunked scan per version of the file, cached).
"""

from __future__ import annotations

import gzip
import json
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from jaxlm.data.token_check import token_range
from jaxlm.errors import DataError, file_problem

CHUNK_BYTES = 1 << 20  # text is encoded in ~1 MB pieces cut at line ends


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def meta_path(npy_path: str | Path) -> Path:
    p = Path(npy_path)
    return p.with_name(p.stem + ".meta.json")


def open_binary(path: Path):
    """The file's bytes, decompressed on the fly when it ends in `.gz`."""
    return gzip.open(path, "rb") if Path(path).suffix == ".gz" else open(path, "rb")


def read_text_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """Yield the file's text (`.gz` read directly) in pieces cut after a newline; DataError on non-UTF-8."""
    offset, line_no = 0, 1
    with open_binary(path) as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                return
            if not block.endswith(b"\n"):
                block += f.readline()
            try:
                yield block.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = offset + e.start
                line = line_no + block[: e.start].count(b"\n")
                raise DataError(f"data file '{path}': not UTF-8 at byte {bad} (line {line})") from None
            offset += len(block)
            line_no += block.count(b"\n")


def encode_text_file(
    tok: Tokenizer, text_path: str | Path, out_npy: str | Path, *, progress: bool = False, batch_chunks: int = 16
) -> dict:
    """Encode a UTF-8 text file into `out_npy` + metadata, streaming, in batches across cores.

    Memory holds `batch_chunks` pieces of text at a time, never the whole corpus.
    Written to temporary names and renamed, so a crash never leaves a half file.
    """
    from tqdm import tqdm

    text_path, out_npy = Path(text_path), Path(out_npy)
    check_text_file(text_path, utf8=False)
    compressed = text_path.suffix == ".gz"
    total_bytes = 0  # of text, counted as read (a .gz file's size says nothing about it)
    vocab_size = tok.get_vocab_size()
    dtype = token_dtype(vocab_size)
    out_npy.parent.mkdir(parents=True, exist_ok=True)
    raw_tmp = out_npy.with_name(out_npy.name + ".raw.tmp")
    num_tokens, max_id = 0, 0
    bar = tqdm(
        total=None if compressed else text_path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=f"encode {text_path.name}",
        disable=not progress,
    )
    with open(raw_tmp, "wb") as raw:
        pending: list[str] = []

        def flush():
            nonlocal num_tokens, max_id, total_bytes
            for enc in tok.encode_batch(pending, add_special_tokens=False):
                ids = np.asarray(enc.ids, dtype=np.int64)
                if ids.size:
                    max_id = max(max_id, int(ids.max()))
                    raw.write(ids.astype(dtype).tobytes())
                    num_tokens += ids.size
            chunk_bytes = sum(len(p.encode("utf-8")) for p in pending)
            total_bytes += chunk_bytes
            bar.update(chunk_bytes)
            pending.clear()

        for chunk in read_text_chunks(text_path):
            pending.append(chunk)
            if len(pending) >= batch_chunks:
                flush()
        flush()
    bar.close()
    tmp_npy = out_npy.with_name(out_npy.name + ".tmp.npy")
    arr = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=dtype, shape=(num_tokens,))
    block = 1 << 24
    with open(raw_tmp, "rb") as raw:
        for start in range(0, num_tokens, block):
            piece = np.frombuffer(raw.read(block * dtype.itemsize), dtype=dtype)
            arr[start : start + len(piece)] = piece
    arr.flush()
    del arr
    os.replace(tmp_npy, out_npy)
    raw_tmp.unlink()
    meta = {
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "num_bytes": total_bytes,
        "max_token_id": max_id,
        "source": str(text_path),
    }
    meta_path(out_npy).write_text(json.dumps(meta, indent=2))
    return meta


def check_text_file(path: Path, utf8: bool = True) -> None:
    """DataError unless `path` exists and holds non-whitespace (and, with utf8, valid UTF-8) text."""
    if problem := file_problem(path):
        raise DataError(f"data file '{path}': {problem}")
    has_text = False
    if utf8:
        for chunk in read_text_chunks(path):
            has_text = has_text or bool(chunk.strip())
    else:
        with open_binary(path) as f:
            while not has_text and (block := f.read(CHUNK_BYTES)):
                has_text = bool(block.strip())
    if not has_text:
        raise DataError(f"data file '{path}': is empty or whitespace only")


@dataclass(frozen=True)
class TokenFile:
    """A memory-mapped token array and what its metadata says about it."""

    path: Path
    tokens: np.ndarray  # memmap, never loaded whole
    num_bytes: int | None  # bytes of source text, when known

    @property
    def bytes_per_token(self) -> float | None:
        return self.num_bytes / len(self.tokens) if self.num_bytes else None


def read_meta(path: Path) -> dict:
    """The token file's `.meta.json` ({} when there is none); DataError when it is unreadable."""
    meta_file = meta_path(path)
    if not meta_file.exists():
        return {}
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(
            f"token metadata '{meta_file}': unreadable or not JSON ({type(e).__name__}); "
            f"delete it or prepare the data again"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("max_token_id", 0), int):
        raise DataError(f"token metadata '{meta_file}': expected a JSON object with an integer max_token_id")
    return meta


def open_tokens(path: str | Path, vocab_size: int, context_length: int) -> TokenFile:
    """Memory-map a `.npy` token file and check it fits the model; DataError if not."""
    path = Path(path)
    if problem := file_problem(path):
        raise DataError(f"data file '{path}': {problem}")
    try:
        tokens = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise DataError(f"data file '{path}': not a readable .npy file ({e})") from None
    if not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(f"data file '{path}': token dtype {tokens.dtype} is not an integer type")
    if tokens.ndim != 1:
        raise DataError(f"data file '{path}': expected a 1-D token array, got shape {tokens.shape}")
    if len(tokens) < context_length + 1:
        raise DataError(
            f"data file '{path}': {len(tokens)} tokens is shorter than context_length + 1 = {context_length + 1}"
        )
    meta = read_meta(path)
    low, high = token_range(tokens)  # the file's own ids, whatever its metadata says
    if low < 0:
        raise DataError(f"data file '{path}': negative token id {low} (token ids are 0 .. vocab_size - 1)")
    if high >= vocab_size:
        raise DataError(f"data file '{path}': token id {high} >= vocab_size={vocab_size}")
    return TokenFile(path, tokens, meta.get("num_bytes"))


def batch_starts(seed: int, step: int, batch_size: int, num_tokens: int, context_length: int) -> np.ndarray:
    """Window starts for (seed, step), uniform over [0, n - context - 1]; a pure function."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, num_tokens - context_length, size=batch_size)


def read_windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """int32 (len(starts), length): the windows tokens[s : s + length].

    From a memory-mapped token file each window is read with `os.pread`, not
    through the mapping. Reading through the mapping maps the kernel's whole
    read-ahead block around each window into the process (up to 2 MiB per
    window on Linux), so a run's resident memory creeps toward the size of its
    training file (docs/performance.md, "Memory: token files are never read whole"). pread copies
    only the window.
    """
    if not (isinstance(tokens, np.memmap) and isinstance(tokens.base, mmap.mmap) and tokens.filename):
        return np.asarray(tokens[np.asarray(starts)[:, None] + np.arange(length)], dtype=np.int32)
    itemsize = tokens.dtype.itemsize
    out = np.empty((len(starts), length), dtype=np.int32)
    fd = os.open(tokens.filename, os.O_RDONLY)
    try:
        for row, start in enumerate(starts):
            raw = os.pread(fd, length * itemsize, tokens.offset + int(start) * itemsize)
            out[row] = np.frombuffer(raw, dtype=tokens.dtype)
    finally:
        os.close(fd)
    return out


def batch_at(
    tokens: np.ndarray, seed: int, step: int, batch_size: int, context_length: int, rows: slice = slice(None)
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int32 of shape (rows of batch_size, context_length); y is x shifted by one.

    The same (seed, step) gives the same global batch on every machine and after
    any resume; `rows` picks this process's share of it.
    """
    starts = batch_starts(seed, step, batch_size, len(tokens), context_length)[rows]
    window = read_windows(tokens, starts, context_length + 1)
    return window[:, :-1], window[:, 1:]


def eval_batches(
    tokens: np.ndarray, num_batches: int, batch_size: int, context_length: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fixed validation set: evenly spaced windows across the whole file."""
    count = num_batches * batch_size
    starts = np.linspace(0, len(tokens) - context_length - 1, count).astype(np.int64)
    window = read_windows(tokens, starts, context_length + 1).reshape(num_batches, batch_size, context_length + 1)
    return [(w[:, :-1], w[:, 1:]) for w in window]
