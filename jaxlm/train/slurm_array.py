"""Runs on SLURM as one job array: the sbatch script of a sweep (one array element per grid point),
its submission, and whether its job is still queued.

Every element runs one ordinary `python -m jaxlm.launch ... --resume-if-exists` under `srun`, so a
preempted or requeued element continues its own run directory, and a diverged or failed point
ends only its own element. The script follows launch/slurm_cpu.sbatch: `--requeue`,
`--open-mode=append`, a SIGTERM warning before the time limit, srun with `--kill-on-bad-exit=0`
in the background, and a self-requeue when jaxlm exits 75 (interrupted, resumable).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from jaxlm.errors import EXIT_INTERRUPTED, UserError

SCRIPT_TEMPLATE = """#!/bin/bash
# Written by `python -m jaxlm.sweep --slurm`: one array element per grid point of sweep {prefix}.
#SBATCH --job-name=jaxlm-sweep-{prefix}
#SBATCH --array={array}
#SBATCH --ntasks=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=TERM@120
#SBATCH --output={logs}/%A_%a.out
set -uo pipefail
cd {cwd}
case ${{SLURM_ARRAY_TASK_ID:?not an array job}} in
{cases}
  *) echo "error: array index $SLURM_ARRAY_TASK_ID is no point of this sweep" >&2; exit 2 ;;
esac
echo "== $(date -u +%FT%TZ) point $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID) start, restart ${{SLURM_RESTART_COUNT:-0}}"
srun --kill-on-bad-exit=0 "${{cmd[@]}}" &
pid=$!
rc=0
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
echo "== $(date -u +%FT%TZ) srun exited $rc"
if ((rc == {interrupted})); then
  echo "== requeue $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
"""


def array_script(prefix: str, commands: dict[int, list[str]], logs: Path, cwd: Path, max_parallel: int | None) -> str:
    """The sbatch script running `commands` ({array index: launch argv}) as one array."""
    array = ",".join(str(i) for i in sorted(commands)) + (f"%{max_parallel}" if max_parallel else "")
    cases = "\n".join(f"  {i}) cmd=({shlex.join(argv)}) ;;" for i, argv in sorted(commands.items()))
    return SCRIPT_TEMPLATE.format(
        prefix=prefix,
        array=array,
        logs=shlex.quote(str(logs)),
        cwd=shlex.quote(str(cwd)),
        cases=cases,
        interrupted=EXIT_INTERRUPTED,
    )


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(f"--slurm: '{name}' not found on PATH (run this on a SLURM login node)")
    return path


def submit(script: Path, sbatch_args: Sequence[str]) -> str:
    """`sbatch --parsable [args] SCRIPT`; returns the job id, UserError with sbatch's message on refusal."""
    proc = subprocess.run(
        [_tool("sbatch"), "--parsable", *sbatch_args, str(script)], capture_output=True, text=True, check=False
    )
    job = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not re.fullmatch(r"\d+", job):
        message = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
        raise UserError(f"--slurm: sbatch refused the sweep's job array: {message}")
    return job


def queued(job: str) -> list[str]:
    """The array elements of `job` SLURM still lists (pending, running, requeued), as squeue prints them."""
    proc = subprocess.run(
        [_tool("squeue"), "-h", "-r", "-j", job, "-o", "%i %T"], capture_output=True, text=True, check=False
    )
    return proc.stdout.split("\n")[:-1] if proc.returncode == 0 else []


def read_job(path: Path) -> str | None:
    """The job id recorded by the last submission of a sweep, None if none."""
    try:
        return str(json.loads(path.read_text())["job"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
