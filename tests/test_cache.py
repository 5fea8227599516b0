"""viperdbm.cache: the pickle-backed Cache, encode_key and memoize, on real stores."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _vdbtools import FrozenClock, child_env, env_seed, run_script_ok

import viperdbm
from viperdbm.cache import (
    CULL_PER_WRITE,
    ENTRY_HEADER_SIZE,
    ENTRY_TAG,
    Cache,
    CacheStats,
    encode_key,
    memoize,
)


def test_cache_round_trips_objects_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "c.vdb"
    value = {"list": [1, 2.5, None], "tuple": (1, "a"), "set": {3}, "bytes": b"\x00"}
    with Cache(path) as cache:
        cache["obj"] = value
        cache[b"none"] = None
        assert cache["obj"] == value
        assert cache.get("none", "default") is None
        assert cache.get("missing", "default") == "default"
        assert "obj" in cache and b"obj" in cache  # type: ignore[comparison-overlap]
        assert "missing" not in cache  # type: ignore[comparison-overlap]
        assert sorted(cache) == [b"none", b"obj"]
        assert len(cache) == 2
    with Cache(path, "r") as cache:
        assert cache["obj"] == value
        with pytest.raises(KeyError):
            cache["missing"]
        with pytest.raises(viperdbm.ReadonlyError):
            cache["x"] = 1
    # the values are entries in an ordinary store: a header, then the pickle
    with viperdbm.open(path) as db:
        raw = db[b"obj"]
        assert raw[0] == ENTRY_TAG and pickle.loads(raw[ENTRY_HEADER_SIZE:]) == value


def test_plain_pickles_stored_before_expiry_existed_still_read(tmp_path: Path) -> None:
    # viperdbm 0.1's Cache stored bare pickles: they read as items that never expire
    path = tmp_path / "old.vdb"
    with viperdbm.open(path, "c") as db:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            db[b"p%d" % protocol] = pickle.dumps({"protocol": protocol}, protocol)
    with Cache(path, expire=10, size_limit=10_000) as cache:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            key = b"p%d" % protocol
            assert cache[key] == {"protocol": protocol}
            assert cache.expire_time(key) is None
        assert cache.volume() == sum(len(k) + len(v) for k, v in cache.db.items())


def test_delete_and_mutation_needs_a_store_again(tmp_path: Path) -> None:
    with Cache(tmp_path / "c.vdb") as cache:
        cache["l"] = [1]
        cache["l"].append(2)  # a copy: not stored
        assert cache["l"] == [1]
        items = cache["l"]
        items.append(2)
        cache["l"] = items
        assert cache["l"] == [1, 2]
        del cache["l"]
        assert b"l" not in cache
        with pytest.raises(KeyError):
            del cache["l"]


def test_protocol_is_used(tmp_path: Path) -> None:
    with Cache(tmp_path / "c.vdb", protocol=2) as cache:
        cache["x"] = [1]
        assert cache.db[b"x"][ENTRY_HEADER_SIZE:][:2] == b"\x80\x02"


def test_encode_key_is_canonical_and_injective() -> None:
    assert encode_key({"a": 1, "b": 2}) == encode_key({"b": 2, "a": 1})
    assert encode_key({1, 2, 3}) == encode_key({3, 2, 1})
    distinct: list[object] = [
        None,
        True,
        False,
        0,
        1,
        -1,
        1.0,
        0.0,
        -0.0,
        "",
        "1",
        b"",
        b"1",
        (),
        [],
        {},
        set(),
        frozenset(),
        (1,),
        [1],
        (1, 2),
        ((1,), 2),
        (1, (2,)),
        {"a": 1},
        {"a": "1"},
        "s4:",
        ("ab", "c"),
        ("a", "bc"),
        {1: 2},
        {2: 1},
        float("inf"),
        2**64,
        "\udcff",
    ]
    encoded = [encode_key(v) for v in distinct]
    assert len(set(encoded)) == len(distinct)
    assert encode_key(("user", 42)) == b"(s4:useri42;)"
    for bad in (object(), 1j, type("S", (str,), {})("x"), [object()]):
        with pytest.raises(TypeError, match="canonically"):
            encode_key(bad)


def test_memoize_computes_once_and_caches_none(tmp_path: Path) -> None:
    calls: list[tuple[object, ...]] = []
    with Cache(tmp_path / "m.vdb") as cache:

        @memoize(cache)
        def f(x: int, *, scale: float = 1.0) -> float | None:
            calls.append((x, scale))
            return None if x < 0 else x * scale

        assert f(2) == 2.0 and f(2) == 2.0
        assert f(2, scale=3.0) == 6.0
        assert f(-1) is None and f(-1) is None
        assert calls == [(2, 1.0), (2, 3.0), (-1, 1.0)]
        assert f.__name__ == "f" and f.cache is cache
        key = f.cache_key(2)
        assert key.startswith(b"test_cache.test_memoize_computes_once_and_caches_none.<locals>.f:")
        assert f.forget(2) and not f.forget(2)
        assert f(2) == 2.0 and len(calls) == 4
        with pytest.raises(TypeError):
            f(object())  # type: ignore[arg-type]


def test_memoize_does_not_cache_exceptions_and_takes_a_prefix(tmp_path: Path) -> None:
    attempts = []
    with Cache(tmp_path / "m.vdb") as cache:

        @memoize(cache, prefix="v2:")
        def flaky(x: str) -> str:
            attempts.append(x)
            if len(attempts) == 1:
                raise RuntimeError("first time")
            return x.upper()

        with pytest.raises(RuntimeError):
            flaky("a")
        assert flaky("a") == "A" and flaky("a") == "A"
        assert attempts == ["a", "a"]
        assert cache.db.keys() == [b"v2:" + encode_key((("a",), {}))]


def test_memoized_results_survive_the_process(tmp_path: Path) -> None:
    code = f"""
