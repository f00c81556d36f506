"""Data: BPE tokenizer round-trip, token files + metadata, `batch_at`, the token cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxlm.data.sources import BUNDLED_DIR, prepare
from jaxlm.data.tokenizer import EOT, decode, load_tokenizer, train_tokenizer
from jaxlm.data.tokens import (
    batch_at,
    batch_starts,
    encode_text_file,
    eval_batches,
    meta_path,
    open_tokens,
    token_dtype,
)
from jaxlm.errors import DataError

TRAIN_TXT, VALID_TXT = BUNDLED_DIR / "train.txt", BUNDLED_DIR / "valid.txt"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A 512-token BPE trained once on the bundled sample (~0.5 s)."""
    return train_tokenizer([TRAIN_TXT], 512, tmp_path_factory.mktemp("tok"))


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_on_sample(tokenizer):
    text = VALID_TXT.read_text(encoding="utf-8")
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert decode(tokenizer, ids) == text
    assert tokenizer.get_vocab_size() == 512
    assert len(ids) < len(text.encode("utf-8")) / 2  # the merges compress: fewer tokens than half the bytes


def test_tokenizer_round_trips_unicode_and_whitespace(tokenizer):
    text = "  Héllo,\twörld! 🙂 ünseen çhars\n\n\nend "
    assert decode(tokenizer, tokenizer.encode(text).ids) == text


def test_endoftext_is_one_token(tokenizer):
    eot_id = tokenizer.token_to_id(EOT)
    assert eot_id is not None
    ids = tokenizer.encode(f"The end.{EOT}Once upon a time").ids
    assert ids.count(eot_id) == 1
    assert tokenizer.encode(EOT).ids == [eot_id]
    assert decode(tokenizer, ids) == f"The end.{EOT}Once upon a time"


def test_tokenizer_saved_and_reloadable(tokenizer, tmp_path):
    train_tokenizer([TRAIN_TXT], 300, tmp_path)
    from_dir, from_file = load_tokenizer(tmp_path), load_tokenizer(tmp_path / "tokenizer.json")
    text = "Lily saw a big dog."
    assert from_dir.get_vocab_size() == 300
    assert from_dir.encode(text).ids == from_file.encode(text).ids
    assert decode(from_dir, from_dir.encode(text).ids) == text


def test_tokenizer_vocab_too_small_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="vocab_size"):
        train_tokenizer([TRAIN_TXT], 200, tmp_path)


# ---------------------------------------------------------------- token files


def test_encode_text_file_writes_uint16_tokens_and_meta(tokenizer, tmp_path):
    out = tmp_path / "valid.npy"
    meta = encode_text_file(tokenizer, VALID_TXT, out)
    tokens = np.load(out, mmap_mode="r")
    want = tokenizer.encode(VALID_TXT.read_text(encoding="utf-8"), add_special_tokens=False).ids
    assert tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens, want)
    on_disk = json.loads(meta_path(out).read_text())
    assert on_disk == meta
    assert meta["vocab_size"] == 512 and meta["dtype"] == "uint16"
    assert meta["num_tokens"] == len(want)
    assert meta["num_bytes"] == VALID_TXT.stat().st_size
    assert meta["max_token_id"] == max(want)
    assert not list(tmp_path.glob("*tmp*"))  # no temporary files left behind


def test_token_dtype_by_vocab():
    assert token_dtype(512) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(100_000) == np.uint32


def test_open_tokens_memory_maps_and_checks(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(100, dtype=np.uint16))
    tf = open_tokens(path, vocab_size=100, context_length=16)
    assert isinstance(tf.tokens, np.memmap)
    with pytest.raises(DataError, match="vocab_size"):
        open_tokens(path, vocab_size=50, context_length=16)
    with pytest.raises(DataError, match="context_length"):
        open_tokens(path, vocab_size=100, context_length=100)
    with pytest.raises(DataError, match="does not exist"):
        open_tokens(tmp_path / "missing.npy", vocab_size=100, context_length=16)


# ---------------------------------------------------------------- batch_at

TOKENS = np.arange(5000, dtype=np.uint16)  # token value == its index, so windows are recognisable


def test_batch_at_is_deterministic_per_seed_and_step():
    x1, y1 = batch_at(TOKENS, seed=3, step=7, batch_size=8, context_length=16)
    x2, y2 = batch_at(TOKENS, seed=3, step=7, batch_size=8, context_length=16)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = batch_at(TOKENS, seed=3, step=8, batch_size=8, context_length=16)
    x4, _ = batch_at(TOKENS, seed=4, step=7, batch_size=8, context_length=16)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(x1, x4)


def test_batch_at_shapes_and_shift_by_one():
    x, y = batch_at(TOKENS, seed=0, step=0, batch_size=6, context_length=20)
    assert x.shape == y.shape == (6, 20)
    assert x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(y, x + 1)  # contiguous windows of TOKENS: y is the next token
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(20))


