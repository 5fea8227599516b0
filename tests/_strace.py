"""strace for the tests: real system-call fault injection (``-e inject=``) and traces.

strace is a Debian package that scripts/setup.sh installs; where it cannot trace (no
ptrace permission), the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys

import pytest


@functools.cache
def strace_problem(*, inject_kill: bool = False) -> str | None:
    """None if ``strace -f`` works here, else why not. With ``inject_kill``, it must also
    inject faults: a traced call of the child is turned into a SIGKILL, which the child must
    die of (``-e inject=`` needs more of ptrace than tracing does)."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed (apt-get install strace; scripts/setup.sh does)"
    if inject_kill:
        args = [
            *(strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=getppid"),
            *("-e", "inject=getppid:signal=KILL:when=1"),
            *(sys.executable, "-c", "import os; os.getppid(); print('alive')"),
        ]
    else:
        args = [strace, "-f", "-qq", "-e", "trace=msync,getppid", "-o", os.devnull, "true"]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"strace does not run: {exc}"
    if inject_kill and proc.returncode != -signal.SIGKILL:
        why = proc.stderr.strip()[:200] or f"exit status {proc.returncode}"
        return f"strace cannot inject a kill here (ptrace not permitted?): {why}"
    if proc.returncode != 0 and not inject_kill:
        return f"strace cannot trace here (ptrace not permitted?): {proc.stderr.strip()[:200]}"
    return None


def strace_or_skip() -> str:
    """The strace executable; skip the test where strace does not work."""
    problem = strace_problem()
    if problem is not None:
        pytest.skip(problem)
    strace = shutil.which("strace")
    assert strace is not None
    return strace


def inject(*rules: str) -> list[str]:
    """The strace command line that runs a program with the given ``-e inject=`` rules
    (for example ``"fallocate:error=ENOSPC:when=2"``), tracing nothing else."""
    # the injected calls are traced (strace injects only into traced calls); -o discards
    args = [strace_or_skip(), "-f", "-qq", "-o", os.devnull]
    for rule in rules:
        args += ["-e", f"inject={rule}"]
    return args
