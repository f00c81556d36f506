"""`python -m jaxlm.data`: prepare (plain and .gz text, trained or GPT-2-style tokenizer) and
download (from a loopback HTTP server: resume via Range, size check, --endpoint, offline message)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from jaxlm.data.__main__ import main
from jaxlm.data.download import DATASETS
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
    assert main(["prepare", "--train", str(train), "--valid", str(valid), "--vocab-size", "300",
                 "--out", str(out), "--quiet"]) == 0
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
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
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
    assert main(["prepare", "--train", str(train), "--valid", str(valid), "--tokenizer", str(tok_dir),
                 "--out", str(out), "--quiet"]) == 0
    the, space_the, eot = vocab["the"], vocab["Ġthe"], vocab["<|endoftext|>"]
    assert np.load(out / "valid.npy").tolist() == [the, vocab["Ġ"], ord("e"), ord("n"), ord("d"), ord("\n")]
    train_ids = np.load(out / "train.npy").tolist()
    assert train_ids[0] == the and space_the in train_ids and eot in train_ids
    reloaded = load_tokenizer(out / "tokenizer.json")  # saved beside the token files for training
    assert reloaded.decode(train_ids, skip_special_tokens=False) == train.read_text()

    assert main(["prepare", "--train", str(train), "--valid", str(valid), "--tokenizer", str(tok_dir),
                 "--vocab-size", "999", "--out", str(tmp_path / "out2"), "--quiet"]) == 2
    assert "260" in one_line_error(capsys)
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2*"))  # its temp folder is gone too


def test_prepare_errors_are_one_line(tmp_path, capsys):
    valid = tmp_path / "v.txt"
    valid.write_text("hello\n")
    assert main(["prepare", "--train", str(tmp_path / "nope.txt"), "--valid", str(valid), "--vocab-size", "300",
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope.txt" in one_line_error(capsys)
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"fine line\n\xff\xfe broken\n")
    assert main(["prepare", "--train", str(valid), "--valid", str(bad), "--vocab-size", "300",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "not UTF-8" in one_line_error(capsys)


# --- download ----------------------------------------------------------------------------------


class FileServer:
    """A loopback HTTP server for Hub-style URLs with Range support; can cut a transfer short."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.cut_after, self.honor_range = files, [], None, True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                name = self.path.rsplit("/", 1)[-1]
                if name not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[name], 0
                if (rng := self.headers.get("Range")) and server.honor_range:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_after is not None:
                    payload = payload[: server.cut_after]  # announce it all, send part, hang up
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub():
    repo, names = DATASETS["tinystories"]
    files = {name: (f"{name} " * 40_000).encode() for name in names}
    server = FileServer(files)
    yield server
    server.close()


def test_download_resumes_a_partial_file(hub, tmp_path, capsys):
    train_name, valid_name = DATASETS["tinystories"][1]
    args = ["download", "tinystories", "--dir", str(tmp_path), "--endpoint", hub.url, "--quiet"]
    hub.cut_after = 100_000
    assert main(args) == 2
    assert "run again to resume" in one_line_error(capsys)
    part = tmp_path / (train_name + ".part")
    assert part.stat().st_size == 100_000 and not (tmp_path / train_name).exists()
    assert hub.requests[0] == (f"/datasets/roneneldan/TinyStories/resolve/main/{train_name}", None)

    hub.cut_after = None
    assert main(args) == 0
    assert hub.requests[1][1] == "bytes=100000-"  # continued, not restarted
    for name in (train_name, valid_name):
        assert (tmp_path / name).read_bytes() == hub.files[name]
    assert not part.exists()

    seen = len(hub.requests)
    assert main(args) == 0  # complete files are not fetched again
    assert len(hub.requests) == seen


def test_download_restarts_when_server_ignores_range_and_reports_404(hub, tmp_path, capsys):
    train_name, valid_name = DATASETS["tinystories"][1]
    (tmp_path / (train_name + ".part")).write_bytes(b"stale bytes")
    hub.honor_range = False  # answers 200 with the whole file: the part must be replaced, not appended to
    del hub.files[valid_name]
    args = ["download", "tinystories", "--dir", str(tmp_path), "--endpoint", hub.url, "--quiet"]
    assert main(args) == 2
    assert "HTTP 404" in one_line_error(capsys)
    assert hub.requests[0][1] == "bytes=11-"
    assert (tmp_path / train_name).read_bytes() == hub.files[train_name]


def test_download_offline_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["download", "owt", "--dir", str(tmp_path), "--endpoint", f"http://127.0.0.1:{port}", "--quiet"]) == 2
    err = one_line_error(capsys)
    assert f"cannot reach http://127.0.0.1:{port}" in err and "--endpoint" in err
    assert not list(tmp_path.iterdir()) or all(p.suffix == ".part" for p in tmp_path.iterdir())
