"""Helpers shared by the torture, power-fail, hostile and limits suites.

Nothing here mocks the storage layer: stores are real directories, pools are read with the
real libpmemobj (only to list objects), and every open of a store that may be damaged runs
in a child process (:class:`Prober`) so that a crash or a hang of the store is observed
instead of taking the test run down with it.

* value generation: :func:`value_for` derives any value from ``(seed, index, size)``, so
  a parent can check bytes written by a child it killed;
* the pool image: :class:`PoolImage` maps pool offsets to part files and parses every block
  and record following docs/format.md (an independent reading of the format, used to know
  which records a mutation touched);
* :class:`Prober`: opens stores in a long-lived child (``tests/_probe_child.py``) and
  returns what it found, or that the child crashed or hung.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: a VPage, as docs/format.md describes it (records never straddle one unless longer)
PAGE = 16384
#: the OS page: part files are mapped in whole ones
OS_PAGE = os.sysconf("SC_PAGESIZE")
RECORD_HEADER = 16
BLOCK_HEADER = 64
BLOCK_MAGIC = 0x4B4C4256
KIND_PUT, KIND_DEL, KIND_PAD = 1, 2, 3
TYPE_STANDARD, TYPE_JUMBO = 1, 2
SEQ_MASK = (1 << 48) - 1


# --------------------------------------------------------------------------- seeds
def env_seed(variable: str, ci_seed: int) -> int:
    """The seed of a randomized test: the environment variable ``variable`` replays one, CI
    runs ``ci_seed`` (repeatable), ``VIPERDBM_FRESH_SEEDS=1`` draws a new one."""
    env = os.environ.get(variable)
    if env:
        return int(env)
    if os.environ.get("VIPERDBM_FRESH_SEEDS") == "1":
        return random.SystemRandom().randrange(2**31)
    return ci_seed


# --------------------------------------------------------------------------- time
class FrozenClock:
    """A wall clock that moves only when told to: it stands in for ``time.time`` where
    cached items expire (``now`` starts at the real time unless given)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------- values
def value_for(seed: int | str, index: int, size: int) -> bytes:
    """The value written by operation ``index`` of stream ``seed``: any byte values."""
    return random.Random(f"value/{seed}/{index}").randbytes(size)


def digest(data: bytes) -> str:
    """A short, collision-safe fingerprint of a value (what children report)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def walk_keys(db: Any, most: int) -> list[bytes]:
    """The keys met by firstkey()/nextkey(), stopping after ``most`` + 1 (a cycle)."""
    walked: list[bytes] = []
    k = db.firstkey()
    while k is not None and len(walked) <= most:
        walked.append(k)
        k = db.nextkey(k)
    return walked


def describe(found: str | None) -> str:
    return "absent" if found is None else found[:12]


# --------------------------------------------------------------------------- files
def copy_store(src: Path, dst: Path) -> None:
    """Copy a closed store directory (parts may be large: plain sequential copies)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def part_files(store: Path) -> list[Path]:
    return sorted((store / "parts").glob("*.pmem"), key=lambda p: p.name)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"
    return env


# --------------------------------------------------------------------------- another user
def list_items_while_collecting(handle: str) -> str:
    """Script lines: ``items`` made by ``handle``'s native items list while collections run
    at every allocation, freeing the ``Finalizer`` cycles the script made before (its
    finalizers then run Python code in the middle of the list)."""
    return (
        # what iterating items() calls, taken first: nothing is allocated before the list
        f"make_items = {handle}._items_list\n"
        "for _ in range(50):\n"
        "    Finalizer()\n"
        "gc.set_threshold(1)\n"
        "items = make_items()\n"
        "gc.set_threshold(700)\n"
        "gc.collect()\n"
    )


