"""The child of tests/test_powerfail.py: writes, sync(), copies the store's directory
(image D), writes more, copies it again (image F, what the page cache holds), and reports.

Usage: ``_powerfail_child.py HOME SCENARIO SEED OUTDIR``; the store is ``HOME/store``. The
parent runs it under strace (msync, fsync, fdatasync, getppid and the calls that add, rename
or remove names); ``getppid()`` is the marker: once right after the D copy, twice right before
the F copy. Everything else the parent needs is in OUTDIR: ``D/`` and ``F/`` (copies of the
whole HOME tree, hidden temporary entries included), ``maps.txt`` (this process's mappings of
the part files, to turn msync addresses into file pages) and ``ops.json`` (the operations
before and after D, and the flag the store was opened with).

Scenarios ending in ``-s`` open the store with flag ``'s'``: every acknowledged write must
survive. ``new-store-s`` makes the store after D (D holds no store at all), and
``replace-s`` replaces a store with flag ``'n'`` after D.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from _vdbtools import value_for

#: an operation: ("put", key hex, value index, size) or ("delete", key hex) or ("reorganize",)
#: or ("batch", [put or delete operation, ...]): its writes, all or none of them
Operation = tuple[Any, ...]

SCENARIOS = (
    "append",
    "small-overwrites",
    "reuse",
    "overwrite",
    "jumbo",
    "mixed",
    "reorganize",
    "growth",
    "growth-s",
    "batches",
    "batches-s",
    "new-store-s",
    "replace-s",
)


def flag_of(name: str) -> str:
    """The flags the store is opened with: ``'s'`` (msync per write) for ``*-s`` scenarios."""
    return "cs" if name.endswith("-s") else "c"


def _put(ops: list[Operation], key: bytes, size: int) -> None:
    ops.append(("put", key.hex(), len(ops), size))


def _delete(ops: list[Operation], key: bytes) -> None:
    ops.append(("delete", key.hex()))


def _random_ops(ops: list[Operation], rng: random.Random, count: int, keys: list[bytes]) -> None:
    for _ in range(count):
        r = rng.random()
        key = rng.choice(keys)
        if r < 0.7:
            size = rng.choice(
                [0, rng.randint(1, 100), rng.randint(100, 5000), rng.randint(5000, 200_000)]
            )
            if rng.random() < 0.03:
                size = rng.randint(1_000_000, 1_300_000)
            _put(ops, key, size)
        else:
            _delete(ops, key)


def scenario(name: str, seed: int) -> tuple[list[Operation], list[Operation]]:
    """(operations before the durable point, operations after it)."""
    rng = random.Random(f"{name}/{seed}")
    before: list[Operation] = []
    after: list[Operation] = []
    if name == "append":
        # no block becomes entirely dead after D, so nothing is freed and nothing synced:
        # every page written after D is at the mercy of the power cut
        for i in range(100):
            _put(before, b"p%03d" % i, rng.randint(0, 3000))
        for i in range(150):
            size = rng.choice([0, rng.randint(1, 200), rng.randint(200, 9000)])
            after.append(("put", (b"q%03d" % i).hex(), 10_000 + i, size))
            if i % 10 == 5:
                after.append(("delete", (b"p%03d" % (i // 2)).hex()))
        after.append(("put", b"qjumbo".hex(), 10_500, 1_300_000))  # a jumbo block
        for i in range(150, 200):
            after.append(("put", (b"q%03d" % i).hex(), 10_000 + i, rng.randint(0, 500)))
    elif name == "reuse":
        # blocks and jumbo blocks freed before D; after D new ones are allocated in their
        # place, without a free (so without a sync): at D those places hold the old blocks
        for i in range(4):
            _put(before, b"J%d" % i, 1_400_000 + 100_000 * i)
        for i in range(40):
            _put(before, b"b%02d" % i, 150_000)
        for i in range(4):
            _delete(before, b"J%d" % i)
        for i in range(40):
            _put(before, b"b%02d" % i, rng.randint(0, 50))
        before.append(("reorganize",))
        for i in range(4):
            after.append(("put", (b"K%d" % i).hex(), 10_000 + i, 1_100_000 + 90_000 * i))
        for i in range(30):
            after.append(("put", (b"c%02d" % i).hex(), 10_100 + i, 140_000))
    elif name == "small-overwrites":
        # the same few keys overwritten and deleted many times inside the active block
        for i in range(30):
            _put(before, b"o%02d" % i, rng.randint(0, 100))
        for n in range(400):
            key = (b"o%02d" % rng.randrange(30)).hex()
            if rng.random() < 0.15:
                after.append(("delete", key))
            else:
                after.append(("put", key, 10_000 + n, rng.randint(0, 700)))
    elif name == "overwrite":
        # a block of 60 KB values, then all of them overwritten after D: the old block
        # becomes entirely dead and is freed (libpmemobj makes the free durable at once)
        for i in range(60):
            _put(before, b"a%03d" % i, 60_000 + i)
        for i in range(200):
            _put(before, b"s%03d" % i, rng.randint(0, 300))
        for i in range(60):
            after.append(("put", (b"a%03d" % i).hex(), 10_000 + i, 60_000 + i))
        for i in range(0, 200, 4):
            after.append(("delete", (b"s%03d" % i).hex()))
        for i in range(20):
            after.append(("put", (b"n%03d" % i).hex(), 20_000 + i, rng.randint(0, 3000)))
    elif name == "jumbo":
        for i in range(6):
            _put(before, b"j%d" % i, 1_200_000 + 150_000 * i)
        for i in range(100):
            _put(before, b"s%03d" % i, rng.randint(0, 2000))
        for i in range(3):  # smaller jumbo values where larger ones were freed
            after.append(("put", (b"j%d" % i).hex(), 10_000 + i, 1_100_000 + 50_000 * i))
        after.append(("delete", b"j3".hex()))
        after.append(("put", b"j4".hex(), 10_010, 10))
        after.append(("put", b"j6".hex(), 10_011, 1_250_000))
        for i in range(0, 100, 3):
            after.append(("put", (b"s%03d" % i).hex(), 10_100 + i, rng.randint(0, 2000)))
    elif name == "mixed":
        keys = [b"m%03d" % i for i in range(80)]
        _random_ops(before, rng, 300, keys)
        tmp: list[Operation] = []
        _random_ops(tmp, rng, 300, keys)
        after.extend((op[0], op[1], 10_000 + op[2], op[3]) if op[0] == "put" else op for op in tmp)
    elif name == "reorganize":
        for i in range(150):
            _put(before, b"r%03d" % i, rng.randint(0, 20_000))
        for i in range(0, 150, 3):
            _delete(before, b"r%03d" % i)
        for i in range(1, 150, 5):
            after.append(("put", (b"r%03d" % i).hex(), 10_000 + i, rng.randint(0, 20_000)))
        after.append(("reorganize",))
        for i in range(2, 150, 7):
            after.append(("delete", (b"r%03d" % i).hex()))
        for i in range(150, 170):
            after.append(("put", (b"r%03d" % i).hex(), 10_000 + i, rng.randint(0, 20_000)))
    elif name in ("growth-s", "new-store-s"):
        # every put and delete acknowledged under flag 's' is durable, in the parts the pool
        # grew into after D (their names too) and, for a new store, in the store made after D
        if name == "growth-s":
            for i in range(20):
                _put(before, b"g%03d" % i, rng.randint(0, 5000))
        for i in range(30):
            after.append(("put", (b"G%03d" % i).hex(), 10_000 + i, rng.randint(700_000, 1_000_000)))
            if i % 3 == 2:
                after.append(("put", (b"s%03d" % i).hex(), 20_000 + i, rng.randint(0, 300)))
        for i in range(0, 20, 2):
            after.append(("delete", (b"g%03d" % i).hex()))
    elif name == "replace-s":
        for i in range(40):
            _put(before, b"o%03d" % i, rng.randint(0, 20_000))
        after.append(("new",))  # reopen with flag 'n': a new, empty store replaces the old one
        for i in range(20):
            after.append(("put", (b"n%03d" % i).hex(), 10_000 + i, rng.randint(0, 400_000)))
    elif name == "growth":
        for i in range(50):
            _put(before, b"g%03d" % i, rng.randint(0, 5000))
        for i in range(40):
            after.append(("put", (b"G%03d" % i).hex(), 10_000 + i, rng.randint(900_000, 1_100_000)))
        for i in range(0, 50, 2):
            after.append(("delete", (b"g%03d" % i).hex()))
    elif name.startswith("batches"):
        # batches of puts and deletes after D, small ones and one over 1 MiB: a power cut
        # keeps a prefix of them, each whole or not at all
        for i in range(60):
            _put(before, b"k%02d" % i, rng.randint(0, 2000))
        for n in range(40):
            writes: list[Operation] = []
            for j in range(rng.randint(1, 30)):
                key = (b"k%02d" % rng.randrange(60)).hex()
                if rng.random() < 0.2:
                    writes.append(("delete", key))
                else:
                    size = 300_000 if n == 20 and j < 5 else rng.randint(0, 3000)
                    writes.append(("put", key, 10_000 + 100 * n + j, size))
            after.append(("batch", writes))
            if n % 7 == 3:
                after.append(("put", (b"single%02d" % n).hex(), 20_000 + n, rng.randint(0, 900)))
    else:
        raise ValueError(name)
    return before, after


def run(db: Any, ops: list[Operation], seed: int, store: str, flag: str) -> Any:
    import viperdbm

    for op in ops:
        if op[0] == "new":
            db.close()
            db = viperdbm.open(store, "n" + flag[1:])
        elif op[0] == "put":
            db[bytes.fromhex(op[1])] = value_for(seed, op[2], op[3])
        elif op[0] == "delete":
            key = bytes.fromhex(op[1])
            if key in db:
                del db[key]
        elif op[0] == "reorganize":
            db.reorganize()
        elif op[0] == "batch":
            with db.batch() as batch:
                for write in op[1]:
                    if write[0] == "put":
                        batch[bytes.fromhex(write[1])] = value_for(seed, write[2], write[3])
                    else:
                        batch.pop(bytes.fromhex(write[1]), None)
    return db


def snapshot(home: Path, to: Path) -> None:
    """Copy the whole HOME tree (read through the page cache, coherent with the mappings)."""
    to.mkdir(parents=True)
    for directory, dirs, files in os.walk(home):
        rel = Path(directory).relative_to(home)
        for d in dirs:
            (to / rel / d).mkdir()
        for f in files:
            shutil.copyfile(Path(directory) / f, to / rel / f)


def main(home: str, name: str, seed: int, outdir: str) -> None:
    import viperdbm

    out = Path(outdir)
    store = os.path.join(home, "store")
    flag = flag_of(name)
    before, after = scenario(name, seed)
    db = None
    if name != "new-store-s":
        db = viperdbm.open(store, flag)
        db = run(db, before, seed, store, flag)
        db.sync()
    snapshot(Path(home), out / "D")
    os.getppid()  # marker: the durable point
    if db is None:
        db = viperdbm.open(store, flag)
    db = run(db, after, seed, store, flag)
    os.getppid()  # marker: the end (twice)
    os.getppid()
    snapshot(Path(home), out / "F")
    parts = str(Path(store).resolve() / "parts")
    with open("/proc/self/maps", encoding="utf-8") as maps:
        lines = [line for line in maps if parts in line]
    (out / "maps.txt").write_text("".join(lines))
    (out / "ops.json").write_text(json.dumps({"before": before, "after": after, "flag": flag}))
    sys.stdout.flush()
    os._exit(0)  # no close(): F is what the page cache held at this instant


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