from viperdbm.cache import Cache, memoize
with Cache({str(tmp_path / "p.vdb")!r}) as cache:
    @memoize(cache, prefix="fib:")
    def fib(n):
        print("computing", n)
        return n if n < 2 else fib(n - 1) + fib(n - 2)
    print(fib(20))
"""
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert first.stdout.count("computing") == 21 and first.stdout.endswith("6765\n")
    second = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert second.stdout == "6765\n"


def test_the_trust_boundary_is_stated() -> None:
    import viperdbm.cache as module

    for doc in (module.__doc__, Cache.__doc__, memoize.__doc__):
        assert doc is not None and "unpickling runs code" in " ".join(doc.lower().split())
    text = (Path(__file__).parent.parent / "docs" / "cache.md").read_text(encoding="utf-8")
    assert "unpickling runs code" in " ".join(text.lower().split())


# ---------------------------------------------------------------------------- expiry
def freeze_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    """``time.time`` under the test's control (the cache reads the wall clock)."""
    clock = FrozenClock(1_800_000_000.0)
    monkeypatch.setattr(time, "time", clock)
    return clock


def test_items_expire_for_every_reader_and_across_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = freeze_clock(monkeypatch)
    path = tmp_path / "e.vdb"
    with Cache(path, expire=60) as cache:
        cache["default"] = "a"
        assert cache.set("short", "b", expire=10)
        assert cache.set("forever", "c", expire=None)
        assert not cache.set("gone", "d", expire=0) and b"gone" not in cache
        assert cache.expire_time("short") == clock.now + 10
        assert cache.expire_time("forever") is None
        clock.advance(10)
        assert b"short" not in cache and cache.get("short", "miss") == "miss"
        assert cache["default"] == "a"
    clock.advance(40)  # 50 s in: 'default' has 10 s left, after a reopen as before
    with Cache(path) as cache:
        assert cache["default"] == "a" and cache["forever"] == "c"
        clock.advance(10)
        with pytest.raises(KeyError):
            cache["default"]
        assert cache["forever"] == "c"
        # the reads found them expired, and the writer removed them
        assert sorted(cache) == [b"forever"]


def test_a_reader_beside_the_writer_misses_what_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = freeze_clock(monkeypatch)
    path = tmp_path / "e.vdb"
    with Cache(path) as writer:
        writer.set("k", "v", expire=5)
        reader = Cache(path, "r")
        try:
            assert reader["k"] == "v"
            clock.advance(5)
            assert reader.get("k") is None and b"k" not in reader
            assert writer.get("k") is None
            with pytest.raises(viperdbm.ReadonlyError, match="read-only"):
                reader.expire()
        finally:
            reader.close()
    # another process, 10 s in: the expiry time is in the store (the written item was
    # stored at 5 s, to expire at 6 s)
    with Cache(path, "w") as cache:
        cache.set("k", "v", expire=3600)
        cache.set("old", "v", expire=1)
    out = run_script_ok(
        "import sys, time\n"
        "from viperdbm.cache import Cache\n"
        "with Cache(sys.argv[1], 'r') as c:\n"
        "    time.time = lambda: 1_800_000_000.0 + 10\n"
        "    print('ok', c.get('k'), c.get('old'))\n",
        str(path),
    )
    assert out.split() == ["ok", "v", "None"]


