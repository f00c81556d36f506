"""Special tokens as config: trained into the tokenizer in order, one id each, part of the token-cache key,
checked against a ready tokenizer, and the first one stops generation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxlm.config import build_config, parse_override
from jaxlm.data.sources import BUNDLED_DIR, cache_dir, prepare, run_tokenizer
from jaxlm.data.tokenizer import end_of_text, load_tokenizer, special_tokens_of, train_tokenizer
from jaxlm.errors import ConfigError, DataError

TRAIN_TXT = BUNDLED_DIR / "train.txt"
SPECIALS = ["<|doc|>", "<|pad|>", "<|endoftext|>"]


def test_config_key_parses_validates_and_round_trips(tiny_config):
    assert tiny_config().special_tokens == ("<|endoftext|>",)
    key, value = parse_override('special_tokens=["<|doc|>", "<|pad|>"]')
    c = tiny_config(**{key: value})
    assert c.special_tokens == ("<|doc|>", "<|pad|>")
    assert build_config(json.loads(json.dumps(c.to_dict()))) == c  # config.json holds a list; read back equal
    for bad, match in (([], "at least one"), (["a", "a"], "distinct"), ([""], "non-empty"), ("x", "list of strings")):
        with pytest.raises(ConfigError, match=f"special_tokens.*{match}"):
            tiny_config(special_tokens=bad)


def test_trained_tokenizer_keeps_them_in_order_as_single_tokens(tmp_path):
    tok = train_tokenizer([TRAIN_TXT], 300, tmp_path, special_tokens=SPECIALS)
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2]
    reloaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert special_tokens_of(reloaded) == SPECIALS and end_of_text(reloaded) == "<|doc|>"
    text = "The end.<|doc|>Once<|pad|><|pad|> upon<|endoftext|>"
    ids = reloaded.encode(text, add_special_tokens=False).ids
    assert [i for i in ids if i < 3] == [0, 1, 1, 2]
    assert reloaded.decode(ids, skip_special_tokens=False) == text
    with pytest.raises(DataError, match="vocab_size"):
        train_tokenizer([TRAIN_TXT], 258, tmp_path / "small", special_tokens=SPECIALS)


def test_changing_them_re_tokenizes_into_a_new_cache_entry(tiny_config, isolated_cache):
    default = tiny_config(vocab_size=300)
    assert cache_dir(TRAIN_TXT, default).name.endswith("-v300")  # the default keeps the key it always had
    files = prepare(default)
    custom = tiny_config(vocab_size=300, special_tokens=SPECIALS)
    other = prepare(custom)
    assert other.tokenizer.parent != files.tokenizer.parent
    assert special_tokens_of(load_tokenizer(other.tokenizer)) == SPECIALS
    assert special_tokens_of(load_tokenizer(files.tokenizer)) == ["<|endoftext|>"]
    assert not np.array_equal(np.load(other.train)[:50], np.load(files.train)[:50])  # ids shifted by two
    assert special_tokens_of(run_tokenizer(isolated_cache / "no-run", custom)) == SPECIALS


def test_a_ready_tokenizer_must_have_the_configured_tokens(tiny_config, tmp_path):
    train_tokenizer([TRAIN_TXT], 300, tmp_path)
    for split in ("train", "valid"):
        np.save(tmp_path / f"{split}.npy", np.arange(200, dtype=np.uint16) % 300)
    paths = {"train_data_path": str(tmp_path / "train.npy"), "val_data_path": str(tmp_path / "valid.npy")}
    assert prepare(tiny_config(**paths)).tokenizer == tmp_path / "tokenizer.json"
    with pytest.raises(DataError, match="config key 'special_tokens'"):
        prepare(tiny_config(**paths, special_tokens=SPECIALS))


def test_generation_stops_at_the_first_special_token(tmp_path, monkeypatch):
    import jaxlm.train.samples as samples

    tok = train_tokenizer([TRAIN_TXT], 300, tmp_path, special_tokens=SPECIALS)
    seen = {}

    def fake_batch(*args, stop_id, **kwargs):
        seen["stop_id"] = stop_id
        return [[tok.token_to_id("Ġthe") or 100, 0]]

    monkeypatch.setattr(samples, "generate_batch", fake_batch)
    text = samples.generate_texts(None, None, tok, "Once", context_length=16, max_new_tokens=4)[0]
    assert seen["stop_id"] == 0 and not text.endswith("<|doc|>")


def test_prepare_cli_takes_special_tokens(tmp_path, capsys):
    from jaxlm.data.__main__ import main

    text = tmp_path / "t.txt"
    text.write_text("Once upon a time.<|doc|>The end.<|doc|>\n" * 200)
    out = tmp_path / "prepared"
    args = ["prepare", "--train", str(text), "--valid", str(text), "--vocab-size", "300", "--out", str(out)]
    assert main([*args, "--special-token", "<|doc|>", "--special-token", "<|endoftext|>", "--quiet"]) == 0
    tok = load_tokenizer(out / "tokenizer.json")
    assert special_tokens_of(tok) == ["<|doc|>", "<|endoftext|>"]
    assert np.count_nonzero(np.load(out / "train.npy") == 0) == 400  # every <|doc|> is one token, id 0
    again = [
        "prepare",
        "--train",
        str(text),
        "--valid",
        str(text),
        "--tokenizer",
        str(out),
        "--out",
        str(tmp_path / "b"),
    ]
    assert main([*again, "--quiet"]) == 2  # a ready tokenizer must have the tokens asked for (default here)
    assert "special tokens" in capsys.readouterr().err
