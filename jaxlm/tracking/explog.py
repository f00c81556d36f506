"""EXPERIMENT_LOG.md: one markdown entry appended per finished run, whatever its status.

It lives with the runs it describes (`<output-dir>/EXPERIMENT_LOG.md`, git-ignored like them), so
that a checkout holds no one's notebook and a `git pull` never conflicts with it.

The file is a lab notebook: entries are only ever appended (never rewritten),
under an exclusive `fcntl.flock`, in one write, so two runs ending at once
cannot interleave. Each entry ends with an empty "Observations" heading for the
person to fill in.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxlm.tracking.fmt import brief, number

HEADER = "# Experiment log\n\nOne entry per run, appended when the run ends. Fill in the Observations.\n"


def default_log_path(output_dir: str | Path) -> Path:
    """EXPERIMENT_LOG.md inside the runs folder: `runs/` -> `runs/EXPERIMENT_LOG.md`."""
    return Path(output_dir).resolve() / "EXPERIMENT_LOG.md"


def inline(text: Any) -> str:
    """User text (a description, a path, an error) as it goes into an entry: on one line, at most 1,000
    characters, and never markup the log is read back by (`entry_marker`'s comments) or that ends an
    inline code span."""
    return brief(text, 1000).replace("<!--", "&lt;!--").replace("`", "'")


def entry_marker(key: str) -> str:
    """The invisible line that identifies an entry by `key` (see `append_entry`)."""
    return f"<!-- jaxlm entry {key} -->"


def override_lines(overrides: Sequence[str], config: Mapping[str, Any], config_file: str | None) -> list[str]:
    """`key`: value in the config file -> value used, one per `--set` override (last one wins); an override
    that sets a key to the value the file already gives it is left out."""
    file_values: dict[str, Any] = {}
    if config_file:
        try:
            file_values = json.loads(Path(config_file).read_text())
        except (OSError, ValueError, RecursionError):
            file_values = {}
    file_values = file_values if isinstance(file_values, dict) else {}
    keys = list(dict.fromkeys(o.split("=", 1)[0].strip() for o in overrides))
    lines = []
    for key in keys:
        if key in file_values and file_values[key] == config.get(key):
            continue  # set to the value the file already had: nothing differs
        before = inline(json.dumps(file_values[key])) if key in file_values else "(default)"
        lines.append(f"  - `{key}`: {before} -> {inline(json.dumps(config.get(key), default=str))}")
    return lines


def full_validation(summary: Mapping[str, Any]) -> str:
    """ "; full validation ..." when the run ended with a full evaluation (final_eval "full"), else ""."""
    if summary.get("full_val_loss") is None:
        return ""
    return (
        f"; full validation set ({number(summary.get('full_val_tokens'), ',')} tokens): loss "
        f"{number(summary['full_val_loss'])}, {number(summary.get('full_val_bpb'))} bits/byte"
    )


def format_entry(
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    run_dir: Path,
    log_path: Path,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
) -> str:
    """The markdown of one entry; links are relative to the log file's folder."""
    s = summary
    rel = Path(os.path.relpath(Path(run_dir).resolve(), Path(log_path).resolve().parent)).as_posix()
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    description = inline(s.get("description") or config.get("description") or "(none given)")
    lines = [
        f"## {date} · {s.get('name')} · {s.get('status')}",
        "",
        f"**Hypothesis / description:** {description}",
        "",
        f"- Run directory: [{rel}]({rel})",
    ]
    if config_file:
        lines.append(f"- Launched from: `{inline(config_file)}`")
    changed = override_lines(overrides, config, config_file)
    nothing = " nothing (every `--set` repeats the file's value)" if overrides else " nothing (no `--set` overrides)"
    lines.append("- Differs from the config file:" + ("" if changed else nothing))
    lines += changed
    if s.get("resumed_from_step") is not None:
        lines.append(f"- Resumed from step {s['resumed_from_step']}")
    if s.get("error"):
        lines.append(f"- Error: `{inline(s['error'])}`")
    best_step = f" (step {s['best_val_step']})" if s.get("best_val_step") is not None else ""
    tokens = number(s.get("tokens"), ",")
    lines += [
        f"- Results: best val loss {number(s.get('best_val_loss'))}{best_step}; final val loss "
        f"{number(s.get('final_val_loss'))}, {number(s.get('final_val_bpb'))} bits/byte, perplexity "
        f"{number(s.get('final_val_perplexity'), '.2f')}; final train loss {number(s.get('final_train_loss'))}"
        + full_validation(s),
        f"- Scale: {number(s.get('steps'), ',')} steps, {tokens} tokens, {number(s.get('wallclock_s'), '.1f')} s "
        f"wall-clock (+{number(s.get('compile_s'), '.1f')} s compile), "
        f"{number(s.get('mean_tokens_per_sec'), ',.0f')} tokens/s",
        f"- Plots: [loss curves]({rel}/loss_curves.png) · [LR schedule]({rel}/lr_schedule.png)",
        "",
        "### Observations",
        "",
        "",
    ]
    return "\n".join(lines)


def append_entry(log_path: str | Path, entry: str, key: str | None = None) -> bool:
    """Append `entry` under an exclusive lock; write the header first if the file is new or empty.
    With `key`, the entry carries `entry_marker(key)` and is not appended again when the log already
    holds that marker (a finished sweep run again reports the same runs). True when it was appended."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a+", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            if key is not None:
                f.seek(0)
                if entry_marker(key) in f.read():
                    return False
                entry = entry_marker(key) + "\n" + entry
            f.seek(0, os.SEEK_END)
            text = entry if f.tell() > 0 else HEADER + "\n" + entry
            f.write(text if text.endswith("\n") else text + "\n")
            f.flush()
            os.fsync(f.fileno())
            return True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
