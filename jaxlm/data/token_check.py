"""What a token file holds, checked at a bounded cost whatever its size or source.

* `token_range`: the smallest and largest token id, from one scan in fixed-size chunks (bounded memory,
  read with `os.pread`, not through the file's mapping), cached in the token cache per version of the
  file (its path, size, modification time and inode), so a second run of the same file reads nothing.
* `fingerprint`: a digest of the file's size and 64 blocks of 64 KiB spread over it (4 MiB read at most):
  what a checkpoint records of its training file, so a resume notices a file rewritten in place (a
  re-tokenization, an append, another dataset under the same name), moved or not. It does not notice a
  change confined to bytes between its blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from jaxlm.data.cache import cache_root

log = logging.getLogger(__name__)

SCAN_TOKENS = 1 << 24  # tokens per chunk of the range scan: 32 MiB of uint16, 64 MiB of uint32
FINGERPRINT_BLOCKS = 64
FINGERPRINT_BLOCK_BYTES = 1 << 16


def fingerprint(path: str | Path) -> str:
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK_BYTES:
            digest.update(f.read())
        else:
            for i in range(FINGERPRINT_BLOCKS):
                f.seek((size - FINGERPRINT_BLOCK_BYTES) * i // (FINGERPRINT_BLOCKS - 1))
                digest.update(f.read(FINGERPRINT_BLOCK_BYTES))
    return digest.hexdigest()[:32]


def token_range(tokens: np.ndarray) -> tuple[int, int]:
    """(min, max) token id of a non-empty token array; a memory-mapped file's is cached (see the module)."""
    if not (isinstance(tokens, np.memmap) and tokens.filename):
        return int(tokens.min()), int(tokens.max())
    path = Path(tokens.filename).resolve()
    st = path.stat()
    version = [str(path), st.st_size, st.st_mtime_ns, st.st_ino, str(tokens.dtype), tokens.offset]
    record = _range_record(path)
    try:
        cached = json.loads(record.read_text())
        if cached["version"] == version:
            return int(cached["min"]), int(cached["max"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if len(tokens) > SCAN_TOKENS:
        log.info("checking the token ids of %s (%d tokens, once per version of the file)", path, len(tokens))
    low, high = _scan(tokens)
    _save(record, {"version": version, "min": low, "max": high})
    return low, high


def _range_record(path: Path) -> Path:
    return cache_root() / "token-ranges" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")


def _scan(tokens: np.memmap) -> tuple[int, int]:
    itemsize, low, high = tokens.dtype.itemsize, None, None
    fd = os.open(tokens.filename, os.O_RDONLY)
    try:
        for start in range(0, len(tokens), SCAN_TOKENS):
            count = min(SCAN_TOKENS, len(tokens) - start)
            chunk = np.frombuffer(os.pread(fd, count * itemsize, tokens.offset + start * itemsize), tokens.dtype)
            low = int(chunk.min()) if low is None else min(low, int(chunk.min()))
            high = int(chunk.max()) if high is None else max(high, int(chunk.max()))
    finally:
        os.close(fd)
    return low, high


def _save(record: Path, value: dict) -> None:
    """Best effort: a cache that cannot be written only means the next run scans again."""
    tmp = record.with_name(f".{record.name}.tmp-{os.getpid()}")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value))
        os.replace(tmp, record)
    except OSError:
        tmp.unlink(missing_ok=True)
