"""`python -m jaxlm.data download` through huggingface_hub, against a loopback server that answers the Hub's
resolve URLs (HEAD + GET with X-Repo-Commit, ETag, Content-Length, Range): a transfer cut in the middle and
resumed is byte-identical; $HF_ENDPOINT and $HF_TOKEN are honoured; 404, an unreachable endpoint and a full
disk are one line each; a refused connection or a failed name lookup gives up after two short retries
(a line each) and leaves nothing behind. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import socket
import subprocess
import sys
import threading
import time
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


def unreachable_lines(capsys, caplog, endpoint: str) -> list[str]:
    """What a download that could not connect says: a log line per retry (stderr, from the command),
    then the one error line."""
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxlm.data.download"]
    assert len(lines) == 2, lines
    assert lines[0].endswith("retry 1 of 2 in 1 s") and lines[1].endswith("retry 2 of 2 in 2 s")
    err = one_line_error(capsys)
    assert err.startswith(f"error: cannot reach {endpoint}") and "--endpoint" in err
    return lines


def test_a_refused_connection_gives_up_within_seconds_and_leaves_nothing(hub, tmp_path, capsys, caplog):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "raw"
    t0 = time.monotonic()
    assert main(["download", "owt", "--dir", str(out), "--endpoint", f"http://127.0.0.1:{port}", "--quiet"]) == 2
    assert time.monotonic() - t0 < 15  # two short retries (1 s, 2 s), not huggingface_hub's ~25 s backoff
    assert "ConnectError" in unreachable_lines(capsys, caplog, f"http://127.0.0.1:{port}")[0]
    assert not out.exists()  # no folder, no .cache/huggingface/
    (out / "mine").mkdir(parents=True)  # a folder that was there stays, with what it held
    assert main(["download", "owt", "--dir", str(out), "--endpoint", f"http://127.0.0.1:{port}", "--quiet"]) == 2
    assert [p.name for p in out.iterdir()] == ["mine"]
    capsys.readouterr()


def test_the_command_prints_each_retry_on_stderr(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "jaxlm.data", "download", "owt", "--dir", str(tmp_path / "raw")]
    proc = subprocess.run([*cmd, "--endpoint", f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 3 and "retry 2 of 2" in lines[1], proc.stderr
    assert lines[2].startswith("error: cannot reach") and not (tmp_path / "raw").exists()


def test_a_failed_name_lookup_gives_up_the_same_way(hub, tmp_path, capsys, caplog, monkeypatch):
    """DNS failing (offline), simulated in-process so that no lookup leaves the machine."""

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    out = tmp_path / "raw"
    assert main(["download", "owt", "--dir", str(out), "--endpoint", "http://hub.invalid", "--quiet"]) == 2
    unreachable_lines(capsys, caplog, "http://hub.invalid")
    assert not out.exists()


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
