"""`python -m jaxlm.data prepare`: plain and .gz text, trained or GPT-2-style tokenizer
(`download` is tests/data/test_download.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from helpers import group_umask, modes
from jaxlm.data.__main__ import main
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.data.tokens import meta_path

SAMPLE = Path(__file__).resolve().parents[2] / "jaxlm" / "data" / "tinystories_sample"


def sample_text(name: str, num_bytes: int) -> str:
    """A slice of the bundled sample, stories separated by <|endoftext|> as in TinyStoriesV2."""
    text = (SAMPLE / name).read_text()[:num_bytes]
    return text[: text.rfind("\n") + 1].replace("\n\n", "\n<|endoftext|>\n", 3)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


# --- prepare -----------------------------------------------------------------------------------


def test_prepare_gz_train_and_txt_valid(tmp_path, capsys):
    train_text, valid_text = sample_text("train.txt", 60_000), sample_text("valid.txt", 8_000)
    train = tmp_path / "train.txt.gz"
    with gzip.open(train, "wt", encoding="utf-8") as f:
        f.write(train_text)
    valid = tmp_path / "valid.txt"
    valid.write_text(valid_text)
    out = tmp_path / "prepared"
    with group_umask():
        args = ["--train", str(train), "--valid", str(valid), "--vocab-size", "300", "--out", str(out), "--quiet"]
        assert main(["prepare", *args]) == 0
    assert {mode for name, mode in modes(out).items() if name != "."} == {0o640} and modes(out)["."] == 0o750
    printed = capsys.readouterr().out
    assert "MB/s" in printed and "bytes/token" in printed

    tok = load_tokenizer(out)
    assert tok.get_vocab_size() == 300
    for split, text in (("train", train_text), ("valid", valid_text)):
        tokens = np.load(out / f"{split}.npy", mmap_mode="r")
        assert tokens.dtype == np.uint16
        assert tok.decode(tokens.tolist(), skip_special_tokens=False) == text
        meta = json.loads(meta_path(out / f"{split}.npy").read_text())
        assert meta["num_bytes"] == len(text.encode("utf-8"))  # uncompressed bytes, for bits/byte
        assert meta["num_tokens"] == len(tokens) and meta["max_token_id"] == int(tokens.max())
    assert "<|endoftext|>" in train_text
    assert len(tok.encode("<|endoftext|>").ids) == 1


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 bytes (as CS336 tokenizers serialise them)."""
    printable = ((ord("!"), ord("~")), (ord("¡"), ord("¬")), (ord("®"), ord("ÿ")))
    keep = [b for lo, hi in printable for b in range(lo, hi + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def test_prepare_with_gpt2_style_vocab_and_merges(tmp_path, capsys):
    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    merges = [("t", "h"), ("th", "e"), ("Ġ", "the")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok_dir = tmp_path / "my_tokenizer"
    tok_dir.mkdir()
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    train, valid = tmp_path / "a.txt", tmp_path / "b.txt"
    train.write_text("the cat saw the dog<|endoftext|>then\n")
    valid.write_text("the end\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "--train",
                str(train),
                "--valid",
                str(valid),
                "--tokenizer",
                str(tok_dir),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    the, space_the, eot = vocab["the"], vocab["Ġthe"], vocab["<|endoftext|>"]
    assert np.load(out / "valid.npy").tolist() == [the, vocab["Ġ"], ord("e"), ord("n"), ord("d"), ord("\n")]
    train_ids = np.load(out / "train.npy").tolist()
    assert train_ids[0] == the and space_the in train_ids and eot in train_ids
    reloaded = load_tokenizer(out / "tokenizer.json")  # saved beside the token files for training
    assert reloaded.decode(train_ids, skip_special_tokens=False) == train.read_text()

    assert (
        main(
            [
                "prepare",
                "--train",
                str(train),
                "--valid",
                str(valid),
                "--tokenizer",
                str(tok_dir),
                "--vocab-size",
                "999",
                "--out",
                str(tmp_path / "out2"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "260" in one_line_error(capsys)
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2*"))  # its temp folder is gone too


def test_prepare_errors_are_one_line(tmp_path, capsys):
    valid = tmp_path / "v.txt"
    valid.write_text("hello\n")
    assert (
        main(
            [
                "prepare",
                "--train",
                str(tmp_path / "nope.txt"),
                "--valid",
                str(valid),
                "--vocab-size",
                "300",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "nope.txt" in one_line_error(capsys)
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"fine line\n\xff\xfe broken\n")
    assert (
        main(
            [
                "prepare",
                "--train",
                str(valid),
                "--valid",
                str(bad),
                "--vocab-size",
                "300",
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "not UTF-8" in one_line_error(capsys)
