"""Object caches over viperdbm: a pickle-backed :class:`Cache` and a :func:`memoize` decorator.

A :class:`Cache` maps keys to picklable objects, with an optional time to live per item
(``expire``) and an optional bound on its size (``size_limit``), evicting the least
recently stored items first. :func:`memoize` keeps a function's results in one, computing
each missing result once however many threads ask for it at the same time.
``viperdbm.cache.dogpile`` and ``viperdbm.cache.django`` plug a cache into those
frameworks. The user's guide is ``docs/cache.md``.

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
>>> with Cache(path, expire=3600, size_limit=64 * 2**20) as cache:
...     cache["config"] = {"retries": 3}  # lives an hour (the default)
...     cache.set(encode_key(("user", 42)), ["Ada", 1815], expire=None)  # never expires
...     cache["config"], cache[encode_key(("user", 42))]
True
({'retries': 3}, ['Ada', 1815])
>>> cache = Cache(path)
>>> @memoize(cache, expire=60)
... def square(x: int) -> int:
...     print("computing")
...     return x * x
>>> square(12)
computing
144
>>> square(12)
144
>>> cache.stats()
CacheStats(hits=1, misses=1)
>>> cache.close()
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
import math
import os
import pickle
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Final, Generic, NamedTuple, ParamSpec, TypeVar

from .._closing import ClosesOnExit
from .._dbm import Database
from .._dbm import open as _open_db
from .._errors import ReadonlyError

__all__ = [
    "DEFAULT_EXPIRE",
    "Cache",
    "CacheStats",
    "Memoized",
    "encode_key",
    "memoize",
]

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


# ---------------------------------------------------------------------------- the entry
# How a cache stores one item: the key as given, and as the value a fixed header, then the
# pickle. This is the only place that defines it (docs/cache.md describes it).
#
#   tag        u8       ENTRY_TAG: no pickle starts with this byte (pickle opcodes are
#                       printable ASCII or >= 0x80), so values stored by viperdbm 0.1's
#                       Cache, plain pickles, still read: as items that never expire
#   expire_at  f64 LE   wall-clock second (time.time()) at which it expires; 0.0: never
#   stored_at  f64 LE   wall-clock second of the store: orders eviction after a reopen
#   pickle     ...
ENTRY_TAG: Final = 0x01
_HEADER: Final = struct.Struct("<Bdd")
ENTRY_HEADER_SIZE: Final = _HEADER.size
_EXPIRE_AT: Final = struct.Struct("<d")
NEVER: Final = 0.0
_EXPIRED: Final = -1.0  # an expire_at that has passed (before the epoch): never stored
_NO_QUEUE: Final = -1.0  # an expiry that joins no queue of _Expiries (the heap)


def _expiry_of(raw: bytes) -> float:
    """When the entry ``raw`` expires (:data:`NEVER` for a plain pickle)."""
    expire_at: float = _EXPIRE_AT.unpack_from(raw, 1)[0] if raw[0] == ENTRY_TAG else NEVER
    return expire_at


def _pickled(raw: bytes) -> bytes:
    return raw[ENTRY_HEADER_SIZE:] if raw[0] == ENTRY_TAG else raw


def _count_of(counter: itertools.count[int]) -> int:
    """How many times ``next()`` was called on ``counter``, without calling it."""
    return int(repr(counter)[len("count(") : -1])


def _is_expired(expire_at: float, now: float) -> bool:
    return expire_at != NEVER and expire_at <= now


class _Default(enum.Enum):
    EXPIRE = "the cache's default"


DEFAULT_EXPIRE: Final = _Default.EXPIRE
"""``expire=DEFAULT_EXPIRE`` (the default of every method) means the cache's own ``expire``."""

Expire = float | None | _Default

# How many expired items a write removes on its way (as diskcache's cull_limit): enough to
# keep ahead of items that expire at the rate they are stored, without making one write slow.
CULL_PER_WRITE: Final = 10


class CacheStats(NamedTuple):
    """Hits and misses of a :class:`Cache` in this process since it opened (or the last reset)."""

    hits: int
    misses: int


