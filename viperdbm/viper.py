"""Viper's own interface over the viperdbm engine, so that code written for Viper reads the same.

Viper (Benson, Makait, Rabl, VLDB 2021) is a C++ library; its README shows::

    auto viper_db = viper::Viper<uint64_t, uint64_t>::create("/mnt/pmem2/viper", initial_size);
    auto v_client = viper_db->get_client();
    v_client.put(key, value);
    v_client.get(key, &value);
    v_client.remove(key);

Here, line by line:

>>> import os, tempfile
>>> from viperdbm import Viper
>>> path = os.path.join(tempfile.mkdtemp(), "viper")
>>> initial_size = 1 << 30  # accepted; the store grows by itself
>>> viper_db = Viper.create(path, initial_size, key_type=int, value_type=int)
>>> v_client = viper_db.get_client()
>>> for key in range(10):
...     inserted = v_client.put(key, key + 10)  # True: a new key
>>> v_client.get(3)
13
>>> v_client.remove(3), v_client.get(3)
(True, None)
>>> viper_db.close()

The store is an ordinary viperdbm store (``viperdbm.open(path)`` opens it too). Keys and
values are ``bytes`` by default; ``key_type``/``value_type`` may be ``bytes``, ``str``
(UTF-8) or ``int`` (an unsigned 64-bit integer stored as 8 little-endian bytes, as a
``uint64_t`` is in Viper). Clients are cheap: take one per thread, as in Viper.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Generic, TypeVar, overload

from ._closing import ClosesOnExit
from ._dbm import Database
from ._dbm import open as _open_db
from ._errors import ClosedError

__all__ = ["Viper", "ViperClient", "ViperReadOnlyClient"]

K = TypeVar("K", bytes, str, int)
V = TypeVar("V", bytes, str, int)

_U64 = struct.Struct("<Q")


def _pack_u64(n: int) -> bytes:
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 1 << 64:
        raise ValueError(f"an int key or value must be in [0, 2**64), not {n!r}")
    return _U64.pack(n)


#: for each key or value type: how it becomes bytes, and back
_CODECS: dict[type[Any], tuple[Any, Any]] = {
    bytes: (bytes, bytes),
    str: (lambda s: s.encode("utf-8"), lambda b: b.decode("utf-8")),
    int: (_pack_u64, lambda b: _U64.unpack(b)[0]),
}


def _codec(kind: type[Any]) -> tuple[Any, Any]:
    codec = _CODECS.get(kind) if isinstance(kind, type) else None
    if codec is None:
        raise TypeError(f"key_type and value_type must be bytes, str or int, not {kind!r}")
    return codec


def _encoder(kind: type[Any]) -> Any:
    return _codec(kind)[0]


def _decoder(kind: type[Any]) -> Any:
    return _codec(kind)[1]


class Viper(ClosesOnExit, Generic[K, V]):
    """A viperdbm store seen through Viper's interface. Make one with :meth:`create` or
    :meth:`open`; modify and read it through clients (:meth:`get_client`)."""

    def __init__(self, db: Database, key_type: type[K], value_type: type[V]) -> None:
        self._db: Database | None = db
        self.key_type: type[K] = key_type
        self.value_type: type[V] = value_type
        self._enc_key = _encoder(key_type)
        self._enc_value = _encoder(value_type)
        self._dec_value = _decoder(value_type)

    @overload
    @classmethod
    def create(
        cls, path: str | os.PathLike[str], initial_size: int = ...
    ) -> Viper[bytes, bytes]: ...
    @overload
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        initial_size: int = ...,
        *,
        key_type: type[K],
        value_type: type[V],
    ) -> Viper[K, V]: ...
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        initial_size: int = 0,
        *,
        key_type: type[Any] = bytes,
        value_type: type[Any] = bytes,
    ) -> Viper[Any, Any]:
        """Create a new, empty store at ``path`` (replacing a store that is there).

        ``initial_size`` is accepted for Viper's sake and only checked (an int >= 0): a
        viperdbm store starts at 8 MiB and grows as it fills.
        """
        if isinstance(initial_size, bool) or not isinstance(initial_size, int) or initial_size < 0:
            raise ValueError(f"initial_size must be an int >= 0, not {initial_size!r}")
        _encoder(key_type), _encoder(value_type)  # reject bad types before touching the disk
        return cls(_open_db(path, "n"), key_type, value_type)

    @overload
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Viper[bytes, bytes]: ...
    @overload
    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, key_type: type[K], value_type: type[V]
    ) -> Viper[K, V]: ...
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key_type: type[Any] = bytes,
        value_type: type[Any] = bytes,
    ) -> Viper[Any, Any]:
        """Open the existing store at ``path`` for reading and writing."""
        _encoder(key_type), _encoder(value_type)
        return cls(_open_db(path, "w"), key_type, value_type)

    def get_client(self) -> ViperClient[K, V]:
        """A client that reads and writes the store; take one per thread."""
        return ViperClient(self)

    def get_read_only_client(self) -> ViperReadOnlyClient[K, V]:
        """A client that only reads."""
        return ViperReadOnlyClient(self)

    @property
    def db(self) -> Database:
        """The dbm-style mapping underneath (keys and values as bytes)."""
        db = self._db
        if db is None:
            raise ClosedError("the Viper store has been closed")
        return db

    def __len__(self) -> int:
        return len(self.db)

    def close(self) -> None:
        """Make every write durable and close the store (idempotent)."""
        db, self._db = self._db, None
        if db is not None:
            db.close()


class ViperReadOnlyClient(Generic[K, V]):
    """Reads a :class:`Viper` store (Viper's ``ReadOnlyClient``)."""

    def __init__(self, viper: Viper[K, V]) -> None:
        self._viper: Viper[K, V] = viper

    def get(self, key: K) -> V | None:
        """The value of ``key``, or ``None`` if it is not there.

        (Viper's ``bool get(const K&, V*)`` returns whether it was found and writes the
        value through the pointer; here the value, or ``None``, is the result.)
        """
        raw = self._viper.db.get(self._viper._enc_key(key))
        if raw is None:
            return None
        value: V = self._viper._dec_value(raw)
        return value


class ViperClient(ViperReadOnlyClient[K, V]):
    """Reads and writes a :class:`Viper` store (Viper's ``Client``)."""

    def put(self, key: K, value: V) -> bool:
        """Store ``value`` under ``key``; True if the key was new, False if it was updated.

        The write is acknowledged, and survives a crash of the process, when this returns.
        """
        viper = self._viper
        db = viper.db
        raw_key = viper._enc_key(key)
        raw_value = viper._enc_value(value)
        new = raw_key not in db
        db[raw_key] = raw_value
        return new

    def remove(self, key: K) -> bool:
        """Delete ``key``; True if it was there."""
        db = self._viper.db
        try:
            del db[self._viper._enc_key(key)]
        except KeyError:
            return False
        return True
