"""Turn a raw corpus (train + valid text, `.txt` or `.txt.gz`) into a training-ready folder:

    <out>/tokenizer.json   trained here, or converted from `--tokenizer DIR`
    <out>/train.npy  <out>/train.meta.json
    <out>/valid.npy  <out>/valid.meta.json

which a config names with `train_data_path: <out>/train.npy` (the tokenizer is
found beside it). Encoding streams the text in ~1 MB pieces and encodes batches
of them on all cores (HF tokenizers' thread pool), so memory does not grow with
the corpus.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jaxlm.data.tokenizer import EOT, TOKENIZER_FILE, load_tokenizer, special_tokens_of, train_tokenizer
from jaxlm.data.tokens import check_text_file, encode_text_file
from jaxlm.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitReport:
    name: str
    path: Path
    num_bytes: int
    num_tokens: int
    seconds: float

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / max(self.num_tokens, 1)

    @property
    def mb_per_s(self) -> float:
        return self.num_bytes / 1e6 / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (
            f"{self.name}: {self.num_tokens:,} tokens from {self.num_bytes / 1e6:,.1f} MB in {self.seconds:.1f}s "
            f"({self.mb_per_s:.2f} MB/s, {self.bytes_per_token:.2f} bytes/token) -> {self.path}"
        )


@dataclass(frozen=True)
class PrepareReport:
    tokenizer_path: Path
    vocab_size: int
    tokenizer_seconds: float
    splits: tuple[SplitReport, ...]


def prepare_corpus(
    train: str | Path,
    valid: str | Path,
    out_dir: str | Path,
    *,
    vocab_size: int | None = None,
    tokenizer: str | Path | None = None,
    special_tokens: Sequence[str] = (EOT,),
    progress: bool = False,
    force: bool = False,
) -> PrepareReport:
    """Train (or load) the tokenizer and encode both splits into a new `out_dir` (an existing,
    non-empty one only with `force`: it is replaced whole once the new output is complete).
    `special_tokens` are the trained tokenizer's (the first separates documents in the text); a
    loaded one must have them."""
    train, valid, out_dir = Path(train), Path(valid), Path(out_dir)
    for path in (train, valid):
        if path.suffix not in (".txt", ".gz"):
            raise DataError(f"data file '{path}': expected a .txt or .txt.gz text file")
        check_text_file(path, utf8=False)  # UTF-8 is checked while encoding, in the same pass
    if tokenizer is None and vocab_size is None:
        raise DataError("--vocab-size: required unless --tokenizer names an existing tokenizer")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out '{out_dir}': is a file (expected a folder to create)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise DataError(f"--out '{out_dir}': already exists and is not empty (choose another, or pass --force)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_staging(out_dir, dead_only=True)  # what an earlier, killed `prepare` of this --out left behind
    # A plain mkdir, not mkdtemp (0700): the output folder gets the mode the user's umask says.
    work = out_dir.parent / f"{_staging_name(out_dir, 'tmp')}{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:  # built whole in `work`, then renamed into place: a failure leaves `out_dir` as it was
        report = _build(train, valid, work, vocab_size, tokenizer, special_tokens, progress)
        _swap_into_place(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dataclasses.replace(
        report,
        tokenizer_path=out_dir / TOKENIZER_FILE,
        splits=tuple(dataclasses.replace(s, path=out_dir / s.path.name) for s in report.splits),
    )


def _staging_name(out_dir: Path, kind: str, pid: int | None = None) -> str:
    """`.OUT.tmp-HOST-PID-` (the folder being built) or `.OUT.old-HOST-PID-` (a --force's previous
    output, moved aside): the name says which process on which host made it, so a later run can tell
    what a killed one left behind from what a live one is still building."""
    return f".{out_dir.name}.{kind}-{socket.gethostname()}-{os.getpid() if pid is None else pid}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def remove_staging(out_dir: str | Path, dead_only: bool = False) -> None:
    """Remove the staging folders of `--out` made on this host: this process's own (on Ctrl-C), or with
    `dead_only` those of processes that no longer run. A previous output that a killed `--force` had
    moved aside, with nothing put in its place, is moved back instead of removed."""
    out_dir = Path(out_dir)
    for kind in ("tmp", "old"):
        prefix = _staging_name(out_dir, kind, 0)[: -len("0-")]
        for path in sorted(p for p in out_dir.parent.iterdir() if p.name.startswith(prefix)):
            pid = path.name[len(prefix) :].split("-", 1)[0]
            if not pid.isdigit() or (int(pid) != os.getpid() if not dead_only else _alive(int(pid))):
                continue
            if kind == "old" and not out_dir.exists():
                os.replace(path, out_dir)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _swap_into_place(work: Path, out_dir: Path) -> None:
    """Rename `work` to `out_dir`; a previous `out_dir` (--force) is moved aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(_staging_name(out_dir, "old"))
        os.replace(out_dir, old)
    os.replace(work, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(
    train: Path,
    valid: Path,
    out_dir: Path,
    vocab_size: int | None,
    tokenizer: str | Path | None,
    special_tokens: Sequence[str],
    progress: bool,
) -> PrepareReport:
    t0 = time.perf_counter()
    if tokenizer is None:
        log.info("training a %d-token BPE on %s", vocab_size, train)
        try:
            tok = train_tokenizer([train], vocab_size, out_dir, special_tokens=special_tokens, progress=progress)
        except Exception as e:  # noqa: BLE001 - the Rust trainer raises plain Exceptions (bad UTF-8, I/O)
            detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise DataError(f"data file '{train}': the tokenizer trainer failed ({detail})") from None
    else:
        tok = load_tokenizer(tokenizer, special_tokens)
        if special_tokens_of(tok) != list(special_tokens):
            raise DataError(
                f"--tokenizer '{tokenizer}': has special tokens {special_tokens_of(tok)}, not {list(special_tokens)}"
            )
        if vocab_size is not None and tok.get_vocab_size() != vocab_size:
            raise DataError(
                f"--tokenizer '{tokenizer}': has {tok.get_vocab_size()} tokens, not --vocab-size {vocab_size}"
            )
        tok.save(str(out_dir / TOKENIZER_FILE))
    tokenizer_seconds = time.perf_counter() - t0
    splits = []
    for name, src in (("train", train), ("valid", valid)):
        t0 = time.perf_counter()
        try:
            meta = encode_text_file(tok, src, out_dir / f"{name}.npy", progress=progress)
        except UnicodeDecodeError as e:
            raise DataError(f"data file '{src}': not UTF-8 text (byte {e.start}: {e.reason})") from None
        splits.append(
            SplitReport(name, out_dir / f"{name}.npy", meta["num_bytes"], meta["num_tokens"], time.perf_counter() - t0)
        )
    return PrepareReport(out_dir / TOKENIZER_FILE, tok.get_vocab_size(), tokenizer_seconds, tuple(splits))
