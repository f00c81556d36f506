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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jaxlm.export", description="Write a run's weights as CS336-named safetensors (+ config JSON)."
    )
    p.add_argument("--run", required=True, type=Path, help="run directory, e.g. runs/tinystories_17m")
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP (default best)")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.out.suffix != ".safetensors":
            raise UserError(f"--out '{args.out}': expected a .safetensors file name")
        from flax import nnx

        from jaxlm.model.weights import export_safetensors
        from jaxlm.train.checkpoint import load

        model, config = load(args.run, parse_checkpoint(args.checkpoint))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    weights, config_path = export_safetensors(nnx.state(model, nnx.Param), config, args.out)
    print(f"wrote {weights} and {config_path}")
    return EXIT_OK


if __name__ == "__main__":
    run_command(main)
