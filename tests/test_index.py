"""The DRAM index grows one segment at a time (native/index.c): a directory of segments,
each a small table that grows by 1/8 when 0.77-0.83 full and splits in two past 65,536
slots.
No put pays for more than one segment, and the index stays at most 12 bytes a key once the
store has a few thousand keys. Every operation must see every key across the growths and
splits, in the writer and in a reader beside it.

The seeded workload below crosses many growths and splits and checks the store against a
dict between them (``VIPERDBM_INDEX_SEED`` replays it).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from _vdbtools import child_env, env_seed, run_script

import viperdbm
from viperdbm import _layout as layout
from viperdbm import _native
from viperdbm import _storedir as storedir

SEED = env_seed("VIPERDBM_INDEX_SEED", 2024)

# the most slots one growth adds: a segment grows by 1/8 of at most 65,536 slots, or,
# while small, doubles below 4,096; a segment of 65,536 slots splits when at most 0.834
# full (its own limit, native/index.c seg_limit) into halves 0.71 full (and a cache line
# of rounding each)
GROWTH_MOST_SLOTS = int(65_536 * (0.834 * 45 / 32 - 1)) + 2 * 8


def index_stats(db: viperdbm.Database) -> tuple[int, int, int]:
    """(slots, segments, bytes) of the store's index."""
    st = db.stats()
    return int(st["index_slots"]), int(st["index_segments"]), int(st["index_bytes"])


def test_every_key_is_found_while_the_index_grows(tmp_path: Path) -> None:
    """480,000 writes over 600,000 keys, from an empty store: the index grows hundreds of
    times and its one segment splits into several; the store is checked against a dict every
    500 writes."""
    rng = random.Random(SEED)
    what = f"VIPERDBM_INDEX_SEED={SEED} to replay"
    model: dict[bytes, bytes] = {}
    grew = 0
    with viperdbm.open(tmp_path / "s", "c") as db:
        slots, segments, _ = index_stats(db)
        assert segments == 1
        for n in range(480_000):
            roll = rng.random()
            key = b"k%06d" % rng.randrange(600_000)
            if roll < 0.80:
                model[key] = db[key] = b"%d" % n
            elif roll < 0.90:
                assert db.pop(key, None) == model.pop(key, None), f"op {n}: {what}"
            else:
                assert db.get(key) == model.get(key), f"op {n}: {what}"
            if n % 500 == 0:
                if index_stats(db)[0] != slots:
                    slots = index_stats(db)[0]
                    grew += 1
                assert len(db) == len(model), f"op {n}: {what}"
                for _ in range(100):  # present or deleted keys alike
                    k = b"k%06d" % rng.randrange(600_000)
                    assert db.get(k) == model.get(k), f"op {n}: {k!r}: {what}"
        assert grew >= 50, f"the index grew only {grew} times"
        assert index_stats(db)[1] >= 4, "no segment split: nothing tested"
        assert dict(db.items()) == model, what
        assert db._require_engine().require_core().audit() == [], what
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert dict(db.items()) == model, what


def test_no_put_grows_the_index_by_more_than_one_segments_step(tmp_path: Path) -> None:
    """Growth is incremental: across 200,000 single puts (the one segment splits, its halves
    grow and split again) no put adds more than GROWTH_MOST_SLOTS slots, and from 5,000
    keys on the index takes at most 12 bytes a key at every put."""
    with viperdbm.open(tmp_path / "s", "c") as db:
        slots, _, _ = index_stats(db)
        biggest = 0
        worst_bytes_per_key = 0.0
        for i in range(200_000):
            db[b"key%08d" % i] = b"v"
            now, _, nbytes = index_stats(db)
            biggest = max(biggest, now - slots)
            slots = now
            if i + 1 >= 5_000:
                worst_bytes_per_key = max(worst_bytes_per_key, nbytes / (i + 1))
        assert index_stats(db)[1] >= 4, "no segment split: nothing tested"
        assert 0 < biggest <= GROWTH_MOST_SLOTS, f"one put added {biggest} slots"
        assert worst_bytes_per_key <= 12, f"{worst_bytes_per_key:.2f} B/key"


def test_firstkey_nextkey_and_keys_walk_every_segment(tmp_path: Path) -> None:
    """A walk over an index of several segments sees every key once."""
    keys = [b"k%06d" % i for i in range(150_000)]
    with viperdbm.open(tmp_path / "s", "c") as db:
        for k in keys:
            db[k] = b"v"
        assert index_stats(db)[1] >= 4, "one segment: nothing tested"
        seen = []
        key = db.firstkey()
        while key is not None:
            seen.append(key)
            key = db.nextkey(key)
        assert sorted(seen) == keys
        assert sorted(db.keys()) == keys


