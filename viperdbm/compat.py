"""One ``open()`` for viperdbm stores and the standard library's dbm files.

``dbm.whichdb()`` cannot learn a third-party format (its detection is hard-coded), so
``dbm.open()`` refuses a viperdbm store. :func:`open` here opens either: a viperdbm store
with :func:`viperdbm.open`, a ``dbm.gnu``/``dbm.ndbm``/``dbm.dumb``/``dbm.sqlite3`` file
with :func:`dbm.open`, and a path where nothing exists yet (with flag ``'c'`` or ``'n'``)
as a new viperdbm store. It is a way to move a program to viperdbm without converting its
existing files first.

>>> import os, tempfile, dbm.dumb
>>> from viperdbm import compat
>>> d = tempfile.mkdtemp()
>>> with dbm.dumb.open(os.path.join(d, "old"), "c") as db:
...     db[b"k"] = b"from dbm.dumb"
>>> compat.whichdb(os.path.join(d, "old")), compat.whichdb(os.path.join(d, "new"))
('dbm.dumb', None)
>>> with compat.open(os.path.join(d, "new"), "c") as db:
...     db[b"k"] = b"viperdbm"
>>> compat.whichdb(os.path.join(d, "new"))
'viperdbm'
>>> with compat.open(os.path.join(d, "old")) as db:
...     db[b"k"]
b'from dbm.dumb'
"""

from __future__ import annotations

import dbm
import errno as _errno
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Protocol, Self, cast

from . import _storedir as storedir
from ._dbm import open as _open_db
from ._errors import error as _viper_error

__all__ = ["DbmObject", "error", "open", "whichdb"]

#: What :func:`open` may raise for a store failure: ``dbm.error`` covers every backend
#: (it is ``(dbm.error, OSError)``, and :class:`viperdbm.error` is an ``OSError``).
error = dbm.error


class DbmObject(Protocol):
    """What :func:`open` returns: the part of the dbm interface every backend has."""

    def __getitem__(self, key: bytes | str, /) -> bytes: ...
    def __setitem__(self, key: bytes | str, value: bytes | str, /) -> None: ...
    def __delitem__(self, key: bytes | str, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def keys(self) -> Any: ...
    def get(self, key: bytes | str, default: bytes | None = None, /) -> bytes | None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...


def whichdb(filename: str | os.PathLike[str]) -> str | None:
    """``'viperdbm'`` for a viperdbm store, else what :func:`dbm.whichdb` says.

    That is ``None`` when nothing readable is there, ``''`` for an unknown format, or the
    name of a standard library module (``'dbm.gnu'``, ``'dbm.ndbm'``, ``'dbm.dumb'``, and
    ``'dbm.sqlite3'`` from Python 3.13).
    """
    path = os.fspath(filename)
    try:
        if storedir.is_store(path) is None:
            return "viperdbm"
    except _viper_error:
        pass  # nothing there, or unreadable: dbm.whichdb says which
    return dbm.whichdb(path)


def open(file: str | os.PathLike[str], flag: str = "r", mode: int = 0o666) -> DbmObject:
    """Open a viperdbm store or a standard library dbm file at ``file``.

    A viperdbm store, or no file at all with flag ``'c'`` or ``'n'``, is opened with
    :func:`viperdbm.open`; a file that :func:`dbm.whichdb` recognises with :func:`dbm.open`
    (flag ``'n'`` then empties it in its own format). Flags and ``mode`` mean what they
    mean for the backend that opens the file. Missing file with ``'r'`` or ``'w'``:
    :class:`viperdbm.error` (``ENOENT``); a file of unknown format: :class:`viperdbm.error`.
    """
    path = os.fspath(file)
    kind = whichdb(path)
    if kind == "viperdbm":
        return _open_db(path, flag, mode)
    if kind is None:
        # nothing readable: viperdbm creates a store ('c', 'n') or says what is wrong
        return _open_db(path, flag, mode)
    if kind == "":
        raise _viper_error(
            "the file's database type could not be determined",
            filename=path,
            errno=_errno.EINVAL,
            hint="it is neither a viperdbm store nor a file of a standard library dbm module",
        )
    opener: Any = dbm.open  # typeshed wants a literal flag; it is checked at run time
    return cast(DbmObject, opener(path, flag, mode))
