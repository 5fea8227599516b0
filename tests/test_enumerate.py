"""Crash points enumerated, not sampled: a kill, or a failure, at the N-th call of each
durability-relevant system call of one deterministic workload.

The workload (``tests/_enumerate_child.py``) grows a store over several part files, writes
values over 1 MiB, overwrites and deletes until whole blocks (jumbo ones too) are freed and
their space reused, compacts, calls ``sync()`` and ``reorganize()``, closes and reopens, runs
``viperdbm dump``, ``load --replace`` and ``copy --replace``, and opens an existing store
with flag ``'n'``. It is the same in every run, so the N-th ``msync`` (or ``rename``, ...)
is the same point of it every time. A counting run under ``strace`` learns how many calls of
each system call it makes; then each point is one run of the child where:

* **kill**: strace kills the child with SIGKILL on entering the N-th call
  (``-e inject=SYSCALL:signal=KILL:when=N``);
* **error**: the N-th call fails with ENOSPC or EIO instead (``:error=ENOSPC``); the child
  logs the ``viperdbm.error`` and keeps using the same handle;
* **hook**: the native core's crash-point hook (``VIPERDBM_CRASH_AT=N`` kills the process at
  its N-th internal step, ``VIPERDBM_CRASH_LOG`` lists the steps): points between two
  stores into the mapping, which no system call marks. Until the core has the hook, the
  counting run logs no step and those tests are skipped, saying so.

strace counts the calls of each system call per tracee (per thread), so the counting run
checks that a single thread makes them all. ``-e trace=none`` disables injection in strace
6.1, so each run traces the injected call (into a log, which also proves the injection).

After each run every store is checked (in a separate process, opened with ``'w'`` and then
``'r'``) against what the child acknowledged: each key holds its last acknowledged value, the
operation in flight (or the one that failed) old or new; no deleted key returns; the store
opens; a path that ``load --replace``, ``copy --replace`` or ``'n'`` was replacing holds the
old or the new store, complete. In the error mode every exception is a ``viperdbm.error``
(``KeyError`` for a delete of a key the store may hold), what the handle reads agrees with
what was acknowledged, and the child neither crashes nor hangs nor fills the disk.

CI runs a deterministic spread of 229 points: the first call of each system call in each
kind of operation, then evenly spread (100 s on 2 cores). ``VIPERDBM_ENUMERATE_ALL=1`` runs
every point of every system call (1,499 in all), killed and failing with ENOSPC and with
EIO, with the default flag and with ``'s'`` (4,497 runs, about an hour on 2 cores), and
prints a summary per test and progress every 100 points. Other knobs:
``VIPERDBM_ENUMERATE_JOBS`` (parallel runs, default 2), ``VIPERDBM_ENUMERATE_FS`` (``tmpfs``,
the default, or ``ext4``), ``VIPERDBM_ENUMERATE_REPORT`` (a file to append every violation
to, as JSON lines). Every violation names the point and prints the command that replays it:
``python tests/test_enumerate.py SOURCE SYSCALL N [--flag s] [--errno EIO] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _enumerate_child import STORES
from _strace import strace_problem
from _vdbtools import HERE, Prober, child_env, describe
from conftest import FILESYSTEMS

#: the system calls whose N-th call is a point; ``openat`` only where it creates a file
SYSCALLS = (
    "msync",
    "pwrite64",
    "fsync",
    "fdatasync",
    "fallocate",
    "ftruncate",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "mkdir",
    "mkdirat",
    "openat",
)
#: the errno a call of each kind most plausibly fails with, for the CI's error points
CI_ERRNO = {"msync": "EIO", "pwrite64": "EIO", "fsync": "EIO", "fdatasync": "EIO"}
ERRNOS = ("ENOSPC", "EIO")
FLAGS = ("", "s")
CHILD_TIMEOUT = 180.0  # seconds; a hang detector, not a timing assertion
DISK_BUDGET = 512 << 20  # bytes a run may leave under its directory before it is a runaway
ALL = os.environ.get("VIPERDBM_ENUMERATE_ALL", "") not in ("", "0")

#: per (flag, source): how many points of each system call CI runs. They are spread over
#: the workload's operations first (the first call made in each kind of operation: a put,
#: a sync(), a copy --replace, ...), then evenly over the calls; the full run takes them all
CI_POINTS: dict[tuple[str, str], dict[str, int]] = {
    ("", "kill"): {
        "msync": 14,
        "pwrite64": 4,
        "fsync": 10,
        "fallocate": 15,
        "rename": 28,
        "unlinkat": 6,
        "rmdir": 3,
        "mkdir": 5,
        "openat": 12,
    },
    ("", "error"): {
        "msync": 12,
        "pwrite64": 4,
        "fsync": 10,
        "fallocate": 8,
        "rename": 8,
        "unlinkat": 3,
        "rmdir": 3,
        "mkdir": 5,
        "openat": 6,
    },
    ("s", "kill"): {"msync": 16, "pwrite64": 6, "fallocate": 3},
    ("s", "error"): {"msync": 13, "pwrite64": 4},
    ("", "hook"): {"hook": 20},
    ("s", "hook"): {"hook": 10},
}


def flag_label(flag: str) -> str:
    return f"'{flag}'" if flag else "default"


# --------------------------------------------------------------------------- points
@dataclass(frozen=True)
class Point:
    """One run: ``source`` kill/error/hook, at call ``n`` of ``syscall``."""

    source: str
    syscall: str
    n: int
    flag: str = ""
    errno: str = ""  # error mode only

    def label(self) -> str:
        what = f"{self.syscall}#{self.n}"
        if self.source == "error":
            what += f"={self.errno}"
        return f"{self.source} {what} flag {flag_label(self.flag)}"

    def replay(self) -> str:
        python = os.path.normpath(sys.executable)
        cmd = f"{python} {HERE / 'test_enumerate.py'} {self.source} {self.syscall} {self.n}"
        if self.flag:
            cmd += f" --flag {self.flag}"
        if self.errno:
            cmd += f" --errno {self.errno}"
        return cmd + " --keep /tmp/viperdbm-enumerate-replay"


@dataclass
class Counting:
    """What the counting run saw: the calls of each system call, in order."""

    flag: str
    calls: dict[str, list[str]]  # syscall -> each call's trace line (the N-th at N - 1)
    ops: dict[str, list[str]]  # syscall -> the workload operation each call was made in
    hook_steps: list[str] = field(default_factory=list)

    def points(self, syscall: str) -> list[int]:
        """The values of N that are points of ``syscall`` (1-based)."""
        if syscall == "hook":
            return list(range(1, len(self.hook_steps) + 1))
        lines = self.calls.get(syscall, [])
        ops = self.ops.get(syscall, [])
        return [
            i + 1
            for i, line in enumerate(lines)
            # not the child's own start (its log file), and openat only where it may
            # create a file
            if ops[i] != START and (syscall != "openat" or "O_CREAT" in line)
        ]

    def context(self, point: Point) -> str:
        if point.syscall == "hook":
            steps = self.hook_steps
            return steps[point.n - 1] if point.n <= len(steps) else "?"
        lines = self.calls.get(point.syscall, [])
        ops = self.ops.get(point.syscall, [])
        if point.n > len(lines):
            return "?"
        call = re.sub(r'"[^"]*/w/', '"', lines[point.n - 1])  # the counting run's directory
        return f"{call[:100]} in op {ops[point.n - 1]}"


def workload_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = child_env()
    # no .pyc written by the child: each would add an openat and a rename to the count
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name in ("VIPERDBM_CRASH_AT", "VIPERDBM_CRASH_LOG"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def child_cmd(workdir: Path, flag: str, acklog: Path) -> list[str]:
    return [
        sys.executable,
        str(HERE / "_enumerate_child.py"),
        str(workdir),
        flag or "-",
        str(acklog),
    ]


def scratch_root() -> str:
    return FILESYSTEMS[os.environ.get("VIPERDBM_ENUMERATE_FS", "tmpfs")]


START = "start-up"  # the calls made before the workload's first operation
_TRACE_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_ACK_WRITE = re.compile(r'^\d+\s+write\(\d+, "B (\d+ [^ "\\]+ [^ "\\]+)')
_OPENED = re.compile(r'^\w+, "([^"]*)",.*\) = (\d+)$')
#: the fsyncs that write the readers' ``blocks`` file at close (its temporary file, then the
#: store directory after the rename). That file only saves readers a recovery: a close whose
#: blocks file could not be written logs it, keeps the file's generation out of the root (so
#: no reader trusts it) and loses nothing, so their failure is not a swallowed durability
#: failure. (The close's own msyncs and its fsync of parts/ come before them.)
READERS_FILE_NOTE = "  [the readers' blocks file]"


def _parse_trace(trace: str) -> tuple[dict[str, list[str]], dict[str, list[str]], set[str]]:
    calls: dict[str, list[str]] = {}
    ops: dict[str, list[str]] = {}
    pids: set[str] = set()
    main = ""
    current = START
    fd_paths: dict[str, str] = {}  # descriptor -> the path openat gave it
    after_blocks_rename = False
    for line in trace.splitlines():
        ack = _ACK_WRITE.match(line)
        if ack is not None:
            current = ack.group(1)
            continue
        m = _TRACE_LINE.match(line)
        if m is None or m.group(2) not in SYSCALLS:
            continue
        main = main or m.group(1)
        if m.group(1) != main and m.group(2) == "openat" and "O_CREAT" not in m.group(3):
            # a helper process (ctypes.util.find_library runs /sbin/ldconfig) reading files:
            # not a point, and strace counts the main process's calls apart from it
            continue
        pids.add(m.group(1))
        name, rest = m.group(2), m.group(3)
        note = ""
        opened = _OPENED.match(rest) if name == "openat" else None
        if opened is not None:
            fd_paths[opened.group(2)] = opened.group(1)
        elif name == "rename":
            renamed_blocks = rest.rstrip().rstrip(")").split(", ")[-1].split(")")[0]
            after_blocks_rename = renamed_blocks.endswith('/blocks"')
        elif name == "fsync":
            path = fd_paths.get(rest.split(")")[0], "")
            base = os.path.basename(path)
            if (base.startswith(".blocks.") and base.endswith(".tmp")) or after_blocks_rename:
                note = READERS_FILE_NOTE
            after_blocks_rename = False
        calls.setdefault(name, []).append(f"{name}({rest}{note}")
        ops.setdefault(name, []).append(current)
    return calls, ops, pids


@functools.cache
def counting(flag: str) -> Counting:
    """Run the workload once under ``strace -e trace=...`` (twice: it must be deterministic)
    and once with the crash-point hook's step log."""
    problem = strace_problem(inject_kill=True)
    if problem is not None:
        pytest.skip(problem)
    strace = shutil.which("strace")
    assert strace is not None
    seen: list[dict[str, list[str]]] = []
    calls: dict[str, list[str]] = {}
    ops: dict[str, list[str]] = {}
    for _ in range(2):
        with tempfile.TemporaryDirectory(prefix="viperdbm-enum-count-", dir=scratch_root()) as d:
            work = Path(d)
            (work / "w").mkdir()
            trace = work / "trace"
            cmd = [strace, "-f", "-qq", "-s", "4096", "-o", str(trace)]
            cmd += ["-e", "trace=" + ",".join((*SYSCALLS, "write"))]
            proc = subprocess.run(
                cmd + child_cmd(work / "w", flag, work / "ack"),
                env=workload_env(),
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT * 2,
            )
            ack = (work / "ack").read_text()
            assert proc.returncode == 0 and ack.endswith("DONE\n"), (
                f"the workload fails without any injection (flag {flag_label(flag)}): "
                f"{proc.stderr[-2000:]}\n{ack[-2000:]}"
            )
            bad = [line for line in ack.splitlines() if line[:1] in ("E", "X", "S")]
            assert not bad, f"the workload reports failures without any injection: {bad[:5]}"
            calls, ops, pids = _parse_trace(trace.read_text())
            # strace counts calls per tracee: N means "the N-th call" only in one thread
            assert len(pids) == 1, f"durability calls made by several threads/processes: {pids}"
            # what N means: the count of each call, and which openat calls create files
            seen.append({k: [str("O_CREAT" in c) for c in v] for k, v in calls.items()})
    assert seen[0] == seen[1], "the workload's system calls differ between two runs: " + str(
        {k: (len(seen[0].get(k, [])), len(seen[1].get(k, []))) for k in SYSCALLS}
    )
    hook_steps: list[str] = []
    with tempfile.TemporaryDirectory(prefix="viperdbm-enum-hook-", dir=scratch_root()) as d:
        work = Path(d)
        (work / "w").mkdir()
        steplog = work / "steps"
        proc = subprocess.run(
            child_cmd(work / "w", flag, work / "ack"),
            env=workload_env({"VIPERDBM_CRASH_LOG": str(steplog)}),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT * 2,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        if steplog.exists():
            hook_steps = [line for line in steplog.read_text().splitlines() if line.strip()]
    return Counting(flag, calls, ops, hook_steps)


def spread(points: list[int], k: int) -> list[int]:
    """``k`` of ``points``, evenly spread, the first and the last among them."""
    if k >= len(points):
        return list(points)
    if k <= 0:
        return []
    if k == 1:
        return points[:1]
    return sorted({points[round(i * (len(points) - 1) / (k - 1))] for i in range(k)})


def spread_over_ops(cnt: Counting, syscall: str, k: int) -> list[int]:
    """About ``k`` points of ``syscall``: the first call in each kind of operation (in
    workload order), then an even spread over all the calls."""
    every = cnt.points(syscall)
    if syscall == "hook" or k >= len(every):
        return spread(every, k)
    firsts: dict[str, int] = {}
    for n in every:
        kind = cnt.ops[syscall][n - 1].split(" ", 1)[-1]  # "main put", "target copy", ...
        firsts.setdefault(kind, n)
    chosen = set(list(firsts.values())[:k])
    extra = k - len(chosen)
    while len(chosen) < k:
        chosen = set(firsts.values()) | set(spread(every, extra))
        extra += 1
    return sorted(chosen)


def select_points(cnt: Counting, source: str) -> list[Point]:
    """Every point (VIPERDBM_ENUMERATE_ALL) or the CI spread, for one flag and source."""
    syscalls = ("hook",) if source == "hook" else SYSCALLS
    budget = CI_POINTS.get((cnt.flag, source), {})
    chosen: list[Point] = []
    for sc in syscalls:
        picked = cnt.points(sc) if ALL else spread_over_ops(cnt, sc, budget.get(sc, 0))
        for n in picked:
            if source == "error":
                errnos = ERRNOS if ALL else (CI_ERRNO.get(sc, "ENOSPC"),)
                chosen += [Point(source, sc, n, cnt.flag, e) for e in errnos]
            else:
                chosen.append(Point(source, sc, n, cnt.flag))
    return chosen


# --------------------------------------------------------------------------- the model
Cand = dict[bytes, frozenset[str | None]]
ABSENT: frozenset[str | None] = frozenset({None})


@dataclass
class StoreModel:
    """What a store may hold: one of ``cands`` (a key maps to the values it may hold; a
    key not listed must be absent). Several candidates while a whole-store replacement was
    in flight or failed. ``may_be_absent``: no creation of the path was acknowledged."""

    cands: list[Cand] = field(default_factory=lambda: [{}])
    may_be_absent: bool = True

    def put(self, key: bytes, value: str | None, certain: bool) -> None:
        for cand in self.cands:
            cand[key] = frozenset({value}) if certain else cand.get(key, ABSENT) | {value}

    def mismatch(self, state: dict[bytes, str]) -> list[str] | None:
        """None if ``state`` is one of the candidates, else the differences from the
        nearest one (key, expected, found)."""
        best: list[str] | None = None
        for cand in self.cands:
            diff = []
            for key in sorted(set(cand) | set(state)):
                allowed = cand.get(key, ABSENT)
                found = state.get(key)
                if found not in allowed:
                    expected = " or ".join(sorted(describe(v) for v in allowed))
                    diff.append(f"key {key[:24]!r}: expected {expected}, found {describe(found)}")
            if not diff:
                return None
            if best is None or len(diff) < len(best):
                best = diff
        return best or ["no candidate state"]


@dataclass
class Outcome:
    """What the child acknowledged, and what went wrong inside it."""

    models: dict[str, StoreModel]
    problems: list[str]
    reads: dict[int, tuple[str, dict[bytes, str]]]  # verify op -> (store, what it read)
    last_op: str = "none"
    done: bool = False
    errors: int = 0


def replay_acklog(text: str) -> Outcome:
    """Turn the child's log into what each store may hold (see _enumerate_child.py)."""
    models = {tag: StoreModel() for tag in STORES}
    problems: list[str] = []
    reads: dict[int, tuple[str, dict[bytes, str]]] = {}
    ops: dict[int, list[str]] = {}
    dump_model: list[Cand] = []
    pending: int | None = None
    out = Outcome(models, problems, reads)

    def settle(i: int, certain: bool, keyerror: bool = False) -> None:
        nonlocal dump_model
        tag, kind, *args = ops[i]
        m = models[tag]
        if kind == "put":
            m.put(bytes.fromhex(args[0]), args[1], certain)
        elif kind == "delete":
            key = bytes.fromhex(args[0])
            if keyerror and any(None not in c.get(key, ABSENT) for c in m.cands):
                held = sorted({describe(v) for c in m.cands for v in c.get(key, ABSENT)})
                problems.append(
                    f"op {i} (delete {key!r}) raised KeyError, but the key was acknowledged "
                    f"present: expected {' or '.join(held)}, found absent"
                )
            m.put(key, None, certain)
        elif kind == "batch":  # all of its writes, or (if uncertain) none of them
            writes = [w.split("=") for w in args[0].split(",")]
            after = copy.deepcopy(m.cands)
            for cand in after:
                for key_hex, value in writes:
                    cand[bytes.fromhex(key_hex)] = frozenset({None if value == "-" else value})
            m.cands = after if certain else m.cands + after
        elif kind == "create":
            m.cands = [{}] if m.may_be_absent else m.cands
            m.may_be_absent = m.may_be_absent and not certain
        elif kind in ("truncate", "load", "copy"):
            new: list[Cand] = [{}]
            if kind == "load":
                new = copy.deepcopy(dump_model)
            elif kind == "copy":
                new = copy.deepcopy(models[args[0]].cands)
            m.cands = new if certain else m.cands + new
        # open, close, sync, reorganize, verify, dump: the content does not change

    for line in text.splitlines():
        fields = line.split(" ", 3)
        tag = fields[0]
        if tag == "DONE":
            out.done = True
            continue
        if len(fields) < 2 or not fields[1].isdigit():
            continue  # a torn last line: nothing was acknowledged by it
        i = int(fields[1])
        if tag == "B":
            ops[i] = line.split(" ")[2:]
            out.last_op = f"{i} ({' '.join(ops[i][:3])[:40]})"
            pending = i
            if ops[i][1] == "dump":
                dump_model = copy.deepcopy(models["main"].cands)
        elif tag == "A":
            settle(i, certain=True)
            pending = None
        elif tag in ("E", "X"):
            message = line.split(" ", 2)[2]
            keyerror = message.startswith("KeyError")
            if tag == "X" or (keyerror and ops[i][1] != "delete"):
                problems.append(f"op {i} ({' '.join(ops[i][:2])}) raised {message[:300]}")
            out.errors += 1
            settle(i, certain=False, keyerror=keyerror)
            pending = None
        elif tag == "S":
            pending = None
        elif tag == "R":
            key, value = fields[2], fields[3]
            _, state = reads.setdefault(i, (ops[i][0], {}))
            state[bytes.fromhex(key)] = value
    if pending is not None:  # killed in this operation: it may or may not have happened
        settle(pending, certain=False)
    # a verify whose reads were not all made (it failed) says nothing complete
    complete = {i for i in reads if f"A {i}" in text.splitlines()}
    for i in list(reads):
        if i not in complete:
            del reads[i]
    return out


def check_handle_reads(text: str) -> list[str]:
    """Each complete ``verify``: what the live handle read is one of the states that
    what was acknowledged before it allows."""
    problems: list[str] = []
    lines = text.splitlines()
    for idx, line in enumerate(lines):
        if line.startswith("A ") and line.split(" ")[1].isdigit():
            i = int(line.split(" ")[1])
            begin = next((ln for ln in lines[:idx] if ln.startswith(f"B {i} ")), "")
            if begin.split(" ")[3:4] != ["verify"]:
                continue
            prefix = "\n".join(lines[: lines.index(begin)])
            before = replay_acklog(prefix)
            store = begin.split(" ")[2]
            state = replay_acklog("\n".join(lines[: idx + 1])).reads.get(i, (store, {}))[1]
            diff = before.models[store].mismatch(state)
            if diff is not None:
                problems.append(
                    f"the open handle of {store} read, at op {i}: " + "; ".join(diff[:4])
                )
    return problems


#: the system calls whose failure means the data may not be on the disk
SYNC_CALLS = ("msync", "fsync", "fdatasync")


def swallowed_failure(point: Point, cnt: Counting, acklog: str) -> list[str]:
    """An operation that promises durability (``sync()``, ``close()``, a put or delete
    with flag 's') must not be acknowledged when one of its msync/fsync calls failed:
    the data may not be on the disk, and nobody was told."""
    if point.source != "error" or point.syscall not in SYNC_CALLS:
        return []
    made_in = cnt.ops.get(point.syscall, [])
    if point.n > len(made_in) or made_in[point.n - 1] == START:
        return []
    if cnt.calls[point.syscall][point.n - 1].endswith(READERS_FILE_NOTE):
        return []
    index, store, kind = made_in[point.n - 1].split(" ")
    promises = kind in ("sync", "close") or (point.flag == "s" and kind in ("put", "delete"))
    if promises and f"A {index}" in acklog.splitlines():
        return [
            f"op {index} ({store} {kind}) was acknowledged although its {point.syscall} "
            f"failed with {point.errno}: a durability failure was swallowed"
        ]
    return []


# --------------------------------------------------------------------------- one point
@dataclass
class Result:
    point: Point
    violations: list[str]
    killed: bool = False
    injected: bool = False
    seconds: float = 0.0


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def run_child(point: Point, work: Path) -> tuple[int, str, str, bool]:
    """Run the workload at ``point``: (return code, why it had to be stopped or "",
    stderr, whether strace reported the injection)."""
    store_dir = work / "w"
    store_dir.mkdir()
    acklog = work / "ack"
    trace = work / "trace"
    env = workload_env()
    cmd = child_cmd(store_dir, point.flag, acklog)
    if point.source == "hook":
        env["VIPERDBM_CRASH_AT"] = str(point.n)
    else:
        strace = shutil.which("strace")
        assert strace is not None
        action = "signal=KILL" if point.source == "kill" else f"error={point.errno}"
        # trace the injected call (to a log): with -e trace=none strace injects nothing
        cmd = [
            *(strace, "-f", "-qq", "-o", str(trace), "-e", f"trace={point.syscall}"),
            *("-e", f"inject={point.syscall}:{action}:when={point.n}"),
            *cmd,
        ]
    with open(work / "stderr", "w+b") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        stopped = ""
        started = time.monotonic()
        while proc.poll() is None:
            time.sleep(0.05)
            if time.monotonic() - started > CHILD_TIMEOUT:
                stopped = f"no end after {CHILD_TIMEOUT:.0f} s (a hang)"
            elif _tree_bytes(store_dir) > DISK_BUDGET:
                stopped = f"the stores grew past {DISK_BUDGET >> 20} MiB (a runaway)"
            if stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    injected = trace.exists() and "(INJECTED)" in trace.read_text(errors="replace")
    return proc.returncode, stopped, stderr, injected


def check_point(point: Point, cnt: Counting, prober: Prober, keep: Path | None = None) -> Result:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="viperdbm-enum-", dir=scratch_root()))
    where = f"{point.label()} (at {cnt.context(point)})"
    violations: list[str] = []
    killed = injected = False
    try:
        code, stopped, stderr, injected = run_child(point, work)
        acklog = (work / "ack").read_text() if (work / "ack").exists() else ""
        out = replay_acklog(acklog)
        if stopped:
            violations.append(f"the child was stopped: {stopped}; last op {out.last_op}")
        elif point.source in ("kill", "hook"):
            killed = code == -signal.SIGKILL
            if not killed:
                violations.append(
                    f"the child was not killed (exit {code}, done={out.done}): "
                    "the point was not reached or the injection did not happen; "
                    f"stderr: {stderr[-600:]}"
                )
        elif code != 0:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            violations.append(
                f"the child died ({how}) after the failure; last op {out.last_op}; "
                f"stderr: {stderr[-800:]}"
            )
        elif not injected:
            violations.append("strace did not report the injected failure")
        violations += out.problems
        violations += check_handle_reads(acklog)
        violations += swallowed_failure(point, cnt, acklog)
        for tag, model in out.models.items():
            violations += [
                f"store {tag}: {v}" for v in check_store(work / "w" / STORES[tag], model, prober)
            ]
    finally:
        if keep is not None:
            if keep.exists():
                shutil.rmtree(keep)
            shutil.copytree(work, keep, symlinks=True)
        shutil.rmtree(work, ignore_errors=True)
    tagged = [f"[{where}] {v} | replay: {point.replay()}" for v in violations]
    return Result(point, tagged, killed, injected, time.monotonic() - started)


