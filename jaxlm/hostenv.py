"""Huge pages for XLA:CPU's host buffers, through a glibc tunable set by re-executing
`python -m jaxlm.*` (`JAXLM_HOST_MALLOC=system` turns this off).

XLA:CPU allocates each step's temporary buffers with one large posix_memalign
and frees them when the step ends. glibc serves an allocation that large with a fresh mmap, so every
step page-faults all that memory in again, 4 KiB at a time. For the 17M model at
batch 8 that is about 1.1 GB, 287,000 page faults and a fifth of the step.

glibc's `glibc.malloc.hugetlb=1` tunable asks for transparent huge pages on
those mappings, which cuts the faults 500-fold. It changes no numerics and no
memory use. Measured on the 2-core CPU, the 17M step went from 1220 to 1000 ms.

glibc reads tunables only when a process starts, so a `python -m jaxlm.*`
command that finds the tunable missing re-executes itself with it: same PID,
same arguments, before JAX is imported. Your own scripts and notebooks get it by
starting Python with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment.

(mallopt at run time was tried first: one arena, no mmap, no trimming. It was
slightly faster, but resident memory and the remaining faults then varied from
run to run with how XLA's threads interleaved their allocations.)
"""

from __future__ import annotations

import os
import sys

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def host_tuning_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` (default: this process's) with the huge-pages tunable added to GLIBC_TUNABLES."""
    env = dict(os.environ if environ is None else environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):  # keep a user's own choice
        env["GLIBC_TUNABLES"] = ":".join(tunables + [HUGE_PAGES_TUNABLE])
    return env


def wants_host_tuning() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("JAXLM_HOST_MALLOC", "hugepages") != "system"


def running_jaxlm_command(argv: list[str]) -> bool:
    """Whether `argv` (sys.orig_argv) is `python [options] -m jaxlm[.something] ...`."""
    return any(arg == "-m" and i + 1 < len(argv) and argv[i + 1].split(".")[0] == "jaxlm"
               for i, arg in enumerate(argv))


def reexec_with_host_tuning() -> None:
    """Re-execute this `python -m jaxlm.*` process with the huge-pages tunable, once; else do nothing."""
    argv = list(getattr(sys, "orig_argv", []))
    if not (wants_host_tuning() and running_jaxlm_command(argv)):
        return
    env = host_tuning_env()
    if env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES"):
        return  # already in effect (or the user chose their own hugetlb setting)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
