"""jaxlm: train small transformer language models with JAX and Flax, and keep a record of every run.

The public Python API, for notebooks and scripts (everything else is internal and may move):

    model, config = jaxlm.load_run("runs/quickstart", checkpoint="best")   # model(tokens_BxT) -> logits
    tokenizer = jaxlm.load_tokenizer("runs/quickstart")
    texts = jaxlm.sample(model, tokenizer, "Once upon a time")              # a list of strings
    loss = jaxlm.evaluate_loss(model, tokens_BxT_plus_1)                     # mean next-token NLL in nats

The run-record API of the original course code stays in `jaxlm.tracking`
(ExperimentTracker, ExperimentLogger, compare_runs). Importing jaxlm has no side
effects and does not import JAX; each function imports what it needs. (The commands, such as
`jaxlm.generate`, are modules of the same names: `python -m jaxlm.generate`.)
"""

from __future__ import annotations

from pathlib import Path


def load_run(run_dir: str | Path, checkpoint: str | int = "best"):
    """(model, Config) of a run: `checkpoint` is "best", "latest" or a step number. The model is a
    Flax NNX module on JAX's default device; `model(tokens_BxT)` returns float32 logits (B, T, V)."""
    from jaxlm.train.checkpoint import load

    return load(Path(run_dir), checkpoint)


def load_tokenizer(run_dir: str | Path):
    """The run's tokenizer (a `tokenizers.Tokenizer`), wherever data preparation left it."""
    from jaxlm.data.sources import run_tokenizer
    from jaxlm.data.tokenizer import TOKENIZER_FILE, load_tokenizer
    from jaxlm.rundir import RunDir

    if (Path(run_dir) / TOKENIZER_FILE).is_file():  # a run keeps a copy of its own
        return load_tokenizer(Path(run_dir) / TOKENIZER_FILE)
    run = RunDir(Path(run_dir))
    return run_tokenizer(run.path, run.config())


def sample(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 256,
    num_samples: int = 1,
    temperature: float = 0.8,
    top_p: float = 0.9,
    seed: int = 0,
) -> list[str]:
    """`num_samples` texts, each the prompt followed by a sampled continuation (greedy at temperature 0),
    cut at the end-of-text token."""
    from flax import nnx

    from jaxlm.train.samples import generate_texts

    graphdef, params = nnx.split(model, nnx.Param)
    context_length = int(model.context_length)
    return generate_texts(
        graphdef,
        params,
        tokenizer,
        prompt,
        context_length=context_length,
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )


def evaluate_loss(model, tokens) -> float:
    """Mean next-token negative log-likelihood (nats) of `tokens` (B, T+1): inputs [:, :-1], targets [:, 1:]."""
    import jax.numpy as jnp

    from jaxlm.model.transformer import cross_entropy

    tokens = jnp.asarray(tokens)
    return float(cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]))


__all__ = ["evaluate_loss", "load_run", "load_tokenizer", "sample"]
