"""A failed msync: a clear viperdbm.error, never an abort, and a handle that stops writing.

The failures are real: strace makes the first msync after a point of the workload (and
every later one) fail with EIO (``-e inject=msync:error=EIO:when=K+``), K learnt from a
counting run of the same deterministic child. Three kinds of msync are hit:

* one of libpmemobj's own (a block allocation): libpmemobj 1.12.1 abort()s when its
  ``pmem_msync`` fails, so viperdbm defines the ``pmem_msync`` libpmemobj binds
  (native/pmemio.c) and turns the failure into an error;
* the native core's, of a record written under flag ``'s'``;
* viperdbm's own, in ``sync()``.

After each, the handle must read what was acknowledged (and the failed write's value: it is
in the page cache), refuse writes and ``sync()`` (the kernel may have dropped the dirty pages
the failed msync did not write: a later msync that succeeds would not make them durable),
close without an error, and the store must reopen with everything acknowledged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _strace import strace_or_skip
from _vdbtools import child_env

import viperdbm
from viperdbm import _pmemobj

MARK = "IOFAIL-MARK"

# The child: prepare a store, write MARK to stderr, then do `action` (the first msync after
# MARK fails), and report as JSON what was acknowledged and what the handle did after.
CHILD = r"""
import json, os, sys
import viperdbm

path, flag, action = sys.argv[1], sys.argv[2], sys.argv[3]
report = {"acked": {}, "failed": None, "events": []}
db = viperdbm.open(path, flag)
for i in range(50):
    db[b"base%d" % i] = b"v%d" % i
db.sync()
os.write(2, b"MARK\n")
try:
    if action == "puts":  # new blocks: libpmemobj allocates, and msyncs its metadata
        for i in range(4000):
            key, value = b"k%d" % i, bytes([i % 251]) * 3000
            try:
                db[key] = value
            except viperdbm.error as exc:
                report["failed"] = [key.hex(), value.hex(), exc.errno, str(exc)]
                break
            report["acked"][key.hex()] = value.hex()
    elif action == "close":  # pmemobj_close's own msync fails (after close()'s sync)
        db.sync()
        os.write(2, b"MARK2\n")
        try:
            db.close()
            print(json.dumps({"closed": "ok"}))
        except viperdbm.error as exc:
            print(json.dumps({"close failed": [exc.errno, str(exc)]}))
        sys.exit(0)
    elif action == "sync":
        db[b"before-sync"] = b"x"
        report["acked"][b"before-sync".hex()] = b"x".hex()
        db.sync()
except viperdbm.error as exc:
    report["failed"] = [None, None, exc.errno, str(exc)]
if report["failed"] and report["failed"][0]:
    key = bytes.fromhex(report["failed"][0])
    report["events"].append(["read failed key", db.get(key, b"").hex()])
report["events"].append(["read base", db[b"base7"].decode()])
for what, act in (("put", lambda: db.__setitem__(b"later", b"1")),
                  ("delete", lambda: db.__delitem__(b"base1")),
                  ("update", lambda: db.update({b"u": b"1"})),
                  ("sync", db.sync)):
    try:
        act()
        report["events"].append([what, "accepted"])
    except viperdbm.error as exc:
        report["events"].append([what, "error", exc.errno])
