"""viperdbm.cache: the pickle-backed Cache, encode_key and memoize, on real stores."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import viperdbm
from viperdbm.cache import Cache, encode_key, memoize


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
    # the values are plain pickles in an ordinary store
    with viperdbm.open(path) as db:
        assert pickle.loads(db[b"obj"]) == value


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
        assert cache.db[b"x"][:2] == b"\x80\x02"


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
