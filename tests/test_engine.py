"""The engine's own promises: the Viper log, space reclamation, recovery of torn records,
jumbo records, growth, the index's footprint, threads and fork.

Everything runs on real stores (tmpfs and ext4) through the public API; damaged records are
made by editing the pool's part files of a closed store, as a crash or a bad disk would.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _vdbtools import list_items_while_collecting, run_script_ok

import viperdbm
from viperdbm import _layout as layout
from viperdbm import _storedir as storedir
from viperdbm._pmemobj import Pool
from viperdbm._space import RECLAIM


def part_files(store: Path) -> list[Path]:
    return sorted((store / layout.PARTS_DIR).glob("*.pmem"))


def find_in_pool(store: Path, needle: bytes) -> list[tuple[Path, int]]:
    """Where ``needle`` occurs in the part files of a closed store (file, offset in file)."""
    hits = []
    for part in part_files(store):
        data = part.read_bytes()
        start = data.find(needle)
        while start >= 0:
            hits.append((part, start))
            start = data.find(needle, start + 1)
    return hits


def flip_byte(part: Path, offset: int) -> None:
    with part.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def disk_bytes(store: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in store.rglob("*") if p.is_file())


class TestSpace:
    def test_an_empty_store_takes_at_most_16_mib(self, store_path: Path) -> None:
        viperdbm.open(store_path, "c").close()
        assert disk_bytes(store_path) <= 16 << 20

    def test_overwritten_blocks_are_freed_without_reorganize(self, store_path: Path) -> None:
        with viperdbm.open(store_path, "c") as db:
            for round_ in range(12):
                for i in range(2000):
                    db[b"key%05d" % i] = bytes([round_]) * 1000
            # dead blocks newer than the last sync wait for one (32 MiB of them at most)
            assert db.stats()["blocks"] <= 3 + 8
            db.sync()
            stats = db.stats()
        # 2 MB live; a block is 4 MiB: only the blocks still holding live records remain
        assert stats["blocks"] <= 3
        assert stats["live_bytes"] >= 2000 * 1000
        with viperdbm.open(store_path, "r") as db:
            assert all(db[b"key%05d" % i] == bytes([11]) * 1000 for i in range(2000))

    def test_random_updates_and_deletes_stay_compact_and_correct(self, store_path: Path) -> None:
        # Viper-style reclamation: once dead space passes half of the blocks, the blocks
        # with the most dead space are compacted (live records and needed deletes copied
        # forward) and freed, without reorganize()
        rng = random.Random(7)
        model: dict[bytes, bytes] = {}
        with viperdbm.open(store_path, "c") as db:
            for _ in range(300_000):
                key = b"%d" % rng.randrange(40_000)
                if rng.random() < 0.25:
                    if key in model:
                        del db[key]
                        del model[key]
                else:
                    value = rng.randbytes(rng.randrange(0, 300))
                    db[key] = value
                    model[key] = value
            stats = db.stats()
        # dead space stays under two thirds of the blocks (or the 8 MiB floor below which
        # nothing is compacted), give or take the two blocks that one trigger compacts;
        # without compaction about 40 MB would have been written into ten blocks
        slack = 2 * layout.BLOCK_SIZE
        assert stats["dead_bytes"] <= max(8 << 20, 2 * stats["live_bytes"]) + slack
        assert stats["block_bytes"] < 30 << 20
        with viperdbm.open(store_path, "r") as db:
            assert dict(db.items()) == model

    def test_keys_that_come_and_go_beside_a_stable_base_keep_deletes_bounded(
        self, store_path: Path
    ) -> None:
        # A delete is kept while any block older than it remains, and a base of keys that
        # never change stays in the oldest blocks for good: without rewriting those, every
        # delete ever made stayed (and compacting them again and again slowed writes tenfold
        # at millions). Each round inserts fresh keys and deletes them again.
        base = 100_000
        churn = [b"f%015d" % i for i in range(50_000)]
        with viperdbm.open(store_path, "c") as db:
            for i in range(base):
                db[b"%016d" % i] = b"b" * 100
            for round_ in range(12):  # 600,000 deletes
                for key in churn:
                    db[key] = b"%d" % round_ * 20
                for key in churn:
                    del db[key]
            stats = db.stats()
        # at most the live records, plus what accumulates between two passes over the
        # store (one round here), plus the floor below which deletes are left alone
        limit = base + len(churn) + RECLAIM.min_tombstones
        assert stats["tombstones"] <= limit, stats
        assert stats["records"] == base
        with viperdbm.open(store_path, "r") as db:
            assert len(db) == base and not any(key in db for key in churn)
            assert all(db[b"%016d" % i] == b"b" * 100 for i in range(0, base, 997))

    def test_reorganize_reclaims_dead_space_and_deletes_stay_deleted(
        self, store_path: Path
    ) -> None:
        with viperdbm.open(store_path, "c") as db:
            for i in range(5000):
                db[b"k%d" % i] = b"v" * 200
            for i in range(0, 5000, 2):
                del db[b"k%d" % i]
            before = db.stats()
            db.reorganize()
            after = db.stats()
        assert before["dead_bytes"] > 0 and before["tombstones"] == 2500
        assert after["dead_bytes"] == 0 and after["tombstones"] == 0
        assert after["records"] == 2500
        with viperdbm.open(store_path, "r") as db:
            assert len(db) == 2500
            assert all((b"k%d" % i in db) == (i % 2 == 1) for i in range(5000))

    def test_the_index_holds_no_values(self, store_path: Path) -> None:
        with viperdbm.open(store_path, "c") as db:
            for i in range(100_000):
                db[b"%016d" % i] = b"x" * 100
            stats = db.stats()
        assert stats["index_bytes"] / stats["records"] <= 40


class TestRecovery:
    def test_a_torn_new_record_is_ignored_and_the_rest_survives(self, store_path: Path) -> None:
        with viperdbm.open(store_path, "c") as db:
            db[b"a"] = b"A-VALUE-MARKER-1"
            db[b"b"] = b"B-VALUE-MARKER-2"
            db[b"c"] = b"C-VALUE-MARKER-3"
        [(part, at)] = find_in_pool(store_path, b"C-VALUE-MARKER-3")
        flip_byte(part, at + 5)  # the last record no longer matches its checksum
        with viperdbm.open(store_path, "r") as db:
            assert db[b"a"] == b"A-VALUE-MARKER-1"
            assert db[b"b"] == b"B-VALUE-MARKER-2"
            assert b"c" not in db
            assert len(db) == 2

    def test_a_torn_update_leaves_the_previous_value(self, store_path: Path) -> None:
        with viperdbm.open(store_path, "c") as db:
            db[b"k"] = b"OLD-VERSION-MARKER"
            db[b"k"] = b"NEW-VERSION-MARKER"
        [(part, at)] = find_in_pool(store_path, b"NEW-VERSION-MARKER")
        flip_byte(part, at)
        with viperdbm.open(store_path, "r") as db:
            assert db[b"k"] == b"OLD-VERSION-MARKER"

    def test_writes_after_a_torn_record_are_found_again(self, store_path: Path) -> None:
        with viperdbm.open(store_path, "c") as db:
            db[b"a"] = b"x" * 50
            db[b"torn"] = b"TORN-RECORD-MARKER" + b"y" * 300
        [(part, at)] = find_in_pool(store_path, b"TORN-RECORD-MARKER")
        flip_byte(part, at)
        # the writer resumes after the last valid record, over the remains of the torn one
        with viperdbm.open(store_path, "w") as db:
            assert b"torn" not in db
            db[b"after1"] = b"1"
            db[b"after2"] = b"2" * 10
        with viperdbm.open(store_path, "r") as db:
            assert sorted(db.keys()) == [b"a", b"after1", b"after2"]

    def test_a_damaged_block_header_loses_no_record(self, store_path: Path) -> None:
        with viperdbm.open(store_path, "c") as db:
            for i in range(100):
                db[b"k%d" % i] = b"v%d" % i
        # the block header starts with the magic "VBLK"
        [(part, at)] = find_in_pool(
            store_path, layout.FORMAT["constants"]["BLOCK_MAGIC"].to_bytes(4, "little")
        )
        flip_byte(part, at + 20)
        with viperdbm.open(store_path, "w") as db:
            assert len(db) == 100
            assert all(db[b"k%d" % i] == b"v%d" % i for i in range(100))

    def test_an_unknown_object_in_the_pool_is_reported(self, store_path: Path) -> None:
        viperdbm.open(store_path, "c").close()
        pool = Pool.open(str(store_path / layout.SET_FILE), layout.POOL_LAYOUT)
        try:
            pool.alloc(4096, 99)
        finally:
            pool.close()
        # (a reader would trust the blocks file the last close wrote; a writer scans the heap)
        with pytest.raises(viperdbm.CorruptedError, match="unknown type 99"):
            viperdbm.open(store_path, "w")

    def test_jumbo_records_round_trip_and_are_freed_when_superseded(self, store_path: Path) -> None:
        big1 = os.urandom(3 << 20)
        big2 = os.urandom(2 << 20)
        with viperdbm.open(store_path, "c") as db:
            db[b"big"] = big1
            assert db.stats()["jumbo_blocks"] == 1
            db[b"big"] = big2
            db.sync()  # (a dead block newer than the last sync waits for one)
            assert db.stats()["jumbo_blocks"] == 1  # the first one was freed
            db[b"other"] = big1
        with viperdbm.open(store_path, "w") as db:
            assert db[b"big"] == big2 and db[b"other"] == big1
            db[b"big"] = b"small now"
            del db[b"other"]
            db.sync()
            assert db.stats()["jumbo_blocks"] == 0
        with viperdbm.open(store_path, "r") as db:
            assert db[b"big"] == b"small now" and b"other" not in db

    def test_a_long_key_and_its_delete(self, store_path: Path) -> None:
        key = b"K" * (2 << 20)  # too long for a standard block, even as a tombstone
        with viperdbm.open(store_path, "c") as db:
            db[key] = b"value"
            db[b"short"] = b"s"
        with viperdbm.open(store_path, "w") as db:
            assert db[key] == b"value"
            del db[key]
        with viperdbm.open(store_path, "w") as db:
            assert key not in db and db[b"short"] == b"s"
            db.reorganize()
        with viperdbm.open(store_path, "r") as db:
            assert db.keys() == [b"short"]


def run_child(code: str, *args: str) -> None:
    """Run ``code`` in a child Python that ends with os._exit (no close: a crash)."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


