"""Text generation with a KV cache, and the CLI `python -m jaxlm.generate --run runs/<name>`.

Two jitted programs per (batch, context_length): a prefill over a padded
(B, context_length) prompt buffer, and a one-token decode step that reads and
writes the cache in place (donated). Any prompt length reuses them. When the
cache is full, the last half-window is prefilled again at positions 0.., as the
model was trained on windows starting at position 0.

The same sampler writes the samples at each eval (`Trainer.sample`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.data.tokenizer import EOT, decode
from jaxlm.kv_cache import forward_cached, init_cache
from jaxlm.run_loading import find_tokenizer, load_run_model, parse_checkpoint
from jaxlm.runtime import prepare_process
from jaxlm.sampling import sample_token


class Decoder:
    """The compiled prefill and decode step for one model graph and one sampling setting."""

    def __init__(self, graphdef: nnx.GraphDef, temperature: float, top_p: float):
        self.temperature, self.top_p = float(temperature), float(top_p)

        def prefill(params, ids_BxS, length, key):
            model = nnx.merge(graphdef, params)
            cache = init_cache(model, ids_BxS.shape[0], ids_BxS.shape[1])
            logits_BxSxV, cache = forward_cached(model, ids_BxS, cache, 0)
            last_BxV = jax.lax.dynamic_index_in_dim(logits_BxSxV, length - 1, axis=1, keepdims=False)
            return sample_token(last_BxV, key, self.temperature, self.top_p), cache

        def step(params, cache, token_B, position, key):
            model = nnx.merge(graphdef, params)
            logits_Bx1xV, cache = forward_cached(model, token_B[:, None], cache, position)
            return sample_token(logits_Bx1xV[:, 0], key, self.temperature, self.top_p), cache

        self.prefill = jax.jit(prefill)
        self.step = jax.jit(step, donate_argnums=1)


def make_decode_step(graphdef: nnx.GraphDef, temperature: float = 0.8, top_p: float = 0.9) -> Decoder:
    """A reusable Decoder (kept by the Trainer so eval samples compile once)."""
    return Decoder(graphdef, temperature, top_p)


def generate_batch(graphdef, params, prompt_ids: list[int], *, context_length: int, max_new_tokens: int,
                   num_samples: int = 1, temperature: float = 0.8, top_p: float = 0.9, seed: int = 0,
                   stop_id: int | None = None, decode_step: Decoder | None = None) -> list[list[int]]:
    """`num_samples` continuations of `prompt_ids`, each up to `max_new_tokens` and ending
    at (and including) `stop_id` when it is drawn. An empty prompt starts from `stop_id`."""
    decoder = decode_step or Decoder(graphdef, temperature, top_p)
    seqs = [list(prompt_ids) or ([stop_id] if stop_id is not None else [0]) for _ in range(num_samples)]
    new: list[list[int]] = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    key = jax.random.key(seed)
    token_B, cache, position = None, None, 0
    for i in range(max_new_tokens):
        key, sub = jax.random.split(key)
        if token_B is None or position == context_length:
            keep = len(seqs[0]) if token_B is None else context_length // 2
            keep = min(keep, context_length)
            buf_BxS = np.zeros((num_samples, context_length), np.int32)
            for row, seq in enumerate(seqs):
                buf_BxS[row, :keep] = seq[-keep:]
            token_B, cache = decoder.prefill(params, jnp.asarray(buf_BxS), jnp.int32(keep), sub)
            position = keep
        else:
            token_B, cache = decoder.step(params, cache, token_B, jnp.int32(position), sub)
            position += 1
        for row, token in enumerate(np.asarray(token_B).tolist()):
            seqs[row].append(token)
            if not done[row]:
                new[row].append(token)
                done[row] = token == stop_id
        if all(done):
            break
    return new


def generate_ids(graphdef, params, prompt_ids: list[int], *, context_length: int, max_new_tokens: int,
                 temperature: float = 0.8, top_p: float = 0.9, seed: int = 0, stop_id: int | None = None,
                 decode_step: Decoder | None = None) -> list[int]:
    """One continuation of `prompt_ids` (see `generate_batch`)."""
    return generate_batch(graphdef, params, prompt_ids, context_length=context_length,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          stop_id=stop_id, decode_step=decode_step)[0]


def generate_texts(graphdef, params, tokenizer, prompt: str, *, context_length: int, max_new_tokens: int,
                   num_samples: int = 1, temperature: float = 0.8, top_p: float = 0.9, seed: int = 0,
                   decode_step: Decoder | None = None) -> list[str]:
    """Each sample is the prompt followed by its continuation, cut before `<|endoftext|>`."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    stop_id = tokenizer.token_to_id(EOT)
    texts = []
    for new in generate_batch(graphdef, params, prompt_ids, context_length=context_length,
                              max_new_tokens=max_new_tokens, num_samples=num_samples, temperature=temperature,
                              top_p=top_p, seed=seed, stop_id=stop_id, decode_step=decode_step):
        if new and new[-1] == stop_id:
            new = new[:-1]
        texts.append(prompt + decode(tokenizer, new))
    return texts


def generate_text(graphdef, params, tokenizer, prompt: str, *, context_length: int, max_new_tokens: int,
                  temperature: float = 0.8, top_p: float = 0.9, seed: int = 0, decode_step=None) -> str:
    """The prompt followed by one sampled continuation, cut at `<|endoftext|>`."""
    return generate_texts(graphdef, params, tokenizer, prompt, context_length=context_length,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          decode_step=decode_step)[0]


def main(argv: list[str] | None = None) -> int:
    from jaxlm.errors import EXIT_OK, EXIT_USAGE, UserError

    p = argparse.ArgumentParser(prog="python -m jaxlm.generate", description="Sample text from a trained run.")
    p.add_argument("--run", required=True, type=Path, help="run directory, e.g. runs/quickstart")
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP (default best)")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    args = p.parse_args(argv)
    prepare_process()
    try:
        which = parse_checkpoint(args.checkpoint)
        if not 0 < args.top_p <= 1 or args.temperature < 0 or args.num_samples < 1 or args.max_new_tokens < 1:
            raise UserError("need 0 < --top-p <= 1, --temperature >= 0, --num-samples >= 1, --max-new-tokens >= 1")
        model, config = load_run_model(args.run, which)
        tokenizer = find_tokenizer(args.run, config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    graphdef, params = nnx.split(model, nnx.Param)
    texts = generate_texts(graphdef, params, tokenizer, args.prompt, context_length=config.context_length,
                           max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}/{len(texts)}")
        print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
