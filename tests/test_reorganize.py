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
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_limits import small_fs

import viperdbm
from viperdbm import _engine, _native, _readers
from viperdbm import _storedir as storedir

vipercore = _native.core

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


def one_record(tmp_path: Path) -> Path:
    """A closed store holding k = v."""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        db[b"k"] = b"v"
    return store


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
    store = one_record(tmp_path)
    left = tmp_path / ".s.viperdbm-reorganize"
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


# ---------------------------------------------------------------- readers opening meanwhile
# A reader opens the path: it must get the store that stays there, never one swapped out
# from under it (it would read a store no writer writes, and which is being removed).


def test_a_reader_that_opens_after_the_copy_keeps_it_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that takes its slot after the copy, just before the swap: the writer sees
    it and works in place, and the reader goes on following it."""
    store = tmp_path / "s"
    late: list[viperdbm.Database] = []
    build_copy = _engine.Engine._build_copy

    def then_a_reader_opens(self: _engine.Engine, *args: Any) -> _engine.Engine | None:
        build = build_copy(self, *args)
        late.append(viperdbm.open(store, "r"))
        return build

    monkeypatch.setattr(_engine.Engine, "_build_copy", then_a_reader_opens)
    with viperdbm.open(store, "c") as db:
        half_dead(db, 400, 1000)
        inode = store.stat().st_ino
        db.reorganize()
        assert store.stat().st_ino == inode, "swapped with a reader attached"
        db[b"after"] = b"1"
        assert late[0].get(b"after") == b"1"
        assert len(late[0]) == 201
    late[0].close()
    assert leftovers(store) == []


def test_a_reader_that_opens_during_the_swap_opens_the_new_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that opens the path while the writer has barred new readers (between its
    last look at the readers and the exchange): it waits, then opens the new store, and
    follows the writer there. Without the bar it took a slot in the old store and read it
    ever after (a store being removed, which no writer writes)."""
    store = tmp_path / "s"
    opened: list[viperdbm.Database] = []
    failed: list[BaseException] = []
    publish = storedir.publish

    def open_reader() -> None:
        try:
            opened.append(viperdbm.open(store, "r"))
        except BaseException as exc:
            failed.append(exc)

    def a_reader_opens_first(built: str, path: str, *, replace: bool) -> str | None:
        if not replace:  # (the store's creation)
            return publish(built, path, replace=replace)
        reader = threading.Thread(target=open_reader)
        reader.start()
        reader.join(0.3)  # (long enough for it to come to the readers file: it waits there)
        assert reader.is_alive(), ("a reader opened a store about to be swapped out", failed)
        try:
            return publish(built, path, replace=replace)
        finally:
            threads.append(reader)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(storedir, "publish", a_reader_opens_first)
    with viperdbm.open(store, "c") as db:
        half_dead(db, 400, 1000)
        inode = store.stat().st_ino
        db.reorganize()
        assert store.stat().st_ino != inode, "not swapped"
        threads[0].join(60)
        assert failed == [] and len(opened) == 1
        db[b"after"] = b"1"
        assert opened[0].get(b"after") == b"1", "the reader reads the store swapped out"
        assert len(opened[0]) == 201
        opened[0].close()
    assert leftovers(store) == []


def test_a_bar_left_by_a_writer_that_died_is_no_bar(tmp_path: Path) -> None:
    """A writer killed between barring new readers and the swap: readers still open the
    store (the bar names a process that is gone), and its next writer lifts the bar."""
    store = one_record(tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", BAR_AND_DIE, str(store)], capture_output=True, check=False
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert barred_by(store) == int(child.stdout)
    with viperdbm.open(store, "r") as reader:
        assert reader[b"k"] == b"v"
    with viperdbm.open(store, "w") as db:
        assert barred_by(store) == 0
        db[b"k"] = b"w"


def test_a_live_bar_keeps_new_readers_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a live writer holding the store's lock bars new readers, a reader waits (and
    says why if it waits too long); a writer cannot bar them while one holds a slot."""
    store = one_record(tmp_path)
    monkeypatch.setattr(_engine, "WAIT_FOR_SWAP", 0.2)
    fd = os.open(store / "readers", os.O_RDWR)
    try:
        lock = storedir.lock(str(store), exclusive=True, label="test")
        assert vipercore.readers_bar(fd) is True
        assert barred_by(store) == os.getpid()
        with pytest.raises(_readers.StoreSwappedError):
            _readers.ReaderSlot.take(str(store))
        with pytest.raises(viperdbm.LockError, match="replacing it with a new one"):
            viperdbm.open(store, "r")
        vipercore.readers_unbar(fd)
        os.close(lock)
        with viperdbm.open(store, "r") as reader:  # a reader holds a slot: no bar now
            assert vipercore.readers_bar(fd) is False
            assert barred_by(store) == 0
            assert reader[b"k"] == b"v"
    finally:
        os.close(fd)


def test_a_replacement_with_a_reader_attached_is_refused(tmp_path: Path) -> None:
    store = one_record(tmp_path)
    with viperdbm.open(store, "r") as reader:
        with pytest.raises(viperdbm.LockError, match="in use by readers"):
            viperdbm.open(store, "n")
        assert barred_by(store) == 0, "the bar stayed after a refused replacement"
        assert reader[b"k"] == b"v"
    with viperdbm.open(store, "r") as reader:  # and new readers open
        assert reader[b"k"] == b"v"


BAR_AND_DIE = """
import os, signal, sys
from viperdbm import _native
fd = os.open(os.path.join(sys.argv[1], "readers"), os.O_RDWR)
assert _native.core.readers_bar(fd)
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def barred_by(store: Path) -> int:
    fd = os.open(store / "readers", os.O_RDONLY)
    try:
        return vipercore.readers_barred_by(fd)
    finally:
        os.close(fd)