def test_expire_removes_every_expired_item_and_writes_cull_a_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = freeze_clock(monkeypatch)
    with Cache(tmp_path / "e.vdb") as cache:
        for i in range(100):
            cache.set(f"k{i}", i, expire=1 + i % 2)  # half expire after 1 s, half after 2 s
        cache.set("keep", 0, expire=None)
        cache.set("k0", "stored again", expire=100)  # its old expiry no longer counts
        clock.advance(1)
        assert len(cache) == 101
        cache["w"] = 1  # a write removes a few expired items on its way
        assert len(cache) == 102 - CULL_PER_WRITE
        assert cache.expire() == 50 - 1 - CULL_PER_WRITE
        assert cache.expire() == 0
        clock.advance(1)
        assert cache.expire() == 50
        assert sorted(cache) == [b"k0", b"keep", b"w"]


def test_a_set_racing_with_the_removal_of_its_expired_item_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer read the expired item and is about to remove it when another thread sets
    the key again: the new item stays (the removal is a compare-and-delete in the core).
    Before, it was removed with the old one: a later miss. Here the other thread's set runs
    inside the read the cull makes, the one instant it could come between read and removal."""
    clock = freeze_clock(monkeypatch)
    with Cache(tmp_path / "e.vdb") as cache:
        cache.set("k", "old", expire=1)
        clock.advance(2)
        get = cache.db.get

        def then_another_thread_sets(key: object, default: object = None) -> object:
            raw = get(key, default)  # type: ignore[arg-type]
            if key == b"k":
                cache.set("k", "new", expire=100)
            return raw

        monkeypatch.setattr(cache.db, "get", then_another_thread_sets)
        assert cache.expire() == 0
        monkeypatch.undo()
        freeze_clock(monkeypatch).now = clock.now
        assert cache["k"] == "new"
        assert cache.expire_time("k") == pytest.approx(clock.now + 100)


def test_add_touch_and_incr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = freeze_clock(monkeypatch)
    with Cache(tmp_path / "e.vdb", expire=30) as cache:
        assert cache.add("a", 1) and not cache.add("a", 2) and cache["a"] == 1
        assert not cache.touch("missing")
        cache.set("t", "x", expire=5)
        clock.advance(4)
        assert cache.touch("t", expire=10) and cache.expire_time("t") == clock.now + 10
        clock.advance(9)
        assert cache["t"] == "x"
        clock.advance(1)
        assert not cache.touch("t") and cache.add("t", "new") and cache["t"] == "new"
        assert cache.incr("n") == 1 and cache.incr("n", 10) == 11
        assert cache.expire_time("n") == clock.now + 30
        cache.set("m", 5, expire=3)
        at = cache.expire_time("m")
        assert cache.incr("m", -2) == 3 and cache.expire_time("m") == at  # keeps its expiry
        with pytest.raises(KeyError):
            cache.incr("absent", default=None)
        with pytest.raises(ValueError, match="expire"):
            Cache(tmp_path / "bad.vdb", expire=0)
        with pytest.raises(TypeError, match="expire"):
            cache.set("x", 1, expire="soon")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- bounds
def stored_volume(cache: Cache) -> int:
    """The volume counted from the store itself, not from the cache's ledger."""
    return sum(len(key) + len(raw) for key, raw in cache.db.items())


