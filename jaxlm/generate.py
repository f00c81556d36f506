"""Text generation from a trained model (used for the samples written at each eval).

The decode step is jitted once for a fixed (1, context_length) window, so any
prompt length reuses one compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.data.tokenizer import EOT, decode
from jaxlm.sampling import sample_token


def make_decode_step(graphdef: nnx.GraphDef, temperature: float, top_p: float):
    @jax.jit
    def step(params, window_1xT, last_index, key):
        logits = nnx.merge(graphdef, params)(window_1xT)
        return sample_token(logits[:, last_index], key, temperature, top_p)[0]

    return step


def generate_ids(graphdef, params, prompt_ids: list[int], *, context_length: int, max_new_tokens: int,
                 temperature: float = 0.8, top_p: float = 0.9, seed: int = 0, stop_id: int | None = None,
                 decode_step=None) -> list[int]:
    """Continue `prompt_ids` by up to `max_new_tokens`, stopping after `stop_id`."""
    step = decode_step or make_decode_step(graphdef, temperature, top_p)
    ids = list(prompt_ids) or ([stop_id] if stop_id is not None else [0])
    key = jax.random.key(seed)
    new: list[int] = []
    for _ in range(max_new_tokens):
        window = ids[-context_length:]
        buf = np.zeros((1, context_length), np.int32)
        buf[0, : len(window)] = window
        key, sub = jax.random.split(key)
        token = int(step(params, jnp.asarray(buf), len(window) - 1, sub))
        ids.append(token)
        new.append(token)
        if token == stop_id:
            break
    return new


def generate_text(graphdef, params, tokenizer, prompt: str, *, context_length: int, max_new_tokens: int,
                  temperature: float = 0.8, top_p: float = 0.9, seed: int = 0, decode_step=None) -> str:
    """The prompt followed by its sampled continuation, cut at `<|endoftext|>`."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    stop_id = tokenizer.token_to_id(EOT)
    new = generate_ids(graphdef, params, prompt_ids, context_length=context_length, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, seed=seed, stop_id=stop_id, decode_step=decode_step)
    if new and new[-1] == stop_id:
        new = new[:-1]
    return prompt + decode(tokenizer, new)
