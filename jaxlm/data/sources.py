"""Where a run's tokens come from: the bundled sample, a `.txt` (tokenized once into a
content-keyed cache) or a ready `.npy` token file."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from jaxlm.config import Config
from jaxlm.data.cache import cache_root, writable_cache
from jaxlm.data.tokenizer import EOT, TOKENIZER_FILE, load_tokenizer, special_tokens_of, train_tokenizer
from jaxlm.data.tokens import check_text_file, encode_text_file
from jaxlm.errors import DataError, file_problem

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "tinystories_sample"
BUNDLED = {"tinystories-sample": (BUNDLED_DIR / "train.txt", BUNDLED_DIR / "valid.txt")}


@dataclass(frozen=True)
class DataFiles:
    train: Path  # .npy token file
    val: Path  # .npy token file
    tokenizer: Path | None  # tokenizer.json, when one is known


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:16]


def cache_dir(train_src: Path, c: Config) -> Path:
    """The token cache of a `.txt` training file: keyed by its content, the vocabulary size and the special
    tokens (the default `<|endoftext|>` alone keeps the key it always had), so changing any re-tokenizes."""
    key = f"{file_digest(train_src)}-v{c.vocab_size}"
    if tuple(c.special_tokens) != (EOT,):
        key += "-s" + hashlib.sha256("\0".join(c.special_tokens).encode("utf-8")).hexdigest()[:12]
    return cache_root() / key


def check_special_tokens(tokenizer: Path, c: Config) -> None:
    """A ready tokenizer's special tokens must be the config's: the data was encoded with them."""
    have = special_tokens_of(load_tokenizer(tokenizer))
    if have != list(c.special_tokens):
        raise DataError(f"config key 'special_tokens': {list(c.special_tokens)} but '{tokenizer}' has {have}")


def source_paths(c: Config) -> tuple[Path, Path]:
    """The configured train/val paths, or the bundled dataset's when they are null."""
    if c.train_data_path and c.val_data_path:
        return Path(c.train_data_path), Path(c.val_data_path)
    if c.dataset not in BUNDLED:
        missing = "train_data_path" if not c.train_data_path else "val_data_path"
        raise DataError(
            f"config key '{missing}': required (dataset '{c.dataset}' is not bundled; bundled: {', '.join(BUNDLED)})"
        )
    train, val = BUNDLED[c.dataset]
    return Path(c.train_data_path or train), Path(c.val_data_path or val)


def how_to_make(path: Path, c: Config) -> str:
    """The commands that make a missing data file: for the documented layout (`data/<dataset>/train.npy`,
    `valid.npy`, from `data/raw/`, docs/cs336-workflow.md) the download and the preparation, else the
    preparation with placeholders for the text files."""
    from jaxlm.data.download import DATASETS

    prepare = "python -m jaxlm.data prepare --train {train} --valid {valid} --vocab-size {vocab} --out {out}"
    if path.suffix == ".npy":
        if path.parent.name in DATASETS and path.name in ("train.npy", "valid.npy"):
            train, valid = (f"data/raw/{f}" for f in DATASETS[path.parent.name][1])
            download = f"python -m jaxlm.data download {path.parent.name} --dir data/raw"
            return download + " && " + prepare.format(train=train, valid=valid, vocab=c.vocab_size, out=path.parent)
        return prepare.format(train="TRAIN.txt", valid="VALID.txt", vocab=c.vocab_size, out=path.parent)
    known = {f: name for name, (_, files) in DATASETS.items() for f in files}
    if path.name in known:
        return f"python -m jaxlm.data download {known[path.name]} --dir {path.parent}"
    return "point the key at an existing .txt or .npy file"


def data_report(c: Config) -> list[str]:
    """`--dry-run`'s data lines: each configured file, present or missing (with `how_to_make`)."""
    try:
        paths = source_paths(c)
    except DataError as e:
        return [f"data: {e}"]
    lines = []
    for key, path in zip(("train_data_path", "val_data_path"), paths):
        problem = file_problem(path)
        state = "present" if problem is None else problem
        if not path.exists():
            state = f"MISSING; make it with: {how_to_make(path, c)}"
        lines.append(f"data: {key} '{path}': {state}")
    return lines


