"""The write path's protocol between the native core and the engine.

Each write call of the core answers one ``WriteCode``: done, or exactly one need, which
writes nothing; the engine's dispatcher meets it. A done write that left a block entirely
dead raises the core's ``reclaim_due``, and the mapping's native fast path hands it to the
engine, which clears it. The reclamation policy's numbers reach the core from
``viperdbm._space.RECLAIM`` and are checked there.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import viperdbm
from viperdbm import _errors, _native
from viperdbm import _layout as layout
from viperdbm._dbm import Database

WriteCode = _native.WriteCode


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="viperdbm-writepath-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def core_of(db: Database) -> _native.Core:
    engine = db._engine
    assert engine is not None and engine.core is not None
    return engine.core


def standard_blocks(core: _native.Core) -> list[int]:
    return [off for off, _, kind in core.blocks() if kind == layout.TYPE_STANDARD_BLOCK]


def test_a_write_answers_done_or_one_need_that_writes_nothing(workdir: Path) -> None:
    with viperdbm.open(workdir / "s.vdb", "c") as db:
        core = core_of(db)
        assert core.put(b"k", b"v") == WriteCode.NEED_BLOCK  # a new store has no block yet
        assert b"k" not in db
        db[b"k"] = b"v"
        assert core.put(b"k", b"v") == WriteCode.DONE
        assert core.delete(b"missing") == WriteCode.MISSING
        big = b"x" * (layout.FORMAT["constants"]["INLINE_MAX"] + 1)
        seq = core.next_seq
        assert core.put(b"jumbo", big) == WriteCode.NEED_JUMBO
        assert core.jumbo_need == _native.jumbo_size(len(b"jumbo"), len(big))
        assert core.next_seq == seq and b"jumbo" not in db  # the need wrote nothing
        db[b"jumbo"] = big  # the dispatcher meets it
        assert db[b"jumbo"] == big
        assert core.delete(b"jumbo") == WriteCode.DONE  # (its tombstone is small)
        assert b"jumbo" not in db and db[b"k"] == b"v"
        long_key = b"K" * (layout.FORMAT["constants"]["INLINE_MAX"] + 1)
        db[long_key] = b""
        assert core.delete(long_key) == WriteCode.NEED_JUMBO  # a tombstone over the limit
        assert core.jumbo_need == _native.jumbo_size(len(long_key), 0)
        assert long_key in db
        del db[long_key]
        assert long_key not in db


def test_a_block_left_dead_raises_reclaim_due_and_the_mapping_reclaims(workdir: Path) -> None:
    value = b"v" * 200_000  # about twenty a block
    with viperdbm.open(workdir / "s.vdb", "c") as db:
        core = core_of(db)
        db[b"k000"] = value
        [first] = standard_blocks(core)
        first_block = [b"k000"]
        for i in range(1, 100):
            key = b"k%03d" % i
            db[key] = value
            if len(standard_blocks(core)) > 1:
                break
            first_block.append(key)
        assert len(standard_blocks(core)) == 2 and len(first_block) > 5
        # the deletes through the core itself: nobody hands the flag to the engine
        for key in first_block[:-1]:
            assert core.delete(key) == WriteCode.DONE
            assert not core.reclaim_due
        assert core.delete(first_block[-1]) == WriteCode.DONE
        assert core.reclaim_due  # the first block holds nothing needed any more
        db[b"other"] = b"x"  # a done write through the mapping: the engine reclaims
        assert not core.reclaim_due
        db.sync()  # (a dead block waits for a sync before it is freed)
        assert first not in standard_blocks(core)


def test_the_core_refuses_a_reclamation_policy_it_cannot_check(workdir: Path) -> None:
    with viperdbm.open(workdir / "s.vdb", "c") as db:
        core = core_of(db)
        with pytest.raises(viperdbm.error):
            core.set_reclaim_policy(4095, 8 << 20, 2, 3, 1, 2, 1)  # not a power of two
        with pytest.raises(viperdbm.error):
            core.set_reclaim_policy(4096, 8 << 20, 3, 2, 1, 2, 1)  # more than all of it


def test_each_message_of_the_write_path_is_written_once() -> None:
    rows = [row for row in vars(_errors).values() if isinstance(row, _errors.Message)]
    assert len(rows) > 10
    texts = [row.text for row in rows]
    assert len(set(texts)) == len(texts)
    message = _errors.PUT_DISK_FULL("/somewhere")
    assert isinstance(message, viperdbm.StoreFullError)
    assert "deletes still work" in str(message) and message.filename == "/somewhere"


# ------------------------------------------------------------------ compare-and-delete
def test_delete_if_deletes_only_while_the_key_holds_the_value(tmp_path: Path) -> None:
    """The cache's compare-and-delete (Database._delete_if): the compare and the delete
    are one core call; a standard tombstone and a jumbo one (a key over 1 MiB) alike."""
    jumbo_key = b"j" * (1 << 20) + b"!"  # its tombstone needs a jumbo block
    with viperdbm.open(tmp_path / "s", "c") as db:
        db[b"k"] = b"v1"
        db[jumbo_key] = b"big"
        assert db._delete_if(b"k", b"v2") is False and db[b"k"] == b"v1"
        assert db._delete_if(b"k", b"v") is False and db[b"k"] == b"v1"  # (a prefix)
        assert db._delete_if("k", b"v1") is True and b"k" not in db
        assert db._delete_if(b"k", b"v1") is False  # missing
        assert db._delete_if(jumbo_key, b"other") is False and db[jumbo_key] == b"big"
        assert db._delete_if(jumbo_key, b"big") is True and jumbo_key not in db
        db[b"e"] = b""
        assert db._delete_if(b"e", b"x") is False and db._delete_if(b"e", b"") is True
        db[b"s"] = b"str"
        assert db._delete_if(b"s", "str") is True  # (a str value is its UTF-8 bytes)
        with pytest.raises(TypeError):
            db._delete_if(b"k", 1)  # type: ignore[arg-type]
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert len(db) == 0  # the tombstones are in the store
        with pytest.raises(viperdbm.ReadonlyError):
            db._delete_if(b"k", b"v1")
    with pytest.raises(viperdbm.ClosedError):
        db._delete_if(b"k", b"v1")
