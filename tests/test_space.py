"""Space given back to the file system: freed blocks are punched out of the part files.

What a user sees is the disk the store takes (``du``: allocated blocks, not the file
sizes, which do not shrink). The danger of holes is a write into one on a full disk: the
page fault cannot get a block, and the kernel kills the process with SIGBUS. So the block
constructor allocates a new object's space before writing, and a full disk is a
``StoreFullError``; the tests below fill the disk behind the store's back to prove it, in a
child process (a SIGBUS would kill it, and the test would say so).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _vdbtools import child_env
from test_limits import small_fs

import viperdbm

__all__ = ["small_fs"]  # the fixture, shared with test_limits

MIB = 1 << 20


def disk_bytes(path: Path) -> int:
    """What the store takes on disk: the allocated blocks of all its files."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(directory, name)).st_blocks * 512
    return total


@pytest.mark.parametrize("how", ["reorganize", "deletes"])
def test_a_store_that_shrank_gives_its_space_back(tmp_path: Path, how: str) -> None:
    """1M records of 100 bytes, 90% deleted: reorganize() (or the deletes' own compaction)
    gives the dead blocks back; issue 13's bound is 1.3x the live data plus 16 MiB. (Single
    puts: a batch over 1 MiB has a block of its own, which only reorganize() compacts.)"""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        for i in range(1_000_000):
            db[b"k%07d" % i] = bytes(100)
    full = disk_bytes(store)
    with viperdbm.open(store, "w") as db:
        for i in range(1_000_000):
            if i % 10:
                del db[b"k%07d" % i]
        if how == "reorganize":
            db.reorganize()
        live = sum(len(k) + len(db[k]) for k in db)
    shrunk = disk_bytes(store)
    print(f"{how}: {full / MIB:.1f} MiB -> {shrunk / MIB:.1f} MiB for {live / MIB:.1f} MiB live")
    assert shrunk <= 1.3 * live + 16 * MIB, (full, shrunk, live)
    with viperdbm.open(store, "r") as db:
        assert len(db) == 100_000 and db[b"k0000010"] == bytes(100)
    assert viperdbm.check(str(store)).ok


def test_a_small_store_takes_little_disk(tmp_path: Path) -> None:
    """The free tail of a part libpmemobj added is given back at once. (Issue 13 asks for at
    most 8 MiB with one record: the reserve and the active block take 4 MiB each, and
    libpmemobj's lanes and heap metadata nearly 4 MiB, all allocated.)"""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        db[b"k"] = b"v"
    taken = disk_bytes(store)
    print(f"one record: {taken / MIB:.1f} MiB on disk")
    assert taken <= 13 * MIB


REFILL = r"""
import errno, json, os, sys
import viperdbm

store, filler = sys.argv[1], sys.argv[2]
out = {"full_puts": 0, "deleted": 0, "errors": []}
with viperdbm.open(store, "c") as db:
    i = 0
    while True:  # the store fills the disk
        try:
            db[b"k%05d" % i] = bytes([i % 251]) * 200_000
        except viperdbm.StoreFullError:
            break
        i += 1
    out["written"] = i
    for j in range(i):  # most of it dies, and reorganize() gives its blocks back
        if j % 8:
            del db[b"k%05d" % j]
    db.reorganize()
# something else takes the disk the store gave back
with open(filler, "wb") as f:
    try:
        while True:
            f.write(b"\xff" * (1 << 20))
            f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
with viperdbm.open(store, "w") as db:
    for j in range(i, i + 40):  # new blocks would land in holes: no SIGBUS, an error
        try:
            db[b"n%05d" % j] = bytes(200_000)
        except viperdbm.StoreFullError as exc:
            out["errors"].append([exc.errno, str(exc)])
            break
        out["full_puts"] += 1
    for j in range(0, i, 8):  # deletes still work (the reserve)
        del db[b"k%05d" % j]
        out["deleted"] += 1
    out["left"] = len(db)
print(json.dumps(out))
"""


def _run_filling_the_disk(script: str, fs: Path) -> dict[str, Any]:
    """Run a writer ``script`` (arguments: the store, and a filler file that takes the disk
    behind the store's back) in a child, which must not die (a SIGBUS would kill it); its
    last line of output, as JSON. The filler is removed afterwards."""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(fs / "store"), str(fs / "filler")],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"the writer failed (status {proc.returncode}; -7 is SIGBUS): {proc.stderr[-3000:]}"
    )
    (fs / "filler").unlink()  # (a reader writes the blocks file the writer could not)
    out: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return out


def test_holes_on_a_full_disk_are_an_error_not_a_crash(small_fs: Path) -> None:
    out = _run_filling_the_disk(REFILL, small_fs)
    assert out["written"] > 20, out
    assert out["errors"], f"no put met the full disk: {out}"
    assert out["deleted"] == len(range(0, out["written"], 8)), out
    with viperdbm.open(small_fs / "store", "r") as db:
        assert len(db) == out["left"] == out["full_puts"]


TOMBSTONES = r"""
import json, sys
import viperdbm

store, filler = sys.argv[1], sys.argv[2]
key = lambda i: b"%06d" % i * 170  # 1 KiB keys: their deletes fill blocks fast
with viperdbm.open(store, "c") as db:
    for i in range(3000):
        db[key(i)] = bytes(2000)
    for i in range(1000):  # a few blocks die and are given back (holes)
        db[key(i)] = b"x"
    db.reorganize()
with open(filler, "wb") as f:  # the disk fills up behind the store's back
    try:
        while True:
            f.write(b"\xff" * (1 << 16))
            f.flush()
    except OSError:
        pass
deleted = 0
with viperdbm.open(store, "w") as db:
    for i in range(3000):  # 3 MiB of tombstones: a new block from the reserve
        del db[key(i)]
        deleted += 1
    left = len(db)
print(json.dumps({"deleted": deleted, "left": left}))
"""


def test_deletes_on_a_full_disk_take_the_reserve_even_among_holes(small_fs: Path) -> None:
    """The reserve is given back for a block of deletes; libpmemobj may place that block
    in a hole, which the constructor then allocates with the reserve's own disk space."""
    assert _run_filling_the_disk(TOMBSTONES, small_fs) == {"deleted": 3000, "left": 0}
    with viperdbm.open(small_fs / "store", "r") as db:
        assert len(db) == 0
