"""A `dogpile.cache <https://dogpilecache.sqlalchemy.org/>`_ backend over a viperdbm
:class:`~viperdbm.cache.Cache`: a region whose values survive a restart of the process.

The package registers it under the name ``"viperdbm"`` (entry point group
``dogpile.cache``), so a region needs no import of this module::

    from dogpile.cache import make_region

    region = make_region().configure(
        "viperdbm",
        expiration_time=3600,                      # dogpile's: when a value is stale
        arguments={
            "path": "/var/cache/myapp/region.vdb",  # a directory; created if missing
            "expire": 4000,                         # the store's: when an item is removed
            "size_limit": 256 * 2**20,              # bytes of keys and values, at most
        },
    )

    @region.cache_on_arguments()
    def load_user(user_id: int) -> dict[str, object]:
        ...

Arguments (all but ``path`` optional; a name not listed here is a ``ValueError``):

- ``path``: the store's directory (as :func:`viperdbm.open`).
- ``flag``: ``'c'`` (the default), ``'w'``, ``'n'`` or ``'r'``, as :func:`viperdbm.open`.
- ``mode``: permissions of the files created (default ``0o666``, less the umask). In a
  configuration file read by ``configure_from_config``, write it in octal with its prefix
  (``0o600``): dogpile turns a bare ``600`` into the decimal number 600.
- ``expire``: a hard time to live of every item in the store, in seconds (default None:
  items stay until evicted or deleted). It is independent of the region's
  ``expiration_time``, which dogpile enforces itself from the creation time stored with
  each value (and which lets it serve the stale value while one thread makes the new
  one). Set ``expire`` somewhat larger than ``expiration_time``, so that values nobody asks
  for again leave the store instead of staying there for good; an item past ``expire`` is a
  miss, as if it had never been stored. It plays the part of the Redis backend's
  ``redis_expiration_time`` and pymemcache's ``memcached_expire_time``.
- ``size_limit``: a bound in bytes on the keys and stored values of all items (default
  None: no bound); writes evict the least recently stored items first.
- ``protocol``: the pickle protocol (default :data:`pickle.HIGHEST_PROTOCOL`).
- ``timeout``: seconds to wait for another writer to close the store (default 0: fail at
  once with :class:`viperdbm.LockError`).

The :class:`~viperdbm.cache.Cache` underneath is ``region.backend.cache`` (its
:meth:`~viperdbm.cache.Cache.stats`, :meth:`~viperdbm.cache.Cache.volume`,
:meth:`~viperdbm.cache.Cache.expire`); ``region.backend.close()`` closes it, and it is closed
at the latest when the interpreter exits.

**Trust boundary.** Values are pickled (dogpile's ``CachedValue``, the value and its
metadata, is pickled once by the :class:`~viperdbm.cache.Cache`), and unpickling runs code
chosen by whoever wrote the data. Point a region only at a directory that nobody you do not
trust can write (create it with ``mode=0o600`` when its parent is shared). A region
configured with its own ``serializer``/``deserializer`` (say ``json.dumps``/``json.loads``)
has its bytes stored instead, but those bytes are still kept in a pickle by the
:class:`~viperdbm.cache.Cache`, so the boundary is the same.

**One writer process.** A store has one writer at a time: a second process that opens the
same path with flag ``'c'``, ``'w'`` or ``'n'`` gets :class:`viperdbm.LockError` (after
``timeout`` seconds). Let one process write, sharing its region among its threads; other
processes may configure regions with ``flag='r'`` over the same path and read, beside the
live writer, what it stored. A read-only region computes what it misses for itself and
stores nothing (its ``set`` does nothing: a cache may always decline to store), as
:func:`viperdbm.cache.memoize` does; but its ``delete`` (and ``invalidate()`` of a
decorated function) raises :class:`viperdbm.ReadonlyError`, since the value would stay.
The dogpile lock is dogpile's own per-key lock within the process (:meth:`get_mutex` is
None): one thread computes a missing value while the others wait for it. A store opened
before ``fork()`` is unusable in the child (:class:`viperdbm.ClosedError`): a pre-forking
server makes its regions with ``make_region()`` at import and calls ``configure()`` in
each worker, after the fork.

**Moving to a shared cache.** Nothing in the code that uses the region depends on the
backend, so moving to Redis or Memcached changes only the ``configure()`` call::

    region = make_region().configure(
        "dogpile.cache.redis",                      # or "dogpile.cache.pymemcache"
        expiration_time=3600,
        arguments={"host": "localhost", "port": 6379, "redis_expiration_time": 4000,
                   "distributed_lock": True},       # several writer processes then
    )

(pymemcache's arguments are ``{"url": "127.0.0.1:11211", "memcached_expire_time": 4000}``.)
Values already in the viperdbm store are not carried over: the new cache starts empty.
"""

from __future__ import annotations

