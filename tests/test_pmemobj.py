"""Tests of the libpmemobj binding against the real library, on real files.

Every test runs on tmpfs (/dev/shm) and on the disk filesystem of /tmp.  No mocks.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from viperdbm import _pmemobj as pm
from viperdbm._errors import (
    ClosedError,
    CorruptedError,
    LockError,
    NotAStoreError,
    StoreFullError,
    error,
)

LAYOUT = "viperdbm-test"
MiB = 1 << 20
BASES = [b for b in ("/dev/shm", "/tmp") if os.path.isdir(b) and os.access(b, os.W_OK)]


class Store:
    """A directory store: ``<dir>/db.set`` and ``<dir>/parts/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.set_path = str(root / "db.set")
        self.parts = root / "parts"
        self.parts.mkdir()

    def write_set(self, reservation: int = 64 << 30) -> None:
        pm.write_poolset(self.set_path, str(self.parts), reservation, 0o644)

    def create(self, reservation: int = 64 << 30, mode: int = 0o600) -> pm.Pool:
        self.write_set(reservation)
        return pm.Pool.create(self.set_path, LAYOUT, mode)

    def open(self) -> pm.Pool:
        return pm.Pool.open(self.set_path, LAYOUT)

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("*.pmem"))


@pytest.fixture(params=BASES)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    root = Path(tempfile.mkdtemp(prefix="vdbm-pmemobj-", dir=request.param))
    try:
        yield Store(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pool(store: Store) -> Iterator[pm.Pool]:
    p = store.create()
    try:
        yield p
    finally:
        p.close()


def _package_root() -> str:
    return str(Path(pm.__file__).resolve().parent.parent)


# ---- library and poolset file -----------------------------------------------------


def test_library_version() -> None:
    version = pm.library_version()
    assert version.startswith("libpmemobj ")
    assert "API 2." in version


def test_write_poolset(store: Store) -> None:
    old = os.umask(0o027)
    try:
        pm.write_poolset(store.set_path, str(store.parts), 64 << 30, 0o666)
    finally:
        os.umask(old)
    text = Path(store.set_path).read_text()
    assert text == f"PMEMPOOLSET\nOPTION SINGLEHDR\n64G {store.parts}\n"
    assert os.stat(store.set_path).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(store.root)) == ["db.set", "parts"]  # no temporary left
    pm.write_poolset(store.set_path, str(store.parts), (8 << 20) + 4096, 0o600)
    assert Path(store.set_path).read_text().splitlines()[2] == f"8196K {store.parts}"
    with pytest.raises(error):
        pm.write_poolset(store.set_path, str(store.root / "a b"), 64 << 30, 0o600)
    with pytest.raises(error):
        pm.write_poolset(store.set_path, str(store.parts), pm.MIN_POOL - 1, 0o600)


# ---- create / open / close ---------------------------------------------------------


def test_create_open_close(store: Store) -> None:
    p = store.create()
    assert p.is_open and p.set_path == store.set_path
    assert p.base != 0
    assert p.mapped_size() == 8 * MiB  # PMEMOBJ_MIN_POOL: the first part
    assert [f.name for f in store.part_files()] == ["000000.pmem"]
    assert p.root_size() == 0
    root = p.root(256)
    assert p.root_size() == 256 and p.root(0) == root
    p.write(root, b"magic!")
    p.persist(root, 6)
    p.close()
    assert not p.is_open
    p.close()  # idempotent
    p = store.open()
    try:
        assert p.root_size() == 256
        assert p.read(p.root(256), 6) == b"magic!"
        assert p.objects() == []  # the root is not listed
    finally:
        p.close()


def test_create_refuses_existing_store(store: Store) -> None:
    store.create().close()
    with pytest.raises(error) as info:
        pm.Pool.create(store.set_path, LAYOUT, 0o600)
    assert info.value.errno == errno.EEXIST


def test_layout_mismatch(store: Store) -> None:
    store.create().close()
    with pytest.raises(NotAStoreError, match="wrong layout"):
        pm.Pool.open(store.set_path, "some-other-layout")
    with pytest.raises(error):
        pm.Pool.open(store.set_path, "x" * (pm.LAYOUT_MAX + 1))


