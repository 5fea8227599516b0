"""A new block's space is made ready before the put that takes it (issue 13, worst put).

The put that adds a block used to pay for all of its pages: the block's constructor zeroes
a 4 MiB log, and the first store into each page of space the file system never wrote is a
page fault (5-30 ms a block, more when the pool grew a part in the same put). Now:

* the core faults the space after the last block in ahead of need, with
  ``MADV_POPULATE_WRITE`` (which changes no byte): a step at a time while the active block
  fills, at once after a jumbo block (native/log.c, ``fault_ahead_start``);
* the space layer grows the pool by a part when the next block would not fit after the
  one just allocated (``Space.grow_ahead``), so that no block waits for a growth.

The tests read which pages were faulted in from a real strace of the writer, refuse every
fault-in with strace's fault injection, and fail the growth ahead with a real ENOSPC.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _strace import growth_fallocates, inject, strace_or_skip
from _vdbtools import child_env

import viperdbm
from viperdbm import _layout as layout
from viperdbm import _space

#: a value that puts about 4,000 records in a standard block
VALUE = b"v" * 1000

WRITER = r"""
import json, sys, viperdbm
from viperdbm import _layout as layout
path, singles = sys.argv[1], int(sys.argv[2])
db = viperdbm.open(path, "c")
core, pool = db._engine.core, db._engine._pool
known = {off for off, _, _ in core.blocks()}
added = []  # (offset, size, type) of each block, in the order it was added
def note():
    for off, size, kind in sorted(core.blocks()):
        if off not in known:
            known.add(off)
            added.append([off, size, kind])
# a bulk load: update() batches over the inline limit, each a jumbo block; 26 MB, so that
# the pool is past GROW_AHEAD_FROM before the single puts
for start in range(0, 200_000, 100_000):
    db.update({b"bulk%06d" % i: b"b" * 100 for i in range(start, start + 100_000)})
    note()
for i in range(singles):
    db[b"single%06d" % i] = b"v" * 1000
    note()
print(json.dumps({"base": pool.base, "added": added}))
db.close()
"""

POPULATE = re.compile(r"madvise\((0x[0-9a-f]+), (\d+), MADV_POPULATE_WRITE\) = 0")


def populated_ranges(trace: Path, base: int) -> list[tuple[int, int]]:
    """The pool offset ranges the traced process faulted in, merged."""
    ranges = []
    for line in trace.read_text(errors="replace").splitlines():
        m = POPULATE.search(line)
        if m:
            start = int(m.group(1), 16) - base
            ranges.append((start, start + int(m.group(2))))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    return any(a <= start and end <= b for a, b in ranges)


def run_writer(
    prefix: list[str], script: str, *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child Python under ``prefix`` (an strace command line)."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
        check=check,
    )


def test_the_next_blocks_space_is_faulted_in_before_it_is_taken(tmp_path: Path) -> None:
    """Every standard block the writer adds after a bulk load's jumbo blocks lies in space
    that the writer had faulted in before: the first one after the last jumbo block, and
    each later one while its predecessor filled. Without the fault-in there is no such
    call."""
    trace = tmp_path / "madvise.trace"
    strace = [strace_or_skip(), "-f", "-qq", "-e", "trace=madvise", "-o", str(trace)]
    proc = run_writer(strace, WRITER, str(tmp_path / "s.vdb"), "14000", check=True)
    out = json.loads(proc.stdout.splitlines()[-1])
    ranges = populated_ranges(trace, out["base"])
    added = out["added"]
    jumbo = [i for i, (_, _, kind) in enumerate(added) if kind == layout.TYPE_JUMBO_BLOCK]
    standard = [
        (off, size)
        for i, (off, size, kind) in enumerate(added)
        if kind == layout.TYPE_STANDARD_BLOCK and jumbo and i > jumbo[0]
    ]
    assert len(standard) >= 3, f"the writer added {len(standard)} standard blocks: {added}"
    missed = [(off, size) for off, size in standard if not covered(ranges, off, off + size)]
    assert not missed, f"blocks not faulted in ahead: {missed}; faulted in: {ranges}"


def test_a_refused_fault_in_loses_nothing(tmp_path: Path) -> None:
    """An older kernel (EINVAL) or no space to back the pages (EFAULT): every madvise the
    writer makes fails, and the store holds every write after reopen."""
    store = tmp_path / "s.vdb"
    for errname in ("EINVAL", "EFAULT"):
        proc = run_writer(inject(f"madvise:error={errname}"), WRITER, str(store), "9000")
        assert proc.returncode == 0, f"{errname}: {proc.stderr[-3000:]}"
        with viperdbm.open(store, "r") as db:
            assert len(db) == 200_000 + 9_000
            assert db[b"bulk199999"] == b"b" * 100
            assert all(db[b"single%06d" % i] == VALUE for i in range(9_000))


def test_the_pool_grows_before_a_block_needs_it(tmp_path: Path) -> None:
    """Past GROW_AHEAD_FROM every standard block lies in space the pool had mapped before
    the put that added it: no put waits for a part to be made. Without the growth ahead,
    with 8 MiB parts, every other block was allocated in a part made for it."""
    with viperdbm.open(tmp_path / "s.vdb", "c") as db:
        engine = db._require_engine()
        core, pool = engine.require_core(), engine._require_pool()
        known = {off for off, _, _ in core.blocks()}
        grew = 0
        i = 0
        while pool.mapped_size() < 4 * _space.GROW_AHEAD_FROM:
            mapped_before = pool.mapped_size()
            db[b"k%07d" % i] = VALUE
            i += 1
            new = [(off, size) for off, size, _ in core.blocks() if off not in known]
            known.update(off for off, _ in new)
            grew += pool.mapped_size() > mapped_before
            if mapped_before >= _space.GROW_AHEAD_FROM:
                for off, size in new:
                    assert off + size <= mapped_before, (
                        f"the block at {off} needed the pool to grow past {mapped_before} (put {i})"
                    )
        assert grew >= 4, f"the pool grew {grew} times"


def test_a_store_of_one_record_does_not_grow_ahead(tmp_path: Path) -> None:
    with viperdbm.open(tmp_path / "s.vdb", "c") as db:
        db[b"k"] = b"v"
        assert db._require_engine()._require_pool().mapped_size() < _space.GROW_AHEAD_FROM
    assert len(list((tmp_path / "s.vdb" / "parts").iterdir())) == 2


BIG_WRITER = r"""
import json, sys, viperdbm
db = viperdbm.open(sys.argv[1], "c")
out = {"acked": [], "errors": []}
for i in range(80):  # 72 MB of 900 KB values: the pool passes GROW_AHEAD_FROM
    key = b"g%02d" % i
    try:
        db[key] = bytes([i]) * 900_000
    except viperdbm.error as exc:
        out["errors"].append([type(exc).__name__, exc.errno, db.get(key) is None])
        continue
    out["acked"].append(i)
