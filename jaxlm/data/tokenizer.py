"""Byte-level BPE (GPT-2 pre-tokenization) trained and loaded with HF `tokenizers`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxlm.errors import DataError

EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
log = logging.getLogger(__name__)


def _byte_level(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    text_files: Iterable[str | Path],
    vocab_size: int,
    out_dir: str | Path,
    *,
    special_tokens: Sequence[str] = (EOT,),
    progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE whose special tokens are `special_tokens` (ids 0, 1, ... in order; the first
    ends a document); save to out_dir/tokenizer.json. `progress` shows the trainer's progress bars."""
    special_tokens = list(special_tokens)
    if vocab_size < 256 + len(special_tokens):
        raise DataError(
            f"config key 'vocab_size': byte-level BPE needs at least {256 + len(special_tokens)} tokens "
            f"(256 bytes + {len(special_tokens)} special), got {vocab_size}"
        )
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    text_files = [Path(f) for f in text_files]
    if any(f.suffix == ".gz" for f in text_files):  # HF reads plain files only: stream the text to it
        from jaxlm.data.tokens import read_text_chunks

        tok.train_from_iterator((chunk for f in text_files for chunk in read_text_chunks(f)), trainer)
    else:
        tok.train([str(f) for f in text_files], trainer)
    out = Path(out_dir) / TOKENIZER_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    log.info("trained BPE tokenizer: %d tokens -> %s", tok.get_vocab_size(), out)
    return tok


def load_tokenizer(path: str | Path, special_tokens: Sequence[str] = (EOT,)) -> Tokenizer:
    """Load `tokenizer.json` (a file, or a directory holding one), or a GPT-2 style
    `vocab.json` + `merges.txt` pair from a directory (given `special_tokens`, which it lacks)."""
    path = Path(path)
    if path.is_dir():
        if (path / TOKENIZER_FILE).is_file():
            path = path / TOKENIZER_FILE
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            try:
                bpe = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
            except Exception as e:  # noqa: BLE001 - the Rust library raises a bare Exception
                raise DataError(f"tokenizer '{path}': vocab.json + merges.txt are damaged ({e})") from None
            tok = _byte_level(Tokenizer(bpe))
            tok.add_special_tokens(list(special_tokens))
            return tok
        else:
            raise DataError(f"tokenizer '{path}': holds neither {TOKENIZER_FILE} nor vocab.json + merges.txt")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the Rust library raises a bare Exception for any bad file
        what = "is empty" if path.is_file() and path.stat().st_size == 0 else f"is damaged ({e})"
        raise DataError(f"tokenizer '{path}': {what}") from None


def decode(tok: Tokenizer, ids: list[int]) -> str:
    """Decode keeping special tokens, so decode(encode(text)) == text."""
    return tok.decode(ids, skip_special_tokens=False)


def special_tokens_of(tok: Tokenizer) -> list[str]:
    """The tokenizer's special tokens in id order (the first is the end-of-text token jaxlm uses)."""
    return [t.content for _, t in sorted(tok.get_added_tokens_decoder().items()) if t.special]


def end_of_text(tok: Tokenizer) -> str:
    """The token that joins documents and stops generation: the first special token."""
    specials = special_tokens_of(tok)
    if not specials:
        raise DataError("tokenizer: has no special token to use as end of text")
    return specials[0]


def hf_tokenizer_files(tok: Tokenizer, model_max_length: int) -> dict[str, dict]:
    """{file name: JSON} that `transformers.AutoTokenizer.from_pretrained` loads as a PreTrainedTokenizerFast:
    tokenizer.json as is, bos/eos/unk/pad = the end-of-text token, no BOS added, no space clean-up."""
    import json

    specials = special_tokens_of(tok)
    eot = end_of_text(tok)
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, **flags} for t in specials},
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "pad_token": eot,
        "additional_special_tokens": specials[1:],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    special_map = {"bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot}
    if specials[1:]:
        special_map["additional_special_tokens"] = specials[1:]
    return {
        TOKENIZER_FILE: json.loads(tok.to_str()),
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": special_map,
    }
