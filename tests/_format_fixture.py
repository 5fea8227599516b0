"""The workload of tests/data/format-v2-store.tar.xz, a store written by an earlier viperdbm.

The archive was made by ``python tests/_format_fixture.py OUT.tar.xz`` with the viperdbm of
commit d7d0076 (before the format was defined as C structs and exported to Python): every
later viperdbm must open it, and must write the same bytes into every block for the same
workload (tests/test_layout.py). It uses only the public API, so the same module drives
both the old and the new code. The workload touches every part of the format: short and
long keys, pads at page ends, deletes, overwrites, a jumbo block, a sync (``durable_seq``),
a reorganize (``seq_floor``), and a close (the ``blocks`` file and its generation).
"""

from __future__ import annotations

import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, MutableMapping
from pathlib import Path

STORE_NAME = "store.vdb"

#: a key longer than the 12-bit key-length field holds (its length follows the header)
LONG_KEY = b"L" * 5000
#: a value too long for a standard block: a jumbo block of its own
JUMBO_VALUE = bytes(range(256)) * 5000


def value(i: int) -> bytes:
    """Values of many lengths, so that records end at many places in a page (pads)."""
    return b"%06d" % i * (i % 97)


def run(
    db: MutableMapping[bytes, bytes], model: dict[bytes, bytes], sync: Callable[[], object]
) -> None:
    """The writes, applied to the store and to ``model`` alike; ``sync``: db.sync."""

    def put(key: bytes, data: bytes) -> None:
        db[key] = data
        model[key] = data

    def delete(key: bytes) -> None:
        del db[key]
        del model[key]

    for i in range(400):
        put(b"key%05d" % i, value(i))
    put(LONG_KEY, b"long key")
    put(b"jumbo", JUMBO_VALUE)
    for i in range(0, 400, 7):
        delete(b"key%05d" % i)
    for i in range(0, 400, 5):
        put(b"key%05d" % i, value(i + 1000))
    sync()


def expected() -> dict[bytes, bytes]:
    """What the store holds after the whole workload (see :func:`make`)."""
    model: dict[bytes, bytes] = {}
    run({}, model, lambda: None)
    for i in range(400, 450):
        model[b"key%05d" % i] = value(i)
    return model


def make(path: Path) -> None:
    """Run the workload into a new store at ``path``: writes, a sync, a reorganize, writes."""
    import viperdbm

    model: dict[bytes, bytes] = {}
    with viperdbm.open(str(path), "n") as db:
        run(db, model, db.sync)
        # a reader beside the writer: reorganize() works in place (the root's seq_floor),
        # where without one it would build a new pool
        with viperdbm.open(str(path), "r"):
            db.reorganize()
        for i in range(400, 450):
            db[b"key%05d" % i] = value(i)


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / STORE_NAME
        make(store)
        with tarfile.open(out, "w:xz") as tar:
            tar.add(store, arcname=STORE_NAME)
    print(out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main(sys.argv[1])
