"""`python -m jaxlm.bench --memory`: does a training process's memory grow with its token file?

The data path should memory-map a token file and read only the windows each batch
samples, so training on 4 GiB of tokens should take about the memory of training on
4 MiB. Anything that touched the whole file at start-up (a max over the tokens, a
digest, an `np.load` without mmap) would put every page of it in the process's resident
set: file-backed pages a process maps and touches count in its RSS, so such a scan shows
up as roughly the file's size.

So this writes a big and a small uint16 token file (random ids below the config's
vocab_size, with the `.meta.json` the loader reads: vocab_size, dtype, num_tokens,
max_token_id), written in 16 MiB chunks so the writer never holds the file, then trains
20 steps on each in its own subprocess through the real path,
`python -m jaxlm.launch --set train_data_path=F --set val_data_path=F` (eval, sampling
and logging minimised, output in the temp dir), and compares the children's peak RSS
from os.wait4 (ru_maxrss, KiB on Linux). Both children compile cold (compile cache
off), so neither starts cheaper than the other. Sizes are in MiB ("MB" below). Verdict:
a difference under 200 MB passes. The files and runs are deleted unless --keep.

Where a difference comes from is reported too, from the children's /proc sampled every
50 ms: how much of the token file was mapped into them (smaps Rss of its mapping) and
their anonymous memory. A scan through the memory map shows as token-file pages near the
file's size; a copy (np.load without mmap) as anonymous memory. Even without a scan the
token-file share is more than the windows' bytes: a page fault maps the whole page-cache
folio around the window (on ext4 with large folios, Linux 6.x, up to 2 MiB per window),
so it grows with steps x batch size until the whole file is mapped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxlm.errors import UserError

MIB = 1 << 20
STEPS = 20
THRESHOLD_MB = 200
CHUNK_TOKENS = 1 << 23  # 16 MiB of uint16 per write
SAMPLE_S = 0.05  # how often the children's /proc is read
MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")  # a mapping's header line in /proc/PID/smaps
# Keep the children's non-data work small and the same for both files (the last step still evaluates and checkpoints).
MINIMAL_RUN = (
    "warmup_iters=2",
    f"eval_interval={STEPS}",
    "eval_batches=1",
    "sample_tokens=0",
    f"log_interval={STEPS}",
    f"checkpoint_interval={STEPS}",
    "keep_checkpoints=1",
)


def write_token_file(path: Path, mib: int, vocab_size: int, seed: int = 0) -> dict:
    """A `.npy` of mib MiB of uint16 token ids < vocab_size plus its `.meta.json`; returns the metadata.

    One random chunk is drawn and written rotated by a different offset each time, so the
    file's pages differ without generating gigabytes of random numbers.
    """
    from jaxlm.data.tokens import meta_path

    n = mib * MIB // 2
    base = np.random.default_rng(seed).integers(0, vocab_size, min(n, CHUNK_TOKENS), dtype=np.uint16)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(np.uint16).str, "fortran_order": False, "shape": (n,)}
        )
        written, i = 0, 0
        while written < n:
            piece = base[: min(len(base), n - written)]
            k = (i * 104729) % len(piece)
            f.write(piece[k:])
            f.write(piece[:k])
            written, i = written + len(piece), i + 1
    meta = {
        "vocab_size": vocab_size,
        "dtype": "uint16",
        "num_tokens": n,
        "num_bytes": None,
        "max_token_id": int(base.max()),
        "source": "jaxlm.bench --memory (random token ids)",
    }
    meta_path(path).write_text(json.dumps(meta, indent=2))
    return meta


def _sample(pid: int, token_file: str) -> tuple[int, int] | None:
    """(KiB of `token_file` mapped, KiB of anonymous memory) resident in process `pid` now; None once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    anon = re.search(r"^RssAnon:\s+(\d+)", status, re.M)
    file_kib, inside = 0, False
    for line in smaps.splitlines():
        if MAPPING.match(line):
            inside = line.endswith(" " + token_file)
        elif inside and line.startswith("Rss:"):
            file_kib += int(line.split()[1])
    return file_kib, int(anon.group(1)) if anon else 0


