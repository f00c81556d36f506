"""Text in, text out: a prompt encoded with the run's tokenizer, continuations decoded and cut at
the end-of-text token (the tokenizer's first special token, the config's `special_tokens[0]`).
The token-level work is `jaxlm.model.decode`."""

from __future__ import annotations

from jaxlm.data.tokenizer import decode, end_of_text
from jaxlm.model.decode import Decoder, generate_batch


def generate_texts(
    graphdef,
    params,
    tokenizer,
    prompt: str,
    *,
    context_length: int,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 0.8,
    top_p: float = 0.9,
    seed: int = 0,
    decode_step: Decoder | None = None,
) -> list[str]:
    """Each sample is the prompt followed by its continuation, cut before the end-of-text token."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    stop_id = tokenizer.token_to_id(end_of_text(tokenizer))
    texts = []
    for new in generate_batch(
        graphdef,
        params,
        prompt_ids,
        context_length=context_length,
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop_id=stop_id,
        decode_step=decode_step,
    ):
        if new and new[-1] == stop_id:
            new = new[:-1]
        texts.append(prompt + decode(tokenizer, new))
    return texts
