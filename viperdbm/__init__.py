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

from ._check import CheckReport, Salvaged, check, salvage
from ._dbm import Database, open
from ._dump import DumpError, copy, dump, load
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
from .compat import whichdb
from .viper import Viper, ViperClient, ViperReadOnlyClient

__version__ = "0.1.0"

__all__ = [
    "CheckReport",
    "ClosedError",
    "CorruptedError",
    "Database",
    "DumpError",
    "LockError",
    "NotAStoreError",
    "ReadonlyError",
    "Salvaged",
    "StoreFullError",
    "VersionMismatchError",
    "Viper",
    "ViperClient",
    "ViperReadOnlyClient",
    "__version__",
    "check",
    "copy",
    "dump",
    "error",
    "load",
    "open",
    "salvage",
    "whichdb",
]