def check_store(path: Path, model: StoreModel, prober: Prober) -> list[str]:
    if not os.path.lexists(path):
        if model.may_be_absent:
            return []
        return ["the path holds no store (an acknowledged store is gone)"]
    problems: list[str] = []
    # first as a reader would after the crash (a reader must not need a writer first),
    # then as a writer (which may repair), then as a reader again
    first = prober.probe(path, "r")
    if first.status != "ok":
        problems.append(f"does not open with 'r' (before any writer): {first.summary()[:500]}")
    else:
        diff = model.mismatch(first.state)
        if diff is not None:
            problems.append(f"{len(diff)} keys wrong when read with 'r': " + "; ".join(diff[:4]))
    res = prober.probe(path, "w", reopen=True)
    if res.status != "ok":
        return [*problems, f"does not open with 'w': {res.summary()[:600]}"]
    problems += [f"reads disagree: {p}" for p in res.agreement]
    if res.state_after_reopen != res.state:
        problems.append("reads differently with 'r' after the 'w' open was closed")
    diff = model.mismatch(res.state)
    if diff is not None:
        problems.append(f"{len(diff)} keys wrong after reopen: " + "; ".join(diff[:4]))
    return problems


# --------------------------------------------------------------------------- a run
@dataclass
class Tally:
    points: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)