import os
import pickle
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from dogpile.cache.api import (
    NO_VALUE,
    BackendArguments,
    BackendFormatted,
    BackendSetType,
    CacheBackend,
    CachedValue,
    KeyType,
    SerializedReturnType,
)

from .._errors import ReadonlyError
from . import Cache

__all__ = ["ViperBackend"]

_ARGUMENTS: Final = frozenset(
    {"path", "flag", "mode", "expire", "size_limit", "protocol", "timeout"}
)


def _mode(value: object) -> int:
    """The ``mode`` argument: an int, or octal text (``"0o600"`` or ``"600"``)."""
    if isinstance(value, str):
        text = value.strip().lower()
        return int(text[2:] if text.startswith("0o") else text, 8)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"mode is an int (such as 0o600), not {type(value).__name__}")
    return value


class ViperBackend(CacheBackend):
    """A dogpile.cache backend that keeps a region's values in a viperdbm store.

    ``make_region().configure("viperdbm", arguments={"path": ..., ...})``; the arguments
    and the rules (trust boundary, one writer process) are in the module's documentation.
    The store stays open while the backend lives: :meth:`close` closes it, and so does the
    end of the interpreter.
    """

    # the Cache pickles dogpile's CachedValue in one go: no serializer of dogpile's own
    serializer = None
    deserializer = None

    def __init__(self, arguments: BackendArguments) -> None:
        unknown = sorted(set(arguments) - _ARGUMENTS)
        if unknown:
            raise ValueError(
                f"unknown argument(s) of the viperdbm backend: {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(_ARGUMENTS))}"
            )
        if "path" not in arguments:
            raise ValueError(
                'the viperdbm backend needs a path: arguments={"path": "/dir/of/region.vdb"}'
            )
        path: str | os.PathLike[str] = arguments["path"]
        self.cache = Cache(
            path,
            arguments.get("flag", "c"),
            _mode(arguments.get("mode", 0o666)),
            expire=arguments.get("expire"),
            size_limit=arguments.get("size_limit"),
            protocol=arguments.get("protocol", pickle.HIGHEST_PROTOCOL),
            timeout=arguments.get("timeout", 0.0),
        )
        self._path = os.fspath(path)
        # closes the store when the backend is collected or the interpreter exits; the
        # finalizer holds the Cache, not the backend, so it does not keep the backend alive
        self._closer = weakref.finalize(self, self.cache.close)

    @property
    def readonly(self) -> bool:
        """True when the store was opened with flag ``'r'``: sets store nothing."""
        return self.cache.readonly

    def close(self) -> None:
        """Close the store (idempotent). Using the region afterwards raises
        :class:`viperdbm.ClosedError`."""
        self._closer()

    def __repr__(self) -> str:
        return f"<viperdbm.cache.dogpile.ViperBackend over {self._path!r}>"

    # ------------------------------------------------------------------ reading
    # A region without a serializer of its own reads CachedValue objects (get); one with a
    # serializer reads bytes (get_serialized). An item that another configuration wrote is
    # a miss for this one (it is computed again and replaces the item), never an error.
    def get(self, key: KeyType) -> BackendFormatted:
        value = self.cache.get(key, NO_VALUE)
        return value if isinstance(value, CachedValue) else NO_VALUE

    def get_multi(self, keys: Iterable[KeyType]) -> Sequence[BackendFormatted]:
        return [self.get(key) for key in keys]

    def get_serialized(self, key: KeyType) -> SerializedReturnType:
        value = self.cache.get(key, NO_VALUE)
        return value if isinstance(value, bytes) else NO_VALUE

    def get_serialized_multi(self, keys: Iterable[KeyType]) -> Sequence[SerializedReturnType]:
        return [self.get_serialized(key) for key in keys]

    # ------------------------------------------------------------------ writing
    def set(self, key: KeyType, value: BackendSetType) -> None:
        if not self.cache.readonly:  # a reader computes for itself and leaves storing
            self.cache.set(key, value)

    def set_serialized(self, key: KeyType, value: bytes) -> None:
        self.set(key, value)

    def set_multi(self, mapping: Mapping[KeyType, BackendSetType]) -> None:
        for key, value in mapping.items():
            self.set(key, value)

    def set_serialized_multi(self, mapping: Mapping[KeyType, bytes]) -> None:
        self.set_multi(mapping)

    def delete(self, key: KeyType) -> None:
        self._refuse_if_readonly()
        self.cache.delete(key)

    def delete_multi(self, keys: Iterable[KeyType]) -> None:
        self._refuse_if_readonly()
        for key in keys:
            self.cache.delete(key)

    def _refuse_if_readonly(self) -> None:
        if self.cache.readonly:
            raise ReadonlyError(
                "this dogpile region's store is read-only (flag 'r'), so a delete would "
                "leave the value in place",
                filename=self._path,
                hint="delete through the region of the process that writes the store",
            )