def _key_bytes(key: Key) -> bytes:
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"cache keys are bytes or str, not {type(key).__name__}")


class _Sizes:
    """The size of every item, in store order (least recently stored first: the eviction
    order), and their total: what a bounded cache's writer keeps so that a write never
    scans. Built by one scan at open, kept by every write; a crash loses it, and the next
    open builds it again.

    As with :class:`_Expiries`, a write only appends its key to ``inbox`` (no lock), and
    whoever holds the cache's lock files the inbox (:meth:`file_inbox`), taking each size
    from the store itself: so two threads storing one key at once cannot leave the books
    with the size of the value that lost."""

    def __init__(self) -> None:
        self.of: OrderedDict[bytes, int] = OrderedDict()
        self.volume = 0
        self.inbox: deque[bytes] = deque()  # keys stored since the last filing
        # bytes stored since the last filing: the bound's slack (a race between two threads
        # may lose an addition, which only makes a filing later by that much)
        self.unfiled = 0

    def file_inbox(self, db: Database) -> None:
        """File what writers noted (the caller holds the cache's lock)."""
        inbox, of = self.inbox, self.of
        self.unfiled = 0
        while inbox:
            key = inbox.popleft()
            raw = db.get(key)
            size = 0 if raw is None else len(key) + len(raw)
            self.volume += size - of.pop(key, 0)
            if raw is not None:
                of[key] = size

    def forget(self, key: bytes) -> None:
        self.volume -= self.of.pop(key, 0)

    def oldest(self) -> bytes:
        return next(iter(self.of))


# Queues of _Expiries kept per time to live; beyond this many distinct ones, a heap
_MOST_QUEUES: Final = 16
# Writes noted in _Expiries.inbox before a writer takes the lock to file them
_FILE_EVERY: Final = 64


