"""Object caches over viperdbm: a pickle-backed :class:`Cache` and a :func:`memoize` decorator.

**Trust boundary.** Values are stored with :mod:`pickle`, and unpickling runs code chosen
by whoever wrote the data. Open a cache only if nobody you do not trust can write to its
directory: a cache file that someone else can write is a way for them to run their code in
your process. Keys are never pickled (see below), so listing or dumping a cache runs no
code; reading a value does.

**Keys.** A cache's keys are ``bytes`` or ``str`` (stored as UTF-8), exactly as in the
store underneath. Keys are not pickled, because equal objects do not always pickle to
equal bytes (two equal dicts built in different orders, ``1`` and ``1.0`` and ``True``,
sets), and a key that encodes differently is a silent cache miss. For composite keys use
:func:`encode_key`, a canonical encoding of ``None``, ``bool``, ``int``, ``float``,
``str``, ``bytes`` and tuples, lists, dicts, sets and frozensets of them: equal inputs of
the same types always give the same bytes, different inputs different bytes.

>>> import os, tempfile
>>> from viperdbm.cache import Cache, encode_key, memoize
>>> path = os.path.join(tempfile.mkdtemp(), "objects.vdb")
>>> with Cache(path) as cache:
...     cache["config"] = {"retries": 3}
...     cache[encode_key(("user", 42))] = ["Ada", 1815]
...     cache["config"], cache[encode_key(("user", 42))]
({'retries': 3}, ['Ada', 1815])
>>> cache = Cache(path)
>>> @memoize(cache)
... def square(x: int) -> int:
...     print("computing")
...     return x * x
>>> square(12)
computing
144
>>> square(12)
144
>>> cache.close()
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Generic, ParamSpec, TypeVar

from ._closing import ClosesOnExit
from ._dbm import Database
from ._dbm import open as _open_db

__all__ = ["Cache", "Memoized", "encode_key", "memoize"]

P = ParamSpec("P")
R = TypeVar("R")

Key = bytes | str


def _encode(obj: object, out: list[bytes]) -> None:
    # Every item is a one-byte tag, then either a length-prefixed body or items with a
    # closing tag, so the encoding is injective (no two values share one).
    if obj is None:
        out.append(b"N")
    elif obj is True:
        out.append(b"T")
    elif obj is False:
        out.append(b"F")
    elif type(obj) is int:
        out.append(b"i%d;" % obj)
    elif type(obj) is float:
        out.append(b"f" + obj.hex().encode() + b";")
    elif type(obj) is str:
        raw = obj.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(raw) + raw)
    elif type(obj) in (bytes, bytearray, memoryview):
        raw = bytes(obj)  # type: ignore[call-overload]
        out.append(b"b%d:" % len(raw) + raw)
    elif type(obj) is tuple:
        out.append(b"(")
        for item in obj:
            _encode(item, out)
        out.append(b")")
    elif type(obj) is list:
        out.append(b"[")
        for item in obj:
            _encode(item, out)
        out.append(b"]")
    elif type(obj) is dict:
        pairs = sorted(encode_key(k) + encode_key(v) for k, v in obj.items())
        out.append(b"{" + b"".join(b"%d:" % len(p) + p for p in pairs) + b"}")
    elif type(obj) in (set, frozenset):
        items = sorted(encode_key(i) for i in obj)  # type: ignore[attr-defined]
        tag = b"<" if type(obj) is set else b"|"
        out.append(tag + b"".join(b"%d:" % len(i) + i for i in items) + b">")
    else:
        raise TypeError(
            f"encode_key() cannot encode {type(obj).__name__!r} objects canonically; "
            "convert them to str, bytes, int, float, bool, None or containers of these"
        )


def encode_key(obj: object) -> bytes:
    """A canonical ``bytes`` encoding of ``obj``, for use as a cache or store key.

    Supported: ``None``, ``bool``, ``int``, ``float`` (exact, via :meth:`float.hex`),
    ``str``, ``bytes``, and tuples, lists, dicts, sets and frozensets of these, nested.
    Types are part of the key (``1``, ``1.0`` and ``True`` are three keys; a tuple is not a
    list). Dicts and sets are sorted, so their order does not matter. Subclasses of these
    types, and anything else, raise ``TypeError``: define their key yourself.

    >>> encode_key(("user", 42))
    b'(s4:useri42;)'
    >>> encode_key({"b": 1, "a": 2}) == encode_key({"a": 2, "b": 1})
    True
    """
    out: list[bytes] = []
    _encode(obj, out)
    return b"".join(out)


class Cache(MutableMapping[bytes, Any], ClosesOnExit):
    """A persistent mapping from ``bytes``/``str`` keys to picklable objects.

    ``Cache(path, flag='c', mode=0o666, *, protocol=pickle.HIGHEST_PROTOCOL)`` opens (or
    creates) a viperdbm store; ``flag`` and ``mode`` are :func:`viperdbm.open`'s. Each
    value is pickled on write and unpickled on every read (there is no in-memory copy:
    mutate a value, then store it again). Iteration yields keys as ``bytes``.

    Unpickling runs code chosen by whoever wrote the store: see the module's
    documentation for the trust boundary.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        flag: str = "c",
        mode: int = 0o666,
        *,
        protocol: int = pickle.HIGHEST_PROTOCOL,
    ) -> None:
        self.protocol = protocol
        self.db: Database = _open_db(path, flag, mode)

    def __getitem__(self, key: Key) -> Any:
        return pickle.loads(self.db[key])

    def get(self, key: Key, default: Any = None) -> Any:
        raw = self.db.get(key)
        return default if raw is None else pickle.loads(raw)

    def __setitem__(self, key: Key, value: Any) -> None:
        self.db[key] = pickle.dumps(value, self.protocol)

    def __delitem__(self, key: Key) -> None:
        del self.db[key]

    def __contains__(self, key: object) -> bool:
        return key in self.db

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.db)

    def __len__(self) -> int:
        return len(self.db)

    def sync(self) -> None:
        """Make every write so far power-fail durable (see :meth:`viperdbm.Database.sync`)."""
        self.db.sync()

    def close(self) -> None:
        """Close the store underneath (idempotent)."""
        self.db.close()

    def __repr__(self) -> str:
        return f"<viperdbm.cache.Cache over {self.db!r}>"