#: a power cut loses OS pages (each page written since the last sync may be old or new)
OS_PAGE = storedir.OS_PAGE_SIZE


def zero_page_holding(store: Path, needle: bytes) -> None:
    [(part, at)] = find_in_pool(store, needle)
    page = at - at % OS_PAGE
    with part.open("r+b") as f:
        f.seek(page)
        f.write(bytes(OS_PAGE))


_POWER_CUT_CHILD = """
import os, sys, viperdbm
db = viperdbm.open(sys.argv[1], "c")
# OS pages of the block's first VPage (records are packed: they straddle OS pages freely)
db[b"k"] = b"before sync"                   # page 0: k (28 bytes) ...
db[b"a"] = b"A" * 4051                      # ... and a, which ends exactly at page 1
db.sync()                                   # the durable point
del db[b"k"]                                # page 1: the tombstone (20 bytes)
db[b"j"] = b"j" * 8147 + b"J-MARKER"        # the rest of page 1 and all of page 2
db[b"b"] = b"B-MARKER" + b"b" * 3000        # page 3
os._exit(0)                                 # no close(): as if the power went here
"""


class TestPowerFailRule:
    """After a power cut, pages written since the last sync() may each be old or new. The
    store must then hold everything up to the sync and a gap-free prefix of what followed."""

    def test_all_pages_on_disk_keeps_everything(self, store_path: Path) -> None:
        run_child(_POWER_CUT_CHILD, str(store_path))
        with viperdbm.open(store_path, "r") as db:
            assert sorted(db.keys()) == [b"a", b"b", b"j"]

    def test_a_lost_page_drops_everything_after_it(self, store_path: Path) -> None:
        run_child(_POWER_CUT_CHILD, str(store_path))
        zero_page_holding(store_path, b"J-MARKER")  # page 2 never reached the disk
        with viperdbm.open(store_path, "w") as db:
            # the delete (page 1) survived; b, intact on page 3, came after j, torn by the
            # lost page 2, so keeping it would show a state that never existed
            assert sorted(db.keys()) == [b"a"]
            db[b"new"] = b"after recovery"
        with viperdbm.open(store_path, "r") as db:
            assert sorted(db.keys()) == [b"a", b"new"]  # the dropped records stay dropped

    def test_a_lost_delete_does_not_let_later_writes_survive(self, store_path: Path) -> None:
        run_child(_POWER_CUT_CHILD, str(store_path))
        # the tombstone of k is alone on the page after the one holding k and a
        [(apart, a_at)] = find_in_pool(store_path, b"A" * 4051)
        page = a_at - a_at % OS_PAGE + OS_PAGE
        with apart.open("r+b") as f:
            f.seek(page)
            f.write(bytes(OS_PAGE))
        with viperdbm.open(store_path, "r") as db:
            assert db[b"k"] == b"before sync"  # the delete was lost ...
            assert b"j" not in db and b"b" not in db  # ... and so is everything after it
            assert db[b"a"] == b"A" * 4051

    def test_a_lost_page_in_one_block_drops_later_blocks_too(self, store_path: Path) -> None:
        code = """
import os, sys, viperdbm
db = viperdbm.open(sys.argv[1], "c")
db[b"k"] = b"before sync"
db.sync()
del db[b"k"]                                       # in block 1, right after the sync
for i in range(6):                                 # fills block 1, spills into block 2
    db[b"big%d" % i] = bytes([i]) * 1_000_000
db[b"late"] = b"LATE-MARKER"                       # in block 2
os._exit(0)
"""
        run_child(code, str(store_path))
        [(part, at)] = find_in_pool(store_path, b"before sync")
        with part.open("r+b") as f:  # k and its tombstone share the block's first page
            f.seek(at - at % OS_PAGE)
            f.write(bytes(OS_PAGE))
        with viperdbm.open(store_path, "r") as db:
            # block 2 is intact, but its records came after the lost tombstone
            assert b"late" not in db
            assert not any(key.startswith(b"big") for key in db)


