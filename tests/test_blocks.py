"""Blocks cannot be confused with their previous lives, nor with the reserve.

docs/format.md, "Blocks": every block header carries the block's birth and is written by a
libpmemobj constructor; the reserve's constructor zeroes its first 64 bytes; an object typed
as the reserve that holds a block header with a birth is read as that block; while the
``blocks`` file is current, block kinds must match it. These tests edit real part files of
closed stores (offsets from the independent parser in tests/_vdbtools.py) and open them in
a child (:class:`_vdbtools.Prober`). The crash points of the same rules are enumerated in
tests/test_crashpoints.py.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _vdbtools import BLOCK_HEADER, PoolImage, Prober, digest, read_pool, value_for

import viperdbm
from viperdbm import _layout as layout
from viperdbm import _native

#: libpmemobj's object header ends with the type number (u64) right before the object, in
#: both its compact (16-byte) and its legacy (64-byte) form
TYPE_NUM_BEFORE = 8
BIRTH_OFFSET = layout.STRUCTURES["VdBlockHeader"].offset("birth")
KIND_PAD = layout.FORMAT["constants"]["KIND_PAD"]
PAGE_SIZE = layout.FORMAT["constants"]["PAGE_SIZE"]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="viperdbm-blocks-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def prober() -> Iterator[Prober]:
    with Prober(watchdog=60) as p:
        yield p


def make_store(path: Path) -> dict[bytes, str]:
    """A closed store with standard and jumbo blocks, overwrites and deletes: key -> digest."""
    model: dict[bytes, str] = {}
    with viperdbm.open(path, "c") as db:
        for i in range(400):
            key, value = b"k%03d" % i, value_for("blocks", i, 40 + i * 31 % 9000)
            db[key] = value
            model[key] = digest(value)
        for i in range(2):
            key, value = b"jumbo%d" % i, value_for("blocks", 1000 + i, 1_300_000)
            db[key] = value
            model[key] = digest(value)
        for i in range(0, 400, 3):
            del db[b"k%03d" % i]
            del model[b"k%03d" % i]
    return model


def patch(image: PoolImage, pool_off: int, data: bytes) -> None:
    path, at = image.locate(pool_off)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def header_with_birth(image: PoolImage, off: int, birth: int) -> bytes:
    """The block header at off with another birth, its CRC made to match."""
    header = bytearray(image.data[off : off + BLOCK_HEADER])
    struct.pack_into("<Q", header, BIRTH_OFFSET, birth)
    struct.pack_into("<I", header, 4, _native.crc32c(bytes(header[8:])))
    return bytes(header)


def opened(prober: Prober, store: Path, flag: str) -> dict[bytes, str]:
    res = prober.probe(store, flag, reopen=flag == "w")
    assert res.status == "ok", res.summary()
    assert not res.agreement, res.agreement
    if res.state_after_reopen is not None:
        assert res.state_after_reopen == res.state
    return res.state


def test_every_block_is_born_and_the_reserve_has_no_header(workdir: Path) -> None:
    store = workdir / "s"
    make_store(store)
    image = read_pool(store, workdir)
    blocks = [b for b in image.blocks if b.type_num in (1, 2)]
    reserves = [b for b in image.blocks if b.type_num == layout.TYPE_RESERVE]
    assert blocks and len(reserves) == 1
    for block in blocks:
        assert block.header_ok
        (birth,) = struct.unpack_from("<Q", image.data, block.off + BIRTH_OFFSET)
        seqs = [r.seq for r in block.records if r.kind != KIND_PAD]
        assert 0 < birth <= min(seqs), (block.off, birth, seqs[:3])
        pads = [r for r in block.records if r.kind == KIND_PAD]
        for pad in pads:  # a pad carries the sequence number of the record after it
            (meta,) = struct.unpack_from("<Q", image.data, pad.pos + 8)
            assert meta & ((1 << 48) - 1) >= birth
    assert not reserves[0].header_ok


def test_a_reserve_in_reused_space_holds_no_block_header(workdir: Path) -> None:
    """The reserve taken again over a freed block does not keep that block's header."""
    store = workdir / "s"
    with viperdbm.open(store, "c") as db:
        for i in range(60):
            db[b"k%02d" % i] = value_for("reserve", i, 200_000)
        engine = db._engine
        assert engine is not None and engine._pool is not None and engine.core is not None
        pool, core = engine._pool, engine.core
        freed = {off for off, _, kind in core.blocks() if kind == 1}
        for i in range(60):
            del db[b"k%02d" % i]
        db.sync()  # frees every block but the active one
        freed -= {off for off, _, _ in core.blocks()}
        assert freed
        size = layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER
        offsets = [engine._alloc(size, layout.TYPE_RESERVE, zero=False)[0] for _ in freed]
        assert set(offsets) & freed, "the reserves did not reuse a freed block's space"
        for off in offsets:
            assert pool.read(off, BLOCK_HEADER) == bytes(BLOCK_HEADER)
            pool.free(off)


