"""viperdbm: a drop-in ``dbm`` backend on persistent memory, built on Viper's design.

>>> import viperdbm, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "example.vdb")
>>> with viperdbm.open(path, "c") as db:
...     db["spam"] = "eggs"
...     db[b"spam"]
b'eggs'

A volatile hash index in DRAM maps each key to its newest record; records are appended
sequentially to the pages of blocks in a libpmemobj pool and the index is rebuilt by
scanning them at open. See the README for the durability each filesystem gives.
"""

from __future__ import annotations

from ._dbm import _Database, open
from ._errors import (
    ClosedError,
    CorruptedError,
    LockError,
    NotAStoreError,
    ReadonlyError,
    StoreFullError,
    VersionMismatchError,
    error,
)

__version__ = "0.1.0"

#: The type of the objects open() returns (for annotations).
Database = _Database

__all__ = [
    "ClosedError",
    "CorruptedError",
    "Database",
    "LockError",
    "NotAStoreError",
    "ReadonlyError",
    "StoreFullError",
    "VersionMismatchError",
    "__version__",
    "error",
    "open",
]
