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


def growth_fallocates(argv: list[str], trace: str, env: dict[str, str]) -> list[int]:
    """Run ``argv`` under strace and return the numbers (1-based, in the order strace counts
    them for ``-e inject=fallocate:...:when=N``) of its fallocate calls that grow the pool:
    libpmemobj's posix_fallocate of a new part file (mode 0, from offset 0, a whole part of
    8 MiB or more), not the calls of anything else that may allocate file space (a test
    that means to fail the growth must hit the growth). The same program on a store made
    the same way makes the same calls."""
    subprocess.run(
        [strace_or_skip(), "-f", "-qq", "-y", "-e", "trace=fallocate", "-o", trace, *argv],
        env=env,
        check=True,
        capture_output=True,
    )
    with open(trace, encoding="utf-8", errors="replace") as f:
        calls = [ln for ln in f if "fallocate(" in ln]
    growth = []
    for n, line in enumerate(calls, 1):
        args = line.split("fallocate(", 1)[1].split(")", 1)[0].rsplit(", ", 3)
        if args[1:3] == ["0", "0"] and int(args[3]) >= 8 << 20:
            growth.append(n)
    return growth
