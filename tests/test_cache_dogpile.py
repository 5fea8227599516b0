"""The dogpile.cache backend ``viperdbm`` (viperdbm/cache/dogpile.py).

One contract, every backend, in the manner of CPython's test_dbm: the region-level tests
are written once and run over dogpile's own ``dogpile.cache.memory`` (values kept as
given) and ``dogpile.cache.dbm`` (values serialized to bytes) as well as ``viperdbm``, so
that each expectation is shown to be dogpile's before it is asked of viperdbm. The tests
after the contract are viperdbm's own: the entry point, persistence across a reopen, the
store's ``expire`` and ``size_limit``, read-only regions and a reader in another process.

Time is a fake clock (``time.time`` patched, which dogpile's regions and locks and
viperdbm's Cache all read), so expiry is tested without sleeping.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast

import pytest
from _vdbtools import FrozenClock
from dogpile.cache import CacheRegion, make_region
from dogpile.cache.api import NO_VALUE, CacheBackend, CachedValue, KeyType
from dogpile.cache.proxy import ProxyBackend
from dogpile.cache.util import sha1_mangle_key

import viperdbm
from viperdbm.cache import Cache
from viperdbm.cache.dogpile import ViperBackend

# the two reference backends first: a failure there is a wrong expectation, not a bug
BACKENDS = ("dogpile.cache.memory", "dogpile.cache.dbm", "viperdbm")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    fake = FrozenClock()
    monkeypatch.setattr(time, "time", fake)
    return fake


class MakeRegion(Protocol):
    def __call__(
        self,
        expiration_time: float | None = None,
        *,
        region_args: Mapping[str, Any] | None = None,
        wrap: Sequence[type[ProxyBackend]] = (),
    ) -> CacheRegion: ...


def backend_arguments(name: str, directory: Path, n: int) -> dict[str, Any]:
    """Arguments for a fresh cache of backend ``name`` (number ``n`` in ``directory``)."""
    if name == "dogpile.cache.memory":
        return {"cache_dict": {}}
    if name == "dogpile.cache.dbm":
        return {"filename": str(directory / f"region{n}.dbm")}
    return {"path": str(directory / f"region{n}.vdb")}


def close_region(region: CacheRegion) -> None:
    backend = region.actual_backend
    if isinstance(backend, ViperBackend):
        backend.close()


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return cast(str, request.param)


@pytest.fixture
def make(backend_name: str, tmp_path: Path) -> Iterator[MakeRegion]:
    """Makes regions over fresh caches of the backend under test (closed at the end)."""
    made: list[CacheRegion] = []
    numbers = itertools.count()

    def factory(
        expiration_time: float | None = None,
        *,
        region_args: Mapping[str, Any] | None = None,
        wrap: Sequence[type[ProxyBackend]] = (),
    ) -> CacheRegion:
        region = make_region(**(region_args or {})).configure(
            backend_name,
            expiration_time=expiration_time,
            arguments=backend_arguments(backend_name, tmp_path, next(numbers)),
            wrap=list(wrap),
        )
        made.append(region)
        return region

    yield factory
    for region in made:
        close_region(region)


class Counter:
    """A creator that counts its calls and returns ``value`` (default: the call's number)."""

    def __init__(self, value: Any = None) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> Any:
        self.calls += 1
        return f"value {self.calls}" if self.value is None else self.value


# ============================================================== the contract, every backend
def test_set_get_delete(make: MakeRegion) -> None:
    region = make()
    region.set("k", {"a": [1, 2.5, None], "b": (b"\x00\xff", "ü")})
    assert region.get("k") == {"a": [1, 2.5, None], "b": (b"\x00\xff", "ü")}
    region.set("k", "second")
    assert region.get("k") == "second"
    region.delete("k")
    assert region.get("k") is NO_VALUE
    region.delete("k")  # idempotent
    region.delete("never stored")


def test_miss_is_no_value_and_none_is_a_value(make: MakeRegion) -> None:
    region = make()
    missing = region.get("missing")
    assert missing is NO_VALUE
    assert not missing
    region.set("none", None)
    assert region.get("none") is None
    creator = Counter()
    assert region.get_or_create("none", creator) is None
    assert creator.calls == 0


def test_value_metadata_round_trips(make: MakeRegion, clock: FrozenClock) -> None:
    region = make()
    stored_at = clock.now
    region.set("k", [1, 2])
    clock.advance(3)
    meta = region.get_value_metadata("k")
    assert isinstance(meta, CachedValue)
    assert meta.payload == [1, 2]
    assert meta.cached_time == stored_at
    assert meta.age == pytest.approx(3)
    assert region.get_value_metadata("missing") is None


def test_get_or_create_calls_the_creator_once(make: MakeRegion) -> None:
    region = make()
    creator = Counter()
    assert region.get_or_create("k", creator) == "value 1"
    assert region.get_or_create("k", creator) == "value 1"
    assert region.get("k") == "value 1"
    assert creator.calls == 1
    assert region.get_or_create("k2", creator, creator_args=((), {})) == "value 2"


def test_get_or_create_after_the_region_expiration_time(
    make: MakeRegion, clock: FrozenClock
) -> None:
    region = make(expiration_time=10)
    creator = Counter()
    assert region.get_or_create("k", creator) == "value 1"
    clock.advance(9)
    assert region.get_or_create("k", creator) == "value 1"
    assert region.get("k") == "value 1"
    clock.advance(2)  # 11 s after it was made
    assert region.get("k") is NO_VALUE
    assert region.get("k", ignore_expiration=True) == "value 1"
    assert region.get("k", expiration_time=20) == "value 1"
    assert region.get_or_create("k", creator) == "value 2"
    assert creator.calls == 2
    assert region.get("k") == "value 2"


def test_expiration_time_of_one_call(make: MakeRegion, clock: FrozenClock) -> None:
    region = make(expiration_time=10)
    creator = Counter()
    region.get_or_create("k", creator)
    clock.advance(5)
    assert region.get_or_create("k", creator, expiration_time=4) == "value 2"
    clock.advance(100)
    assert region.get_or_create("k", creator, expiration_time=-1) == "value 2"  # never
    assert region.get("k") is NO_VALUE  # the region's own 10 s still apply to get()
    assert creator.calls == 2


def test_should_cache_fn(make: MakeRegion) -> None:
    region = make()
    calls: list[str] = []

    def creator() -> str | None:
        calls.append("x")
        return None if len(calls) == 1 else "kept"

    def not_none(value: object) -> bool:
        return value is not None

    assert region.get_or_create("k", creator, should_cache_fn=not_none) is None
    assert region.get("k") is NO_VALUE
    assert region.get_or_create("k", creator, should_cache_fn=not_none) == "kept"
    assert region.get_or_create("k", creator, should_cache_fn=not_none) == "kept"
    assert len(calls) == 2


def test_multi(make: MakeRegion) -> None:
    region = make()
    assert region.get_multi([]) == []  # type: ignore[no-untyped-call]
    region.set_multi({"a": 1, "b": [2], "c": None})
    got = region.get_multi(["c", "missing", "a", "b"])  # type: ignore[no-untyped-call]
    assert got == [None, NO_VALUE, 1, [2]]
    region.delete_multi(["a", "c", "missing"])
    got = region.get_multi(["a", "b", "c"])  # type: ignore[no-untyped-call]
    assert got == [NO_VALUE, [2], NO_VALUE]
    region.set_multi({})


def test_get_or_create_multi(make: MakeRegion) -> None:
    region = make()
    region.set("b", "stored b")
    asked: list[tuple[str, ...]] = []

    def creator(*keys: str) -> list[str]:
        asked.append(keys)
        return [f"made {key}" for key in keys]

    keys = ["c", "b", "a"]
    assert region.get_or_create_multi(keys, creator) == ["made c", "stored b", "made a"]
    assert asked == [("a", "c")]  # only the missing keys, sorted
    assert region.get_or_create_multi(keys, creator) == ["made c", "stored b", "made a"]
    assert asked == [("a", "c")]
    assert region.get("a") == "made a"


def test_get_or_create_multi_should_cache_fn(make: MakeRegion) -> None:
    region = make()

    def creator(*keys: str) -> list[str | None]:
        return [None if key == "skip" else key.upper() for key in keys]

    def not_none(value: object) -> bool:
        return value is not None

    got = region.get_or_create_multi(["keep", "skip"], creator, should_cache_fn=not_none)
    assert got == ["KEEP", None]
    assert region.get("keep") == "KEEP"
    assert region.get("skip") is NO_VALUE


def test_hard_invalidate(make: MakeRegion, clock: FrozenClock) -> None:
    region = make()
    creator = Counter()
    region.get_or_create("k", creator)
    clock.advance(1)
    # hard: every value made before now is gone
    region.invalidate()  # type: ignore[no-untyped-call]
    assert region.get("k") is NO_VALUE
    assert region.get("k", ignore_expiration=True) == "value 1"  # still stored
    clock.advance(1)
    assert region.get_or_create("k", creator) == "value 2"
    assert region.get("k") == "value 2"
    assert creator.calls == 2


def test_soft_invalidate(make: MakeRegion, clock: FrozenClock) -> None:
    region = make(expiration_time=60)
    creator = Counter()
    region.get_or_create("k", creator)
    clock.advance(1)
    # soft: values made before now count as expired
    region.invalidate(hard=False)  # type: ignore[no-untyped-call]
    assert region.get("k") is NO_VALUE
    clock.advance(1)
    assert region.get_or_create("k", creator) == "value 2"
    assert region.get_or_create("k", creator) == "value 2"
    assert creator.calls == 2


def test_soft_invalidate_needs_an_expiration_time(make: MakeRegion, clock: FrozenClock) -> None:
    from dogpile.cache.exception import DogpileCacheException

    region = make()  # no expiration_time
    region.set("k", 1)
    clock.advance(1)
    region.invalidate(hard=False)  # type: ignore[no-untyped-call]
    with pytest.raises(DogpileCacheException, match="expiration time required"):
        region.get_or_create("k", Counter())


class Decorated(Protocol):
    """What ``cache_on_arguments`` returns (dogpile types it as a plain callable)."""

    def __call__(self, *args: Any) -> Any: ...
    def invalidate(self, *args: Any) -> None: ...
    def refresh(self, *args: Any) -> Any: ...
    def set(self, value: Any, *args: Any) -> None: ...
    def get(self, *args: Any) -> Any: ...


def test_cache_on_arguments(make: MakeRegion) -> None:
    region = make()
    calls: list[tuple[int, int]] = []

    def add(x: int, y: int) -> int:
        calls.append((x, y))
        return x + y

    cached = cast(Decorated, region.cache_on_arguments(namespace="v1")(add))
    assert cached(1, 2) == 3
    assert cached(1, 2) == 3
    assert cached(2, 2) == 4
    assert calls == [(1, 2), (2, 2)]
    assert cached.get(1, 2) == 3
    assert cached.get(5, 5) is NO_VALUE
    cached.invalidate(1, 2)
    assert cached.get(1, 2) is NO_VALUE
    assert cached(1, 2) == 3
    assert calls == [(1, 2), (2, 2), (1, 2)]
    assert cached.refresh(2, 2) == 4  # always calls, and stores
    assert calls[-1] == (2, 2)
    cached.set(100, 1, 2)
    assert cached(1, 2) == 100
    assert len(calls) == 4


def test_cache_multi_on_arguments(make: MakeRegion) -> None:
    region = make()
    asked: list[tuple[int, ...]] = []

    def squares(*xs: int) -> list[int]:
        asked.append(xs)
        return [x * x for x in xs]

    cached = cast(Callable[..., Sequence[int]], region.cache_multi_on_arguments()(squares))
    assert list(cached(2, 3)) == [4, 9]
    assert list(cached(3, 4, 2)) == [9, 16, 4]
    assert asked == [(2, 3), (4,)]


class RecordingProxy(ProxyBackend):
    """Records every key that reaches the backend."""

    keys: ClassVar[list[KeyType]] = []

    def get(self, key: KeyType) -> Any:
        self.keys.append(key)
        return self.proxied.get(key)

    def get_serialized(self, key: KeyType) -> Any:
        self.keys.append(key)
        return self.proxied.get_serialized(key)

    def set(self, key: KeyType, value: Any) -> None:
        self.keys.append(key)
        self.proxied.set(key, value)

    def set_serialized(self, key: KeyType, value: bytes) -> None:
        self.keys.append(key)
        self.proxied.set_serialized(key, value)


def test_key_mangler(make: MakeRegion) -> None:
    RecordingProxy.keys = []
    region = make(region_args={"key_mangler": sha1_mangle_key}, wrap=[RecordingProxy])
    key = "a long key " * 100 + "ü"
    region.set(key, "v")
    assert region.get(key) == "v"
    assert region.get_or_create(key, Counter()) == "v"
    assert RecordingProxy.keys
    assert set(RecordingProxy.keys) == {sha1_mangle_key(key)}
    region.delete(key)
    assert region.get(key) is NO_VALUE


def test_region_serializer_of_its_own(make: MakeRegion) -> None:
    region = make(
        region_args={
            "serializer": lambda value: json.dumps(value).encode(),
            "deserializer": json.loads,
        }
    )
    region.set("k", {"a": [1, 2]})
    assert region.get("k") == {"a": [1, 2]}
    creator = Counter(["made"])
    assert region.get_or_create("j", creator) == ["made"]
    assert region.get_or_create("j", creator) == ["made"]
    assert creator.calls == 1
    region.set_multi({"x": 1, "y": 2})
    assert region.get_multi(["x", "y", "z"]) == [1, 2, NO_VALUE]  # type: ignore[no-untyped-call]


def test_key_is_locked_while_creating(make: MakeRegion) -> None:
    region = make()
    seen: list[bool] = []

    def creator() -> str:
        seen.append(region.key_is_locked("k"))
        return "v"

    assert not region.key_is_locked("k")
    region.get_or_create("k", creator)
    assert seen == [True]
    assert not region.key_is_locked("k")


def test_threads_create_a_missing_value_once(make: MakeRegion) -> None:
    region = make()
    threads_n = 8
    lock = threading.Lock()
    calls: list[int] = []
    start = threading.Barrier(threads_n)

    def slow_creator() -> str:
        with lock:
            calls.append(threading.get_ident())
        time.sleep(0.2)  # the others arrive meanwhile and wait on dogpile's lock
        return "the one value"

    results: list[object] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait(timeout=30)
            value = region.get_or_create("k", slow_creator)
            with lock:
                results.append(value)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert results == ["the one value"] * threads_n
    assert len(calls) == 1


# ================================================================== viperdbm's own
def viper_region(path: Path, expiration_time: float | None = None, **args: Any) -> CacheRegion:
    return make_region().configure(
        "viperdbm", expiration_time=expiration_time, arguments={"path": str(path), **args}
    )


@pytest.fixture
def regions() -> Iterator[list[CacheRegion]]:
    """viperdbm regions made by a test, closed at its end whatever happens."""
    made: list[CacheRegion] = []
    yield made
    for region in made:
        close_region(region)


def test_the_entry_point_names_the_backend(tmp_path: Path, regions: list[CacheRegion]) -> None:
    # CI installs the package afresh: dogpile must find the backend by the name the package
    # registers (pyproject.toml), not by a register_backend() call made in this process
    found = entry_points(group="dogpile.cache", name="viperdbm")
    assert [ep.value for ep in found] == ["viperdbm.cache.dogpile:ViperBackend"]
    assert next(iter(found)).load() is ViperBackend
    region = viper_region(tmp_path / "r.vdb")
    regions.append(region)
    assert type(region.backend) is ViperBackend
    assert isinstance(region.backend, CacheBackend)
    assert isinstance(region.backend.cache, Cache)
    assert region.backend.get_mutex("k") is None  # dogpile's per-key lock, in this process
    region.set("k", "v")
    assert region.get("k") == "v"


def test_values_survive_a_new_region(tmp_path: Path, regions: list[CacheRegion]) -> None:
    path = tmp_path / "r.vdb"
    first = viper_region(path, expiration_time=3600)
    regions.append(first)
    first.set("config", {"retries": 3})
    first.set_multi({"a": 1, "b": 2})
    assert first.get_or_create("made", Counter("once")) == "once"
    with pytest.raises(viperdbm.LockError):  # one writer at a time
        viper_region(path)
    first.backend.close()
    first.backend.close()  # idempotent
    with pytest.raises(viperdbm.ClosedError):
        first.get("config")

    second = viper_region(path, expiration_time=3600)
    regions.append(second)
    assert second.get("config") == {"retries": 3}
    assert second.get_multi(["a", "b"]) == [1, 2]  # type: ignore[no-untyped-call]
    creator = Counter("again")
    assert second.get_or_create("made", creator) == "once"
    assert creator.calls == 0


def test_store_expire_removes_items(
    tmp_path: Path, clock: FrozenClock, regions: list[CacheRegion]
) -> None:
    # the region never expires anything; the store's own expire does
    region = viper_region(tmp_path / "r.vdb", expire=30)
    regions.append(region)
    cache = cast(ViperBackend, region.backend).cache
    creator = Counter()
    assert region.get_or_create("k", creator) == "value 1"
    region.set("other", 1)
    clock.advance(29)
    assert region.get("k") == "value 1"
    clock.advance(2)
    assert region.get("k", ignore_expiration=True) is NO_VALUE  # gone from the store
    assert cache.expire() == 1  # "other" was still there, now removed; "k" was on the read
    assert len(cache) == 0
    assert region.get_or_create("k", creator) == "value 2"
    assert creator.calls == 2


def test_size_limit_bounds_the_volume(tmp_path: Path, regions: list[CacheRegion]) -> None:
    limit = 8192
    region = viper_region(tmp_path / "r.vdb", size_limit=limit)
    regions.append(region)
    cache = cast(ViperBackend, region.backend).cache
    for i in range(200):
        region.set(f"k{i}", "x" * 200)
        assert cache.volume() <= limit
    assert region.get("k199") == "x" * 200  # the newest stay
    assert region.get("k0") is NO_VALUE  # the oldest went first
    assert 0 < len(cache) < 200


def test_configure_from_config(tmp_path: Path, regions: list[CacheRegion]) -> None:
    path = tmp_path / "r.vdb"
    config = {  # as an .ini file gives them: every value a string
        "cache.backend": "viperdbm",
        "cache.expiration_time": "60",
        "cache.arguments.path": str(path),
        "cache.arguments.mode": "0o600",
        "cache.arguments.expire": "90",
        "cache.arguments.size_limit": "None",
    }
    region = make_region().configure_from_config(config, "cache.")
    regions.append(region)
    backend = cast(ViperBackend, region.backend)
    assert region.expiration_time == 60
    assert backend.cache.expire_default == 90
    assert backend.cache.size_limit is None
    region.set("k", "v")
    files = [p for p in path.rglob("*") if p.is_file()]
    assert files
    assert all(p.stat().st_mode & 0o077 == 0 for p in files), files


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a path"):
        make_region().configure("viperdbm", arguments={})
    with pytest.raises(ValueError, match="size_limt"):
        viper_region(tmp_path / "r.vdb", size_limt=10)
    with pytest.raises(ValueError, match="expire"):
        viper_region(tmp_path / "r.vdb", expire=0)
    with pytest.raises(viperdbm.error):  # 'r' on a missing path creates nothing
        viper_region(tmp_path / "missing.vdb", flag="r")
    assert not (tmp_path / "missing.vdb").exists()


def test_items_of_another_serializer_are_misses(tmp_path: Path, regions: list[CacheRegion]) -> None:
    # one store, used by a region that pickles (the default) and by one that writes JSON
    path = tmp_path / "r.vdb"
    pickled = viper_region(path)
    regions.append(pickled)
    pickled.set("p", [1])
    close_region(pickled)
    as_json = make_region(
        serializer=lambda v: json.dumps(v).encode(), deserializer=json.loads
    ).configure("viperdbm", arguments={"path": str(path)})
    regions.append(as_json)
    assert as_json.get("p") is NO_VALUE
    as_json.set("j", [2])
    assert as_json.get("j") == [2]
    close_region(as_json)
    pickled = viper_region(path)
    regions.append(pickled)
    assert pickled.get("j") is NO_VALUE
    assert pickled.get("p") == [1]
    assert pickled.get_or_create("j", Counter("replaced")) == "replaced"


def test_read_only_region_beside_the_writer(tmp_path: Path, regions: list[CacheRegion]) -> None:
    path = tmp_path / "r.vdb"
    writer = viper_region(path, expiration_time=3600)
    regions.append(writer)
    writer.set("k", "from the writer")
    reader = viper_region(path, expiration_time=3600, flag="r")
    regions.append(reader)
    backend = cast(ViperBackend, reader.backend)
    assert backend.readonly
    assert reader.get("k") == "from the writer"
    creator = Counter("computed by the reader")
    assert reader.get_or_create("new", creator) == "computed by the reader"
    assert reader.get_or_create("new", creator) == "computed by the reader"
    assert creator.calls == 2  # computed each time: a reader stores nothing
    reader.set("k", "ignored")
    assert writer.get("k") == "from the writer"
    with pytest.raises(viperdbm.ReadonlyError):
        reader.delete("k")
    with pytest.raises(viperdbm.ReadonlyError):
        reader.delete_multi(["k"])
    writer.set("later", 2)
    assert reader.get("later") == 2  # what the writer stores next is seen at once


CHILD = textwrap.dedent(
    """
    import json, sys
    import viperdbm
    from dogpile.cache import make_region
    from dogpile.cache.api import NO_VALUE

    path = sys.argv[1]
    out = {}
    try:
        make_region().configure("viperdbm", arguments={"path": path})
    except viperdbm.LockError:
        out["second writer"] = "LockError"
    region = make_region().configure(
        "viperdbm", expiration_time=3600, arguments={"path": path, "flag": "r"}
    )
    out["backend"] = type(region.backend).__module__ + "." + type(region.backend).__name__
    out["values"] = region.get_multi(["config", "list", "missing"])
    out["values"][2] = out["values"][2] is NO_VALUE
    out["created"] = region.get_or_create("child", lambda: "made in the child")
    print(json.dumps(out))
    """
)


def test_a_reader_process_reads_what_the_writer_stored(
    tmp_path: Path, regions: list[CacheRegion]
) -> None:
    path = tmp_path / "r.vdb"
    writer = viper_region(path, expiration_time=3600)
    regions.append(writer)
    writer.set("config", {"retries": 3})
    writer.set("list", [1, "two"])
    # the child imports this checkout's viperdbm (the one under test), as conftest does
    root = Path(importlib.import_module("viperdbm").__file__ or "").resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    assert out == {
        "second writer": "LockError",
        "backend": "viperdbm.cache.dogpile.ViperBackend",
        "values": [{"retries": 3}, [1, "two"], True],
        "created": "made in the child",
    }
    assert writer.get("child") is NO_VALUE  # the reader stored nothing
