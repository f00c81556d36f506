"""CLI: `python -m jaxlm.data download|prepare ...`.

    python -m jaxlm.data download tinystories --dir data/raw [--endpoint URL]
    python -m jaxlm.data prepare --train data/raw/TinyStoriesV2-GPT4-train.txt \\
        --valid data/raw/TinyStoriesV2-GPT4-valid.txt --vocab-size 10000 --out data/tinystories
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jaxlm.data.download import DATASETS, default_endpoint, download_dataset
from jaxlm.data.prepare import prepare_corpus, remove_staging
from jaxlm.errors import EXIT_OK, EXIT_USAGE, UserError
from jaxlm.runtime import CommandParser, exit_on_signal, run_command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CommandParser(prog="python -m jaxlm.data", description="Download and prepare training corpora.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{download,prepare}")
    d = sub.add_parser("download", help="fetch a corpus's published files (resumable)")
    d.add_argument("dataset", choices=sorted(DATASETS))
    d.add_argument("--dir", default="data/raw", type=Path, help="where the files go (default data/raw)")
    d.add_argument(
        "--endpoint",
        default=None,
        help=f"Hugging Face Hub or mirror base URL (default $HF_ENDPOINT or {default_endpoint()})",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    r = sub.add_parser("prepare", help="train/load the tokenizer and encode train + valid text to token files")
    r.add_argument("--train", required=True, type=Path, help="training text (.txt or .txt.gz)")
    r.add_argument("--valid", required=True, type=Path, help="validation text (.txt or .txt.gz)")
    r.add_argument("--out", required=True, type=Path, help="output folder (tokenizer.json, train.npy, valid.npy)")
    r.add_argument("--vocab-size", type=int, help="BPE vocabulary size to train (needed without --tokenizer)")
    r.add_argument(
        "--tokenizer",
        type=Path,
        help="use this tokenizer instead of training one: tokenizer.json, or a folder with it or "
        "with GPT-2-style vocab.json + merges.txt",
    )
    r.add_argument(
        "--special-token",
        action="append",
        dest="special_tokens",
        metavar="TOKEN",
        help="a special token of the tokenizer (repeatable, in id order; the first separates documents; "
        "default <|endoftext|>)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--force", action="store_true", help="replace --out if it exists (once the new output is complete)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING, format="%(message)s")
    try:
        if args.command == "download":
            for path in download_dataset(args.dataset, args.dir, endpoint=args.endpoint, progress=not args.quiet):
                print(f"{path} ({path.stat().st_size:,} bytes)")
            return EXIT_OK
        with exit_on_signal("data preparation", lambda: remove_staging(args.out), outcome="--out is as it was"):
            report = prepare_corpus(
                args.train,
                args.valid,
                args.out,
                vocab_size=args.vocab_size,
                tokenizer=args.tokenizer,
                special_tokens=args.special_tokens or ["<|endoftext|>"],
                progress=not args.quiet,
                force=args.force,
            )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"tokenizer: {report.vocab_size:,} tokens ({report.tokenizer_seconds:.1f}s) -> {report.tokenizer_path}")
    for split in report.splits:
        print(split.line())
    print(
        f'config: "vocab_size": {report.vocab_size}, "train_data_path": "{report.splits[0].path}", '
        f'"val_data_path": "{report.splits[1].path}"'
    )
    return EXIT_OK


if __name__ == "__main__":
    run_command(main)