class _Expiries:
    """The keys of items that expire, in the order they expire, for the writer to remove
    them a few at a time without a scan.

    Items stored with the same time to live expire in the order they were stored, so each
    time to live has a queue: an ordered dict from key to expiry, where storing a key again
    moves it to the end, O(1) a write (a heap costs O(log n)) and never a stale entry.
    Other expiry times (more distinct times to live than ``_MOST_QUEUES``, an ``incr`` that
    keeps an item's expiry) go to a heap, whose stale entries are sifted out when they
    outnumber the live ones.

    Writers only append to ``inbox`` (thread-safe without a lock: one C call); whoever
    holds the cache's lock files the inbox into the queues (:meth:`file_inbox`). So a write
    takes no lock, and threads storing at once never queue up behind one that the GIL has
    paused while it holds the lock.
    """

    def __init__(self, expiry_in_store: Callable[[bytes], float | None]) -> None:
        #: the expiry of the item the store holds under a key (None: no item), read where
        #: a note says to forget a key (see file_inbox)
        self.expiry_in_store = expiry_in_store
        #: (key, expire_at or NEVER to forget it, time to live naming its queue or _NO_QUEUE)
        self.inbox: deque[tuple[bytes, float, float]] = deque()
        self.queues: dict[float, OrderedDict[bytes, float]] = {}
        self.queue_of: dict[bytes, float] = {}  # key -> its queue's time to live, or _NO_QUEUE
        self.heap: list[tuple[float, bytes]] = []
        self.heap_expiry: dict[bytes, float] = {}  # the live entry of the heap, per key
        self.soonest = math.inf  # at most the earliest expiry filed

    def note(self, key: bytes, expire_at: float, ttl: float) -> None:
        """``key``'s item now expires at ``expire_at`` (NEVER: it does not, or is gone);
        ``ttl`` names its queue. Safe without the lock."""
        self.inbox.append((key, expire_at, ttl))

    def file_inbox(self) -> None:
        """File what writers noted (the caller holds the cache's lock). Written out: every
        write with an expiry passes here once."""
        inbox, queues, queue_of = self.inbox, self.queues, self.queue_of
        while inbox:
            key, expire_at, ttl = inbox.popleft()
            filed = queue_of.pop(key, None)
            if filed is not None:
                if filed == _NO_QUEUE:
                    del self.heap_expiry[key]  # its heap entry goes stale
                else:
                    del queues[filed][key]
            if expire_at == NEVER:
                # A removal notes NEVER after its delete, without the lock: a set of the key
                # by another thread in between notes its expiry first, and this note would
                # forget the item that set stored, which then never expired. So the store
                # says whether anything expiring is left under the key.
                stored = self.expiry_in_store(key)
                if stored is None or stored == NEVER:
                    continue
                expire_at, ttl = stored, _NO_QUEUE
            queue = queues.get(ttl)
            if queue is None and ttl > 0 and len(queues) < _MOST_QUEUES:
                queue = queues[ttl] = OrderedDict()
            if queue is not None:
                # in expiry order, but for a clock set back meanwhile: then an item of this
                # queue may be removed late by the size of the jump (it reads as expired)
                queue[key] = expire_at
                queue_of[key] = ttl
            else:
                self._file_in_heap(key, expire_at)
            if expire_at < self.soonest:
                self.soonest = expire_at

    def _file_in_heap(self, key: bytes, expire_at: float) -> None:
        heapq.heappush(self.heap, (expire_at, key))
        self.heap_expiry[key] = expire_at
        self.queue_of[key] = _NO_QUEUE
        if len(self.heap) > 2 * len(self.heap_expiry) + 1024:  # sift out the stale entries
            self.heap = [(at, k) for k, at in self.heap_expiry.items()]
            heapq.heapify(self.heap)

    def take_due(self, now: float, most: int) -> list[tuple[bytes, float]]:
        """Up to ``most`` ``(key, expire_at)`` of items that expired by ``now``, unfiled
        (the caller holds the cache's lock)."""
        self.file_inbox()
        due: list[tuple[bytes, float]] = []
        for queue in self.queues.values():
            while queue and len(due) < most:
                key, expire_at = next(iter(queue.items()))
                if expire_at > now:
                    break
                del queue[key]
                del self.queue_of[key]
                due.append((key, expire_at))
        heap = self.heap
        while heap and heap[0][0] <= now and len(due) < most:
            expire_at, key = heapq.heappop(heap)
            if self.heap_expiry.get(key) == expire_at:
                del self.heap_expiry[key]
                del self.queue_of[key]
                due.append((key, expire_at))
        heads = [next(iter(queue.values())) for queue in self.queues.values() if queue]
        self.soonest = min([*heads, heap[0][0]] if heap else heads, default=math.inf)
        return due

    def __len__(self) -> int:
        return len(self.queue_of) + len(self.inbox)

    def clear(self) -> None:
        """Forget what was filed (the store was emptied). The inbox stays: a writer may be
        noting into it at this moment, and what it notes of keys now gone comes due to find
        nothing."""
        self.queues.clear()
        self.queue_of.clear()
        self.heap.clear()
        self.heap_expiry.clear()
        self.soonest = math.inf


def _scan(db: Database, *, oldest_first: bool = True) -> list[tuple[float, bytes, int, float]]:
    """``(stored_at, key, size, expire_at)`` of every item (oldest first unless told not
    to): one read each (written out: a cache with books pays it at open)."""
    found: list[tuple[float, bytes, int, float]] = []
    append, get, unpack = found.append, db.get, _HEADER.unpack_from
    listed = db.keys()  # a list, taken at once
    for key in listed:
        raw = get(key)
        if raw is None:
            continue
        if raw[0] == ENTRY_TAG:
            _, expire_at, stored_at = unpack(raw)
        else:  # a plain pickle: never expires, and is the oldest
            expire_at = stored_at = 0.0
        append((stored_at, key, len(key) + len(raw), expire_at))
    if oldest_first:
        found.sort(key=_stored_at)
    return found


def _stored_at(item: tuple[float, bytes, int, float]) -> float:
    return item[0]


