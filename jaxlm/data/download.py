"""Download the CS336 corpora from the Hugging Face Hub (or a mirror) with `huggingface_hub`.

Each file is fetched by `hf_hub_download(repo_type="dataset", local_dir=<dir>)` and lands at
`<dir>/<file>` only when complete (bytes in flight go to a temporary file under
`<dir>/.cache/huggingface/download/`). A connection dropped mid-file is resumed with an HTTP
Range request from where it stopped, again after each drop as long as bytes keep arriving.
huggingface_hub 2.x deletes its temporary file when the process ends, so a killed command
starts that file over. A complete file whose ETag still matches the Hub's is not fetched again. The endpoint is
`--endpoint`, else `$HF_ENDPOINT`, else huggingface.co; `$HF_TOKEN` authenticates (gated or
private mirrors); the progress bar is huggingface_hub's. Every failure is one line
(DataError): unreachable endpoint, HTTP errors such as 404, a full disk, a cut transfer.

Before each file, one metadata request of our own (`reachable`), with a short timeout and
CONNECT_RETRIES quick retries (a log line each): huggingface_hub's own backoff waits about 25 s
before it gives up on a refused connection or a failed DNS lookup, a long silence offline. A
failed command leaves nothing it created: no empty `<dir>`, no `<dir>/.cache/huggingface/`
unless a file was completed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from pathlib import Path

from jaxlm.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_RETRIES = (1.0, 2.0)  # seconds before each retry of an unreachable endpoint: gives up in ~3 s
CONNECT_TIMEOUT_S = 10.0  # a metadata request's timeout (the Hub answers one in well under a second)
DATASETS = {
    "tinystories": ("roneneldan/TinyStories", ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt")),
    "owt": ("stanford-cs336/owt-sample", ("owt_train.txt.gz", "owt_valid.txt.gz")),
}


def default_endpoint() -> str:
    """`$HF_ENDPOINT` (the Hub's own mirror variable) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def _unreachable(endpoint: str, reason: object) -> DataError:
    return DataError(
        f"cannot reach {endpoint} ({reason}): check the network, or point --endpoint (or $HF_ENDPOINT) at a mirror"
    )


def _http_status(error: BaseException | None) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def explain(error: Exception, repo: str, filename: str, endpoint: str) -> DataError:
    """huggingface_hub's (or the OS's) exception for one file -> a one-line DataError."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"{repo}/{filename}"
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DataError(f"download {where}: disk full ({error.strerror}); free space and run again")
    if isinstance(error, HfHubHTTPError) and _http_status(error) is not None:
        return DataError(f"download {where}: HTTP {_http_status(error)} from {endpoint}")
    if isinstance(error, LocalEntryNotFoundError):  # the metadata request failed: why is in its cause
        cause = error.__cause__
        if _http_status(cause) is not None:
            return DataError(f"download {where}: HTTP {_http_status(cause)} from {endpoint}")
        if isinstance(cause, httpx2.TransportError):
            return _unreachable(endpoint, type(cause).__name__)
        return DataError(f"download {where}: {str(cause or error).splitlines()[0]}")
    if isinstance(error, httpx2.TransportError):  # the transfer itself broke, after huggingface_hub's retries
        return DataError(f"download {where}: interrupted ({type(error).__name__}) after repeated retries; run again")
    if isinstance(error, OSError) and "Consistency check failed" in str(error):
        return DataError(f"download {where}: transfer ended early; run again")
    return DataError(f"download {where}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


def reachable(repo: str, filename: str, endpoint: str, waits=CONNECT_RETRIES) -> None:
    """Ask the endpoint for the file's metadata, retrying a failed connection after each of `waits`
    seconds (one log line per retry); DataError when it stays unreachable. HTTP errors are left to
    the download, which words them (see `explain`)."""
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, filename, repo_type="dataset", endpoint=endpoint)
    for attempt, wait in enumerate((*waits, None), start=1):
        try:
            get_hf_file_metadata(url, timeout=CONNECT_TIMEOUT_S, endpoint=endpoint, retry_on_errors=False)
            return
        except httpx2.TransportError as e:  # refused, DNS failed, timed out: nothing answered
            if wait is None:
                raise _unreachable(endpoint, type(e).__name__) from None
            log.warning(
                "cannot reach %s (%s): retry %d of %d in %.0f s", endpoint, type(e).__name__, attempt, len(waits), wait
            )
            time.sleep(wait)
        except Exception:  # noqa: BLE001 - the endpoint answered (an HTTP status): the download words it
            return


def download_file(repo: str, filename: str, out_dir: Path, *, endpoint: str, progress: bool = False) -> Path:
    """`<out_dir>/<filename>` from the dataset repo `repo`, resumed and cached by huggingface_hub."""
    import httpx2
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    # huggingface_hub's retry warnings are not failures (a failure is our one line); httpx2 logs each request.
    quiet = {"huggingface_hub": logging.ERROR, "httpx2": logging.WARNING, "httpcore2": logging.WARNING}
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    try:
        reachable(repo, filename, endpoint)  # DataError, one line, within seconds when unreachable
        path = hf_hub_download(
            repo_id=repo, filename=filename, repo_type="dataset", local_dir=out_dir, endpoint=endpoint
        )
    except DataError:
        raise
    except (OSError, httpx2.HTTPError, ValueError) as e:  # HfHubHTTPError is an httpx2.HTTPStatusError
        raise explain(e, repo, filename, endpoint) from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if not progress and not was_disabled:
            enable_progress_bars()
    return Path(path)


def download_dataset(
    name: str, out_dir: str | Path, *, endpoint: str | None = None, progress: bool = False
) -> list[Path]:
    """Download every file of a known dataset into `out_dir`."""
    if name not in DATASETS:
        raise DataError(f"dataset '{name}': unknown (known: {', '.join(DATASETS)})")
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    repo, files = DATASETS[name]
    out_dir = Path(out_dir)
    made_dir, made_cache = not out_dir.exists(), not (out_dir / ".cache" / "huggingface").exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    try:
        for f in files:
            done.append(download_file(repo, f, out_dir, endpoint=endpoint, progress=progress))
    except BaseException:
        if made_cache and not done:
            shutil.rmtree(out_dir / ".cache" / "huggingface", ignore_errors=True)
            _remove_if_empty(out_dir / ".cache")
        if made_dir:
            _remove_if_empty(out_dir)
        raise
    return done


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (or already gone): keep it
