"""The dbm face of viperdbm: ``open()`` and the mapping it returns.

The semantics follow the standard library's dbm modules (``dbm.gnu`` for the gdbm extras
``firstkey``/``nextkey``/``reorganize``/``sync`` and the ``f``/``s``/``u`` flags): keys and
values are bytes, ``str`` is encoded as UTF-8, anything else is a ``TypeError``; a missing
key is a ``KeyError``; every store failure is a :class:`viperdbm.error`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, MutableMapping
from types import TracebackType
from typing import TypeAlias

from . import _native
from ._engine import Engine, OpenOptions
from ._errors import ClosedError, ReadonlyError

_BytesLike: TypeAlias = bytes | str
_CLOSED = "DBM object has already been closed"
_VALID_FLAGS = "Flag must be one of 'r', 'w', 'c', or 'n', optionally followed by 'f', 's' or 'u'"


def _parse_flag(flag: str) -> OpenOptions:
    if not isinstance(flag, str) or not flag or flag[0] not in "rwcn":
        raise ValueError(f"{_VALID_FLAGS}, not {flag!r}")
    modifiers = flag[1:]
    if any(m not in "fsu" for m in modifiers) or len(set(modifiers)) != len(modifiers):
        raise ValueError(f"{_VALID_FLAGS}, not {flag!r}")
    base = flag[0]
    return OpenOptions(
        writable=base != "r",
        create=base in "cn",
        truncate=base == "n",
        sync_each_write="s" in modifiers,
        lock="u" not in modifiers,
    )


class _Database(MutableMapping[bytes, bytes]):
    """An open viperdbm store: a persistent mapping of bytes to bytes."""

    def __init__(self, path: str, flag: str, mode: int) -> None:
        options = _parse_flag(flag)
        self._engine: Engine | None = None
        self._engine = Engine(path, options, mode)
        self._core = self._engine.core
        self._readonly = not options.writable
        self._sync_each_write = options.sync_each_write

    # ------------------------------------------------------------------ reading
    def __getitem__(self, key: _BytesLike) -> bytes:
        return self._live_core().getitem(key)

    def get(self, key: _BytesLike, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        return self._live_core().get(key, default)

    def __contains__(self, key: object) -> bool:
        return self._live_core().contains(key)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._live_core())

    def keys(self) -> list[bytes]:  # type: ignore[override]
        """All keys, as a list (as every dbm module returns)."""
        return self._live_core().keys()

    def __iter__(self) -> Iterator[bytes]:
        # a snapshot: the store may be changed while the caller iterates
        return iter(self._live_core().keys())

    def firstkey(self) -> bytes | None:
        """The first key in the store's (hash) order, or None when it is empty (gdbm)."""
        return self._live_core().firstkey()

    def nextkey(self, key: _BytesLike) -> bytes | None:
        """The key after ``key`` in the order of :meth:`firstkey`, or None at the end."""
        return self._live_core().nextkey(key)

    # ------------------------------------------------------------------ writing
    def __setitem__(self, key: _BytesLike, value: _BytesLike) -> None:
        core = self._live_core()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        rc = core.put(key, value)
        if rc:
            self._require_engine().put_slow(rc, key, value)

    def __delitem__(self, key: _BytesLike) -> None:
        core = self._live_core()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        rc = core.delete(key)
        if rc and not self._require_engine().delete_slow(rc, key):
            raise KeyError(key)

    def setdefault(self, key: _BytesLike, default: _BytesLike | None = None) -> bytes:  # type: ignore[override]
        """The value of ``key``; if it is missing, store ``default`` and return it.

        As in ``dbm.gnu`` and ``dbm.dumb`` the default is None, which is not a value: a
        missing key then raises ``TypeError``.
        """
        value = self._live_core().get(key)
        if value is not None:
            return value
        if default is None:
            raise TypeError("setdefault() needs a bytes or str default for a missing key")
        self[key] = default
        return default.encode("utf-8") if isinstance(default, str) else bytes(default)

    def clear(self) -> None:
        core = self._live_core()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        snapshot = core.keys()
        for key in snapshot:
            del self[key]

    # ------------------------------------------------------------------ gdbm extras
    def sync(self) -> None:
        """Make every write so far power-fail durable (see the README's durability table)."""
        self._require_engine().sync()

    def reorganize(self) -> None:
        """Reclaim the space of overwritten and deleted records (crash-safe)."""
        engine = self._require_engine()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        engine.reorganize()

    def stats(self) -> dict[str, int | float]:
        """Counters of the store: records, live and dead bytes, blocks, pool size, rebuild time."""
        return self._require_engine().stats()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Make everything durable and release the store. Closing twice is harmless."""
        engine, self._engine = self._engine, None
        self._core = None
        if engine is not None:
            engine.close()

    def __enter__(self) -> _Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None and not engine.closed:
            warnings.warn(
                f"viperdbm store {engine.path!r} was not closed", ResourceWarning, stacklevel=2
            )
            with contextlib.suppress(Exception):  # nothing can be reported from a finaliser
                engine.close()

    def __repr__(self) -> str:
        state = "closed" if self._engine is None else f"{len(self)} records"
        return f"<viperdbm store {self._path()!r}, {state}>"

    # ------------------------------------------------------------------ helpers
    def _live_core(self) -> _native.Core:
        core = self._core
        if core is None:
            raise ClosedError(_CLOSED)
        return core

    def _require_engine(self) -> Engine:
        engine = self._engine
        if engine is None or engine.closed:
            raise ClosedError(_CLOSED)
        return engine

    def _path(self) -> str:
        return self._engine.path if self._engine is not None else "?"


def open(
    file: str | os.PathLike[str] | os.PathLike[bytes] | bytes,
    flag: str = "r",
    mode: int = 0o666,
) -> _Database:
    """Open the viperdbm store at ``file`` (a directory) and return a dbm-style mapping.

    ``flag``: ``'r'`` open an existing store read-only (the default, as in ``dbm``);
    ``'w'`` open an existing store for reading and writing; ``'c'`` the same, creating it
    if it does not exist; ``'n'`` always create a new, empty store. Any of these may be
    followed by gdbm's modifiers: ``'f'`` (fast; the default behaviour: writes survive a
    crash of the process, ``sync()`` makes them power-fail durable), ``'s'`` (every write
    is made power-fail durable before it returns) and ``'u'`` (do not take viperdbm's own
    lock; libpmemobj still refuses a second opener).

    ``mode`` is the permission of every file created (the umask applies); directories get
    the matching execute bits.
    """
    path = os.fsdecode(file)
    return _Database(path, flag, mode)
