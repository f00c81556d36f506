"""The token cache: where jaxlm keeps what it derives from data files (encoded tokens, trained
tokenizers, token-id ranges) and the compilation cache. `JAXLM_CACHE_DIR`, else `~/.cache/jaxlm`."""

from __future__ import annotations

import os
from pathlib import Path

from jaxlm.errors import DataError


def cache_root() -> Path:
    return Path(os.environ.get("JAXLM_CACHE_DIR") or Path.home() / ".cache" / "jaxlm")


def writable_cache(folder: Path) -> Path:
    """`folder`, created, where encoded tokens go; DataError when it cannot be written (a file in its path,
    read-only), naming JAXLM_CACHE_DIR when the folder is in the token cache."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        root = cache_root()
        where = (
            f"the token cache '{root}' (JAXLM_CACHE_DIR; set it to a writable folder)"
            if folder.is_relative_to(root)
            else f"'{folder}'"
        )
        raise DataError(f"cannot write tokens in {where}: {e.strerror}") from None
    return folder
