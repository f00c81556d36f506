"""Download the CS336 corpora from the Hugging Face Hub (or a mirror), resumably.

A file is fetched into `<name>.part`, continued with an HTTP Range request when a
partial one is there, checked against the size the server announced, and only
then renamed to `<name>`; so an existing `<name>` is always complete and is skipped.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from jaxlm.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DATASETS = {
    "tinystories": ("roneneldan/TinyStories", ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt")),
    "owt": ("stanford-cs336/owt-sample", ("owt_train.txt.gz", "owt_valid.txt.gz")),
}
BLOCK_BYTES = 1 << 20
TIMEOUT_S = 30


def default_endpoint() -> str:
    """`$HF_ENDPOINT` (the Hub's own mirror variable) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def file_url(endpoint: str, repo: str, filename: str) -> str:
    return f"{endpoint.rstrip('/')}/datasets/{repo}/resolve/main/{filename}"


def _total_size(response, offset: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200)."""
    if response.status == 206:
        match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def _unreachable(endpoint: str, reason: object) -> DataError:
    return DataError(
        f"cannot reach {endpoint} ({reason}): check the network, or point --endpoint (or $HF_ENDPOINT) at a mirror"
    )


def download_file(url: str, dest: Path, *, endpoint: str, progress: bool = False) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part`; DataError with one line on any failure."""
    from tqdm import tqdm

    if dest.is_file():
        log.info("%s already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the part already holds everything
            match = re.match(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == offset:
                os.replace(part, dest)
                return dest
        raise DataError(f"download {url}: HTTP {e.code} {e.reason}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, HTTPException) as e:
        raise _unreachable(endpoint, getattr(e, "reason", e)) from None
    with response:
        if response.status != 206:
            offset = 0  # the server ignored the Range header: start over
        total = _total_size(response, offset)
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
        try:
            with open(part, "ab" if offset else "wb") as f:
                while block := response.read(BLOCK_BYTES):
                    f.write(block)
                    bar.update(len(block))
        except (TimeoutError, ConnectionError, HTTPException) as e:
            raise DataError(
                f"download {dest.name}: interrupted after {part.stat().st_size:,} bytes "
                f"({type(e).__name__}); run again to resume"
            ) from None
        finally:
            bar.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise DataError(f"download {dest.name}: got {size:,} of {total:,} bytes; run again to resume")
    os.replace(part, dest)
    return dest


def download_dataset(
    name: str, out_dir: str | Path, *, endpoint: str | None = None, progress: bool = False
) -> list[Path]:
    """Download every file of a known dataset into `out_dir`."""
    if name not in DATASETS:
        raise DataError(f"dataset '{name}': unknown (known: {', '.join(DATASETS)})")
    endpoint = endpoint or default_endpoint()
    repo, files = DATASETS[name]
    return [
        download_file(file_url(endpoint, repo, f), Path(out_dir) / f, endpoint=endpoint, progress=progress)
        for f in files
    ]