def test_eviction_keeps_the_bound_under_random_mixed_sizes(tmp_path: Path) -> None:
    seed = env_seed("VIPERDBM_CACHE_SEED", 1407)
    rng = random.Random(seed)
    limit = 200_000
    path = tmp_path / "b.vdb"
    stored: list[bytes] = []  # keys in the order they were last stored, but not deleted
    with Cache(path, size_limit=limit) as cache:
        for step in range(3000):
            key = b"k%d" % rng.randrange(400)
            op = rng.random()
            if op < 0.8:
                size = rng.choice((10, 100, 1000, 10_000, 60_000))
                if key in stored:
                    stored.remove(key)
                if cache.set(key, rng.randbytes(size)):
                    stored.append(key)
            elif op < 0.9:
                cache.delete(key)
                if key in stored:
                    stored.remove(key)
            else:
                cache.get(key)
            # the slack: bytes stored since the books were last filed, at most 1/64 of it
            assert stored_volume(cache) <= limit + limit // 64, (seed, step)
            if step % 100 == 0:
                volume = cache.volume()  # files the books: within the bound itself
                assert volume == stored_volume(cache) <= limit, (seed, step)
                # what is left is what was stored last: the least recently stored went first
                alive = set(cache)
                assert set(stored[len(stored) - len(alive) :]) == alive, (seed, step)
                stored = [k for k in stored if k in alive]
        assert not cache.set("huge", b"x" * limit) and b"huge" not in cache
        volume = cache.volume()
    with Cache(path, size_limit=limit) as cache:
        assert cache.volume() == volume == stored_volume(cache)
    with Cache(path, size_limit=limit // 4) as cache:  # a smaller bound evicts at open
        assert cache.volume() <= limit // 4 and cache.volume() == stored_volume(cache)


def test_a_killed_writer_leaves_a_cache_that_reopens_within_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "k.vdb"
    limit = 50_000
    code = (
        "import sys, itertools\n"
        "from viperdbm.cache import Cache\n"
        "with Cache(sys.argv[1], size_limit=int(sys.argv[2]), expire=3600) as c:\n"
        "    for i in itertools.count():\n"
        "        c.set(b'k%d' % (i % 500), bytes(i % 3000), expire=1 + i % 7)\n"
        "        if i == 2000:\n"
        "            print('ready', flush=True)\n"
    )
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(limit)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(0.05 * round_)
        finally:
            child.kill()
            child.wait()
        with Cache(path, size_limit=limit) as cache:
            assert cache.volume() <= limit and cache.volume() == stored_volume(cache)
            for key in cache:
                value = cache.get(key)
                assert value is None or isinstance(value, bytes)


# ---------------------------------------------------------------------------- stats
def test_stats_count_hits_and_misses_and_reset(tmp_path: Path) -> None:
    with Cache(tmp_path / "s.vdb") as cache:
        cache["a"] = 1
        assert cache.get("a") == 1 and cache["a"] == 1
        assert cache.get("b") is None
        with pytest.raises(KeyError):
            cache["b"]

        @memoize(cache)
        def f(x: int) -> int:
            return x

        f(1), f(1)
        assert cache.stats() == CacheStats(hits=3, misses=3)
        assert cache.stats(reset=True) == (3, 3)
        assert cache.stats() == (0, 0)


# ---------------------------------------------------------------------------- stampedes
def test_memoize_computes_each_key_once_however_many_threads_ask(tmp_path: Path) -> None:
    calls: list[int] = []
    gate = threading.Barrier(8)
    with Cache(tmp_path / "m.vdb") as cache:

        @memoize(cache)
        def slow(x: int) -> int:
            calls.append(x)
            time.sleep(0.05)
            return x * x

        def worker() -> list[int]:
            gate.wait()
            return [slow(x) for x in range(10)]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: worker(), range(8)))
        assert results == [[x * x for x in range(10)]] * 8
        assert sorted(calls) == list(range(10))


def test_memoize_waits_per_key_and_shares_an_exception(tmp_path: Path) -> None:
    started = {1: threading.Event(), 2: threading.Event()}
    release = threading.Event()
    with Cache(tmp_path / "m.vdb") as cache:

        @memoize(cache)
        def f(x: int) -> int:
            started[x].set()
            if x == 1:
                # key 1 waits for key 2 to start: with one global lock this never happens
                assert started[2].wait(10)
                assert release.wait(10)
                raise RuntimeError("boom")
            return x

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(f, 1)
            assert started[1].wait(10)
            waiter = pool.submit(f, 1)  # waits for the first call of f(1)
            assert pool.submit(f, 2).result(10) == 2
            time.sleep(0.05)
            release.set()
            for future in (first, waiter):
                with pytest.raises(RuntimeError, match="boom"):
                    future.result(10)
        assert f.cache_key(1) not in cache


