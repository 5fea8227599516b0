"""Atomic batches (``db.batch()``, ``update()``): what a user sees, on real stores.

Crashes are in other files: tests/test_enumerate.py kills the process at every internal
step and system call of a workload with batches (small, one that needs a new block, one
over 1 MiB), and tests/test_powerfail.py builds power-cut images of the scenarios
``batches`` and ``batches-s``, whose state must be a prefix of whole batches.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from _vdbtools import child_env, env_seed

import viperdbm
from viperdbm import _layout as layout
from viperdbm._pmemobj import Pool

SEED = env_seed("VIPERDBM_BATCH_SEED", 1313)


def root_format_version(store: Path) -> int:
    pool = Pool.open(str(store / layout.SET_FILE), layout.POOL_LAYOUT)
    try:
        root = pool.root(layout.ROOT_OBJECT_SIZE)
        return int.from_bytes(pool.read(root + layout.Root.FORMAT_VERSION_OFFSET, 4), "little")
    finally:
        pool.close()


def test_a_batch_is_stored_on_leaving_the_with_block(tmp_path: Path) -> None:
    with viperdbm.open(tmp_path / "s", "c") as db:
        db[b"gone"] = b"1"
        db[b"kept"] = b"2"
        with db.batch() as batch:
            batch[b"a"] = b"A"
            batch["text"] = "T"
            del batch[b"gone"]
            batch[b"kept"] = b"3"
            # the batch reads its own writes; the store does not have them yet
            assert batch[b"a"] == b"A" and b"gone" not in batch and batch[b"kept"] == b"3"
            assert sorted(batch) == [b"a", b"kept", b"text"] and len(batch) == 3
            assert b"a" not in db and db[b"gone"] == b"1"
        assert dict(db.items()) == {b"a": b"A", b"text": b"T", b"kept": b"3"}
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert dict(db.items()) == {b"a": b"A", b"text": b"T", b"kept": b"3"}


def test_an_exception_discards_the_batch(tmp_path: Path) -> None:
    with viperdbm.open(tmp_path / "s", "c") as db:
        db[b"k"] = b"old"
        with pytest.raises(RuntimeError), db.batch() as batch:
            batch[b"k"] = b"new"
            batch[b"other"] = b"x"
            raise RuntimeError("changed my mind")
        assert dict(db.items()) == {b"k": b"old"}
        with pytest.raises(ValueError, match="start another one"):
            batch[b"k"] = b"late"


def test_batch_misuse_is_the_dbm_errors(tmp_path: Path) -> None:
    with viperdbm.open(tmp_path / "s", "c") as db:
        batch = db.batch()
        with pytest.raises(KeyError):
            del batch[b"missing"]
        with pytest.raises(TypeError):
            batch[b"k"] = 3  # type: ignore[assignment]
        with pytest.raises(TypeError):
            batch[1] = b"v"  # type: ignore[index]
        batch[b"k"] = b"v"
        batch.store()
        with pytest.raises(ValueError):
            batch.store()
        assert db[b"k"] == b"v"
    with viperdbm.open(tmp_path / "s", "r") as db, pytest.raises(viperdbm.ReadonlyError):
        db.batch()
    with pytest.raises(viperdbm.ReadonlyError), viperdbm.open(tmp_path / "s", "r") as db:
        db.update({b"k": b"w"})
    with pytest.raises(viperdbm.ClosedError):
        db.batch()


@pytest.mark.parametrize("flag", ["c", "cs"])
def test_batches_of_every_size_reopen_as_written(tmp_path: Path, flag: str) -> None:
    """Seeded random batches: empty, small, filling blocks, over 1 MiB (a jumbo block),
    long keys, deletes of present and absent keys; the store is compared with a dict after
    each and after a reopen, and audited (each block's counts against the index)."""
    rng = random.Random(SEED)
    model: dict[bytes, bytes] = {}
    what = f"VIPERDBM_BATCH_SEED={SEED} to replay"
    with viperdbm.open(tmp_path / "s", flag) as db:
        for n in range(60):
            writes: dict[bytes, bytes | None] = {}
            for _ in range(rng.choice((0, 1, 5, 40, 300))):
                key = b"k%03d" % rng.randrange(400)
                if rng.random() < 0.01:
                    key = key * 1100  # a long key: its length follows the record header
                if rng.random() < 0.25:
                    writes[key] = None
                else:
                    size = rng.choice((0, 10, 300, 3000, 60_000 if n % 9 == 4 else 100))
                    writes[key] = rng.randbytes(size)
            with db.batch() as batch:
                for key, value in writes.items():
                    if value is None:
                        batch.pop(key, None)
                    else:
                        batch[key] = value
            for key, value in writes.items():
                if value is None:
                    model.pop(key, None)
                else:
                    model[key] = value
            assert dict(db.items()) == model, f"batch {n}: {what}"
        assert db._require_engine().require_core().audit() == [], what
    with viperdbm.open(tmp_path / "s", "w") as db:
        assert dict(db.items()) == model, what
        db.reorganize()  # copies the batches' live records forward, one by one
        assert dict(db.items()) == model, what
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert dict(db.items()) == model, what
    assert viperdbm.check(str(tmp_path / "s")).ok


def test_update_is_one_batch(tmp_path: Path) -> None:
    """update() takes what dict.update takes and stores it atomically, over 1 MiB too."""
    with viperdbm.open(tmp_path / "s", "c") as db:
        db.update({b"a": b"1"}, b=b"2")
        db.update([(b"c", b"3")])
        big = {b"v%04d" % i: bytes(1000) for i in range(3000)}  # 3 MB: a jumbo block
        db.update(big)
        assert len(db) == 3003 and db[b"b"] == b"2"
        with pytest.raises(TypeError):
            db.update({b"x": b"1", b"y": 2})
        assert b"x" not in db  # nothing of a batch that failed to build
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert len(db) == 3003


def test_overwritten_batches_give_their_space_back(tmp_path: Path) -> None:
    """Records of a batch die one by one; blocks full of dead batches are compacted or
    freed like any other, and the live records move forward intact."""
    with viperdbm.open(tmp_path / "s", "c") as db:
        for round_ in range(30):
            db.update({b"k%03d" % i: b"%d" % round_ * 2000 for i in range(200)})
        before = db.stats()
        assert len(db) == 200 and db[b"k007"] == b"29" * 2000
        db.reorganize()
        after = db.stats()
        assert db._require_engine().require_core().audit() == []
    assert after["pool_bytes"] <= before["pool_bytes"]
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert {db[k] for k in db} == {b"29" * 2000}


def test_the_root_says_batches_only_once_there_is_one(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        db[b"k"] = b"v"
    assert root_format_version(store) == layout.FORMAT_VERSION
    with viperdbm.open(store, "w") as db, db.batch() as batch:
        batch[b"b"] = b"v"
    assert root_format_version(store) == layout.BATCH_FORMAT_VERSION
    with viperdbm.open(store, "r") as db:
        assert dict(db.items()) == {b"k": b"v", b"b": b"v"}


def test_a_newer_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        db.update({b"k": b"v"})
    pool = Pool.open(str(store / layout.SET_FILE), layout.POOL_LAYOUT)
    try:
        at = pool.root(layout.ROOT_OBJECT_SIZE) + layout.Root.FORMAT_VERSION_OFFSET
        pool.write(at, (layout.BATCH_FORMAT_VERSION + 1).to_bytes(4, "little"))
        pool.persist(at, 4)
    finally:
        pool.close()
    with pytest.raises(viperdbm.VersionMismatchError, match="reads versions 2 and 3"):
        viperdbm.open(store, "r")


READER = r"""
import sys, viperdbm
path, rounds = sys.argv[1], 0
with viperdbm.open(path, "r") as db:
    print("READY", flush=True)
    while True:
        with db.snapshot():
            values = [db[b"acct%d" % i] for i in range(10)]
        total = sum(int(v) for v in values)
        if total != 1000:
            print(f"TORN {total} {values}", flush=True)
            break
        rounds += 1
        if db.get(b"stop"):
            break
print(f"ROUNDS {rounds}", flush=True)
"""


def test_a_reader_beside_the_writer_sees_each_batch_whole(tmp_path: Path) -> None:
    """Transfers between accounts, each one batch: a reader process that reads all
    accounts at once (a snapshot) always finds the same total."""
    store = tmp_path / "s"
    rng = random.Random(SEED)
    with viperdbm.open(store, "c") as db:
        db.update({b"acct%d" % i: b"100" for i in range(10)})
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(store)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert reader.stdout is not None
        assert reader.stdout.readline() == "READY\n"
        balances = [100] * 10
        for _ in range(3000):
            a, b = rng.sample(range(10), 2)
            amount = rng.randint(0, balances[a])
            balances[a] -= amount
            balances[b] += amount
            with db.batch() as batch:
                batch[b"acct%d" % a] = b"%d" % balances[a]
                batch[b"acct%d" % b] = b"%d" % balances[b]
                batch[b"padding"] = bytes(rng.randint(0, 5000))  # batches cross pages
        db[b"stop"] = b"1"
        out, _ = reader.communicate(timeout=60)
    assert "TORN" not in out, f"{out} (VIPERDBM_BATCH_SEED={SEED} to replay)"
    assert int(out.split()[-1]) > 0


def _patch_batch(store: Path, first_key: bytes, change: str) -> None:
    """Damage the batch whose first record has ``first_key`` as a hostile file would: one of
    its records changed, and the batch's CRC computed again so that it still verifies."""
    import struct

    from viperdbm import _native

    for part in sorted((store / "parts").iterdir()):
        data = bytearray(part.read_bytes())
        at = data.find(first_key)
        if at < 0:
            continue
        first = at - 16  # a short key follows the 16-byte header
        batch = first - 16
        _, vlen, meta = struct.unpack_from("<IIQ", data, batch)
        assert (meta >> 48) & 0xF == layout.FORMAT["constants"]["KIND_BATCH"], hex(meta)
        sub_vlen, sub_meta = struct.unpack_from("<IQ", data, first + 4)
        second = first + ((16 + (sub_meta >> 52) + sub_vlen + 3) & ~3)
        (meta2,) = struct.unpack_from("<Q", data, second + 8)
        if change == "seq":  # out of turn
            meta2 += 5
        elif change == "kind":  # a put that says it stands alone
            meta2 &= ~(layout.FORMAT["constants"]["KIND_IN_BATCH"] << 48)
        else:  # a length past the batch's end
            struct.pack_into("<I", data, second + 4, vlen)
        struct.pack_into("<Q", data, second + 8, meta2)
        crc = _native.crc32c(bytes(data[batch + 4 : batch + 16 + vlen]))
        struct.pack_into("<I", data, batch, crc)
        part.write_bytes(data)
        return
    raise AssertionError("the batch was not found")


@pytest.mark.parametrize("change", ["seq", "kind", "length"])
def test_a_hostile_batch_is_not_read(tmp_path: Path, change: str) -> None:
    """A batch whose CRC verifies but whose records are not well formed is not a record:
    none of its writes is read (by a writer's open, or a reader's), nothing crashes."""
    store = tmp_path / "s"
    with viperdbm.open(store, "c") as db:
        db[b"before"] = b"1"
        with db.batch() as batch:
            for i in range(3):
                batch[b"BATCHKEY%d" % i] = b"v%d" % i * 10
    _patch_batch(store, b"BATCHKEY0", change)
    for flag in ("r", "w"):
        with viperdbm.open(store, flag) as db:
            assert dict(db.items()) == {b"before": b"1"}, (change, flag)
    with viperdbm.open(store, "w") as db:
        db[b"after"] = b"2"  # and the store goes on
    with viperdbm.open(store, "r") as db:
        assert dict(db.items()) == {b"before": b"1", b"after": b"2"}
