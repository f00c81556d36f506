"""How jaxlm writes numbers and files for people and for other programs: one place for each.

* `as_float`: a metric cell (a number, "nan"/"inf" strings from JSON, empty) as a float or None.
* `number`: a value for a table or a terminal line ("n/a" when there is none).
* `markdown_table`: a header and rows of cells as a markdown table.
* `json_safe` / `write_json`: strict JSON (non-finite floats become the strings "nan", "inf"), written
  to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def as_float(value: Any) -> float | None:
    """A metric cell as a float ("nan"/"inf" strings from JSON included); None when empty or not a number."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def number(value: Any, spec: str = ".4f", *, finite_only: bool = False) -> str:
    """`value` formatted with `spec`; "n/a" when missing (or not finite, with `finite_only`); other
    text as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return format(value, spec)  # "," keeps an int an int: 1,234 rather than 1,234.0
    v = as_float(value)
    if v is None:
        return "n/a" if value is None or value == "" else str(value)
    if finite_only and not math.isfinite(v):
        return "n/a"
    return format(v, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table, one line per row, ending with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (nested too) replaced by its string: JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def brief(text: Any, limit: int = 200) -> str:
    """User text on one line and at most `limit` characters (an ellipsis marks a cut): what a table cell,
    a plot title or a summary shows of a description, whatever its length (only its start is read)."""
    one = " ".join(str(text)[: 4 * limit].split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary name beside `path`, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_text(obj: Any) -> str:
    """`obj` as the strict, indented JSON text jaxlm's records hold (non-finite floats as strings)."""
    return json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Write strict JSON atomically (see `write_text`)."""
    write_text(path, json_text(obj))
