"""reorganize() gives the space of dead records back to the file system.

Without readers attached it builds a new pool beside the store with the live records only
and swaps it in (as flag 'n' swaps an empty one in); with readers attached, or where there
is no room for the copy, it works in place (the pool keeps its size). A kill at any instant
of it is covered by the crash enumeration (tests/test_enumerate.py, whose workload
reorganizes without readers) and tests/test_crashpoints.py (both ways); what a user sees is
here: the disk the store takes (``du``: allocated blocks), the records, and the handle.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
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


def leftovers(store: Path) -> list[str]:
    return [n for n in os.listdir(store.parent) if n.startswith(f".{store.name}.viperdbm-")]


def half_dead(db: viperdbm.Database, count: int, size: int) -> None:
    """``count`` records of ``size`` bytes, then every other one deleted."""
    for i in range(count):
        db[b"k%07d" % i] = bytes(size)
    for i in range(0, count, 2):
        del db[b"k%07d" % i]


def test_a_store_that_shrank_gives_its_space_back(tmp_path: Path) -> None:
    """Issue 13's bound: 1M records of 100 bytes, 90% deleted, reorganize(): at most 1.3x
    the live data plus 16 MiB on disk. The handle goes on writing, into the new pool."""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        for i in range(1_000_000):
            db[b"k%07d" % i] = bytes(100)
    full = disk_bytes(store)
    inode = store.stat().st_ino
    with viperdbm.open(store, "w") as db:
        for i in range(1_000_000):
            if i % 10:
                del db[b"k%07d" % i]
        db.reorganize()
        live = sum(len(k) + len(db[k]) for k in db)
        db[b"after"] = b"written into the new pool"
        assert db[b"k0000010"] == bytes(100) and b"k0000011" not in db
    shrunk = disk_bytes(store)
    print(f"{full / MIB:.1f} MiB -> {shrunk / MIB:.1f} MiB for {live / MIB:.1f} MiB live")
    assert store.stat().st_ino != inode, "the store was not rebuilt"
    assert shrunk <= 1.3 * live + 16 * MIB, (full, shrunk, live)
    assert leftovers(store) == []
    with viperdbm.open(store, "r") as db:
        assert len(db) == 100_001 and db[b"after"] == b"written into the new pool"
    assert viperdbm.check(str(store)).ok


def test_with_a_reader_attached_it_works_in_place(tmp_path: Path) -> None:
    """A reader maps the pool: it would be left reading the old one. So the store is
    reorganized in place, and the reader goes on seeing the writer's writes."""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        half_dead(db, 20_000, 200)
        inode = store.stat().st_ino
        with viperdbm.open(store, "r") as reader:
            db.reorganize()
            assert store.stat().st_ino == inode, "rebuilt under a reader"
            db[b"later"] = b"seen"
            assert reader[b"later"] == b"seen" and len(reader) == 10_001
    assert leftovers(store) == []


def test_what_a_killed_reorganize_left_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    """A kill between the copy and the swap leaves the new pool beside the store, after the
    swap the old one: hidden directories only a writer holding the lock makes, so the next
    writer removes them (a reader leaves them alone). Nothing else of that name pattern's
    neighbours is touched."""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        db[b"k"] = b"v"
    left = tmp_path / ".s.viperdbm-reorganize-0123456789abcdef"
    (left / "parts").mkdir(parents=True)
    (left / "parts" / "000000.pmem").write_bytes(bytes(4096))
    other = tmp_path / ".s.viperdbm-new-0123456789abcdef"  # a creation's: not ours to remove
    other.mkdir()
    with viperdbm.open(store, "r") as db:
        assert db[b"k"] == b"v"
    assert left.exists()
    with viperdbm.open(store, "w") as db:
        assert db[b"k"] == b"v"
    assert not left.exists() and other.exists()


def test_writes_of_other_threads_wait_and_land_in_the_new_pool(tmp_path: Path) -> None:
    """Another thread writes through the same handle while reorganize() copies into the new
    pool (once that has grown a third part): its puts wait for the swap (the old core
    answers them NEED_WAIT), and none is lost. (Without the wait, puts into the old pool
    behind the copy, or after it, were lost.)"""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        half_dead(db, 400_000, 100)
        acked: list[int] = []
        building = threading.Event()

        def writer() -> None:
            # until the copy has grown the new pool (this thread gets the GIL in between)
            while not any(
                os.path.exists(store.parent / name / "parts" / "000002.pmem")
                for name in leftovers(store)
            ):
                time.sleep(0.0005)
            building.set()
            for i in range(2000):
                db[b"t%06d" % i] = b"%d" % i
                acked.append(i)

        thread = threading.Thread(target=writer)
        thread.start()
        inode = store.stat().st_ino
        db.reorganize()
        thread.join(60)
        assert store.stat().st_ino != inode, "the store was not rebuilt"
        assert building.is_set(), "the writer never saw the new pool being built"
        missing = [i for i in acked if db.get(b"t%06d" % i) != b"%d" % i]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged puts lost: {missing[:5]}"
    with viperdbm.open(store, "r") as db:
        assert len(db) == 200_000 + 2000


def test_without_room_for_the_copy_it_works_in_place(small_fs: Path) -> None:
    """A full disk: the copy fails (StoreFullError inside), the new pool is removed, and
    the store is reorganized in place as before, every record kept."""
    store = small_fs / "store"
    want = {}
    with viperdbm.open(store, "c") as db:
        for i in range(3000):
            want[b"k%05d" % i] = bytes([i % 251]) * 3000
            db[b"k%05d" % i] = want[b"k%05d" % i]
        for i in range(0, 3000, 3):
            del db[b"k%05d" % i]
            del want[b"k%05d" % i]
        filler = small_fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (MIB, 4096):
                try:
                    while True:
                        os.write(fd, bytes(size))
                except OSError:
                    pass
        finally:
            os.close(fd)
        inode = store.stat().st_ino
        db.reorganize()
        assert store.stat().st_ino == inode
        assert {k: db[k] for k in db} == want
        filler.unlink()
    assert leftovers(store) == []
    with viperdbm.open(store, "r") as db:
        assert {k: db[k] for k in db} == want


@pytest.mark.parametrize("flag", ["cs", "cu"])
def test_the_flags_carry_over(tmp_path: Path, flag: str) -> None:
    """Flag 's' (every write durable) still holds after the swap; flag 'u' (no lock to hand
    over) reorganizes in place."""
    store = tmp_path / "s"
    with viperdbm.open(store, flag) as db:
        half_dead(db, 5000, 100)
        inode = store.stat().st_ino
        db.reorganize()
        assert (store.stat().st_ino == inode) == (flag == "cu")
        db[b"after"] = b"1"
    with viperdbm.open(store, "r") as db:
        assert len(db) == 2501 and db[b"after"] == b"1"
