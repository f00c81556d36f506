"""CLI: `python -m jaxlm.generate --run runs/<name> [--prompt TEXT]`: sample text from a trained run.

The decoding itself (KV cache, sampling) is `jaxlm.model.decode`; text in and out is
`jaxlm.train.samples`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from jaxlm.errors import EXIT_OK, EXIT_USAGE, UserError
from jaxlm.rundir import parse_checkpoint
from jaxlm.runtime import CommandParser, run_command

MAX_NEW_TOKENS = 100_000  # a bound, so a typo cannot hang the command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CommandParser(
        prog="python -m jaxlm.generate",
        description="Sample text from a trained run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", required=True, type=Path, help="run directory, e.g. runs/quickstart")
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP")
    p.add_argument("--prompt", default="Once upon a time", help="text the samples continue")
    p.add_argument("--max-new-tokens", type=int, default=256, help="at most this many tokens per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--num-samples", type=int, default=1, help="how many samples")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if not 0 < args.top_p <= 1 or not 0 <= args.temperature < math.inf or args.num_samples < 1:
        raise UserError("need 0 < --top-p <= 1, a finite --temperature >= 0, --num-samples >= 1")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: expected 1 .. {MAX_NEW_TOKENS:,}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        which = parse_checkpoint(args.checkpoint)
        import jaxlm
        from jaxlm.train.checkpoint import load_with_step

        model, _, step = load_with_step(args.run, which)
        tokenizer = jaxlm.load_tokenizer(args.run)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"sampling from {args.run}, checkpoint {args.checkpoint} (step {step})", file=sys.stderr)
    texts = jaxlm.sample(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}/{len(texts)}")
        print(text)
    return EXIT_OK


if __name__ == "__main__":
    run_command(main)