db.close()
print(json.dumps(out))
"""


def test_a_growth_ahead_refused_by_a_full_disk_is_reported_by_the_put_that_needs_it(
    tmp_path: Path,
) -> None:
    """ENOSPC from every fallocate from the pool's fourth growth on (past GROW_AHEAD_FROM:
    a growth ahead). That growth's failure is no error of the put that made it; the puts
    go on in the room left, and the first that needs more space fails with StoreFullError
    and writes nothing. Reopened, the store holds every acknowledged put."""
    count = tmp_path / "count.vdb"
    growth = growth_fallocates(
        [sys.executable, "-c", BIG_WRITER, str(count)], str(tmp_path / "count.trace"), child_env()
    )
    assert len(growth) >= 6, f"the writer grew the pool {len(growth)} times"
    store = tmp_path / "s.vdb"
    proc = run_writer(inject(f"fallocate:error=ENOSPC:when={growth[3]}+"), BIG_WRITER, str(store))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["errors"], "the pool grew past the failed fallocate"
    for name, code, absent in out["errors"]:
        assert (name, code, absent) == ("StoreFullError", 28, True)
    first_error = 80 - len(out["errors"])
    assert out["acked"] == list(range(first_error)), "a put succeeded after one failed"
    with viperdbm.open(store, "r") as db:
        assert {k: db[k] for k in db} == {b"g%02d" % i: bytes([i]) * 900_000 for i in out["acked"]}
    parts = sorted(p.name for p in (store / "parts").iterdir())
    assert parts == [f"{i:06d}.pmem" for i in range(len(parts))], f"a gap: {parts}"


@pytest.mark.parametrize("nth", [3, 4])
def test_a_kill_in_a_growth_ahead_loses_nothing(tmp_path: Path, nth: int) -> None:
    """SIGKILL at the fallocate of a growth ahead (the pool's fourth or fifth growth, past
    GROW_AHEAD_FROM): the store opens, read-only and writable, with every acknowledged
    put."""
    count = tmp_path / "count.vdb"
    growth = growth_fallocates(
        [sys.executable, "-c", KILLED_WRITER, str(count)],
        str(tmp_path / "count.trace"),
        child_env(),
    )
    assert len(growth) > nth, f"the writer grew the pool {len(growth)} times"
    store = tmp_path / "s.vdb"
    proc = run_writer(
        inject(f"fallocate:signal=KILL:when={growth[nth]}"), KILLED_WRITER, str(store)
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    acked = [int(line) for line in proc.stdout.split()]
    assert acked, "killed before any put"
    want = {b"g%02d" % i: bytes([i]) * 900_000 for i in acked}
    for flag in ("r", "w"):
        with viperdbm.open(store, flag) as db:
            got = {k: db[k] for k in db}
        assert {k: got.get(k) for k in want} == want, flag
        assert set(got) <= set(want) | {b"g%02d" % (max(acked) + 1)}, flag


KILLED_WRITER = r"""
import sys, viperdbm
db = viperdbm.open(sys.argv[1], "c")
for i in range(80):
    db[b"g%02d" % i] = bytes([i]) * 900_000
    print(i, flush=True)
"""