def test_a_block_typed_as_the_reserve_is_read_not_freed(workdir: Path, prober: Prober) -> None:
    """Finding 2 of issue 10: a block whose type number reads 3 was freed unread by a
    writable open (here without a current blocks file to catch it)."""
    store = workdir / "s"
    model = make_store(store)
    image = read_pool(store, workdir)
    (store / layout.BLOCKS_FILE).unlink()
    for block in [b for b in image.blocks if b.type_num in (1, 2)]:
        patch(image, block.off - TYPE_NUM_BEFORE, struct.pack("<Q", layout.TYPE_RESERVE))
    assert opened(prober, store, "w") == model
    assert opened(prober, store, "r") == model


def test_the_blocks_file_catches_a_block_turned_into_the_reserve(
    workdir: Path, prober: Prober
) -> None:
    """A block without a birth (as older writers made them) typed as the reserve looks like
    a reserve: the current blocks file, which lists it as a block, makes the open fail
    instead of freeing it."""
    store = workdir / "s"
    make_store(store)
    image = read_pool(store, workdir)
    block = next(b for b in image.blocks if b.type_num == layout.TYPE_STANDARD_BLOCK)
    patch(image, block.off, header_with_birth(image, block.off, 0))
    patch(image, block.off - TYPE_NUM_BEFORE, struct.pack("<Q", layout.TYPE_RESERVE))
    res = prober.probe(store, "w")
    assert res.status == "error" and res.exc_type == "CorruptedError", res.summary()
    assert "standard block" in res.message and "reserve" in res.message


def test_the_blocks_file_catches_a_jumbo_block_typed_as_standard(
    workdir: Path, prober: Prober
) -> None:
    store = workdir / "s"
    make_store(store)
    image = read_pool(store, workdir)
    block = next(b for b in image.blocks if b.type_num == layout.TYPE_JUMBO_BLOCK)
    patch(image, block.off - TYPE_NUM_BEFORE, struct.pack("<Q", layout.TYPE_STANDARD_BLOCK))
    res = prober.probe(store, "w")
    assert res.status == "error" and res.exc_type == "CorruptedError", res.summary()


def test_an_old_reserve_holding_a_previous_block_stays_the_reserve(
    workdir: Path, prober: Prober
) -> None:
    """Older writers allocated the reserve without a constructor, so it may hold a freed
    block's header (without a birth) and records: never read, never an error."""
    store = workdir / "s"
    model = make_store(store)
    image = read_pool(store, workdir)
    (store / layout.BLOCKS_FILE).unlink()
    block = next(b for b in image.blocks if b.type_num == layout.TYPE_STANDARD_BLOCK)
    reserve = next(b for b in image.blocks if b.type_num == layout.TYPE_RESERVE)
    size = min(block.usable, reserve.usable)
    stale = (
        header_with_birth(image, block.off, 0)
        + image.data[block.off + BLOCK_HEADER : block.off + size]
    )
    assert (reserve.off - block.off) % PAGE_SIZE == 0  # its log lines up the same way
    patch(image, reserve.off, stale)
    assert opened(prober, store, "w") == model
    with viperdbm.open(store, "w") as db:
        db[b"after"] = b"x" * 2_000_000  # the reserve still serves as the reserve
        model[b"after"] = digest(b"x" * 2_000_000)
    assert opened(prober, store, "r") == model


def test_blocks_without_a_birth_still_read(workdir: Path, prober: Prober) -> None:
    """The birth needed no new format version: a store whose headers have none (written
    before the field) opens with the same contents, and a writer resumes in it."""
    store = workdir / "s"
    model = make_store(store)
    image = read_pool(store, workdir)
    for block in [b for b in image.blocks if b.type_num in (1, 2)]:
        patch(image, block.off, header_with_birth(image, block.off, 0))
    assert opened(prober, store, "w") == model
    with viperdbm.open(store, "w") as db:
        for i in range(1, 400, 3):
            db[b"k%03d" % i] = b"new"
            model[b"k%03d" % i] = digest(b"new")
        db.reorganize()
    assert opened(prober, store, "w") == model