def run_points(points: list[Point], cnt: Counting) -> tuple[list[Result], Tally]:
    jobs = max(1, int(os.environ.get("VIPERDBM_ENUMERATE_JOBS", "2")))
    local = threading.local()
    probers: list[Prober] = []
    lock = threading.Lock()

    report = os.environ.get("VIPERDBM_ENUMERATE_REPORT")
    done: list[Result] = []

    def one(point: Point) -> Result:
        prober = getattr(local, "prober", None)
        if prober is None:
            prober = local.prober = Prober(watchdog=CHILD_TIMEOUT)
            with lock:
                probers.append(prober)
        result = check_point(point, cnt, prober)
        with lock:  # streamed, so that a long run shows its findings as it goes
            done.append(result)
            if report:
                with open(report, "a", encoding="utf-8") as f:
                    for v in result.violations:
                        f.write(json.dumps({"point": point.label(), "violation": v}) + "\n")
            if ALL and len(done) % 100 == 0:
                bad = sum(1 for r in done if r.violations)
                print(f"  {len(done)} of {len(points)} points, {bad} violating", flush=True)
        return result

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(one, points))
    finally:
        for prober in probers:
            prober.close()
    tally = Tally()
    for r in results:
        sc = r.point.syscall
        tally.points[sc] += 1
        tally.kills[sc] += int(r.killed)
        tally.errors[sc] += int(r.injected and r.point.source == "error")
        tally.violations[sc] += int(bool(r.violations))
    return results, tally