class Cache(MutableMapping[bytes, Any], ClosesOnExit):
    """A persistent mapping from ``bytes``/``str`` keys to picklable objects, with expiry
    and a size bound.

    ``Cache(path, flag='c', mode=0o666, *, expire=None, size_limit=None,
    protocol=pickle.HIGHEST_PROTOCOL)`` opens (or creates) a viperdbm store; ``flag``,
    ``mode`` and ``timeout`` are :func:`viperdbm.open`'s.

    - ``expire``: the default time to live of an item, in seconds (None: items never
      expire). :meth:`set`, :meth:`add`, :meth:`touch` and :func:`memoize` take their own.
      An expired item is a miss for every process at once (the expiry time is stored with
      the item, in wall-clock time, so it survives a reopen). It is removed by the writer
      when a read finds it, a few at each write, or all at once by :meth:`expire`.
    - ``size_limit``: a bound in bytes on :meth:`volume`, the keys and stored values of
      all items. Writes evict the least recently stored items first (an expired item
      before any); the store holds at most ``size_limit + size_limit // 64`` (the writes
      since the books were last filed; :meth:`volume` files them and is within the bound).
      A get writes nothing.

    Each value is pickled on write and unpickled on every read (there is no in-memory
    copy: mutate a value, then store it again). Iteration and ``len`` include expired items
    not yet removed; ``in``, ``[]`` and :meth:`get` do not. One process writes (flag
    ``'c'``, ``'w'`` or ``'n'``); others may read at the same time (flag ``'r'``).
    Threads may share a cache: :meth:`set` and :meth:`delete` take no lock (``add``,
    ``touch`` and ``incr`` are atomic among themselves, not against a concurrent ``set``
    of the same key).

    Unpickling runs code chosen by whoever wrote the store: see the module's
    documentation for the trust boundary.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        flag: str = "c",
        mode: int = 0o666,
        *,
        expire: float | None = None,
        size_limit: int | None = None,
        protocol: int = pickle.HIGHEST_PROTOCOL,
        timeout: float = 0.0,
    ) -> None:
        if expire is not None and not expire > 0:
            raise ValueError(f"expire must be a positive number of seconds or None, not {expire!r}")
        if size_limit is not None and size_limit < 0:
            raise ValueError(f"size_limit must be a number of bytes or None, not {size_limit!r}")
        self.protocol = protocol
        self.expire_default = None if expire is None else float(expire)
        self.size_limit = size_limit
        self.readonly = flag[:1] == "r"
        # one writer at a time among this process's threads: a write, what it records and
        # what it evicts are one step for the others
        self._writing = threading.RLock()
        # next() on an itertools.count is one C call, so threads never lose a count and a
        # get pays no lock for it; reading one is _count_of()
        self._hits = itertools.count()
        self._misses = itertools.count()
        self._path = os.fspath(path)
        self.db: Database = _open_db(self._path, flag, mode, timeout=timeout)
        # what the writer keeps to bound the cache and expire items without a scan (from
        # one scan at open): sizes only for a bounded cache, expiries once items expire
        self._sizes: _Sizes | None = None
        self._expiries: _Expiries | None = None
        if not self.readonly and (expire is not None or size_limit is not None):
            try:
                with self._writing:
                    self._track(sizes=size_limit is not None)
                    self._cull(time.time())  # the store may have been filled under another bound
            except BaseException:
                self.db.close()
                raise

    # ------------------------------------------------------------------ reading
    def get(self, key: Key, default: Any = None) -> Any:
        """The object stored under ``key``, or ``default`` if it is missing or expired."""
        # the hot path, written out: every call here costs as much as the store's own get
        raw = self.db.get(key)
        if raw is not None:
            if raw[0] != ENTRY_TAG:
                next(self._hits)
                return pickle.loads(raw)
            expire_at = _EXPIRE_AT.unpack_from(raw, 1)[0]
            if not expire_at or expire_at > time.time():
                next(self._hits)
                return pickle.loads(raw[ENTRY_HEADER_SIZE:])
            self._drop_expired(key, raw)
        next(self._misses)
        return default

    def _live(self, key: Key, now: float) -> bytes | None:
        """The entry under ``key`` unless it is missing or expired by ``now``."""
        raw = self.db.get(key)
        return None if raw is None or _is_expired(_expiry_of(raw), now) else raw

    def _peek(self, key: Key) -> Any:
        """:meth:`get` without counting a hit or a miss: ``_MISSING`` for a miss."""
        raw = self._live(key, time.time())
        return _MISSING if raw is None else pickle.loads(_pickled(raw))

    def __getitem__(self, key: Key) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes | str) and self._live(key, time.time()) is not None

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.db)

    def __len__(self) -> int:
        return len(self.db)

    def expire_time(self, key: Key) -> float | None:
        """When the item under ``key`` expires (``time.time()`` seconds), None if never;
        KeyError if it is missing or expired."""
        raw = self._live(key, time.time())
        if raw is None:
            raise KeyError(key)
        expire_at = _expiry_of(raw)
        return None if expire_at == NEVER else expire_at

    # ------------------------------------------------------------------ writing
    def set(self, key: Key, value: Any, expire: Expire = DEFAULT_EXPIRE) -> bool:
        """Store ``value`` under ``key`` for ``expire`` seconds (None: for good; the default:
        the cache's ``expire``). An ``expire`` of 0 or less, or an item bigger than
        ``size_limit`` on its own, stores nothing and removes the key's old item: False."""
        now = time.time()
        ttl = self.expire_default if expire is DEFAULT_EXPIRE else expire
        if ttl is None:
            expire_at = NEVER
        elif type(ttl) is float and ttl > 0:  # the usual case, checked first
            expire_at = now + ttl
        else:
            expire_at = self._deadline(ttl, now)
        pickled = pickle.dumps(value, self.protocol)
        return self._store(key, pickled, expire_at, now, ttl)

    def __setitem__(self, key: Key, value: Any) -> None:
        self.set(key, value)

    def add(self, key: Key, value: Any, expire: Expire = DEFAULT_EXPIRE) -> bool:
        """Store ``value`` only if ``key`` holds no item (or an expired one): True if stored."""
        pickled = pickle.dumps(value, self.protocol)
        with self._writing:
            if key in self:
                return False
            now = time.time()
            ttl = self.expire_default if expire is DEFAULT_EXPIRE else expire
            return self._store(key, pickled, self._deadline(ttl, now), now, ttl)

    def touch(self, key: Key, expire: Expire = DEFAULT_EXPIRE) -> bool:
        """Give the item under ``key`` a new time to live from now: False if there is none."""
        with self._writing:
            now = time.time()
            raw = self._live(key, now)
            if raw is None:
                return False
            ttl = self.expire_default if expire is DEFAULT_EXPIRE else expire
            return self._store(key, _pickled(raw), self._deadline(ttl, now), now, ttl)

    def incr(self, key: Key, delta: int = 1, default: int | None = 0) -> int:
        """Add ``delta`` to the number under ``key`` and return the sum, keeping its expiry.
        A missing (or expired) key starts from ``default``, with the cache's default expiry;
        KeyError if ``default`` is None."""
        kb = _key_bytes(key)
        with self._writing:
            now = time.time()
            raw = self._live(kb, now)
            if raw is None:
                if default is None:
                    raise KeyError(key)
                value, expire_at = default, self._deadline(self.expire_default, now)
            else:
                value, expire_at = pickle.loads(_pickled(raw)), _expiry_of(raw)
            value += delta
            self._store(kb, pickle.dumps(value, self.protocol), expire_at, now, _NO_QUEUE)
            return value

    def delete(self, key: Key) -> bool:
        """Remove the item under ``key`` (expired or not): False if there was none."""
        kb = _key_bytes(key)
        try:
            del self.db[kb]  # no lock, as a set: the books hear of it at the next filing
        except KeyError:
            return False
        if self._expiries is not None:
            self._expiries.note(kb, NEVER, _NO_QUEUE)
        if self._sizes is not None:
            self._sizes.inbox.append(kb)  # filed as gone: the store no longer has it
        return True

    def __delitem__(self, key: Key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def clear(self) -> None:
        """Remove every item."""
        with self._writing:
            self.db.clear()
            if self._sizes is not None:
                self._sizes = _Sizes()
            if self._expiries is not None:
                self._expiries.clear()

    def expire(self) -> int:
        """Remove every expired item now; how many there were. The first call (when the
        cache has neither ``expire`` nor ``size_limit``) reads every item once; later ones
        only the expired."""
        self._refuse_if_readonly()
        with self._writing:
            expiries = self._expiries
            if expiries is None:
                expiries = self._track(sizes=False)
            now = time.time()
            return sum(
                self._remove_if_expired(key, expire_at, now)
                for key, expire_at in expiries.take_due(now, most=len(expiries))
            )

    def volume(self) -> int:
        """The bytes of every item's key and stored value (expired items included until they
        are removed): the figure ``size_limit`` bounds. The store on disk is larger: it also
        holds record headers, space not yet reclaimed and what a live reader still reads.
        Only a bounded cache's writer knows it without reading every item."""
        with self._writing:
            if self._sizes is not None:
                self._cull(time.time())
                return self._sizes.volume
            return sum(size for _, _, size, _ in _scan(self.db, oldest_first=False))

    def stats(self, reset: bool = False) -> CacheStats:
        """Hits and misses of :meth:`get` (and ``[]``, and :func:`memoize`) in this process
        since the cache opened or since the last ``stats(reset=True)``, which returns the
        counts it clears."""
        with self._writing:
            hits, misses = self._hits, self._misses
            if reset:
                self._hits, self._misses = itertools.count(), itertools.count()
        # a get that took the old counter before the reset is counted in what it returns
        return CacheStats(_count_of(hits), _count_of(misses))

    def sync(self) -> None:
        """Make every write so far power-fail durable (see :meth:`viperdbm.Database.sync`)."""
        self.db.sync()

    def close(self) -> None:
        """Close the store underneath (idempotent)."""
        self.db.close()

    def __repr__(self) -> str:
        return f"<viperdbm.cache.Cache over {self.db!r}>"

    # ------------------------------------------------------------------ helpers
    def _deadline(self, ttl: float | None, now: float) -> float:
        """When an item stored at ``now`` for ``ttl`` seconds expires."""
        if ttl is None:
            return NEVER
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise TypeError(f"expire is a number of seconds or None, not {type(ttl).__name__}")
        return now + ttl if ttl > 0 else _EXPIRED

    def _store(
        self, key: Key, pickled: bytes, expire_at: float, now: float, ttl: float | None
    ) -> bool:
        """Store the item; ``ttl`` names the expiry queue it joins (None or ``_NO_QUEUE``:
        none)."""
        if ttl is None:
            ttl = _NO_QUEUE
        raw = _HEADER.pack(ENTRY_TAG, expire_at, now) + pickled
        expiries = self._expiries
        if expiries is None:
            if expire_at == NEVER and self._sizes is None:
                self.db[key] = raw  # no books kept: nothing else to do
                return True
        elif expire_at > now or expire_at == NEVER:
            # The usual case with books kept, written out, and without the lock (see
            # _Expiries): two threads storing one key at once may note their expiries in the
            # other order than they stored, which _remove_if_expired puts right; sizes are
            # read from the store when they are filed.
            kb = key if type(key) is bytes else _key_bytes(key)
            sizes = self._sizes
            limit = self.size_limit or 0  # a number whenever sizes are kept
            size = len(kb) + len(raw)
            if sizes is None or size <= limit:
                self.db[kb] = raw
                expiries.note(kb, expire_at, ttl)
                due = expiries.soonest <= now or len(expiries.inbox) >= _FILE_EVERY
                if sizes is not None:
                    sizes.inbox.append(kb)
                    sizes.unfiled += size
                    due = due or sizes.unfiled > limit // _FILE_EVERY
                # whoever files does it for all: the others do not wait
                if due and self._writing.acquire(blocking=False):
                    try:
                        self._cull(now)
                    finally:
                        self._writing.release()
                return True
        with self._writing:  # expired at once, too big for the bound, or books to start
            kb = _key_bytes(key)
            bound = self.size_limit
            if _is_expired(expire_at, now) or (bound is not None and len(kb) + len(raw) > bound):
                self._remove(kb)
                return False
            if self.readonly:
                self.db[kb] = raw  # raises the store's own ReadonlyError
            if self._expiries is None:
                self._track(sizes=False)  # items expire from now on
            return self._store(kb, pickled, expire_at, now, ttl)  # now on the books' path

    def _track(self, *, sizes: bool) -> _Expiries:
        """Start keeping expiries (and sizes, if ``sizes``) from one scan of the store."""
        found = _scan(self.db)
        expiries = self._expiries = _Expiries(self._expiry_in_store)
        expiries.inbox.extend(  # each in the queue of the time to live it was stored for
            (key, expire_at, round(expire_at - stored_at, 3))
            for stored_at, key, _, expire_at in found
            if expire_at != NEVER
        )
        expiries.file_inbox()
        if sizes:
            books = self._sizes = _Sizes()
            books.of.update((key, size) for _, key, size, _ in found)
            books.volume = sum(books.of.values())
        return expiries

    def _cull(self, now: float) -> None:
        """File the books; remove a few expired items, then the least recently stored while
        over the bound (the caller holds the lock)."""
        if self._sizes is not None:
            self._sizes.file_inbox(self.db)
        if self._expiries is not None:
            for key, expire_at in self._expiries.take_due(now, CULL_PER_WRITE):
                self._remove_if_expired(key, expire_at, now)
        sizes, limit = self._sizes, self.size_limit
        if sizes is not None and limit is not None:
            while sizes.volume > limit and sizes.of:
                self._remove(sizes.oldest())

    def _drop_expired(self, key: Key, raw: bytes) -> None:
        """A read found ``raw`` expired: the writer removes it, unless another thread has
        stored the key again meanwhile (or holds the lock: then a later cull removes it).
        Writes take no lock: the removal is a compare-and-delete in the core, so a set of
        the key by another thread comes before it (and is kept) or after it."""
        if self.readonly or not self._writing.acquire(blocking=False):
            return
        try:
            self._remove(_key_bytes(key), raw)
        finally:
            self._writing.release()

    def _expiry_in_store(self, key: bytes) -> float | None:
        raw = self.db.get(key)
        return None if raw is None else _expiry_of(raw)

    def _remove_if_expired(self, key: bytes, expire_at: float, now: float) -> bool:
        """The books say ``key``'s item expired at ``expire_at``: remove it if the store
        agrees. Where it does not (two threads stored the key at once and noted their
        expiries in the other order, or a write went through ``self.db``), file what the
        store says instead. (A set of the key by another thread between the read and the
        removal is kept: the removal is a compare-and-delete, as in :meth:`_drop_expired`.)"""
        raw = self.db.get(key)
        if raw is None:
            return False
        stored_expiry = _expiry_of(raw)
        if _is_expired(stored_expiry, now):
            return self._remove(key, raw)
        if stored_expiry != NEVER and self._expiries is not None:
            self._expiries.note(key, stored_expiry, _NO_QUEUE)
        return False

    def _remove(self, key: bytes, raw: bytes | None = None) -> bool:
        """Remove ``key``'s item (only while it is ``raw``, if given: a set by another
        thread meanwhile is kept, and its books are filed from its inbox as any set's). The
        books forget a key that is gone, removed here or not."""
        if raw is not None:
            removed = self.db._delete_if(key, raw)
            if not removed and key in self.db:
                return False  # stored again meanwhile: that set's books stand
        else:
            try:
                del self.db[key]
                removed = True
            except KeyError:
                removed = False
        if self._sizes is not None:
            self._sizes.forget(key)
        if self._expiries is not None:
            self._expiries.note(key, NEVER, _NO_QUEUE)
        return removed

    def _refuse_if_readonly(self) -> None:
        if self.readonly:
            raise ReadonlyError(
                "the cache was opened read-only (flag 'r'): its writer removes expired items",
                filename=self._path,
            )


_MISSING: Final = object()


class _Flight:
    """One computation of a memoized call that other threads wait for."""

    __slots__ = ("done", "error", "leader", "result")

    def __init__(self) -> None:
        self.leader = threading.get_ident()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Memoized(Generic[P, R]):
    """A function whose results are kept in a :class:`Cache` (made by :func:`memoize`)."""

    __name__: str
    __qualname__: str

    def __init__(
        self, func: Callable[P, R], cache: Cache, prefix: bytes, expire: Expire = DEFAULT_EXPIRE
    ) -> None:
        self.__wrapped__ = func
        self.cache = cache
        self.prefix = prefix
        self.expire = expire
        # calls being computed, by key: the threads that ask for one of them meanwhile wait
        # for its result instead of computing it again (a stampede)
        self._flights: dict[bytes, _Flight] = {}
        self._flights_lock = threading.Lock()
        functools.update_wrapper(self, func)

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> bytes:
        """The key under which the result of ``func(*args, **kwargs)`` is kept."""
        return self.prefix + encode_key((args, kwargs))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self.cache_key(*args, **kwargs)
        result = self.cache.get(key, _MISSING)
        if result is not _MISSING:
            return result  # type: ignore[no-any-return]
        with self._flights_lock:
            flight = self._flights.get(key)
            leading = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if leading:
            return self._lead(flight, key, *args, **kwargs)
        if flight.leader == threading.get_ident():
            # the call recursed into itself: waiting for ourselves would never end
            return self.__wrapped__(*args, **kwargs)
        flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.result  # type: ignore[no-any-return]

    def _lead(self, flight: _Flight, key: bytes, *args: P.args, **kwargs: P.kwargs) -> R:
        """Compute the call for every thread waiting on ``flight``, and store it."""
        try:
            # a flight that ended between our miss and our lead may have stored it (not
            # counted: the call's miss is)
            result = self.cache._peek(key)
            if result is _MISSING:
                result = self.__wrapped__(*args, **kwargs)
                if not self.cache.readonly:  # a reader computes, and leaves storing to the writer
                    self.cache.set(key, result, self.expire)
            flight.result = result
            return result  # type: ignore[no-any-return]
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._flights_lock:
                del self._flights[key]
            flight.done.set()

    def forget(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the kept result of ``func(*args, **kwargs)``; False if there was none."""
        return self.cache.delete(self.cache_key(*args, **kwargs))


def memoize(
    cache: Cache, *, prefix: str | bytes | None = None, expire: Expire = DEFAULT_EXPIRE
) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """Keep the results of a function in ``cache``, keyed by its arguments, for ``expire``
    seconds (the default: the cache's ``expire``; None: for good).

    The key is ``prefix`` (default: the function's ``module.qualname`` and a colon)
    followed by :func:`encode_key` of ``(args, kwargs)``, so the arguments must be of the
    types :func:`encode_key` accepts; anything else raises ``TypeError`` rather than risk a
    wrong hit. Results are pickled. ``None`` is a result like any other. Exceptions are not
    cached.

    **Stampedes.** A missing or expired result is computed once: threads of this process
    that call with the same arguments meanwhile wait for it and get the same result (or the
    same exception); calls with other arguments do not wait. Across processes: a store has
    one writer, and the processes that open the cache read-only (flag ``'r'``, beside a
    live writer) read what the writer computed; on a miss they compute for themselves
    and store nothing.

    Unpickling runs code chosen by whoever wrote the cache: only memoize into a store that
    nobody untrusted can write (see the module's documentation).
    """

    def decorate(func: Callable[P, R]) -> Memoized[P, R]:
        if prefix is None:
            name = f"{func.__module__}.{func.__qualname__}:".encode()
        else:
            name = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        return Memoized(func, cache, name, expire)

    return decorate