class Memoized(Generic[P, R]):
    """A function whose results are kept in a :class:`Cache` (made by :func:`memoize`)."""

    __name__: str
    __qualname__: str

    def __init__(self, func: Callable[P, R], cache: Cache, prefix: bytes) -> None:
        self.__wrapped__ = func
        self.cache = cache
        self.prefix = prefix
        functools.update_wrapper(self, func)

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> bytes:
        """The key under which the result of ``func(*args, **kwargs)`` is kept."""
        return self.prefix + encode_key((args, kwargs))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self.cache_key(*args, **kwargs)
        raw = self.cache.db.get(key)
        if raw is not None:
            result: R = pickle.loads(raw)
            return result
        result = self.__wrapped__(*args, **kwargs)
        self.cache[key] = result
        return result

    def forget(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the kept result of ``func(*args, **kwargs)``; False if there was none."""
        try:
            del self.cache[self.cache_key(*args, **kwargs)]
        except KeyError:
            return False
        return True


def memoize(
    cache: Cache, *, prefix: str | bytes | None = None
) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """Keep the results of a function in ``cache``, keyed by its arguments.

    The key is ``prefix`` (default: the function's ``module.qualname`` and a colon)
    followed by :func:`encode_key` of ``(args, kwargs)``, so the arguments must be of the
    types :func:`encode_key` accepts; anything else raises ``TypeError`` rather than risk a
    wrong hit. Results are pickled. ``None`` is a result like any other. Exceptions are not
    cached. Two processes may share the cache; a store has one writer at a time, though
    (:class:`viperdbm.LockError` for the second).

    Unpickling runs code chosen by whoever wrote the cache: only memoize into a store that
    nobody untrusted can write (see the module's documentation).
    """

    def decorate(func: Callable[P, R]) -> Memoized[P, R]:
        if prefix is None:
            name = f"{func.__module__}.{func.__qualname__}:".encode()
        else:
            name = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        return Memoized(func, cache, name)

    return decorate