db.close()
report["events"].append(["close", "ok"])
print(json.dumps(report))
"""


def _run(store: Path, flag: str, action: str, extra: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*extra, sys.executable, "-c", CHILD, str(store), flag, action],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _msyncs_before_mark(work: Path, flag: str, action: str) -> int:
    strace = strace_or_skip()
    trace = work / "trace"
    proc = _run(
        work / "count.vdb",
        flag,
        action,
        [strace, "-qq", "-o", str(trace), "-e", "trace=msync,write", "-e", "signal=none"],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    count = 0
    for line in trace.read_text().splitlines():
        if line.startswith('write(2, "MARK'):
            return count
        if line.startswith("msync("):
            count += 1
    raise AssertionError("the counting run wrote no MARK")


def _failing_run(
    flag: str, action: str
) -> tuple[dict[str, Any], Path, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix="viperdbm-iofail-", dir="/dev/shm")
    work = Path(tmp.name)
    k = _msyncs_before_mark(work, flag, action)
    store = work / "s.vdb"
    proc = _run(
        store,
        flag,
        action,
        [strace_or_skip(), "-qq", "-o", os.devnull, "-e", f"inject=msync:error=EIO:when={k + 1}+"],
    )
    assert proc.returncode == 0, f"the child died (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1]), store, tmp


def _check(report: dict[str, Any], store: Path, *, failed_key_written: bool) -> None:
    failed = report["failed"]
    assert isinstance(failed, list), f"no msync failure surfaced: {report}"
    assert failed[2] == 5, f"errno {failed[2]} instead of EIO: {failed[3]}"
    assert "I/O error" in failed[3] and "close the store, check the disk" in failed[3]
    events = {e[0]: e[1:] for e in report["events"]}
    assert events["read base"] == ["v7"]
    for what in ("put", "delete", "update", "sync"):
        assert events[what] == ["error", 5], f"{what} after the failed msync: {events[what]}"
    assert events["close"] == ["ok"]
    if failed_key_written:
        assert events["read failed key"] == [failed[1]], "the write that failed is not readable"
        assert "written but not known to be durable" in failed[3]
    # reopened (no injection): everything acknowledged is there; the base too
    acked: dict[str, str] = report["acked"]
    with viperdbm.open(str(store), "r") as db:
        for i in range(50):
            assert db[b"base%d" % i] == b"v%d" % i
        for key, value in acked.items():
            assert db[bytes.fromhex(key)] == bytes.fromhex(value), key
        assert b"later" not in db and b"u" not in db
        assert db[b"base1"] == b"v1"


def test_libpmemobj_calls_viperdbms_pmem_msync(tmp_path: Path) -> None:
    """The dynamic linker binds libpmemobj's pmem_msync@LIBPMEM_1.0 to native/pmemio.c."""
    before = _pmemobj.io_interposer_calls.value
    with viperdbm.open(str(tmp_path / "s.vdb"), "n") as db:
        db[b"a"] = b"b"
    assert _pmemobj.io_interposer_calls.value > before


def test_libpmemobj_msync_failure_is_an_error_not_an_abort() -> None:
    report, store, tmp = _failing_run("c", "puts")
    with tmp:
        _check(report, store, failed_key_written=False)


def test_flag_s_record_msync_failure_is_not_acknowledged() -> None:
    report, store, tmp = _failing_run("cs", "puts")
    with tmp:
        _check(report, store, failed_key_written=True)


