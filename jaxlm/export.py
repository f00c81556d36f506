"""CLI: `python -m jaxlm.export --run runs/<name> [--checkpoint best|latest|N] [--format cs336|hf] --out PATH`.

`--format cs336` (the default) writes the run's weights as CS336-named safetensors plus
the model's config JSON beside it (jaxlm/model/weights.py). `--format hf` writes a
directory that `transformers.LlamaForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load (jaxlm/model/hf_weights.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxlm.errors import EXIT_OK, EXIT_USAGE, UserError
from jaxlm.rundir import parse_checkpoint
from jaxlm.runtime import CommandParser, run_command
from jaxlm.tracking.outputs import OutputError, check_output_files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CommandParser(
        prog="python -m jaxlm.export",
        description="Write a run's weights as CS336-named safetensors (+ config JSON), or as a Hugging Face "
        "transformers Llama directory.",
    )
    p.add_argument("--run", required=True, type=Path, help="run directory, e.g. runs/tinystories_17m")
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP (default best)")
    p.add_argument(
        "--format",
        choices=("cs336", "hf"),
        default="cs336",
        help="cs336: one .safetensors file with CS336 names (default); hf: a LlamaForCausalLM directory",
    )
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file (cs336) or new directory (hf)")
    p.add_argument("--force", action="store_true", help="cs336: replace --out (and its .json) if they exist")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.format == "cs336" and args.out.suffix != ".safetensors":
            raise UserError(f"--out '{args.out}': expected a .safetensors file name")
        if args.format == "cs336":
            try:
                check_output_files([args.out, args.out.with_suffix(".json")], force=args.force)
            except OutputError as e:
                raise UserError(str(e)) from None
        from flax import nnx

        from jaxlm.train.checkpoint import load

        model, config = load(args.run, parse_checkpoint(args.checkpoint))
        params = nnx.state(model, nnx.Param)
        if args.format == "hf":
            import jaxlm
            from jaxlm.data.tokenizer import end_of_text, hf_tokenizer_files
            from jaxlm.model.hf_weights import check_llama_compatible, export_hf

            check_llama_compatible(config)
            tokenizer = jaxlm.load_tokenizer(args.run)
            files = hf_tokenizer_files(tokenizer, config.context_length)
            out = export_hf(params, config, files, tokenizer.token_to_id(end_of_text(tokenizer)), args.out)
            print(f"wrote {out} (transformers LlamaForCausalLM + tokenizer)")
            return EXIT_OK
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"error: --out '{args.out}': cannot write it ({e.strerror or e})", file=sys.stderr)
        return EXIT_USAGE
    from jaxlm.model.weights import export_safetensors

    try:
        weights, config_path = export_safetensors(params, config, args.out)
    except OSError as e:
        print(f"error: --out '{args.out}': cannot write it ({e.strerror or e})", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {weights} and {config_path}")
    return EXIT_OK


if __name__ == "__main__":
    run_command(main)