def summary(title: str, tally: Tally, seconds: float) -> str:
    lines = [f"{title}: {sum(tally.points.values())} points in {seconds:.0f} s"]
    lines.append(f"  {'syscall':<10} {'points':>6} {'kills':>6} {'errors':>6} {'violating':>9}")
    for sc in sorted(tally.points):
        lines.append(
            f"  {sc:<10} {tally.points[sc]:>6} {tally.kills[sc]:>6} {tally.errors[sc]:>6} "
            f"{tally.violations[sc]:>9}"
        )
    return "\n".join(lines)


def enumerate_and_check(flag: str, source: str) -> None:
    cnt = counting(flag)
    if source == "hook" and not cnt.hook_steps:
        pytest.skip(
            "the native core has no crash-point hook yet (VIPERDBM_CRASH_LOG logged no step "
            "of the workload); these points run once VIPERDBM_CRASH_AT/_LOG exist"
        )
    points = select_points(cnt, source)
    assert points, f"no {source} points for flag {flag_label(flag)}: {cnt.calls.keys()}"
    started = time.monotonic()
    results, tally = run_points(points, cnt)
    text = summary(
        f"{source} points, flag {flag_label(flag)}{' (all)' if ALL else ' (CI spread)'}",
        tally,
        time.monotonic() - started,
    )
    bad = [r for r in results if r.violations]
    if not bad:
        print("\n" + text)  # shown with -s; a failure shows it in its message
    else:
        # one of each kind first (a kind: the message up to its first detail), so that
        # hundreds of one finding do not hide the others
        every = [v for r in bad for v in r.violations]
        kinds: dict[str, str] = {}
        for v in every:
            kinds.setdefault(re.split(r"[:(0-9]", v.split("] ", 1)[-1], maxsplit=1)[0], v)
        shown = list(kinds.values())[:25]
        shown += [v for v in every if v not in shown][: 25 - len(shown)]
        pytest.fail(
            f"{len(bad)} of {len(results)} points violate the durability contract\n{text}\n"
            + "\n".join(shown),
            pytrace=False,
        )