def test_close_is_not_acknowledged_when_an_msync_of_libpmemobjs_close_fails() -> None:
    with tempfile.TemporaryDirectory(prefix="viperdbm-iofail-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        strace = strace_or_skip()
        trace = work / "trace"
        proc = _run(
            work / "count.vdb",
            "c",
            "close",
            [strace, "-qq", "-o", str(trace), "-e", "trace=msync,write", "-e", "signal=none"],
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = trace.read_text().splitlines()
        mark = next(i for i, line in enumerate(lines) if line.startswith('write(2, "MARK2'))
        before = sum(1 for line in lines[:mark] if line.startswith("msync("))
        after = sum(1 for line in lines[mark:] if line.startswith("msync("))
        # close() msyncs the pool (nothing dirty: sync() just ran), writes the block
        # directory and its root word (libpmemobj's persist), then pmemobj_close; every
        # one of its msyncs that fails must make close() raise
        assert after >= 2, lines[mark:]
        for k in range(before + 1, before + after + 1):
            store = work / f"s{k}.vdb"
            proc = _run(
                store,
                "c",
                "close",
                [strace, "-qq", "-o", os.devnull, "-e", f"inject=msync:error=EIO:when={k}"],
            )
            assert proc.returncode == 0, (
                f"the child died (rc {proc.returncode}): {proc.stderr[-3000:]}"
            )
            assert "closed" not in proc.stdout, f"close() acknowledged although msync #{k} failed"
            assert "I/O error" in proc.stdout and '"close failed": [5' in proc.stdout, proc.stdout
            with viperdbm.open(str(store), "r") as db:
                assert db[b"base7"] == b"v7"


def test_failed_sync_makes_the_handle_refuse_writes() -> None:
    report, store, tmp = _failing_run("c", "sync")
    with tmp:
        _check(report, store, failed_key_written=False)


# Under flag 's' the core writes each record (and each batch) into its part file with pwrite
# (native/log.c, stage_commit). The child: single puts and batches enough to grow the pool by
# several parts, each acknowledged one reported.
STAGED = r"""
import json, sys
import viperdbm

acked = {}
with viperdbm.open(sys.argv[1], "cs") as db:
    for i in range(3000):
        key, value = b"k%d" % i, bytes([i % 251]) * 3000
        db[key] = value
        acked[key.hex()] = value.hex()
        if i % 300 == 299:  # a batch: one record, one pwrite
            batch = {b"b%d-%d" % (i, j): bytes([j]) * 100 for j in range(50)}
            db.update(batch)
            acked.update({k.hex(): v.hex() for k, v in batch.items()})
print(json.dumps(acked))
"""


def _staged_run(store: Path, *strace_args: str) -> dict[str, str]:
    child = [sys.executable, "-c", STAGED, str(store)]
    proc = subprocess.run(
        [strace_or_skip(), "-f", "-qq", "-y", *strace_args, *child],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert proc.returncode == 0, f"the child failed ({proc.returncode}): {proc.stderr[-3000:]}"
    acked: dict[str, str] = json.loads(proc.stdout.splitlines()[-1])
    with viperdbm.open(str(store), "r") as db:
        assert len(db) == len(acked)
        for key, value in acked.items():
            assert db[bytes.fromhex(key)] == bytes.fromhex(value), key
    return acked


def _part_pwrites(trace: Path) -> list[str]:
    """The part file of each pwrite64 in an strace -y log."""
    return re.findall(r"pwrite64\(\d+<[^>]*/parts/(\d+\.pmem)>", trace.read_text())


def test_flag_s_writes_records_into_the_part_files(tmp_path: Path) -> None:
    """Each record and each batch goes into its part file with a write (a store through
    the mapping dirties a whole large folio, which the msync then writes), the parts the
    pool grew by during the run included; and the store holds every write."""
    store, trace = tmp_path / "store", tmp_path / "trace"
    _staged_run(store, "-e", "trace=pwrite64", "-o", str(trace))
    written = _part_pwrites(trace)
    parts = sorted(p.name for p in (store / "parts").iterdir())
    assert len(parts) >= 3, parts
    # 3,000 puts and 10 batches, one pwrite each (a pad before a record is in the same
    # one), and one more where a record spans the end of a part (blocks may)
    assert 3010 <= len(written) <= 3010 + len(parts) - 1, f"{len(written)} pwrites of part files"
    assert parts[-1] in written, f"no record was written into {parts[-1]}, the last part"


def test_flag_s_failed_record_write_stores_through_the_mapping(tmp_path: Path) -> None:
    """Every pwrite of a record fails (EIO): the core stores the record through the mapping
    instead and msyncs it as before; every write is acknowledged and reads back."""
    store, trace = tmp_path / "store", tmp_path / "trace"
    _staged_run(store, "-e", "trace=pwrite64", "-e", "inject=pwrite64:error=EIO", "-o", str(trace))
    failed = [line for line in trace.read_text().splitlines() if "(INJECTED)" in line]
    assert len(failed) >= 3010, f"only {len(failed)} pwrites failed"
