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

import importlib
from typing import TYPE_CHECKING, Any

from ._dbm import Database, open
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

if TYPE_CHECKING:
    from ._check import CheckReport, Salvaged, check, salvage
    from ._dump import DumpError, copy, dump, load

__version__ = "0.1.0"

# Checking and dumping (hashlib, json, datetime, progress reports) are loaded on first use:
# every program that only opens stores, and each of the test suite's thousands of child
# processes, would otherwise pay for them at every start.
_LAZY = {
    "CheckReport": "._check",
    "Salvaged": "._check",
    "check": "._check",
    "salvage": "._check",
    "DumpError": "._dump",
    "copy": "._dump",
    "dump": "._dump",
    "load": "._dump",
}


if not TYPE_CHECKING:  # (type checkers see the imports above; a misspelt name stays an error)

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # found directly from now on
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
