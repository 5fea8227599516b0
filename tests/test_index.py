"""The DRAM index grows without a stop: a table twice the size takes new entries while the
old one drains into it, a few slots per insert (native/index.c). Every operation must see
every key at every moment of that, in the writer and in a reader beside it.

The table starts at 1,024 slots and grows when 3/4 full: 768, 1,536, 3,072, ... keys. The
seeded workloads below cross several growths and check the store against a dict between
the steps of a drain (``VIPERDBM_INDEX_SEED`` replays one).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from _vdbtools import child_env, env_seed

import viperdbm

SEED = env_seed("VIPERDBM_INDEX_SEED", 2024)


def test_every_key_is_found_while_the_index_grows(tmp_path: Path) -> None:
    """A writer's index starts sized for its pool (131,072 slots for a new one): 480,000
    writes over 600,000 keys cross three growths; the store is checked against a dict every
    500 writes, so a dozen times while each old table drains."""
    rng = random.Random(SEED)
    what = f"VIPERDBM_INDEX_SEED={SEED} to replay"
    model: dict[bytes, bytes] = {}
    grew = 0
    with viperdbm.open(tmp_path / "s", "c") as db:
        slots = db.stats()["index_slots"]
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
                if db.stats()["index_slots"] != slots:
                    slots = db.stats()["index_slots"]
                    grew += 1
                assert len(db) == len(model), f"op {n}: {what}"
                for _ in range(100):  # present or deleted keys alike
                    k = b"k%06d" % rng.randrange(600_000)
                    assert db.get(k) == model.get(k), f"op {n}: {k!r}: {what}"
        assert grew >= 3, f"the index grew only {grew} times"
        assert dict(db.items()) == model, what
        assert db._require_engine().require_core().audit() == [], what
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert dict(db.items()) == model, what


def test_firstkey_nextkey_and_keys_see_both_tables(tmp_path: Path) -> None:
    """A walk that starts while the old table still holds entries sees every key once."""
    with viperdbm.open(tmp_path / "s", "c") as db:
        slots = int(db.stats()["index_slots"])
        first = slots * 3 // 4 + 2  # the growth has begun, little drained
        for i in range(first):
            db[b"k%06d" % i] = b"v"
        assert db.stats()["index_slots"] == 2 * slots
        assert db.stats()["index_bytes"] == 3 * 8 * slots  # both tables, while it drains
        seen = []
        key = db.firstkey()
        while key is not None:
            seen.append(key)
            key = db.nextkey(key)
        assert sorted(seen) == sorted(b"k%06d" % i for i in range(first))
        for i in range(first, 3 * slots // 2 + 2):  # and again, for keys() this time
            db[b"k%06d" % i] = b"v"
        assert db.stats()["index_bytes"] == 3 * 16 * slots
        assert sorted(db.keys()) == sorted(b"k%06d" % i for i in range(3 * slots // 2 + 2))


def test_reads_during_a_drain_find_each_key_in_either_table(tmp_path: Path) -> None:
    """A read looks first in the table its key more likely is in (the old one where the
    drain has not reached its home) and moves nothing: every read form finds every key,
    whether it is still in the old table, was moved by a write, or is new."""
    with viperdbm.open(tmp_path / "s", "c") as db:
        slots = int(db.stats()["index_slots"])
        first = slots * 3 // 4 + 2  # the growth has begun, little drained
        model = {b"k%06d" % i: b"v%d" % i for i in range(first)}
        for key, value in model.items():
            db[key] = value
        assert db.stats()["index_bytes"] == 3 * 8 * slots  # both tables
        for i in range(0, first, 40):  # writes move these into the new table (and drain)
            model[b"k%06d" % i] = db[b"k%06d" % i] = b"w%d" % i
        for i in range(1, first, 60):
            del db[b"k%06d" % i]
            del model[b"k%06d" % i]
        assert db.stats()["index_bytes"] == 3 * 8 * slots, "the drain ended: nothing tested"
        absent = [b"k%06d" % i for i in range(1, first, 60)] + [b"nope%d" % i for i in range(50)]
        for key, value in model.items():
            assert db[key] == value and db.get(key) == value and key in db
        for key in absent:
            assert db.get(key) is None and key not in db
        assert db.get_many([*model, *absent]) == [*model.values(), *[None] * len(absent)]
        assert db.stats()["index_bytes"] == 3 * 8 * slots  # reads did not end the drain
        assert db._require_engine().require_core().audit() == []
    with viperdbm.open(tmp_path / "s", "r") as db:
        assert dict(db.items()) == model


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
