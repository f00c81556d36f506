"""The one table of launch/gpu_check.sh, from the logs it left in its output folder.

    python3 scripts/gpu_report.py OUT_DIR      # prints the table, writes OUT_DIR/report.md; exit 1 if anything failed

Reads, all written by launch/gpu_check.sh: parts.jsonl (one line per part: name, exit status, seconds,
limit, state), env.log and correct.log (scripts/gpu_check.py's JSON lines), bench.log (jaxlm.bench's
JSON lines), torch.log (scripts/torch_reference.py's), quickstart_summary.json (the 300-step run's
summary.json). Standard library only: it runs even where the checks could not.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HEADER = ("part", "case", "result", "limit", "status")


def json_lines(path: Path) -> list[dict]:
    """The JSON objects among a log's lines (the rest is the tools' own chatter)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def num(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "n/a"


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def speed(r: dict) -> str:
    return (
        f"{num(r.get('tokens_per_sec'), ',.0f')} tok/s, MFU {pct(r.get('mfu'))}, "
        f"{num(r.get('step_ms'), '.2f')} ms/step, compile {num(r.get('compile_s'), '.1f')} s"
    )


def speed_rows(out: Path) -> list[tuple]:
    jax_rows = [r for r in json_lines(out / "bench.log") if r.get("impl") == "jaxlm"]
    torch_rows = [r for r in json_lines(out / "torch.log") if str(r.get("impl", "")).startswith("torch")]
    rows = []
    for r in jax_rows:
        case = f"jaxlm {Path(str(r.get('config'))).stem} batch {r.get('batch_size')} {r.get('dtype')}"
        rows.append(("speed", case, speed(r), f"{r.get('device_kind')}, peak: {r.get('peak_source')}", "ok"))
    for r in torch_rows:
        mine = [j for j in jax_rows if (j.get("batch_size"), j.get("dtype")) == (r.get("batch_size"), r.get("dtype"))]
        ratio = "no jaxlm row"
        if mine and r.get("tokens_per_sec"):
            ratio = f"jaxlm/torch {mine[0]['tokens_per_sec'] / r['tokens_per_sec']:.2f}"
        case = f"{r['impl']} (torch {r.get('torch')}) batch {r.get('batch_size')} {r.get('dtype')}"
        rows.append(("speed", case, speed(r), ratio, "ok"))
    return rows


def quickstart_row(out: Path, steps: str) -> tuple | None:
    path = out / "quickstart_summary.json"
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    result = (
        f"{s.get('status')} after {s.get('steps')} steps: val loss {num(s.get('final_val_loss'), '.4f')}, "
        f"{num(s.get('final_val_bpb'), '.3f')} bits/byte, {num(s.get('mean_tokens_per_sec'), ',.0f')} tok/s, "
        f"MFU {pct(s.get('mfu'))}, {num(s.get('wallclock_s'), '.1f')} s + compile {num(s.get('compile_s'), '.1f')} s, "
        f"{s.get('attention_kernel')} attention"
    )
    done = s.get("status") == "completed" and str(s.get("steps")) == steps
    return ("quickstart", f"configs/quickstart.json, {steps} steps, {s.get('dtype')}", result, "completed",
            "ok" if done else "FAILED")  # fmt: skip


def report(out: Path) -> tuple[str, bool]:
    parts = json_lines(out / "parts.jsonl")
    meta = next((p for p in parts if p.get("part") == "gpu_check"), {})
    rows: list[tuple] = []
    for name in ("env.log", "correct.log"):
        rows += [(r["part"], r["case"], r["result"], r["limit"], r["status"]) for r in json_lines(out / name)]
    rows += speed_rows(out)
    q = quickstart_row(out, str(meta.get("quickstart_steps", "")))
    rows += [q] if q else []
    for p in parts:
        if p.get("part") != "gpu_check" and p.get("state") != "ok":
            state = p.get("state")
            what = p.get("note") or f"{state} (exit {p.get('rc')}) after {p.get('seconds')} s; see {p.get('log')}"
            rows.append((p.get("part"), "the part itself", what, f"{p.get('limit')} s", state))
    failed = [r for r in rows if r[4] not in ("ok", "info", "skipped")]
    total = meta.get("seconds")
    if total is not None:
        within = total <= meta.get("budget", total)
        rows.append(
            ("total", meta.get("mode", ""), f"{total} s", f"<= {meta.get('budget')} s", "ok" if within else "over")
        )
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines), not failed and bool(rows)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python3 scripts/gpu_report.py OUT_DIR (the folder launch/gpu_check.sh wrote)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    table, ok = report(out)
    tmp = out / "report.md.tmp"
    tmp.write_text(table + "\n")
    os.replace(tmp, out / "report.md")
    print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
