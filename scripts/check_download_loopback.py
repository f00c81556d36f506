"""Run `python -m jaxlm.data download tinystories` against a loopback Hub (the server of
tests/data/test_download.py, 127.0.0.1 only) that cuts the connection twice in the middle
of a 24 MiB file; print the requests (HEAD, GET, GET with Range) and whether each
downloaded file is byte-identical to its source. Nothing leaves the machine.

    uv run python scripts/check_download_loopback.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    spec = importlib.util.spec_from_file_location("test_download", ROOT / "tests" / "data" / "test_download.py")
    td = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(td)
    train, valid = td.NAMES
    files = {train: os.urandom(24 * 1024 * 1024), valid: os.urandom(3_000_000)}
    hub = td.HubServer(files)
    hub.cut_after, hub.cuts_left = 10 * 1024 * 1024 + 123_456, 2  # past the first 10 MiB piece, twice
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw"
        env = {**os.environ, "HF_HOME": str(Path(tmp) / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        command = [sys.executable, "-m", "jaxlm.data", "download", "tinystories", "--dir", str(out)]
        rc = subprocess.run([*command, "--endpoint", hub.url], env=env, cwd=ROOT).returncode
        hub.close()
        print(f"exit code {rc}")
        for method, path, byte_range, _ in hub.requests:
            print(f"  {method:4} {path.rsplit('/', 1)[-1]}  Range: {byte_range}")
        same = True
        for name, body in files.items():
            got = (out / name).read_bytes() if (out / name).is_file() else b""
            same &= got == body
            digest = lambda b: hashlib.sha256(b).hexdigest()[:16]  # noqa: E731
            print(f"{name}: sha256 {digest(got)} (source {digest(body)})")
    print(f"byte-identical: {same}")
    return 0 if rc == 0 and same else 1


if __name__ == "__main__":
    sys.exit(main())
