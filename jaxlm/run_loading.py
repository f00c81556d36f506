"""Open a finished run for use: its trained model (via `jaxlm.checkpoint`) and its tokenizer.

Shared by the generate and export CLIs, so both point at one loader.
"""

from __future__ import annotations

from pathlib import Path

from jaxlm.errors import DataError, UserError


def parse_checkpoint(text: str) -> str | int:
    """`--checkpoint` value: "best", "latest" or a step number."""
    if text.isdigit():
        return int(text)
    if text not in ("best", "latest"):
        raise UserError(f"--checkpoint {text!r}: expected best, latest or a step number")
    return text


def load_run_model(run_dir: Path, which: str | int = "best"):
    """(nnx model, Config) from a run's checkpoints, through `jaxlm.checkpoint.load`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--run '{run_dir}': not a run directory")
    try:
        from jaxlm import checkpoint
    except ImportError:
        raise UserError("loading a run needs jaxlm.checkpoint, which this install does not have yet") from None
    return checkpoint.load(run_dir, which=which)


def find_tokenizer(run_dir: Path, config):
    """The run's tokenizer: `<run>/tokenizer.json` if saved there, else where data preparation put it
    (beside a `.npy` train file, or in the token cache for a `.txt` one)."""
    from jaxlm.data import sources
    from jaxlm.data.tokenizer import TOKENIZER_FILE, load_tokenizer

    candidates = [Path(run_dir) / TOKENIZER_FILE]
    try:
        train_src, _ = sources.source_paths(config)
    except DataError:
        train_src = None
    if train_src is not None and train_src.suffix == ".npy":
        candidates.append(train_src.parent / TOKENIZER_FILE)
    elif train_src is not None and train_src.is_file():
        digest = sources.file_digest(train_src)
        candidates.append(sources.cache_root() / f"{digest}-v{config.vocab_size}" / TOKENIZER_FILE)
    for path in candidates:
        if path.is_file():
            return load_tokenizer(path)
    raise DataError(f"run '{run_dir}': no tokenizer found (looked for {', '.join(map(str, candidates))})")