def test_missing_and_foreign_files(store: Store) -> None:
    with pytest.raises(error) as info:
        pm.Pool.open(str(store.root / "nothing.set"), LAYOUT)
    assert info.value.errno == errno.ENOENT
    # An empty file makes pmemobj_open die of SIGBUS: it must never reach the library.
    empty = store.root / "empty.set"
    empty.touch()
    with pytest.raises(NotAStoreError):
        pm.Pool.open(str(empty), LAYOUT)
    junk = store.root / "junk.set"
    junk.write_text("hello world\n")
    with pytest.raises(NotAStoreError):
        pm.Pool.open(str(junk), LAYOUT)
    store.write_set()
    with pytest.raises(NotAStoreError):  # no part files at all
        store.open()
    (store.parts / "000000.pmem").write_bytes(os.urandom(8 * MiB))
    with pytest.raises(NotAStoreError):
        store.open()


def test_damaged_parts(store: Store) -> None:
    p = store.create()
    p.set_heap_granularity(4 * MiB)
    for _ in range(6):
        p.alloc(MiB, 1)
    p.close()
    parts = store.part_files()
    assert len(parts) >= 2
    # "foo.pmem" would be read as a second part 0 and segfault libpmemobj.
    (store.parts / "foo.pmem").write_bytes(b"x" * 4096)
    with pytest.raises(CorruptedError):
        store.open()
    (store.parts / "foo.pmem").unlink()
    saved = parts[1].read_bytes()
    parts[1].write_bytes(b"")
    with pytest.raises(CorruptedError):
        store.open()
    parts[1].write_bytes(saved[:MiB])
    with pytest.raises(CorruptedError):
        store.open()
    parts[1].write_bytes(saved)
    with parts[0].open("r+b") as f:  # damage the pool header's checksum
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptedError, match="checksum"):
        store.open()


# ---- locking ----------------------------------------------------------------------


def test_second_open_same_process(pool: pm.Pool, store: Store) -> None:
    with pytest.raises(LockError) as info:
        store.open()
    assert info.value.errno == errno.EAGAIN
    assert "in use" in str(info.value)
    assert pool.is_open