def test_memoize_in_a_reader_computes_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.vdb"
    calls: list[int] = []
    with Cache(path) as writer:

        @memoize(writer, prefix="sq:")
        def square(x: int) -> int:
            calls.append(x)
            return x * x

        square(3)
        with Cache(path, "r") as reader:

            @memoize(reader, prefix="sq:")
            def square_read(x: int) -> int:
                calls.append(x)
                return x * x

            assert square_read(3) == 9 and calls == [3]  # what the writer computed
            assert square_read(4) == 16 and calls == [3, 4]
            assert square.cache_key(4) not in writer


def test_memoize_recursing_into_the_same_call_does_not_hang(tmp_path: Path) -> None:
    with Cache(tmp_path / "m.vdb") as cache:

        @memoize(cache)
        def f(depth: int, once: bool) -> int:
            return f(depth, False) + 1 if once else depth

        assert f(5, True) == 6


@pytest.mark.parametrize("limit", [None, 100_000], ids=["unbounded", "bounded"])
def test_threads_writing_at_once_keep_the_books_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    # unbounded, a write with an expiry takes no lock (_Expiries' inbox); bounded, it does
    clock = freeze_clock(monkeypatch)
    seed = env_seed("VIPERDBM_CACHE_SEED", 1408)
    with Cache(tmp_path / "t.vdb", expire=5, size_limit=limit) as cache:

        def worker(index: int) -> None:
            rng = random.Random(f"{seed}/{index}")
            for _ in range(1500):
                key = b"k%d" % rng.randrange(300)
                op = rng.random()
                if op < 0.6:
                    cache.set(key, rng.randbytes(rng.choice((10, 500, 3000))), rng.choice((2, 5)))
                elif op < 0.7:
                    cache.delete(key)
                elif op < 0.75:
                    cache.incr(b"n%d" % index)
                else:
                    cache.get(key)
                if rng.random() < 0.01:
                    clock.advance(1)  # items expire while others are stored

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads switch inside every step, not every 5 ms
        try:
            with ThreadPoolExecutor(8) as pool:
                try:
                    list(pool.map(worker, range(8)))
                except Exception as error:  # say the seed that replays it
                    raise AssertionError(f"VIPERDBM_CACHE_SEED={seed}") from error
        finally:
            sys.setswitchinterval(interval)
        assert cache.volume() == stored_volume(cache) <= (limit or stored_volume(cache)), seed
        clock.advance(10)
        cache.expire()  # every item expired: the books lost none of them
        assert len(cache) == 0, seed


def test_books_that_disagree_with_the_store_are_put_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two threads storing one key at once may note their expiries in the other order than
    # they stored; a write through cache.db does the same deterministically.
    clock = freeze_clock(monkeypatch)
    with Cache(tmp_path / "d.vdb") as cache:
        cache.set("k", "long", expire=100)
        long_lived = cache.db[b"k"]
        cache.set("k", "short", expire=1)
        cache.db[b"k"] = long_lived  # the books say 1 s, the store 100 s
        clock.advance(2)
        assert cache.expire() == 0 and cache["k"] == "long"  # not removed early
        clock.advance(100)
        assert cache.expire() == 1 and b"k" not in cache.db  # nor forgotten


@pytest.mark.parametrize("removal", ["delete", "expired"])
def test_a_set_between_a_removal_and_its_note_keeps_its_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, removal: str
) -> None:
    """A removal (a delete, or the removal of an expired item) notes that the key is gone
    after it deleted it, without the lock. Another thread's set of the key in between notes
    its expiry before that: the item it stored must still expire."""
    clock = freeze_clock(monkeypatch)
    with Cache(tmp_path / "c.vdb", expire=5) as cache:
        cache.set(b"k", "old", 1)
        db = cache.db
        name = "__delitem__" if removal == "delete" else "_delete_if"
        real_delete: Callable[..., object] = getattr(type(db), name)

        def set_right_after(*args: object) -> object:
            result = real_delete(*args)
            cache.set(b"k", "new")  # (from another thread, in the real race)
            return result

        monkeypatch.setattr(type(db), name, set_right_after)
        if removal == "delete":
            assert cache.delete(b"k")
        else:
            clock.advance(2)
            assert cache.get(b"k") is None  # found expired: removed
        monkeypatch.setattr(type(db), name, real_delete)
        assert cache.get(b"k") == "new"
        clock.advance(10)
        assert cache.expire() == 1, "the new item was forgotten by the books"
        assert len(cache) == 0