def run_script(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args`` in a child process (a crash there is a return code, not
    the end of the suite), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def run_script_ok(code: str, *args: str, timeout: float = 120) -> str:
    """:func:`run_script`; it must exit 0 and print a line starting with "ok"."""
    result = run_script(code, *args, timeout=timeout)
    assert result.returncode == 0 and result.stdout.startswith("ok"), (
        result.returncode,
        result.stdout,
        result.stderr[-3000:],
    )
    return result.stdout


def run_benchmark(script: str, scratch: Path, *args: str) -> dict[str, Any]:
    """Run ``benchmarks/<script>`` with its stores in ``scratch`` and ``args``; it must exit
    0 and write one ``.json`` report and its ``.md``: the report, parsed."""
    out = scratch / "out"
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--dir", str(scratch)]
    result = subprocess.run(
        [*command, "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = out.glob("*.json")
    assert report.with_suffix(".md").exists()
    doc: dict[str, Any] = json.loads(report.read_text())
    return doc


def as_nobody(purpose: str) -> list[str]:
    """The command prefix that runs a program as the user nobody (no groups); the test is
    skipped, saying it needed that to ``purpose``, unless it runs as root with setpriv."""
    import pytest  # only tests call this; the children that import this module do not

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip(f"needs root and setpriv, to {purpose}")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command ``args`` as the user nobody (see :func:`as_nobody`), with this
    checkout's viperdbm importable, and return what it printed."""
    return subprocess.run(
        [*as_nobody("run a program as another user"), *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )


@contextlib.contextmanager
def scratch_dir_for_nobody(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    """A scratch directory under /tmp with ``mode``, removed afterwards (pytest's tmp_path
    lies under a directory that only root may enter)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        base.chmod(mode)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the format
@dataclass(frozen=True)
class Record:
    """One record found in a block log (pool offsets)."""

    block: int
    pos: int
    total: int  # header + key + value, unaligned
    kind: int
    seq: int
    key: bytes
    value_digest: str | None  # None for deletes and pads
    hlen: int = RECORD_HEADER
    vlen: int = 0


@dataclass
class Block:
    off: int
    type_num: int
    usable: int
    header_ok: bool
    log_start: int
    log_end: int
    records: list[Record] = field(default_factory=list)


@dataclass
class PoolImage:
    """The bytes of a closed store's pool, addressed by pool offset, and what is in them."""

    store: Path
    parts: list[tuple[Path, int, int]]  # (file, first pool offset, length mapped)
    data: bytes
    root_off: int
    blocks: list[Block]

    def locate(self, pool_off: int) -> tuple[Path, int]:
        """(part file, offset in that file) of a pool offset."""
        for path, start, length in self.parts:
            if start <= pool_off < start + length:
                return path, pool_off - start
        raise ValueError(f"pool offset {pool_off} is outside the pool")

    def records(self) -> list[Record]:
        return [r for b in self.blocks for r in b.records]

    def newest(self) -> dict[bytes, Record]:
        """The newest record of each key, as recovery should choose it."""
        best: dict[bytes, Record] = {}
        for rec in self.records():
            if rec.kind == KIND_PAD:
                continue
            old = best.get(rec.key)
            if old is None or rec.seq > old.seq:
                best[rec.key] = rec
        return best

    def state(self) -> dict[bytes, str]:
        return {
            k: r.value_digest
            for k, r in self.newest().items()
            if r.kind == KIND_PUT and r.value_digest is not None
        }


def _crc32c(data: bytes) -> int:
    from viperdbm import _native

    return int(_native.crc32c(data))


def _scan_log(data: bytes, block: Block, kind: int) -> None:
    """docs/format.md, 'The log and its pages' and 'Records', read independently."""
    pos = block.log_start
    end = block.off + (min(block.usable, 4 << 20) if kind == TYPE_STANDARD else block.usable)
    if block.header_ok:
        end = block.off + struct.unpack_from("<Q", data, block.off + 16)[0]
    prev_seq = 0
    while pos + RECORD_HEADER <= end:
        room = PAGE - pos % PAGE
        if kind == TYPE_STANDARD and room < RECORD_HEADER:
            pos += room
            continue
        crc, vlen, meta = struct.unpack_from("<IIQ", data, pos)
        if crc == 0 and vlen == 0 and meta == 0:
            break
        rkind = (meta >> 48) & 0xF
        kfield = meta >> 52
        hlen = RECORD_HEADER + 4 if kfield == 4095 else RECORD_HEADER
        if rkind not in (KIND_PUT, KIND_DEL, KIND_PAD) or pos + hlen > end:
            break
        klen = struct.unpack_from("<I", data, pos + 16)[0] if kfield == 4095 else kfield
        total = hlen + klen + vlen
        if total > end - pos or _crc32c(data[pos + 4 : pos + total]) != crc:
            break
        seq = meta & SEQ_MASK
        alen = (total + 3) & ~3
        if rkind == KIND_PAD:
            block.records.append(Record(block.off, pos, total, rkind, 0, b"", None, hlen, vlen))
            pos += alen
            continue
        if seq <= prev_seq:
            break
        prev_seq = seq
        key = data[pos + hlen : pos + hlen + klen]
        value = data[pos + hlen + klen : pos + total]
        block.records.append(
            Record(
                block.off,
                pos,
                total,
                rkind,
                seq,
                key,
                digest(value) if rkind == KIND_PUT else None,
                hlen,
                vlen,
            )
        )
        pos += alen
        if kind == TYPE_JUMBO:
            break
    block.log_end = pos


def read_pool(store: Path, scratch: Path) -> PoolImage:
    """Parse a closed store. The objects are listed by the real libpmemobj, on a copy in
    ``scratch`` (opening a pool writes to it); the bytes are read from ``store``."""
    from viperdbm._pmemobj import Pool

    copy = scratch / "layout-copy"
    copy_store(store, copy)
    with open(copy / "pool.set", encoding="ascii") as f:
        lines = f.read().splitlines()
    # the part directory's line names where the store was made: the copy's own instead
    lines = [
        f"{line.split()[0]} {copy / 'parts'}" if line.endswith("/parts") else line for line in lines
    ]
    (copy / "pool.set").write_text("\n".join(lines) + "\n")
    pool = Pool.open(str(copy / "pool.set"), "viperdbm")
    try:
        objects = pool.objects()
        root_off = pool.root(0)
    finally:
        pool.close()
    shutil.rmtree(copy)
    parts: list[tuple[Path, int, int]] = []
    chunks: list[bytes] = []
    start = 0
    for part in part_files(store):
        raw = part.read_bytes()
        length = len(raw) & ~(OS_PAGE - 1)
        parts.append((part, start, length))
        chunks.append(raw[:length])
        start += length
    data = b"".join(chunks)
    blocks: list[Block] = []
    for off, type_num, usable in objects:
        magic, hcrc = struct.unpack_from("<II", data, off)
        header_ok = magic == BLOCK_MAGIC and hcrc == _crc32c(data[off + 8 : off + BLOCK_HEADER])
        if type_num == TYPE_STANDARD:
            log_start = (off + BLOCK_HEADER + PAGE - 1) & ~(PAGE - 1)
        else:
            log_start = off + BLOCK_HEADER
        if header_ok:
            log_start = off + struct.unpack_from("<Q", data, off + 24)[0]
        block = Block(off, type_num, usable, header_ok, log_start, log_start)
        _scan_log(data, block, type_num)
        blocks.append(block)
    return PoolImage(store, parts, data, root_off, blocks)


# --------------------------------------------------------------------------- probing
@dataclass
class ProbeResult:
    """What happened when a child opened a store.

    status: ``ok`` (opened; ``state`` maps key hex to value digest), ``error`` (an exception:
    ``exc_type``, ``is_error`` whether it is a viperdbm.error, ``message``), ``crash`` (the
    child died of ``signal``), ``hang`` (no answer before the watchdog fired).
    """

    status: str
    state: dict[bytes, str] = field(default_factory=dict)
    state_after_reopen: dict[bytes, str] | None = None
    agreement: list[str] = field(default_factory=list)
    exc_type: str = ""
    exc_mro: list[str] = field(default_factory=list)
    is_error: bool = False
    message: str = ""
    hint: str = ""
    filename: str = ""
    warnings: list[str] = field(default_factory=list)
    signal: int = 0
    stderr: str = ""

    def summary(self) -> str:
        if self.status == "ok":
            return f"opened, {len(self.state)} keys"
        if self.status == "error":
            return f"{self.exc_type}: {self.message}"
        if self.status == "crash":
            return f"child killed by signal {self.signal}: {self.stderr[-600:]}"
        return f"{self.status}: {self.stderr[-600:]}"


class Prober:
    """A long-lived child that opens stores on request (see tests/_probe_child.py)."""

    def __init__(self, watchdog: float = 120.0) -> None:
        self.watchdog = watchdog
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self.proc is None or self.proc.poll() is not None:
            self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in _reset
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "_probe_child.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                env=child_env(),
            )
        return self.proc

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    def _reset(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._stderr is not None:
            self._stderr.close()
        self.proc = None
        self._stderr = None

    def probe(self, path: Path, flag: str = "r", *, reopen: bool = False) -> ProbeResult:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        request = {"path": str(path), "flag": flag, "reopen": reopen}
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([proc.stdout], [], [], self.watchdog)
        if not ready:  # a hang detector, not a timing assertion
            stderr = self._stderr_text()
            self._reset()
            return ProbeResult("hang", stderr=stderr)
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            stderr = self._stderr_text()
            self._reset()
            return ProbeResult("crash", signal=-code if code < 0 else 0, stderr=stderr)
        answer: dict[str, Any] = json.loads(line)
        if self._stderr is not None:  # keep the log of one probe only
            self._stderr.seek(0)
            self._stderr.truncate()
        return _result_from(answer)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        self._reset()

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _state_from(raw: dict[str, str]) -> dict[bytes, str]:
    return {bytes.fromhex(k): v for k, v in raw.items()}


def _result_from(answer: dict[str, Any]) -> ProbeResult:
    if answer["status"] == "ok":
        again = answer.get("state_after_reopen")
        return ProbeResult(
            "ok",
            state=_state_from(answer["state"]),
            state_after_reopen=None if again is None else _state_from(again),
            agreement=list(answer.get("agreement", [])),
            warnings=list(answer.get("warnings", [])),
            exc_type=answer.get("exc_type", ""),
            message=answer.get("message", ""),
        )
    return ProbeResult(
        "error",
        exc_type=answer["exc_type"],
        exc_mro=list(answer["exc_mro"]),
        is_error=bool(answer["is_error"]),
        message=answer["message"],
        hint=answer.get("hint", ""),
        filename=answer.get("filename", ""),
        warnings=list(answer.get("warnings", [])),
        stderr=answer.get("traceback", ""),
    )


def kill_quietly(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)


def wait_for_path(path: Path, proc: subprocess.Popen[Any]) -> bool:
    """Wait until ``path`` exists or ``proc`` ended; True if it exists."""
    while not path.exists():
        if proc.poll() is not None:
            return path.exists()
        time.sleep(0.002)
    return True