def test_second_open_other_process(pool: pm.Pool, store: Store) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from viperdbm import _pmemobj as pm
        from viperdbm._errors import LockError
        try:
            pm.Pool.open({store.set_path!r}, {LAYOUT!r})
        except LockError:
            sys.exit(42)
        sys.exit(1)
        """
    )
    env = dict(os.environ, PYTHONPATH=_package_root())
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 42, proc.stderr.decode()
    pool.alloc(100, 1)  # the failed open did not disturb the pool


# ---- objects ------------------------------------------------------------------------


def test_alloc_free_objects_usable_size(pool: pm.Pool, store: Store) -> None:
    root = pool.root(1024)
    a = pool.alloc(100, 1)
    b = pool.alloc(8192, 2, zero=False)
    c = pool.alloc(300_000, 3)  # a "huge" (whole-chunk) allocation
    assert pool.usable_size(a) >= 100
    assert pool.usable_size(b) >= 8192
    assert pool.usable_size(c) >= 300_000
    assert pool.usable_size(root) >= 1024
    assert pool.read(a, 100) == bytes(100) and pool.read(c, 300_000) == bytes(300_000)
    listed = {off: (t, u) for off, t, u in pool.objects()}
    assert listed == {
        a: (1, pool.usable_size(a)),
        b: (2, pool.usable_size(b)),
        c: (3, pool.usable_size(c)),
    }
    pool.free(b)
    assert {off for off, _, _ in pool.objects()} == {a, c}
    with pytest.raises(error, match="not an allocated object"):
        pool.free(b)  # double free
    with pytest.raises(error, match="not an allocated object"):
        pool.usable_size(b)
    with pytest.raises(error, match="not an allocated object"):
        pool.free(a + 16)  # inside an object
    with pytest.raises(error, match="not an allocated object"):
        pool.free(root)  # the root is not freeable
    d = pool.alloc(50, 4)
    pool.free(d)  # known through the DRAM cache
    pool.close()
    p = store.open()
    try:
        assert {off for off, _, _ in p.objects()} == {a, c}
        p.free(a)  # the first free after open walks the heap
        assert [off for off, _, _ in p.objects()] == [c]
    finally:
        p.close()


def test_alloc_argument_checks(pool: pm.Pool) -> None:
    for size in (0, -1, pm.MAX_ALLOC_SIZE + 1):
        with pytest.raises(error):
            pool.alloc(size, 1)
    with pytest.raises(error):
        pool.alloc(10, -1)
    with pytest.raises(error):
        pool.root(pm.MAX_ALLOC_SIZE + 1)
    with pytest.raises(error):
        pool.root(0)  # no root yet
    for bad in (1, MiB, 2 * MiB):
        with pytest.raises(error):
            pool.set_heap_granularity(bad)
    pool.set_heap_granularity(0)
    with pytest.raises(StoreFullError):  # granularity 0: the pool may not grow
        for _ in range(10):
            pool.alloc(MiB, 1)


def _maps_of(parts: Path) -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of the mappings of files in ``parts``."""
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].strip().startswith(f"{parts}/"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append((start, end, int(fields[2], 16), fields[5].strip()))
    return out


def _check_mapping_rule(p: pm.Pool, store: Store) -> None:
    """The parts are mapped back to back from ``base``; every object lies below the sum."""
    parts = store.part_files()
    mapped = p.mapped_size()
    assert mapped == sum(f.stat().st_size for f in parts)
    maps: dict[str, list[tuple[int, int, int]]] = {}
    for start, end, off, path in _maps_of(store.parts):
        maps.setdefault(path, []).append((start, end, off))
    address = p.base
    for f in parts:
        assert (address, address + f.stat().st_size, 0) in maps[str(f)]
        address += f.stat().st_size
    assert address == p.base + mapped
    # The rest of the reservation is a mapping of the first part beyond its end.
    tail = [m for m in maps[str(parts[0])] if m[2] != 0]
    assert [(start, off) for start, _, off in tail] == [(p.base + mapped, mapped)]
    for off, _, usable in p.objects():
        assert off > 0 and off + usable <= mapped


def test_growth_past_first_part(store: Store) -> None:
    p = store.create()
    try:
        p.set_heap_granularity(4 * MiB)
        offs = []
        for i in range(40):
            off = p.alloc(MiB, 100 + i)
            p.write(off, i.to_bytes(4, "little"))
            offs.append(off)
        assert len(store.part_files()) > 10
        assert p.mapped_size() > 40 * MiB
        _check_mapping_rule(p, store)
        last = offs[-1]
        p.persist(last, MiB)
        p.msync(last, MiB)
    finally:
        p.close()
    p = store.open()
    try:
        objects = p.objects()
        assert sorted(off for off, _, _ in objects) == sorted(offs)
        for off, type_num, usable in objects:
            assert usable >= MiB
            assert p.read(off, 4) == (type_num - 100).to_bytes(4, "little")
        _check_mapping_rule(p, store)
        p.free(offs[7])
    finally:
        p.close()


def test_reservation_too_small(store: Store) -> None:
    p = store.create(reservation=16 * MiB)
    try:
        p.set_heap_granularity(4 * MiB)
        allocated = []
        with pytest.raises(StoreFullError) as info:
            for _ in range(64):
                allocated.append(p.alloc(MiB, 1))
        assert "reservation" in str(info.value)
        assert 4 <= len(allocated) < 16
        assert p.mapped_size() <= 16 * MiB
        p.free(allocated[0])  # still usable
        p.alloc(MiB, 1)
    finally:
        p.close()
    store.write_set(reservation=64 * MiB)  # raising the reservation lets it grow again
    p = store.open()
    try:
        p.set_heap_granularity(4 * MiB)
        for _ in range(8):
            p.alloc(MiB, 1)
    finally:
        p.close()


# ---- bounds and closed handles -------------------------------------------------------


def test_bounds(pool: pm.Pool) -> None:
    size = pool.mapped_size()
    for call in (pool.persist, pool.msync, pool.read):
        call(0, size)  # the whole mapping is fine
        for off, length in ((size, 1), (size - 10, 11), (-1, 1), (0, -1), (1 << 62, 1)):
            with pytest.raises(error, match="outside the pool"):
                call(off, length)
    for off in (size, size + 4096, -16, 1 << 62):
        with pytest.raises(error, match="outside the pool"):
            pool.free(off)
        with pytest.raises(error, match="outside the pool"):
            pool.usable_size(off)
    for off in (0, 16, 4096, size - 16):  # inside, but no object: never passed to the library
        with pytest.raises(error, match="not an allocated object"):
            pool.free(off)
        with pytest.raises(error, match="not an allocated object"):
            pool.usable_size(off)
    with pytest.raises(error):
        pool.write(size - 2, b"abc")
    with pytest.raises(error):
        pool.is_pmem(size + 1)
    assert pool.is_pmem(size) in (True, False)
    assert pool.persist_function_address != 0


def test_closed_handle(store: Store) -> None:
    p = store.create()
    off = p.alloc(64, 1)
    p.close()
    assert not p.is_open
    calls: list[Callable[[], object]] = [
        lambda: p.base,
        lambda: p.persist_function_address,
        lambda: p.root(64),
        p.root_size,
        lambda: p.alloc(64, 1),
        lambda: p.free(off),
        lambda: p.usable_size(off),
        p.objects,
        lambda: p.persist(off, 8),
        lambda: p.msync(off, 8),
        lambda: p.set_heap_granularity(4 * MiB),
        lambda: p.is_pmem(4096),
        p.mapped_size,
        lambda: p.read(off, 8),
        lambda: p.write(off, b"x"),
    ]
    for call in calls:
        with pytest.raises(ClosedError, match="already been closed"):
            call()


# ---- fork and permissions ----------------------------------------------------------


def test_fork(store: Store) -> None:
    p = store.create()
    keep = p.alloc(128, 9)
    p.write(keep, b"parent")
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        status = 1
        try:
            try:
                p.alloc(64, 1)
                status = 2
            except ClosedError as exc:
                status = 3 if "fork" in str(exc) else 4
            if status == 3:
                status = 0 if not p.is_open else 5
                p.close()  # silently drops the handle: no pmemobj_close
                p.close()
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    try:
        assert p.is_open
        other = p.alloc(64, 1)
        assert {off for off, _, _ in p.objects()} == {keep, other}
    finally:
        p.close()
    p = store.open()  # the child left the pool clean and unlocked
    try:
        assert p.read(keep, 6) == b"parent"
        assert len(p.objects()) == 2
    finally:
        p.close()


def test_create_mode_respects_umask(store: Store) -> None:
    old = os.umask(0o027)
    try:
        p = store.create(mode=0o666)
        try:
            p.set_heap_granularity(4 * MiB)
            for _ in range(8):  # grow: the new parts get the same mode
                p.alloc(MiB, 1)
            p.mapped_size()
        finally:
            p.close()
    finally:
        os.umask(old)
    parts = store.part_files()
    assert len(parts) > 1
    assert {f.stat().st_mode & 0o777 for f in parts} == {0o640}


def test_close_while_another_thread_calls(store: Store) -> None:
    p = store.create()
    off = p.alloc(4096, 1)
    outcome: list[str] = []
    started = threading.Event()

    def hammer() -> None:
        try:
            while True:
                p.persist(off, 64)
                p.usable_size(off)
                started.set()
        except ClosedError:
            outcome.append("closed")
        except BaseException as exc:  # pragma: no cover - reported below
            outcome.append(repr(exc))

    thread = threading.Thread(target=hammer)
    thread.start()
    assert started.wait(10)
    p.close()
    thread.join(10)
    assert outcome == ["closed"]
    p = store.open()
    try:
        assert [o for o, _, _ in p.objects()] == [off]
    finally:
        p.close()


# --------------------------------------------------------------------------------------
# libpmemobj's metadata, read before libpmemobj (viperdbm/_pmdk_metadata.py)


def _parts_of(store: Store) -> list[tuple[str, int]]:
    return [(str(p), p.stat().st_size - p.stat().st_size % 4096) for p in store.part_files()]


def test_the_survey_of_a_healthy_pool_finds_every_object(store: Store) -> None:
    from viperdbm._pmdk_metadata import survey

    p = store.create()
    try:
        large = [p.alloc(4 * MiB - 16, 1, zero=False) for _ in range(3)]
        small = p.alloc(4096, 2)
        p.free(large[1])
    finally:
        p.close()
    found = survey(_parts_of(store))
    assert found.damage is None
    assert found.large_objects is not None
    # whole-chunk allocations and the small one in a run; not the freed one
    assert {large[0], large[2], small} <= found.large_objects
    assert large[1] not in found.large_objects
    p = store.open()  # and libpmemobj agrees: the walk at open compares both
    try:
        listed = {off for off, _, _ in p.objects()}
        assert found.large_objects <= listed
    finally:
        p.close()


@pytest.mark.parametrize(
    ("what", "at", "data"),
    [
        ("capacity", 8192 + 5 * 3072 + 16, b"\xff" * 8),  # lane 5's internal redo log
        ("next", 8192 + 7 * 3072 + 960 + 8, b"\x40" * 8),  # lane 7's undo log
        ("chunk header", 0x302000 + 1024 + 64, bytes(8)),  # the first chunk header, zeroed
    ],
)
def test_damaged_metadata_is_refused_before_libpmemobj_reads_it(
    store: Store, what: str, at: int, data: bytes
) -> None:
    """libpmemobj's own open loops forever on these (PMDK 1.12.1): refuse them first."""
    p = store.create()
    p.alloc(4096, 1)  # (the heap's first zone is laid out at the first allocation)
    p.close()
    with open(store.part_files()[0], "r+b") as f:
        f.seek(at)
        f.write(data)
    with pytest.raises(CorruptedError, match="damaged"):
        store.open()