def test_a_batch_that_splits_segments_is_indexed_whole(tmp_path: Path) -> None:
    """update() makes room for all its puts before it writes: a batch of 120,000 new keys
    into an index of one small segment splits it several times first, and every key of
    every batch is found."""
    model: dict[bytes, bytes] = {}
    with viperdbm.open(tmp_path / "s", "c") as db:
        db[b"first"] = model[b"first"] = b"1"
        assert index_stats(db)[1] == 1
        for n in range(3):
            batch = {b"b%d-%06d" % (n, i): b"%d" % i for i in range(40_000 * (n + 1))}
            db.update(batch)
            model.update(batch)
        assert index_stats(db)[1] >= 4, "no split: nothing tested"
        assert len(db) == len(model)
        assert all(db[k] == v for k, v in model.items())
        assert db._require_engine().require_core().audit() == []
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert dict(db.items()) == model


def test_reopen_sizes_the_index_for_the_live_keys(tmp_path: Path) -> None:
    """The index of a reopened store is first sized from its blocks' bytes (a hint: 128
    bytes a record), and a block's unused tail and dead records are in them: 5,000 keys
    in one 4 MiB block are sized as 32,768. The recovered index then gives back what the
    live keys do not need."""
    with viperdbm.open(tmp_path / "s", "c") as db:
        for round_ in range(2):
            db.update({b"k%06d" % i: b"%d" % round_ for i in range(5_000)})
        assert db.stats()["blocks"] == 1
    with viperdbm.open(tmp_path / "s", "w") as db:
        _, _, nbytes = index_stats(db)
        assert len(db) == 5_000
        assert nbytes / 5_000 <= 12, f"{nbytes / 5_000:.2f} B/key after reopen"
        assert db[b"k000007"] == b"1"
        for i in range(5_000):  # the fitted index grows again as any other
            db[b"new%d" % i] = b"n"
        assert db[b"new7"] == b"n" and len(db) == 10_000


FOLLOWER = r"""
import sys, time, viperdbm
path, total = sys.argv[1], int(sys.argv[2])
with viperdbm.open(path, "r") as db:
    print("READY", flush=True)
    seen = 0
    while seen < total:
        n = len(db)
        for i in range(0, n, 7):  # every key written so far is there, as the writer wrote it
            v = db.get(b"k%06d" % i)
            if v != b"%d" % i:
                print(f"MISSING {i} of {n}: {v!r}", flush=True)
                sys.exit(1)
        seen = n
print("DONE", flush=True)
"""