def peak_rss_run(cmd: list[str], log: Path, env: dict, token_file: Path) -> dict:
    """Run `cmd` (output to `log`); its exit code, peak RSS (os.wait4's ru_maxrss), wall time, and the
    largest token-file and anonymous shares of its RSS seen in /proc, sampled every SAMPLE_S."""
    import subprocess

    path, peak_file, peak_anon = os.path.realpath(token_file), 0, 0
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                sample = _sample(proc.pid, path)
                if sample:
                    peak_file, peak_anon = max(peak_file, sample[0]), max(peak_anon, sample[1])
                time.sleep(SAMPLE_S)
        except BaseException:  # Ctrl-C: do not leave the child training on files about to be deleted
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {
        "exit": proc.returncode,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "token_file_rss_mb": round(peak_file / 1024, 1),
        "anon_rss_mb": round(peak_anon / 1024, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def train_on(token_file: Path, label: str, config: str, overrides: list[str], work: Path) -> dict:
    """Train STEPS steps reading `token_file` in a subprocess; its peak RSS and what it did."""
    cmd = [
        sys.executable,
        "-m",
        "jaxlm.launch",
        "--config",
        config,
        "--name",
        f"memory-{label}",
        "--output-dir",
        str(work / "runs"),
        "--no-experiment-log",
        "--quiet",
    ]
    sets = [
        *MINIMAL_RUN,
        *overrides,
        f"train_data_path={token_file}",
        f"val_data_path={token_file}",
        f"max_iterations={STEPS}",
    ]
    cmd += [arg for s in sets for arg in ("--set", s)]
    env = {**os.environ, "JAXLM_COMPILATION_CACHE": "0"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    log = work / f"{label}.log"
    run = peak_rss_run(cmd, log, env, token_file)
    rc = run.pop("exit")
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"the {label}-file run failed (exit {rc}): " + " | ".join(tail))
    summary = json.loads((work / "runs" / f"memory-{label}" / "summary.json").read_text())
    return {
        **run,
        "steps_done": summary.get("steps"),
        "tokens_per_sec": round(summary.get("mean_tokens_per_sec") or 0, 1),
    }


def run_memory(a, config: str, c, overrides: list[str]) -> tuple[dict, str]:
    """The --memory mode for config file `config` (`c` once loaded with `overrides`): the result (its
    `passed` says whether the difference is under the threshold) and a one-line verdict. Raises
    RuntimeError when a training child fails."""
    if c.vocab_size > 65536:
        raise UserError(f"--memory: vocab_size={c.vocab_size} does not fit the uint16 token files it writes")
    for flag, mib in (("--memory-big-mb", a.memory_big_mb), ("--memory-small-mb", a.memory_small_mb)):
        if mib < 1:
            raise UserError(f"{flag}: must be at least 1 (MiB), got {mib}")
    root = Path(a.memory_dir or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    need = (a.memory_big_mb + a.memory_small_mb + 512) * MIB
    if shutil.disk_usage(root).free < need:
        raise UserError(
            f"--memory-dir: '{root}' has {shutil.disk_usage(root).free // MIB} MiB free, needs about {need // MIB} MiB"
        )
    work = Path(tempfile.mkdtemp(prefix="jaxlm-memory-", dir=root))
    result = {"mode": "memory", "config": config, "steps": STEPS, "threshold_mb": THRESHOLD_MB}
    try:
        for label, mib in (("big", a.memory_big_mb), ("small", a.memory_small_mb)):
            t0 = time.perf_counter()
            token_file = work / f"{label}.npy"
            meta = write_token_file(token_file, mib, c.vocab_size, seed=c.seed)
            result.update(
                {
                    f"{label}_file_mb": mib,
                    f"{label}_tokens": meta["num_tokens"],
                    f"{label}_write_s": round(time.perf_counter() - t0, 1),
                }
            )
            result.update({f"{label}_{k}": v for k, v in train_on(token_file, label, config, overrides, work).items()})
    finally:
        if a.keep:
            result["kept_in"] = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    diff = result["big_peak_rss_mb"] - result["small_peak_rss_mb"]
    file_diff = result["big_token_file_rss_mb"] - result["small_token_file_rss_mb"]
    anon_diff = result["big_anon_rss_mb"] - result["small_anon_rss_mb"]
    result.update(
        diff_mb=round(diff, 1),
        token_file_rss_diff_mb=round(file_diff, 1),
        anon_rss_diff_mb=round(anon_diff, 1),
        passed=diff < THRESHOLD_MB,
    )
    verdict = (
        f"memory: {'PASS' if result['passed'] else 'FAIL'}: peak RSS {result['big_peak_rss_mb']:.0f} MB "
        f"training on the {a.memory_big_mb} MB token file vs {result['small_peak_rss_mb']:.0f} MB on the "
        f"{a.memory_small_mb} MB one: difference {diff:+.0f} MB (pass if < {THRESHOLD_MB} MB); of it, pages "
        f"of the token file mapped {file_diff:+.0f} MB, anonymous {anon_diff:+.0f} MB (sampled)"
    )
    return result, verdict
