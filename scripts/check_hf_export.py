"""Check `python -m jaxlm.export --format hf` against real Hugging Face `transformers`.

torch and transformers are not jaxlm dependencies: give the Python of a separate environment
that has them, e.g.

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers
    uv run python scripts/check_hf_export.py --run runs/quickstart --hf-python /tmp/hfvenv/bin/python

Side 1 (this interpreter, jaxlm): export the run's checkpoint to `--out`, compute jaxlm's
logits on the first context window of the run's validation text and jaxlm's greedy
continuation of `--prompt`. Side 2 (`--hf-python`, transformers): load the directory with
`LlamaForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`, compute the same
logits and `generate(do_sample=False)`. Prints the max |logit difference|, both texts and
whether they are equal; exits 1 when the logits differ by more than `--tolerance` or the
texts differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def jaxlm_side(args: argparse.Namespace, work: Path) -> dict:
    import jaxlm
    from jaxlm import export
    from jaxlm.data.sources import source_paths

    if export.main(["--run", str(args.run), "--checkpoint", args.checkpoint, "--format", "hf", "--out", str(args.out)]):
        sys.exit(1)
    model, config = jaxlm.load_run(
        args.run, args.checkpoint if args.checkpoint in ("best", "latest") else int(args.checkpoint)
    )
    tokenizer = jaxlm.load_tokenizer(args.run)
    _, val = source_paths(config)
    ids = tokenizer.encode(val.read_text()[:20000], add_special_tokens=False).ids[: config.context_length]
    logits = np.asarray(model(np.asarray(ids, np.int32)[None]))[0]
    np.save(work / "ids.npy", np.asarray(ids, np.int64))
    np.save(work / "jaxlm_logits.npy", logits)
    prompt_len = len(tokenizer.encode(args.prompt, add_special_tokens=False).ids)
    max_new = min(args.max_new_tokens, config.context_length - prompt_len)  # no window shift: HF would not shift
    text = jaxlm.sample(model, tokenizer, args.prompt, max_new_tokens=max_new, temperature=0.0)[0]
    return {"max_new_tokens": max_new, "jaxlm_text": text}


def hf_side(out: Path, work: Path, prompt: str, max_new_tokens: int) -> None:
    """Runs under --hf-python: transformers' logits and greedy text, written to work/hf.json + hf_logits.npy."""
    import torch
    import transformers
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor(np.load(work / "ids.npy"))[None]
    with torch.no_grad():
        logits = model(ids).logits[0].numpy()
        prompt_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        new = model.generate(prompt_ids, do_sample=False, max_new_tokens=max_new_tokens)[0, prompt_ids.shape[1] :]
    np.save(work / "hf_logits.npy", logits)
    text = prompt + tokenizer.decode(new, skip_special_tokens=True)
    info = {
        "hf_text": text,
        "tokenizer_class": type(tokenizer).__name__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (work / "hf.json").write_text(json.dumps(info))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--out", type=Path, help="export directory (default: a temporary one)")
    p.add_argument("--hf-python", help="python of an environment with torch + transformers")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--hf-side", nargs=2, metavar=("OUT", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_side:
        hf_side(Path(args.hf_side[0]), Path(args.hf_side[1]), args.prompt, args.max_new_tokens)
        return 0
    if not (args.run and args.hf_python):
        p.error("--run and --hf-python are required")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        args.out = args.out or work / "hf"
        mine = jaxlm_side(args, work)
        cmd = [args.hf_python, __file__, "--hf-side", str(args.out), str(work), "--prompt", args.prompt]
        subprocess.run([*cmd, "--max-new-tokens", str(mine["max_new_tokens"])], check=True)
        theirs = json.loads((work / "hf.json").read_text())
        diff = float(np.max(np.abs(np.load(work / "jaxlm_logits.npy") - np.load(work / "hf_logits.npy"))))
        n = len(np.load(work / "ids.npy"))
    same = mine["jaxlm_text"] == theirs["hf_text"]
    print(f"transformers {theirs['transformers']}, torch {theirs['torch']}, tokenizer {theirs['tokenizer_class']}")
    print(f"max |logit difference| over {n} positions: {diff:.3g}")
    print(f"greedy, {mine['max_new_tokens']} new tokens at most:")
    print(f"  jaxlm: {mine['jaxlm_text']!r}")
    print(f"  hf:    {theirs['hf_text']!r}")
    print(f"texts equal: {same}")
    return 0 if same and diff <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