WRITER_REORGANIZING = """
import os, sys, viperdbm
store, stop = sys.argv[1], sys.argv[2]
with viperdbm.open(store, "w") as db:
    print("opened", flush=True)
    n = 0
    while not os.path.exists(stop):
        n += 1
        db[b"counter"] = b"%d" % n
        db[b"k%03d" % (n % 300)] = bytes(n % 500)
        if n % 40 == 0:
            db.reorganize()
            db[b"reorganized"] = b"%d" % (n // 40)
    print(n // 40, flush=True)
"""


def test_readers_and_checks_beside_a_writer_that_keeps_reorganizing(tmp_path: Path) -> None:
    """What CI once caught (test_live_readers' read-only commands): a check or a reader that
    opened while the writer swapped a reorganized store in failed ('parts/: cannot read the
    part files'), or read the old store ever after. Now each one checks clean, and each
    reader sees the writer's next write."""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        db[b"counter"] = b"0"
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_REORGANIZING, str(store), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"opened\n"
        opens = reorganized = 0
        give_up = time.monotonic() + 300
        while opens < 120 or reorganized < 20:  # (however fast either side runs)
            assert time.monotonic() < give_up, (opens, reorganized)
            if opens % 3 == 0:
                report = viperdbm.check(store)
                assert report.ok, report.problems
            with viperdbm.open(store, "r") as reader:
                seen = int(reader[b"counter"])
                deadline = time.monotonic() + 30
                while int(reader[b"counter"]) == seen:  # the writer's next write
                    assert time.monotonic() < deadline, "the reader reads a store swapped out"
                    time.sleep(0.001)
                reorganized = int(reader.get(b"reorganized") or b"0")
            opens += 1
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err.decode()
    assert int(out) >= 20


def test_a_writer_waiting_for_the_lock_gets_the_new_store(tmp_path: Path) -> None:
    """A second writer waiting (timeout) on the store's lock while the first swaps a
    reorganized store in: the lock it then gets is the old store's, moved away with it.
    It was told the store was in use (libpmemobj's own flock of the new store's parts),
    its timeout not honoured; now it takes the new store's lock and waits for that."""
    store = tmp_path / "s"
    outcome: list[object] = []

    def second_writer() -> None:
        try:
            with viperdbm.open(store, "w", timeout=60) as db:
                outcome.append(db.get(b"after"))
                db[b"second"] = b"1"
        except BaseException as exc:
            outcome.append(exc)

    with viperdbm.open(store, "c") as db:
        half_dead(db, 400, 1000)
        waiting = threading.Thread(target=second_writer)
        waiting.start()
        time.sleep(0.2)  # (it waits on the lock from here on; if later, it waits anyway)
        inode = store.stat().st_ino
        db.reorganize()
        assert store.stat().st_ino != inode, "not swapped"
        db[b"after"] = b"1"
        time.sleep(0.3)  # the old store's lock is free: the waiting writer must not take it
        db[b"after"] = b"2"
    waiting.join(60)
    assert outcome == [b"2"]
    with viperdbm.open(store, "r") as db:
        assert db[b"second"] == b"1" and len(db) == 202


def test_a_bar_without_a_lock_holder_is_no_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged readers file whose barred_by names a live process (here: this one) while
    nobody holds the store's lock: readers open at once (a writer swapping holds it). With
    no time to wait for a bar at all, a reader that counted this one would fail."""
    store = one_record(tmp_path)
    monkeypatch.setattr(_engine, "WAIT_FOR_SWAP", 0.0)
    fd = os.open(store / "readers", os.O_RDWR)
    try:
        assert vipercore.readers_bar(fd) is True
        with viperdbm.open(store, "r") as reader:
            assert reader[b"k"] == b"v"
    finally:
        os.close(fd)