def check_sources(c: Config) -> None:
    """Fail fast (before anything is written) when a configured data file is missing."""
    for key, path in zip(("train_data_path", "val_data_path"), source_paths(c)):
        if problem := file_problem(path):
            how = f"; make it with: {how_to_make(path, c)}" if not path.exists() else ""
            raise DataError(f"config key '{key}': data file '{path}' {problem}{how}")
        if path.suffix not in (".txt", ".npy"):
            raise DataError(f"config key '{key}': '{path}' is neither a .txt nor a .npy file")


def prepare(c: Config, *, progress: bool = False) -> DataFiles:
    """Resolve the config's data to token files, training/encoding into the cache as needed."""
    check_sources(c)
    train_src, val_src = source_paths(c)
    if train_src.suffix == ".npy":
        tok_path = train_src.parent / TOKENIZER_FILE
        tokenizer = tok_path if tok_path.is_file() else None
        if tokenizer is not None:
            check_special_tokens(tokenizer, c)
        if val_src.suffix == ".txt":
            if tokenizer is None:
                raise DataError(
                    f"config key 'val_data_path': '{val_src}' is text but no {TOKENIZER_FILE} sits beside {train_src}"
                )
            val_src = _encode_cached(tokenizer, val_src, train_src.parent, progress)
        return DataFiles(train_src, val_src, tokenizer)

    cache = cache_dir(train_src, c)
    tok_path = cache / TOKENIZER_FILE
    if not tok_path.is_file():
        check_text_file(train_src)
        log.info("training a %d-token BPE on %s", c.vocab_size, train_src)
        if progress:
            print(f"training a {c.vocab_size}-token BPE tokenizer on {train_src} ...", file=sys.stderr, flush=True)
        tmp = writable_cache(cache) / f"tmp-{os.getpid()}"
        train_tokenizer([train_src], c.vocab_size, tmp, special_tokens=c.special_tokens, progress=progress)
        os.replace(tmp / TOKENIZER_FILE, tok_path)
        tmp.rmdir()
    train_npy = _encode_cached(tok_path, train_src, cache, progress)
    val_npy = val_src if val_src.suffix == ".npy" else _encode_cached(tok_path, val_src, cache, progress)
    return DataFiles(train_npy, val_npy, tok_path)


def _encode_cached(tokenizer: Path, text: Path, cache: Path, progress: bool) -> Path:
    out = cache / f"{text.stem}-{file_digest(text)}.npy"
    if not out.is_file():
        writable_cache(cache)
        encode_text_file(load_tokenizer(tokenizer), text, out, progress=progress)
    return out


def run_tokenizer_path(run_dir: Path, config: Config) -> Path:
    """Where the run's tokenizer is: `<run>/tokenizer.json` if saved there, else where data preparation put
    it (beside a `.npy` train file, or in the token cache for a `.txt` one); DataError when nowhere."""
    candidates = [Path(run_dir) / TOKENIZER_FILE]
    try:
        train_src, _ = source_paths(config)
    except DataError:
        train_src = None
    if train_src is not None and train_src.suffix == ".npy":
        candidates.append(train_src.parent / TOKENIZER_FILE)
    elif train_src is not None and train_src.is_file():
        candidates.append(cache_dir(train_src, config) / TOKENIZER_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"run '{run_dir}': no tokenizer found (looked for {', '.join(map(str, candidates))})")


def run_tokenizer(run_dir: Path, config: Config):
    """The run's tokenizer (see `run_tokenizer_path`)."""
    return load_tokenizer(run_tokenizer_path(run_dir, config))


def eval_token_file(run_dir: Path, config: Config, data: Path | None, *, progress: bool = False) -> tuple[Path, Path]:
    """(source, `.npy` token file) to evaluate a run on: `data` (a `.npy` token file, or a `.txt`/`.txt.gz`
    text file), or the run's own validation file when None. Text is encoded once with the run's own
    tokenizer into the token cache (`<cache>/eval-<tokenizer digest>/`); DataError for anything else."""
    if data is None:
        key = "config key 'val_data_path'"
        _, data = source_paths(config)
    else:
        key = "--data"
    if problem := file_problem(data):
        raise DataError(f"{key}: data file '{data}' {problem}")
    if data.suffix == ".npy":
        return data, data
    if data.suffix not in (".txt", ".gz"):
        raise DataError(f"{key}: '{data}' is neither a .npy token file nor a .txt/.txt.gz text file")
    tokenizer = run_tokenizer_path(run_dir, config)
    cache = cache_root() / f"eval-{file_digest(tokenizer)}"
    return data, _encode_cached(tokenizer, data, cache, progress)
