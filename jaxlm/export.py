"""CLI: `python -m jaxlm.export --run runs/<name> [--checkpoint best|latest|N] --out model.safetensors`.

Writes the run's weights as CS336-named safetensors plus the model's config JSON
beside it (see jaxlm/model/weights.py for the layout).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxlm.errors import EXIT_OK, EXIT_USAGE, UserError
from jaxlm.rundir import parse_checkpoint
from jaxlm.runtime import run_command
from jaxlm.tracking.outputs import OutputError, check_output_files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jaxlm.export", description="Write a run's weights as CS336-named safetensors (+ config JSON)."
    )
    p.add_argument("--run", required=True, type=Path, help="run directory, e.g. runs/tinystories_17m")
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP (default best)")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="replace --out (and its .json) if they exist")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.out.suffix != ".safetensors":
            raise UserError(f"--out '{args.out}': expected a .safetensors file name")
        try:
            check_output_files([args.out, args.out.with_suffix(".json")], force=args.force)
        except OutputError as e:
            raise UserError(str(e)) from None
        from flax import nnx

        from jaxlm.model.weights import export_safetensors
        from jaxlm.train.checkpoint import load

        model, config = load(args.run, parse_checkpoint(args.checkpoint))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        weights, config_path = export_safetensors(nnx.state(model, nnx.Param), config, args.out)
    except OSError as e:
        print(f"error: --out '{args.out}': cannot write it ({e.strerror or e})", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {weights} and {config_path}")
    return EXIT_OK


if __name__ == "__main__":
    run_command(main)
