"""`python -m jaxlm.data download` through huggingface_hub, against a loopback server that answers the Hub's
resolve URLs (HEAD + GET with X-Repo-Commit, ETag, Content-Length, Range): a transfer cut in the middle and
resumed is byte-identical; $HF_ENDPOINT and $HF_TOKEN are honoured; 404, an unreachable endpoint and a full
disk are one line each. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jaxlm.data.__main__ import main
from jaxlm.data.download import DATASETS

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO, NAMES = DATASETS["tinystories"]


class HubServer:
    """Serves `/datasets/<repo>/resolve/main/<file>` as the Hub does; `cut` GETs send only `cut_after` bytes."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        self.cut_after, self.cuts_left = 0, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _head(self, method: str) -> tuple[bytes, int] | None:
                server.requests.append(
                    (method, self.path, self.headers.get("Range"), self.headers.get("Authorization"))
                )
                prefix = f"/datasets/{REPO}/resolve/main/"
                name = self.path.removeprefix(prefix) if self.path.startswith(prefix) else None
                if name not in server.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                body, start = server.files[name], 0
                rng = self.headers.get("Range") if method == "GET" else None
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                return body, start

            def do_HEAD(self):
                self._head("HEAD")

            def do_GET(self):
                answer = self._head("GET")
                if answer is None:
                    return
                body, start = answer
                payload = body[start:]
                if server.cuts_left > 0:
                    server.cuts_left -= 1
                    self.wfile.write(payload[: server.cut_after])  # announce it all, send part, hang up
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self) -> list[tuple]:
        return [r for r in self.requests if r[0] == "GET"]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    for var in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token, no cache outside tmp_path
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    files = {name: (f"{name} " * 30_000).encode() for name in NAMES}
    server = HubServer(files)
    yield server
    server.close()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def incomplete_files(out):
    return list((out / ".cache" / "huggingface" / "download").rglob("*.incomplete"))


def test_a_transfer_that_keeps_breaking_fails_in_one_line_then_completes(hub, tmp_path, capsys):
    out = tmp_path / "raw"
    args = ["download", "tinystories", "--dir", str(out), "--endpoint", hub.url, "--quiet"]
    hub.cut_after, hub.cuts_left = 100_000, 100  # every transfer breaks: huggingface_hub's retries give up
    assert main(args) == 2
    assert "interrupted" in one_line_error(capsys)
    assert not (out / NAMES[0]).exists() and incomplete_files(out) == []  # huggingface_hub drops its temp file

    hub.cuts_left = 0
    assert main(args) == 0
    for name in NAMES:
        assert (out / name).read_bytes() == hub.files[name]
    seen = len(hub.gets())
    assert main(args) == 0  # complete files with the Hub's ETag are not fetched again
    assert len(hub.gets()) == seen


def test_a_download_cut_in_the_middle_resumes_byte_identical(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # no --endpoint: the Hub's own variable
    monkeypatch.setenv("HF_TOKEN", "hf_loopback_token")
    chunk = 10 * 1024 * 1024  # huggingface_hub writes (and so resumes from) 10 MiB pieces
    hub.files[NAMES[0]] = bytes(range(256)) * (25 * 1024 * 1024 // 256) + b"tail"
    hub.cut_after, hub.cuts_left = chunk + 500_000, 2  # the connection drops twice mid-file
    out = tmp_path / "raw"
    assert main(["download", "tinystories", "--dir", str(out), "--quiet"]) == 0
    gets = hub.gets()
    assert [g[2] for g in gets[:3]] == [None, f"bytes={chunk}-", f"bytes={2 * chunk}-"]  # continued, not restarted
    assert all(r[3] == "Bearer hf_loopback_token" for r in hub.requests)
    for name in NAMES:
        assert (out / name).read_bytes() == hub.files[name]


def test_404_is_one_line(hub, tmp_path, capsys):
    del hub.files[NAMES[1]]
    out = tmp_path / "raw"
    assert main(["download", "tinystories", "--dir", str(out), "--endpoint", hub.url, "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "HTTP 404" in err and NAMES[1] in err
    assert (out / NAMES[0]).read_bytes() == hub.files[NAMES[0]]


def test_unreachable_endpoint_is_one_clear_line(hub, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "raw"
    assert main(["download", "owt", "--dir", str(out), "--endpoint", f"http://127.0.0.1:{port}", "--quiet"]) == 2
    err = one_line_error(capsys)
    assert f"cannot reach http://127.0.0.1:{port}" in err and "--endpoint" in err
    assert [p.name for p in out.iterdir()] == [".cache"]  # only huggingface_hub's lock files


def test_disk_full_is_one_line(hub, tmp_path, capsys, monkeypatch):
    import huggingface_hub.file_download as fd

    real_http_get = fd.http_get

    def full_disk(url, temp_file, **kwargs):
        temp_file.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fd, "http_get", full_disk)
    out = tmp_path / "raw"
    args = ["download", "tinystories", "--dir", str(out), "--endpoint", hub.url, "--quiet"]
    assert main(args) == 2
    assert "disk full" in one_line_error(capsys)
    monkeypatch.setattr(fd, "http_get", real_http_get)
    assert not (out / NAMES[0]).exists()
