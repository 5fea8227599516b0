"""``shelve`` over viperdbm: :func:`open` mirrors :func:`shelve.open`.

``shelve.open()`` always goes through ``dbm.open()`` and takes no backend argument, so a
third-party dbm is used with ``shelve.Shelf(viperdbm.open(...))``; this helper does that
and also passes ``mode`` through.

Unpickling runs code chosen by whoever wrote the data: open only stores that nobody
untrusted can write.
"""

from __future__ import annotations

import os
import shelve as _shelve

from ._dbm import open as _open_db

__all__ = ["open"]


def open(
    filename: str | os.PathLike[str],
    flag: str = "c",
    protocol: int | None = None,
    writeback: bool = False,
    *,
    mode: int = 0o666,
) -> _shelve.Shelf[object]:
    """Open a persistent dictionary of picklable objects stored in a viperdbm store."""
    db = _open_db(filename, flag, mode)
    return _shelve.Shelf(db, protocol=protocol, writeback=writeback)
