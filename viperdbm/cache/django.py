"""A Django cache backend over a viperdbm store: ``viperdbm.cache.django.ViperCache``.

The cache lives in a viperdbm store on the local disk (a :class:`viperdbm.cache.Cache`), so
it survives restarts and crashes of the server, and every process of the machine can read
it. It implements Django's whole cache API (``get``, ``set``, ``add``, ``touch``,
``incr``/``decr``, the ``*_many`` methods, ``get_or_set``, versions, the ``a*`` coroutines
of :class:`~django.core.cache.backends.base.BaseCache`), with Django's conventions for
``TIMEOUT``, ``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION``::

    CACHES = {
        "default": {
            "BACKEND": "viperdbm.cache.django.ViperCache",
            "LOCATION": "/var/cache/mysite/cache.vdb",   # the store: a directory
            "TIMEOUT": 300,                              # seconds; None: never expire
            "OPTIONS": {
                "size_limit": 512 * 2**20,   # bytes of keys and values; oldest evicted first
                "flag": "c",                 # viperdbm.open's flag (default 'c': create)
                "mode": 0o600,               # permissions of the files it creates
            },
        }
    }

``TIMEOUT`` and a method's ``timeout`` mean what they mean for every Django backend: the
default timeout when omitted, ``None`` for never, ``0`` or less for "expires at once"
(nothing is stored). Expiry times are stored with the items, so they survive a restart.
``OPTIONS`` ``MAX_ENTRIES`` and ``CULL_FREQUENCY`` are accepted and ignored: the store is
bounded by ``size_limit`` (bytes), the least recently stored items evicted first; without
it, it is unbounded. ``clear()`` empties the whole store, whatever the ``KEY_PREFIX``.

**Trust boundary.** Values are pickled, and unpickling runs code chosen by whoever wrote
the data: point ``LOCATION`` only at a directory that nobody you do not trust can write
(not a world-writable path, not a volume shared with other tenants), and create it with a
restrictive ``mode`` where the parent directory is shared.

**One writer process.** A viperdbm store has one writer process at a time, and any number
of readers beside it. Each process opens the store on its first use of the cache (and
again after a ``fork()``: a store opened before it is never used by the child); threads and
the per-thread backend objects of Django share one open store per ``LOCATION``. The first
process to open it writes; a process that finds another one writing opens it read-only: its
reads see everything the writer stored, and its writes raise :class:`viperdbm.LockError`
saying so (it becomes the writer at a later write once the writer process has exited;
it tries at most once a second, ``ViperCache.writer_retry_interval``).
So this backend fits a server that runs its writes in one process (any number of threads),
or several processes of which one writes. A deployment with several processes that all
write (``gunicorn -w 4``, several uWSGI workers) needs one cache process serving the
others, or a cache server.

**Moving to Redis or Memcached.** The calling code does not change: ``TIMEOUT``,
``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION`` mean the same for every backend. Change the
``BACKEND`` and ``LOCATION`` lines (and remove the ``OPTIONS`` above, which are
viperdbm's own)::

    "BACKEND": "django.core.cache.backends.redis.RedisCache",
    "LOCATION": "redis://127.0.0.1:6379",

    "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
    "LOCATION": "127.0.0.1:11211",

The items already in the store are not carried over (a cache starts empty).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from .._errors import LockError, ReadonlyError
from . import Cache

__all__ = ["ViperCache"]

#: the OPTIONS this backend reads (lower case; OPTIONS keys are matched in any case)
OPTIONS: Final = frozenset({"size_limit", "flag", "mode"})
#: the OPTIONS of BaseCache (other backends' entry bounds): accepted, and bounded by size_limit
IGNORED_OPTIONS: Final = frozenset({"max_entries", "cull_frequency"})

_MISSING: Final = object()


@dataclass
class _Opened:
    """The store of one LOCATION, open in one process (shared by every backend object)."""

    cache: Cache
    pid: int
    options: tuple[str, int, int | None]
    #: read-only because another process was the writer when this one asked
    fallback: bool
    #: why it is read-only: the LockError of the last attempt to open it as the writer
    writer_error: LockError | None = None
    #: time.monotonic() of that attempt
    tried_writer_at: float = 0.0
    #: readers replaced by a writer: other threads may still be reading them; closed at exit
    retired: list[Cache] = field(default_factory=list)

    def close(self) -> None:
        try:
            self.cache.close()
        finally:
            while self.retired:
                self.retired.pop().close()


# The stores open in this process, by the real path of LOCATION. Django makes one backend object per
# thread (and per alias); they must share the one open store, or every thread but the first
# would find "another writer" in its own process.
_opened: dict[str, _Opened] = {}
_opening = threading.Lock()
# what a fork() child inherited: never closed nor used there (it is the parent's), only kept
_inherited: list[_Opened] = []


def _forget_after_fork() -> None:
    global _opening
    _inherited.extend(_opened.values())
    _opened.clear()
    _opening = threading.Lock()  # another thread of the parent may have held it


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _close_all() -> None:
    """Close every store this process opened (at interpreter exit)."""
    failure: BaseException | None = None
    pid = os.getpid()
    for path, opened in list(_opened.items()):
        if opened.pid != pid:
            continue
        del _opened[path]
        try:
            opened.close()
        except Exception as error:  # close the others, then report the first failure
            failure = failure or error
    if failure is not None:
        raise failure


def _another_writer(path: str) -> LockError:
    return LockError(
        "another process writes this cache (or another open handle of this process does), "
        "so this process opened it read-only and cannot write it (a viperdbm store has one "
        "writer process)",
        filename=path,
        hint="reads still work; a Django deployment with several processes that write to the "
        "cache needs one cache process that the others ask, or a cache server: set BACKEND to "
        "Django's Redis or Memcached backend (see viperdbm.cache.django)",
    )


class ViperCache(BaseCache):  # type: ignore[misc]
    """Django's cache API over a :class:`viperdbm.cache.Cache` at ``LOCATION``.

    ``OPTIONS``: ``size_limit`` (bytes, default unbounded), ``flag`` (``viperdbm.open``'s,
    default ``'c'``; ``'r'`` opens it read-only; ``'n'`` empties it at each open, in every
    process that becomes its writer) and ``mode`` (default ``0o666``, less the
    umask). The store opens on first use in each process; see the module's documentation
    for the one-writer rule. Besides Django's API: :attr:`store` (the open
    :class:`~viperdbm.cache.Cache`, for ``stats()``, ``volume()``, ``expire()``) and
    :meth:`close_store`.
    """

    #: seconds between two attempts of a read-only process to become the writer
    writer_retry_interval: ClassVar[float] = 1.0

    def __init__(self, location: str | os.PathLike[str], params: dict[str, Any]) -> None:
        super().__init__(params)
        if not location:
            raise ImproperlyConfigured("ViperCache needs a LOCATION: the path of its store")
        given = params.get("OPTIONS") or {}
        options = {str(name).lower(): value for name, value in given.items()}
        unknown = set(options) - OPTIONS - IGNORED_OPTIONS
        if unknown:
            raise ImproperlyConfigured(
                f"ViperCache does not know the OPTIONS {sorted(unknown)}; "
                f"it reads {sorted(OPTIONS)}"
            )
        flag = options.get("flag", "c")
        if not isinstance(flag, str) or flag[:1] not in ("r", "w", "c", "n"):
            raise ImproperlyConfigured(
                f"ViperCache OPTIONS 'flag' is viperdbm.open's flag ('r', 'w', 'c' or 'n'), "
                f"not {flag!r}"
            )
        mode = options.get("mode", 0o666)
        size_limit = options.get("size_limit")
        for name, number in (("mode", mode), ("size_limit", size_limit)):
            if number is None and name == "size_limit":
                continue
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ImproperlyConfigured(
                    f"ViperCache OPTIONS {name!r} must be a non-negative int, not {number!r}"
                )
        # one key per store in the registry of open stores, however LOCATION spells it
        self._path = os.path.realpath(os.fspath(location))
        self._options: tuple[str, int, int | None] = (flag, mode, size_limit)

    # ------------------------------------------------------------------ the open store
    @property
    def location(self) -> str:
        """The absolute path of the store (symbolic links resolved)."""
        return self._path

    @property
    def store(self) -> Cache:
        """The :class:`viperdbm.cache.Cache` this process uses (opened if it is not yet):
        for its ``stats()``, ``volume()`` and ``expire()``."""
        return self._handle().cache

    def _handle(self) -> _Opened:
        opened = _opened.get(self._path)
        if opened is not None and opened.pid == os.getpid() and opened.options == self._options:
            return opened
        return self._open()

    def _open(self) -> _Opened:
        with _opening:
            pid = os.getpid()
            opened = _opened.get(self._path)
            if opened is not None and opened.pid != pid:  # the parent's, before a fork
                _inherited.append(_opened.pop(self._path))
                opened = None
            if opened is not None:
                if opened.options != self._options:
                    raise ImproperlyConfigured(
                        f"the cache store {self._path!r} is open in this process with the "
                        f"OPTIONS (flag, mode, size_limit) {opened.options}, not "
                        f"{self._options}: give every cache with this LOCATION the same OPTIONS"
                    )
                return opened
            flag, mode, size_limit = self._options
            writer_error: LockError | None = None
            try:
                cache = Cache(self._path, flag, mode, size_limit=size_limit)
            except LockError as error:
                if flag[:1] == "r":
                    raise
                writer_error = error  # another process writes it: read beside it
                cache = Cache(self._path, "r", mode, size_limit=size_limit)
            opened = _Opened(
                cache,
                pid,
                self._options,
                fallback=writer_error is not None,
                writer_error=writer_error,
                tried_writer_at=time.monotonic(),
            )
            _opened[self._path] = opened
            return opened

    def _writer(self) -> Cache:
        """The store, to write: LockError while another process writes it."""
        opened = self._handle()
        if not opened.cache.readonly:
            return opened.cache
        if not opened.fallback:
            raise ReadonlyError(
                "this Django cache is configured read-only (OPTIONS 'flag' 'r'): it cannot "
                "be written",
                filename=self._path,
                hint="set OPTIONS 'flag' to 'c' in the process that writes it",
            )
        with _opening:
            if not opened.cache.readonly:  # another thread became the writer meanwhile
                return opened.cache
            if time.monotonic() - opened.tried_writer_at >= self.writer_retry_interval:
                flag, mode, size_limit = opened.options
                opened.tried_writer_at = time.monotonic()
                try:
                    cache = Cache(self._path, flag, mode, size_limit=size_limit)
                except LockError as error:
                    opened.writer_error = error
                else:  # the writer has gone: this process writes from now on
                    opened.retired.append(opened.cache)
                    opened.cache, opened.fallback, opened.writer_error = cache, False, None
                    return cache
            raise _another_writer(self._path) from opened.writer_error

    def close_store(self) -> None:
        """Close the store of this ``LOCATION`` in this process, for every backend object
        that uses it (they open it again on their next use). Not needed at exit, where it
        is closed anyway; for tests, and for handing the writer role to another process."""
        with _opening:
            opened = _opened.get(self._path)
            if opened is None or opened.pid != os.getpid():
                return
            del _opened[self._path]
        opened.close()

    def close(self, **kwargs: Any) -> None:
        """Do nothing: the store stays open.

        Django calls ``close()`` on every cache at the end of each request (the signal
        ``request_finished``); reopening a store per request would cost its open (and a
        read-only process its index rebuild) each time. The store is closed at interpreter
        exit, or by :meth:`close_store`.
        """

    # ------------------------------------------------------------------ Django's API
    def _expire(self, timeout: float | None) -> float | None:
        """A Django timeout as a viperdbm expire: None never, 0 expired at once."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        return timeout if timeout > 0 else 0

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        return self._handle().cache.get(key, default)

    def get_many(self, keys: Any, version: int | None = None) -> dict[Any, Any]:
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        cache = self._handle().cache
        found: dict[Any, Any] = {}
        for key, original in made.items():
            value = cache.get(key, _MISSING)
            if value is not _MISSING:
                found[original] = value
        return found

    def has_key(self, key: Any, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return key in self._handle().cache

    def set(
        self,
        key: Any,
        value: Any,
        timeout: float | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        self._writer().set(key, value, self._expire(timeout))

    def set_many(
        self,
        data: dict[Any, Any],
        timeout: float | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> list[Any]:
        """Store every item of ``data``; the keys of the items bigger than ``size_limit``
        on their own, which are not stored."""
        expire = self._expire(timeout)
        made = [(self.make_and_validate_key(key, version=version), key) for key in data]
        cache = self._writer()
        failed: list[Any] = []
        for key, original in made:
            if not cache.set(key, data[original], expire) and expire != 0:
                failed.append(original)
        return failed

    def add(
        self,
        key: Any,
        value: Any,
        timeout: float | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        cache = self._writer()
        expire = self._expire(timeout)
        if expire == 0:
            # as Django's backends: added (and expired at once) if the key held nothing
            return key not in cache
        return cache.add(key, value, expire)

    def touch(
        self, key: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        cache = self._writer()
        expire = self._expire(timeout)
        if expire == 0:  # as Django's backends: True if there was an item, which expires now
            found = key in cache
            cache.delete(key)
            return found
        return cache.touch(key, expire)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to the number under ``key``, keeping its expiry; ValueError if
        there is none."""
        key = self.make_and_validate_key(key, version=version)
        try:
            return self._writer().incr(key, delta, default=None)
        except KeyError:
            raise ValueError(f"Key '{key}' not found") from None

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, -delta, version=version)

    def delete(self, key: Any, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return self._writer().delete(key)

    def delete_many(self, keys: Any, version: int | None = None) -> None:
        made = [self.make_and_validate_key(key, version=version) for key in keys]
        cache = self._writer()
        for key in made:
            cache.delete(key)

    def clear(self) -> None:
        """Remove every item of the store (whatever its key prefix or version)."""
        self._writer().clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._path!r}>"