def test_a_reader_follows_a_writer_across_growths(tmp_path: Path) -> None:
    """The reader's own index grows as it applies the writer's records (its catch-ups
    insert thousands at once); every key the writer wrote is found at every moment."""
    store = tmp_path / "s"
    total = 20_000
    with viperdbm.open(store, "c") as db:
        db[b"k000000"] = b"0"
        reader = subprocess.Popen(
            [sys.executable, "-c", FOLLOWER, str(store), str(total)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert reader.stdout is not None
        assert reader.stdout.readline() == "READY\n"
        for i in range(1, total):
            db[b"k%06d" % i] = b"%d" % i
        out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and out.strip().endswith("DONE"), out


def test_keys_in_hash_order_split_segments_unevenly(tmp_path: Path) -> None:
    """reorganize() copies a store in its index's order, which is the keys' hash order: every
    key a segment holds when it splits then lies on one side of the split. 150,000 keys put
    in another store's walk order are all found (the halves are sized by what they take)."""
    keys = [b"k%06d" % i for i in range(150_000)]
    with viperdbm.open(tmp_path / "a", "c") as a:
        a.update({k: b"v" for k in keys})
        ordered = []
        key = a.firstkey()
        while key is not None:
            ordered.append(key)
            key = a.nextkey(key)
    with viperdbm.open(tmp_path / "b", "c") as b:
        for k in ordered:
            b[k] = b"w"
        assert index_stats(b)[1] >= 4, "no split: nothing tested"
        assert len(b) == len(keys) and all(b[k] == b"w" for k in keys)
        assert b._require_engine().require_core().audit() == []


def test_reopen_of_more_records_than_one_sorted_chunk(tmp_path: Path) -> None:
    """The scan at open makes index entries in key-hash order once one of its two threads
    holds 1,048,576 records: 2,437,500 records (1,300,000 keys, half of them written again,
    a quarter three times, an eighth deleted; no block is all dead, so none is freed) take
    at least two such flushes, and a key's newest record wins whichever flush holds it."""
    model: dict[bytes, bytes] = {}
    n = 1_300_000
    with viperdbm.open(tmp_path / "s", "c") as db:
        for version, every, first in ((b"a", 1, 0), (b"b", 2, 0), (b"c", 4, 1)):
            keys = range(first, n, every)
            for start in range(0, len(keys), 100_000):
                batch = {b"k%07d" % i: version + b"%d" % i for i in keys[start : start + 100_000]}
                db.update(batch)
                model.update(batch)
        for i in range(3, n, 8):
            del db[b"k%07d" % i]
            del model[b"k%07d" % i]
        assert db.stats()["blocks"] > 1
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert len(db) == len(model)
        assert dict(db.items()) == model


def test_an_index_made_for_a_smaller_pool_is_widened_when_the_pool_grows(tmp_path: Path) -> None:
    """A slot keeps the record's offset in as few bits as the pool's reservation needs and
    the key's hash in the rest. A reader takes the writer's rule for that bound, but a writer
    that opens after it may reserve more; when its mapping grows past the bound, the core
    makes its index again with wider offsets (index_widen). Here two cores over a real
    store are made for its first blocks only (the bound) and then given the whole pool:
    one with its first blocks' entries made (they are carried over), one with the rest
    still to make (they need the wider offsets). Without the widening the second one read
    other records' values for its keys."""
    store = tmp_path / "s"
    model = {b"k%07d" % i: b"%07d" % i * 14 for i in range(250_000)}
    with viperdbm.open(store, "c") as db:
        for key, value in model.items():
            db[key] = value
    directory = layout.BlockDirectory.unpack(
        (store / layout.BLOCKS_FILE).read_bytes(), _native.crc32c
    )
    blocks = sorted(directory.blocks)
    first = blocks[: len(blocks) // 3]
    bound = max(off + size for off, size, _ in first)
    parts = storedir.scan_parts(str(store / layout.PARTS_DIR)).mapped()
    base, total = _native.core.map_parts(parts)
    try:
        assert total > 2 * bound, (total, bound)
        # entries first, then the pool grows
        core = _native.Core(base, bound, 0, bound)
        scanned = sum(core.scan_block(off, size, kind)[1] for off, size, kind in first)
        core.finish_recovery(False)
        core.set_base(base, total)
        assert core.audit() == []
        found = {k: v for k in model if (v := core.get(k)) is not None}
        assert len(found) == len(core) == scanned
        assert all(model[k] == v for k, v in found.items())
        # the pool grows before the entries of its later blocks are made
        core = _native.Core(base, bound, 0, bound)
        for off, size, kind in first:
            core.scan_block(off, size, kind)
        core.set_base(base, total)
        for off, size, kind in blocks[len(first) :]:
            core.scan_block(off, size, kind)
        core.finish_recovery(False)
        assert core.audit() == []
        assert len(core) == len(model)
        assert all(core.get(k) == v for k, v in model.items())
    finally:
        _native.core.unmap_parts(base, total)


def test_a_reopen_counts_the_blocks_as_the_writer_did(tmp_path: Path) -> None:
    """Recovery makes its index entries in two threads, each counting its blocks' changes
    apart (native/recovery.c, index_share): after overwrites and deletes across 200,000
    keys, a read-only and a writable reopen count the same live and dead bytes, records
    and deletes as the writer that closed the store."""
    rng = random.Random(SEED)
    with viperdbm.open(tmp_path / "s", "c") as db:
        for _ in range(300_000):
            db[b"k%07d" % rng.randrange(200_000)] = b"v" * rng.randrange(1, 200)
        for _ in range(50_000):
            key = b"k%07d" % rng.randrange(200_000)
            if key in db:
                del db[key]
        assert index_stats(db)[1] >= 2, "one segment: one thread, nothing tested"
        before = dict(db.stats())
    fields = ("records", "live_bytes", "dead_bytes", "tombstones", "blocks")
    for flag in ("r", "w"):
        with viperdbm.open(tmp_path / "s", flag) as db:
            after = dict(db.stats())
            assert db._require_engine().require_core().audit() == [], flag
        assert {f: after[f] for f in fields} == {f: before[f] for f in fields}, flag


def test_records_never_synced_in_many_blocks_survive_a_kill(tmp_path: Path) -> None:
    """The scan at open runs in two threads, each keeping apart the records newer than the
    last sync() (native/recovery.c, scan_merge): the power-fail rule keeps them only as a
    run without gaps, so a share of them left out would drop every record after it. 60,000
    puts over about 16 blocks, never synced, then SIGKILL: every one is there (it fails
    with one thread's share left out). Each later reopen then overwrites a key of the
    newest block and reads it back: the sequence numbers go on after the records kept."""
    store = tmp_path / "s"
    code = (
        "import os, signal, sys, viperdbm\n"
        "db = viperdbm.open(sys.argv[1], 'c')\n"
        "for i in range(60_000):\n"
        "    db[b'k%06d' % i] = b'%d' % i * 100\n"
        "print('blocks', db.stats()['blocks'], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = run_script(code, str(store))
    assert child.returncode == -9 and child.stdout.startswith("blocks"), child
    assert int(child.stdout.split()[1]) >= 8, child.stdout
    with viperdbm.open(store, "r") as db:
        assert len(db) == 60_000
        assert all(db[b"k%06d" % i] == b"%d" % i * 100 for i in range(0, 60_000, 7))
    for round_ in range(6):
        with viperdbm.open(store, "w") as db:
            assert db[b"k059999"] == (b"59999" * 100 if round_ == 0 else b"new %d" % (round_ - 1))
            db[b"k059999"] = b"new %d" % round_
    with viperdbm.open(store, "r") as db:
        assert db[b"k059999"] == b"new 5" and len(db) == 60_000
