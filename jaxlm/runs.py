"""CLI: `python -m jaxlm.runs [DIR ...] [--json] [--sort start|name|best]`: list runs and their status.

One line per run directory found in each DIR (default `runs`; a DIR that is a run itself is listed
alone): name, status (`stopped (killed)` for a run whose process is gone), step / planned steps,
best and latest validation loss (nats/token), bits/byte, the full-validation loss when measured,
wall-clock time, and for a running run its rate and ETA. Read from summary.json alone
(`jaxlm.tracking.listing`), so it is fast on hundreds of runs and needs no JAX. A folder or run it
cannot read is one warning line on stderr; the others are still listed. Exit 0, or 2 when a DIR
given does not exist and no run was found at all.
"""

from __future__ import annotations

import argparse
import sys

from jaxlm.errors import EXIT_OK, EXIT_USAGE
from jaxlm.runtime import CommandParser, run_command
from jaxlm.tracking.listing import SORT_KEYS, as_json, format_table, list_runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(
        prog="python -m jaxlm.runs",
        description="List runs: status, progress, validation losses, time, and rate and ETA while running.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dirs", nargs="*", default=["runs"], metavar="DIR", help="runs folders or run directories")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per run) instead")
    p.add_argument(
        "--sort", choices=SORT_KEYS, default="start", help="start: oldest first; best: lowest best val loss first"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lines, warnings = list_runs(args.dirs, args.sort)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(as_json(lines))
    elif lines:
        print(format_table(lines))
    else:
        print(f"no runs in {', '.join(args.dirs)}")
    return EXIT_USAGE if not lines and warnings else EXIT_OK


if __name__ == "__main__":
    run_command(main)