def rss_file_kb() -> int:
    """Resident pages of mapped files in this process (Linux), in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssFile:")))


def test_batches_from_a_memory_mapped_file_match_and_stay_out_of_resident_memory(tmp_path):
    """Windows read from the token file equal in-memory indexing, and reading them does not map the file's
    pages into the process: scattered windows over a 64 MB file used to add tens of MB of resident memory."""
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(32 << 20,))
    big[:] = np.arange(big.size) % 60000
    big.flush()
    del big
    tokens = open_tokens(path, vocab_size=65536, context_length=64).tokens
    x, y = batch_at(tokens, seed=1, step=2, batch_size=8, context_length=64)
    inmem = np.arange(32 << 20) % 60000
    starts = batch_starts(1, 2, 8, len(tokens), 64)
    np.testing.assert_array_equal(x, inmem[starts[:, None] + np.arange(64)])
    np.testing.assert_array_equal(y, inmem[starts[:, None] + np.arange(1, 65)])
    if not Path("/proc/self/status").exists():
        return
    before = rss_file_kb()
    for step in range(200):
        batch_at(tokens, seed=0, step=step, batch_size=16, context_length=64)
    assert rss_file_kb() - before < 8 * 1024


def test_batch_at_starts_cover_exactly_the_valid_range():
    n, context = 40, 32  # valid starts: 0..n-context-1 = 0..7
    seen = set()
    for step in range(300):
        starts = batch_starts(0, step, 4, n, context)
        seen.update(int(s) for s in starts)
        x, y = batch_at(TOKENS[:n], seed=0, step=step, batch_size=4, context_length=context)
        np.testing.assert_array_equal(x[:, 0], starts)
        assert y.max() <= n - 1
    assert seen == set(range(n - context))


def test_batch_at_rows_are_a_slice_of_the_global_batch():
    x, y = batch_at(TOKENS, seed=1, step=5, batch_size=8, context_length=16)
    for rows in (slice(0, 4), slice(4, 8), slice(2, 3)):
        xr, yr = batch_at(TOKENS, seed=1, step=5, batch_size=8, context_length=16, rows=rows)
        np.testing.assert_array_equal(xr, x[rows])
        np.testing.assert_array_equal(yr, y[rows])


def test_batch_at_reads_a_memmap(tmp_path):
    np.save(tmp_path / "t.npy", TOKENS)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    for a, b in zip(batch_at(mm, 2, 9, 4, 16), batch_at(TOKENS, 2, 9, 4, 16)):
        np.testing.assert_array_equal(a, b)


def test_eval_batches_are_fixed_and_span_the_file():
    batches = eval_batches(TOKENS, num_batches=3, batch_size=4, context_length=10)
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == y.shape == (4, 10)
        np.testing.assert_array_equal(y, x + 1)
    assert batches[0][0][0, 0] == 0 and batches[-1][1][-1, -1] == len(TOKENS) - 1
    again = eval_batches(TOKENS, num_batches=3, batch_size=4, context_length=10)
    for (a, _), (b, _) in zip(batches, again):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- prepare: .txt -> cached token files


def test_prepare_tokenizes_text_into_the_cache_once(tiny_config, isolated_cache):
    c = tiny_config(vocab_size=300)
    files = prepare(c)
    assert files.train.is_relative_to(isolated_cache) and files.val.is_relative_to(isolated_cache)
    assert files.tokenizer is not None and files.tokenizer.is_file()
    train = open_tokens(files.train, c.vocab_size, c.context_length)
    val = open_tokens(files.val, c.vocab_size, c.context_length)
    assert train.tokens.dtype == np.uint16
    assert val.num_bytes == VALID_TXT.stat().st_size
    mtimes = {p: p.stat().st_mtime_ns for p in (files.train, files.val, files.tokenizer)}
    again = prepare(c)
    assert again == files
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # reused, not rebuilt
    other = prepare(tiny_config(vocab_size=320))  # a different vocab gets its own cache entry
    assert other.tokenizer != files.tokenizer


def test_prepare_accepts_npy_files(tiny_config, tmp_path):
    for split in ("train", "valid"):
        np.save(tmp_path / f"{split}.npy", np.arange(200, dtype=np.uint16) % 300)
    c = tiny_config(train_data_path=str(tmp_path / "train.npy"), val_data_path=str(tmp_path / "valid.npy"))
    files = prepare(c)
    assert files.train == tmp_path / "train.npy" and files.val == tmp_path / "valid.npy"
    assert files.tokenizer is None


def test_missing_data_file_is_a_data_error(tiny_config, tmp_path):
    c = tiny_config(train_data_path=str(tmp_path / "nope.txt"), val_data_path=str(VALID_TXT))
    with pytest.raises(DataError, match="train_data_path"):
        prepare(c)