class TestReaders:
    def test_readers_share_a_store_and_a_writer_joins_them(self, store_path: Path) -> None:
        """Readers in this process and another, and a writer opening under them (issue 12:
        live readers); the readers see its writes."""
        with viperdbm.open(store_path, "c") as db:
            for i in range(1000):
                db[b"%d" % i] = b"v%d" % i
            del db[b"5"]
        r1 = viperdbm.open(store_path, "r")
        r2 = viperdbm.open(store_path, "r")
        try:
            code = "import sys, viperdbm\nwith viperdbm.open(sys.argv[1]) as db: print(len(db))"
            out = subprocess.run(
                [sys.executable, "-c", code, str(store_path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.stdout.strip() == "999", out.stderr
            assert len(r1) == len(r2) == 999 and r2[b"7"] == b"v7" and b"5" not in r1
            with viperdbm.open(store_path, "w") as db:
                db[b"5"] = b"back"
                del db[b"7"]
                assert r1[b"5"] == b"back" and b"7" not in r2 and len(r1) == len(r2) == 999
        finally:
            r1.close()
            r2.close()
        with viperdbm.open(store_path, "w") as db:
            db[b"after"] = b"readers left"

    def test_a_reader_after_a_crashed_writer_recovers(self, store_path: Path) -> None:
        code = """
import os, sys, viperdbm
db = viperdbm.open(sys.argv[1], "c")
db[b"a"] = b"1"
db.close()
db = viperdbm.open(sys.argv[1], "w")
db[b"b"] = b"2"
os._exit(0)
"""
        run_child(code, str(store_path))
        # the blocks file is from the first close: no longer current, so the reader
        # opens the pool exclusively and runs the full recovery
        with viperdbm.open(store_path, "r") as db:
            assert sorted(db.items()) == [(b"a", b"1"), (b"b", b"2")]

    def test_a_blocks_file_that_cannot_be_written_warns_and_loses_nothing(
        self, store_path: Path
    ) -> None:
        """The close cannot write the readers' blocks file (a directory is in its place, so
        the rename fails): the close succeeds and warns, naming the store; readers recover
        instead of trusting an old file."""
        with viperdbm.open(store_path, "c") as db:
            db[b"a"] = b"1"
        blocks = store_path / layout.BLOCKS_FILE
        blocks.unlink()
        blocks.mkdir()
        db = viperdbm.open(store_path, "w")
        db[b"b"] = b"2"
        with pytest.warns(RuntimeWarning, match="the disk reported an error") as caught:
            db.close()
        assert os.path.abspath(store_path) in str(caught[0].message)
        with pytest.warns(RuntimeWarning), viperdbm.open(store_path, "r") as db:
            assert sorted(db.items()) == [(b"a", b"1"), (b"b", b"2")]

    def test_an_empty_part_left_by_interrupted_growth_is_dropped(self, store_path: Path) -> None:
        with viperdbm.open(store_path, "c") as db:
            for i in range(12):
                db[b"%d" % i] = bytes(1_000_000)
        parts = part_files(store_path)
        assert len(parts) >= 2
        ghost = parts[-1].with_name(f"{len(parts):06d}.pmem")
        ghost.touch()  # what a kill between creating and sizing a new part leaves
        with viperdbm.open(store_path, "w") as db:
            assert len(db) == 12
        assert not ghost.exists()


class TestPaths:
    def test_any_path_works_and_a_store_can_be_moved(self, store_dir: Path) -> None:
        path = store_dir / "my files #1" / "cache store.db"
        path.parent.mkdir()
        with viperdbm.open(path, "c") as db:
            for i in range(12):  # grows the pool: new part files under that path
                db[b"%d" % i] = bytes([i]) * 1_000_000
        moved = store_dir / "elsewhere"
        path.rename(moved)
        with viperdbm.open(moved, "w") as db:
            assert len(db) == 12 and db[b"11"][:1] == b"\x0b"
            db[b"more"] = b"x"
        with viperdbm.open(moved, "r") as db:
            assert len(db) == 13


class TestGrowth:
    def test_the_store_grows_past_4_gib_while_open(self, tmp_path: Path) -> None:
        # ext4 only: on tmpfs this would hold 4 GiB of RAM
        path = Path("/tmp") / f"viperdbm-big-{os.getpid()}"
        try:
            value = b"\xab" * (64 << 20)
            with viperdbm.open(path, "c") as db:
                for i in range(66):
                    db[b"%d" % i] = value[:-1] + bytes([i])
                assert db.stats()["pool_bytes"] > 4 << 30
                assert db[b"3"][-1] == 3
            with viperdbm.open(path, "r") as db:
                assert len(db) == 66
                assert db[b"65"][-1] == 65 and db[b"0"][:4] == b"\xab" * 4
        finally:
            subprocess.run(["rm", "-rf", str(path)], check=False)


_WRITE_INSIDE_ITEMS = (
    r"""
import gc, sys, viperdbm
db = viperdbm.open(sys.argv[1], "c")
for i in range(1000):
    db[b"base%04d" % i] = b"v" * 50
refused, written = [], []

class Finalizer:
    def __init__(self):
        self.me = self  # a cycle: only a collection frees it
    def __del__(self):
        try:
            for i in range(100_000):  # enough for the index to need to grow
                db[b"more%06d" % i] = b"w" * 20
                written.append(i)
        except viperdbm.error as exc:
            refused.append(str(exc))
"""
    + list_items_while_collecting("db")
    + r"""
assert refused and "write it again afterwards" in refused[0], refused[:1]
assert len({k for k, _ in items}) == len(items) >= 1000
assert all(v == b"v" * 50 for k, v in items if k.startswith(b"base"))
for i in range(100_000):  # afterwards the same writes go through
    db[b"more%06d" % i] = b"w" * 20
assert len(db) == 101_000 and db[b"base0999"] == b"v" * 50
db.close()
print("ok", len(items), len(written))
"""
)


# items() lists the records in pool order from offsets it takes first; finalizers that run
# in the middle (the collections its allocations make) delete most keys, have their blocks
# freed and the space written again: the offsets taken are stale, and the list must still be
# true pairs, each key once.
_REUSE_INSIDE_ITEMS = (
    r"""
import gc, sys, viperdbm
db = viperdbm.open(sys.argv[1], "c")
def value(key): return key * (3000 // len(key))
for i in range(4000):  # about 3 blocks
    db[b"old%05d" % i] = value(b"old%05d" % i)
done = []

class Finalizer:
    def __init__(self):
        self.me = self  # a cycle: only a collection frees it
    def __del__(self):
        if done:
            return
        done.append(1)
        for i in range(3500):
            del db[b"old%05d" % i]
        db.sync()  # dead blocks are freed at a sync
        for i in range(4000):  # into the freed space
            db[b"new%05d" % i] = value(b"new%05d" % i)
"""
    + list_items_while_collecting("db")
    + r"""
assert done, "no finalizer ran inside the list"
assert len({k for k, _ in items}) == len(items), "a key listed twice"
wrong = [k for k, v in items if v != value(k)]
assert not wrong, f"{len(wrong)} keys listed with another key's value: {wrong[:3]}"
assert set(k for k, _ in items) == set(db.keys()), "the list is not the store after the writes"
db.close()
print("ok", len(items))
"""
)


class TestConcurrency:
    def test_threads_write_and_read_one_store(self, store_path: Path) -> None:
        errors: list[BaseException] = []
        with viperdbm.open(store_path, "c") as db:

            def writer(t: int) -> None:
                try:
                    for i in range(3000):
                        db[b"t%d-%d" % (t, i)] = b"%d" % i * 20
                        if i % 7 == 0:
                            del db[b"t%d-%d" % (t, i)]
                except BaseException as exc:
                    errors.append(exc)

            def reader() -> None:
                try:
                    for _ in range(20):
                        for key in db.keys()[:200]:
                            db.get(key)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
            threads += [threading.Thread(target=reader) for _ in range(2)]
            threads.append(threading.Thread(target=db.reorganize))
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert errors == []
        with viperdbm.open(store_path, "r") as db:
            for t in range(4):
                for i in range(3000):
                    expected = None if i % 7 == 0 else b"%d" % i * 20
                    assert db.get(b"t%d-%d" % (t, i)) == expected

    def test_a_write_from_a_finalizer_during_items_is_refused_not_a_crash(
        self, store_path: Path
    ) -> None:
        # items() makes tuples, which may start a collection whose finalizers run Python
        # code; one that writes to the store (as another thread could meanwhile) must not
        # move the index the list is made from (it did: a segfault)
        run_script_ok(_WRITE_INSIDE_ITEMS, str(store_path))

    def test_a_list_made_while_finalizers_reuse_freed_space_is_true(self, store_path: Path) -> None:
        run_script_ok(_REUSE_INSIDE_ITEMS, str(store_path))

    def test_keys_values_and_items_agree(self, store_path: Path) -> None:
        """keys(), values() and items() list the store in one order (the records' order in
        the pool, over several blocks and after overwrites and deletes)."""
        rng = random.Random(7)
        keys = [b"%016x" % rng.getrandbits(64) for _ in range(60_000)]
        with viperdbm.open(store_path, "c") as db:
            for k in keys:
                db[k] = k[::-1] * 8
            for k in keys[::3]:
                db[k] = b"again" + k
            for k in keys[1::5]:
                del db[k]
            listed = db.keys()
            assert sorted(listed) == sorted(set(keys) - set(keys[1::5]))
            assert list(db.values()) == [db[k] for k in listed]
            assert list(db.items()) == list(zip(listed, db.values(), strict=True))
            assert db.stats()["blocks"] > 2

    def test_a_forked_child_cannot_use_the_parents_store(self, store_path: Path) -> None:
        db = viperdbm.open(store_path, "c")
        db[b"k"] = b"parent"
        pid = os.fork()
        if pid == 0:  # the child: every use is a ClosedError, and close() is harmless
            code = 0
            try:
                db[b"k"] = b"child"
                code = 1
            except viperdbm.ClosedError:
                pass
            try:
                db.close()
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        db[b"k2"] = b"still works"
        db.close()
        with viperdbm.open(store_path, "r") as db2:
            assert db2[b"k"] == b"parent" and db2[b"k2"] == b"still works"


class TestFlags:
    def test_flag_s_writes_durably_and_reads_back(self, store_path: Path) -> None:
        with viperdbm.open(store_path, "cs") as db:
            for i in range(50):
                db[b"%d" % i] = b"v" * i
        with viperdbm.open(store_path, "rf") as db:
            assert all(db[b"%d" % i] == b"v" * i for i in range(50))

    def test_the_pmem_path_flushes_each_write_with_pmem_persist(self, store_path: Path) -> None:
        # PMEM_IS_PMEM_FORCE makes libpmem report this file as persistent memory, so the
        # engine takes the DAX path: the core calls libpmem's pmem_persist per record
        code = """
import sys, viperdbm
with viperdbm.open(sys.argv[1], "c") as db:
    assert db._engine.persist_mode == "pmem_persist per write", db._engine.persist_mode
    for i in range(3000):
        db[b"%d" % i] = b"v" * (i % 500)
    del db[b"7"]
with viperdbm.open(sys.argv[1], "w") as db:
    assert len(db) == 2999 and db[b"2999"] == b"v" * (2999 % 500)
"""
        result = subprocess.run(
            [sys.executable, "-c", code, str(store_path)],
            env={**os.environ, "PMEM_IS_PMEM_FORCE": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "PMEM_IS_PMEM_FORCE=1" in result.stderr  # the warning

    def test_the_command_line_demo_runs(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "viperdbm", "demo", "--records", "3000", "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "(0 lost)" in result.stdout and "demo done" in result.stdout


def test_native_store_problems_are_viperdbm_errors(tmp_path: Path) -> None:
    """The native core raises a problem of the store's files as a viperdbm.error in the
    user's terms, never a bare ValueError: a part file that is not whole pages (truncated,
    or copied incompletely), and a block of a kind no viperdbm writes (a damaged blocks
    file, which shared readers read)."""
    from viperdbm import _native

    page = os.sysconf("SC_PAGESIZE")
    part = tmp_path / "pool.0"
    part.write_bytes(bytes(page + 1000))
    with pytest.raises(viperdbm.CorruptedError, match=r"pool\.0.* multiple of the page") as info:
        _native.core.map_parts([(str(part), page + 1000)])
    assert not isinstance(info.value, ValueError)

    base, total = _native.core.map_parts([(str(part), page)])
    try:
        core = _native.Core(base, total)
        with pytest.raises(viperdbm.CorruptedError, match="unknown kind") as info:
            core.scan_block(64, 1024, 7)
        assert not isinstance(info.value, ValueError)
        core.invalidate()
    finally:
        _native.core.unmap_parts(base, total)
