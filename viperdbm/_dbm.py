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
from collections.abc import Callable, ItemsView, Iterator, MutableMapping, ValuesView
from typing import NoReturn, TypeAlias

from . import _native
from ._closing import ClosesOnExit
from ._engine import Engine, OpenOptions
from ._errors import ClosedError, ReadonlyError
from ._signals import Deferred

_BytesLike: TypeAlias = bytes | str
_CLOSED = "DBM object has already been closed"
_VALID_FLAGS = "Flag must be one of 'r', 'w', 'c', or 'n', optionally followed by 'f', 's' or 'u'"


def _parse_flag(flag: str, timeout: float = 0.0) -> OpenOptions:
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
        timeout=timeout,
    )


def _readonly_refusal(path: str) -> Callable[[], NoReturn]:
    def refuse() -> NoReturn:
        raise ReadonlyError("the store was opened read-only", filename=path)

    return refuse


class Database(_native.MapBase, MutableMapping[bytes, bytes], ClosesOnExit):  # type: ignore[misc]
    """An open viperdbm store: a persistent mapping of bytes to bytes.

    The mapping operations themselves (``db[key]``, ``db[key] = value``, ``del db[key]``,
    ``key in db``, ``len(db)``, iteration, ``get``, ``keys``, ``firstkey``, ``nextkey``) are
    implemented by the native base class, which calls the engine's core directly.
    """

    def __init__(self, path: str, flag: str, mode: int, timeout: float = 0.0) -> None:
        options = _parse_flag(flag, timeout)
        self._engine: Engine | None = None
        engine = self._engine = Engine(path, options, mode)
        self._readonly = not options.writable
        self._attach(engine.require_core(), engine, self._readonly, _readonly_refusal(engine.path))

    # ------------------------------------------------------------------ views
    def items(self) -> ItemsView[bytes, bytes]:
        """A view of (key, value) pairs; iterating it reads them all in one native call.

        ``keys()``, ``values()`` and ``items()`` list the records in the order they lie in the
        store's blocks, all three in the same order while the store does not change."""
        return _ItemsView(self)

    def values(self) -> ValuesView[bytes]:
        """A view of the values; iterating it reads them all in one native call."""
        return _ValuesView(self)

    # ------------------------------------------------------------------ writing
    def setdefault(self, key: _BytesLike, default: _BytesLike | None = None) -> bytes:
        """The value of ``key``; if it is missing, store ``default`` and return it.

        As in ``dbm.gnu`` and ``dbm.dumb`` the default is None, which is not a value: a
        missing key then raises ``TypeError``.
        """
        value = self.get(key)
        if value is not None:
            return value
        if default is None:
            raise TypeError("setdefault() needs a bytes or str default for a missing key")
        self[key] = default
        return default.encode("utf-8") if isinstance(default, str) else bytes(default)

    def batch(self) -> Batch:
        """Puts and deletes that reach the store together, or not at all::

            with db.batch() as batch:
                batch[b"from"] = b"90"
                batch[b"to"] = b"110"
                del batch[b"pending"]

        On leaving the ``with`` block the writes are stored as one batch: after a crash at
        any instant (kill -9; with flag 's' or after ``sync()``, a power cut) the store holds
        all of them or none, and readers in other processes see them at once. An exception
        in the block discards them. Under flag 's' the batch is made durable by one flush
        (group commit), not one per write. Reads through ``batch`` see its own writes;
        reads through ``db`` see them once the batch is stored."""
        self._require_engine()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        return Batch(self)

    def update(self, other: object = (), /, **kwds: _BytesLike) -> None:
        """As ``dict.update`` (a mapping, or pairs, and keywords), and atomic: the pairs are
        stored as one batch (:meth:`batch`), all of them or none."""
        engine = self._require_engine()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        # dict() takes what dict.update takes; the core checks every key and value before
        # it writes anything (a str key and its UTF-8 bytes are the same key: the last wins)
        pairs = list(dict(other, **kwds).items())  # type: ignore[call-overload]
        if pairs:
            engine.write_batch(pairs)

    def _delete_if(self, key: _BytesLike, expected: _BytesLike) -> bool:
        """Delete ``key`` only while it holds ``expected`` (one step: a put of the key by
        another thread comes before or after it); True if it was deleted. For the cache,
        which removes an item it found expired without losing a set that raced with it."""
        engine = self._require_engine()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        return engine.delete_if(_as_bytes(key, "keys"), _as_bytes(expected, "values"))

    def clear(self) -> None:
        snapshot = self.keys()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        for key in snapshot:
            del self[key]

    # ------------------------------------------------------------------ gdbm extras
    def sync(self) -> None:
        """Make every write so far power-fail durable (see the README's durability table)."""
        self._require_engine().sync()

    def reorganize(self) -> None:
        """Reclaim the space of overwritten and deleted records (crash-safe). Without
        readers attached it builds a new pool with the live records only and swaps it in,
        so the store takes no more disk than they need (as gdbm's ``reorganize()`` shrinks
        its file); with readers attached, or without room for the copy, it compacts in
        place. Other threads' writes wait meanwhile."""
        engine = self._require_engine()
        if self._readonly:
            raise ReadonlyError("the store was opened read-only", filename=self._path())
        # a reorganize() that swaps a new pool in hands its core to the fast paths before
        # the old one is closed
        engine.reorganize(
            lambda core: self._attach(core, engine, self._readonly, _readonly_refusal(engine.path))
        )

    def stats(self) -> dict[str, int | float]:
        """Counters of the store: records, live and dead bytes, blocks, pool size, rebuild time."""
        return self._require_engine().stats()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Database]:
        """Within ``with db.snapshot():`` every read sees the store as it was on entering
        (a read transaction, as LMDB's): for a reader beside a live writer, whose every
        other operation sees the writer's latest acknowledged writes. A writer's own reads
        see its writes anyway. While a reader holds a snapshot, the writer keeps the space
        it needs (blocks freed meanwhile are given back once it ends)."""
        core = self._require_engine().require_core()
        core.hold_snapshot(True)
        try:
            yield self
        finally:
            if core.is_open:
                core.hold_snapshot(False)

    @property
    def damage(self) -> list[tuple[int, int]]:
        """What the open found damaged: ``(block offset, offset of the first unreadable
        byte)`` for each block whose log ends in unreadable bytes (records after that point
        in the block are lost; ``viperdbm check`` reports them). Empty for a healthy store."""
        return list(self._require_engine().damage)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Make everything durable and release the store. Closing twice is harmless."""
        # deferred signals: a KeyboardInterrupt between forgetting the engine and closing
        # it would leave the store open (and locked) with nothing left to close it
        deferred = Deferred()
        try:
            engine, self._engine = self._engine, None
            self._detach()
            if engine is not None:
                engine.close()
        finally:
            deferred.end()

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
    def _require_engine(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise ClosedError(_CLOSED)
        if engine.closed:
            raise engine.closed_error()
        return engine

    def _path(self) -> str:
        return self._engine.path if self._engine is not None else "?"


def _as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


class Batch(MutableMapping[bytes, bytes]):
    """Writes that reach the store together (:meth:`Database.batch`): a mapping over the
    store whose writes are held until the batch is stored; reads see them first."""

    def __init__(self, db: Database) -> None:
        self._db = db
        #: key -> value, or None for a delete; the last write of a key wins
        self._writes: dict[bytes, bytes | None] = {}
        self._stored = False

    def __setitem__(self, key: _BytesLike, value: _BytesLike) -> None:
        self._open()
        self._writes[_as_bytes(key, "keys")] = _as_bytes(value, "values")

    def __delitem__(self, key: _BytesLike) -> None:
        self._open()
        k = _as_bytes(key, "keys")
        if k not in self:
            raise KeyError(key)
        self._writes[k] = None

    def __getitem__(self, key: _BytesLike) -> bytes:
        k = _as_bytes(key, "keys")
        if k in self._writes:
            value = self._writes[k]
            if value is None:
                raise KeyError(key)
            return value
        return self._db[k]

    def __contains__(self, key: object) -> bool:
        k = _as_bytes(key, "keys")
        if k in self._writes:
            return self._writes[k] is not None
        return k in self._db

    def __iter__(self) -> Iterator[bytes]:
        pending = self._writes
        for key in self._db.keys():  # noqa: SIM118 - a list made at once, as dbm's keys()
            if key not in pending:
                yield key
        for key, value in pending.items():
            if value is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def store(self) -> None:
        """Store the batch's writes now, as one (``with`` does this on leaving)."""
        self._open()
        self._stored = True
        pairs = list(self._writes.items())
        self._writes = {}
        if pairs:
            self._db._require_engine().write_batch(pairs)

    def discard(self) -> None:
        """Forget the batch's writes (``with`` does this when its block raises)."""
        self._stored = True
        self._writes = {}

    def _open(self) -> None:
        if self._stored:
            raise ValueError("this batch was stored or discarded already: start another one")

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.store()
        else:
            self.discard()

    def __repr__(self) -> str:
        return f"<viperdbm batch of {len(self._writes)} writes to {self._db._path()!r}>"


class _ItemsView(ItemsView[bytes, bytes]):
    _mapping: Database

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._mapping._items_list())


class _ValuesView(ValuesView[bytes]):
    _mapping: Database

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._mapping._values_list())


def open(
    file: str | os.PathLike[str] | os.PathLike[bytes] | bytes,
    flag: str = "r",
    mode: int = 0o666,
    *,
    timeout: float | None = None,
) -> Database:
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

    One writer and any number of readers may have a store open at once, in any processes:
    every operation of a reader sees every write the writer acknowledged before it began.
    A second writer gets ``LockError`` at once, or after waiting up to ``timeout`` seconds
    for the writer to close (readers never wait).
    """
    path = os.fsdecode(file)
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
    return Database(path, flag, mode, float(timeout or 0.0))