@pytest.mark.parametrize("flag", FLAGS, ids=["default", "s"])
def test_kill_at_each_call_keeps_every_acknowledged_write(flag: str) -> None:
    enumerate_and_check(flag, "kill")


@pytest.mark.parametrize("flag", FLAGS, ids=["default", "s"])
def test_a_failing_call_raises_error_and_loses_nothing(flag: str) -> None:
    enumerate_and_check(flag, "error")


@pytest.mark.parametrize("flag", FLAGS, ids=["default", "s"])
def test_kill_at_each_internal_step_of_the_core(flag: str) -> None:
    enumerate_and_check(flag, "hook")


# --------------------------------------------------------------------------- replay
def _main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="replay one enumerated crash point")
    parser.add_argument("source", choices=("kill", "error", "hook"))
    parser.add_argument("syscall")
    parser.add_argument("n", type=int)
    parser.add_argument("--flag", default="", choices=FLAGS)
    parser.add_argument("--errno", default="")
    parser.add_argument("--keep", type=Path, help="copy the run's directory here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.source == "error" and not args.errno:
        args.errno = "ENOSPC"
    cnt = counting.__wrapped__(args.flag)
    point = Point(args.source, args.syscall, args.n, args.flag, args.errno)
    with Prober(watchdog=CHILD_TIMEOUT) as prober:
        result = check_point(point, cnt, prober, keep=args.keep)
    print(f"{point.label()} at {cnt.context(point)}")
    for v in result.violations:
        print(v)
    if args.keep:
        print(f"kept the stores and the child's log in {args.keep}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(_main())
