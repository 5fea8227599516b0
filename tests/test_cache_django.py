"""The Django cache backend ``viperdbm.cache.django.ViperCache``.

As CPython's test_dbm runs one contract over every dbm module, the first part of this file
is Django's cache contract (the checks of Django's own ``BaseCacheTests``), written once and
run over Django's ``LocMemCache`` and ``FileBasedCache`` as well as ours: the reference
backends prove that each expectation is Django's, and ours must meet it the same way. Their
known differences are one table (``KNOWN_DIFFERENCES``), which makes the reference
backend's test a strict xfail. Time is frozen (``clock``): expiry tests advance it instead
of sleeping.

The second part tests what is viperdbm's own: the store outlives the backend object and the
process, ``size_limit``, one writer process with readers beside it, and fork().
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import types
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
import pytest
from _vdbtools import FrozenClock, child_env, kill_quietly, run_script_ok
from django.conf import settings

if not settings.configured:
    settings.configure(
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    )
django.setup()

from django.core.cache import CacheHandler  # noqa: E402 - after settings.configure()
from django.core.cache.backends import base as django_base  # noqa: E402
from django.core.cache.backends import filebased, locmem  # noqa: E402
from django.core.cache.backends.base import BaseCache, CacheKeyWarning  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

import viperdbm  # noqa: E402
import viperdbm.cache  # noqa: E402
from viperdbm.cache.django import ViperCache  # noqa: E402

BACKEND = "viperdbm.cache.django.ViperCache"
KINDS = ("locmem", "filebased", "viperdbm")

#: (kind, test) -> why Django's reference backend differs there (a strict xfail for it)
KNOWN_DIFFERENCES = {
    ("filebased", "test_incr_keeps_expiry"): (
        "FileBasedCache.incr is BaseCache's get() then set(), which restarts the default timeout"
    ),
    ("filebased", "test_touch_expired"): (
        "Django 5.2's FileBasedCache.touch of an expired item raises ValueError: its "
        "_is_expired() deletes and closes the file, which touch() then unlocks"
    ),
}


# ---------------------------------------------------------------------------- fixtures
# the modules that read time.time() to expire items, each given a frozen clock
CLOCKED_MODULES = (django_base, locmem, filebased, viperdbm.cache)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    frozen = FrozenClock()
    fake = types.SimpleNamespace(
        **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    )
    fake.time = frozen
    for module in CLOCKED_MODULES:
        assert module.time is time, module  # each reads time.time() through its module
        monkeypatch.setattr(module, "time", fake)
    return frozen


@dataclass
class Factory:
    """Makes backends of one kind over one location (one LocMem name, one directory, one
    store), each with its own params: two of them share the data, as two aliases do."""

    kind: str
    where: Path
    made: list[BaseCache] = field(default_factory=list)

    def __call__(self, **params: Any) -> BaseCache:
        backend: BaseCache
        if self.kind == "locmem":
            backend = locmem.LocMemCache(str(self.where), params)
        elif self.kind == "filebased":
            backend = filebased.FileBasedCache(str(self.where / "files"), params)
        else:
            backend = ViperCache(self.where / "store.vdb", params)
        self.made.append(backend)
        return backend

    def cleanup(self) -> None:
        for backend in self.made:
            if isinstance(backend, ViperCache):
                backend.close_store()
        locmem._caches.pop(str(self.where), None)
        locmem._expire_info.pop(str(self.where), None)
        locmem._locks.pop(str(self.where), None)
        shutil.rmtree(self.where / "store.vdb", ignore_errors=True)  # 17 MB on disk


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, tmp_path: Path, clock: FrozenClock) -> Iterator[Factory]:
    kind: str = request.param
    reason = KNOWN_DIFFERENCES.get((kind, request.node.originalname))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    factory = Factory(kind, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def cache(make: Factory) -> BaseCache:
    """A backend of each kind, with Django's default params (TIMEOUT 300, VERSION 1)."""
    return make()


@pytest.fixture
def viper(tmp_path: Path, clock: FrozenClock) -> Iterator[Callable[..., ViperCache]]:
    """Makes ViperCache backends over one store, closed and removed after the test."""
    made: list[ViperCache] = []
    location = tmp_path / "store.vdb"

    def new(**params: Any) -> ViperCache:
        backend = ViperCache(location, params)
        made.append(backend)
        return backend

    yield new
    for backend in made:
        backend.close_store()
    shutil.rmtree(location, ignore_errors=True)


# values of every kind the contract stores (module level: pickled by reference)
@dataclass(frozen=True)
class Point:
    x: int
    y: int


def a_function() -> str:
    return "function"


class Unpicklable:
    def __getstate__(self) -> Any:
        raise pickle.PickleError("not today")


def reverse_key(key: str, key_prefix: str, version: int) -> str:
    return f"custom:{key_prefix}:{version}:{key[::-1]}"


# ============================================================ Django's cache contract
def test_simple(cache: BaseCache) -> None:
    cache.set("key", "value")
    assert cache.get("key") == "value"
    cache.set("key", "other")
    assert cache.get("key") == "other"


def test_default_for_missing(cache: BaseCache) -> None:
    assert cache.get("does_not_exist") is None
    assert cache.get("does_not_exist", "default") == "default"
    assert cache.get("does_not_exist", default=0) == 0


def test_add(cache: BaseCache) -> None:
    assert cache.add("addkey1", "value") is True
    assert cache.add("addkey1", "newvalue") is False
    assert cache.get("addkey1") == "value"


def test_add_over_expired(cache: BaseCache, clock: FrozenClock) -> None:
    cache.set("expired", "old", 1)
    clock.advance(1.5)
    assert cache.add("expired", "new") is True
    assert cache.get("expired") == "new"


def test_non_existent(cache: BaseCache) -> None:
    assert cache.get("nonexistent") is None
    assert cache.delete("nonexistent") is False
    assert cache.has_key("nonexistent") is False


def test_get_many(cache: BaseCache) -> None:
    cache.set_many({"a": "a", "b": "b", "c": "c", "d": "d"})
    assert cache.get_many(["a", "c", "d"]) == {"a": "a", "c": "c", "d": "d"}
    assert cache.get_many(["a", "b", "e"]) == {"a": "a", "b": "b"}
    assert cache.get_many(iter(["a", "b", "e"])) == {"a": "a", "b": "b"}
    assert cache.get_many([]) == {}
    cache.set_many({"none": None, "zero": 0})
    assert cache.get_many(["none", "zero", "missing"]) == {"none": None, "zero": 0}


def test_set_many(cache: BaseCache) -> None:
    assert cache.set_many({"key1": "spam", "key2": "eggs"}) == []
    assert cache.get("key1") == "spam"
    assert cache.get("key2") == "eggs"


def test_set_many_with_timeout(cache: BaseCache, clock: FrozenClock) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"}, 1)
    clock.advance(0.5)
    assert cache.get_many(["key1", "key2"]) == {"key1": "spam", "key2": "eggs"}
    clock.advance(1)
    assert cache.get("key1") is None
    assert cache.get("key2") is None


def test_delete_many(cache: BaseCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs", "key3": "ham"})
    cache.delete_many(["key1", "key2", "nonexistent"])
    assert cache.get("key1") is None
    assert cache.get("key2") is None
    assert cache.get("key3") == "ham"
    cache.delete_many(iter(["key3"]))
    assert cache.get("key3") is None


def test_delete_returns_whether_it_deleted(cache: BaseCache) -> None:
    cache.set("key1", "spam")
    cache.set("key2", "eggs")
    assert cache.delete("key1") is True
    assert cache.get("key1") is None
    assert cache.get("key2") == "eggs"
    assert cache.delete("key1") is False


def test_has_key_and_in(cache: BaseCache) -> None:
    cache.set("hello1", "goodbye1")
    assert cache.has_key("hello1")
    assert "hello1" in cache
    assert not cache.has_key("goodbye1")
    assert "goodbye1" not in cache
    cache.set("no_expiry", "here", None)
    assert cache.has_key("no_expiry")
    cache.set("null", None)
    assert cache.has_key("null")
    assert "null" in cache


def test_incr_decr(cache: BaseCache) -> None:
    cache.set("answer", 41)
    assert cache.incr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.incr("answer", 10) == 52
    assert cache.get("answer") == 52
    assert cache.decr("answer") == 51
    assert cache.decr("answer", 10) == 41
    assert cache.incr("answer", -1) == 40
    assert cache.get("answer") == 40


def test_incr_decr_of_missing_raise_value_error(cache: BaseCache, clock: FrozenClock) -> None:
    with pytest.raises(ValueError):
        cache.incr("does_not_exist")
    with pytest.raises(ValueError):
        cache.decr("does_not_exist")
    with pytest.raises(ValueError):
        cache.incr("does_not_exist", -1)
    assert cache.get("does_not_exist") is None
    cache.set("expired", 1, 1)
    clock.advance(1.5)
    with pytest.raises(ValueError):
        cache.incr("expired")


def test_incr_of_none_raises_type_error(cache: BaseCache) -> None:
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.incr("null")
    assert cache.get("null", "default") is None


def test_incr_keeps_expiry(cache: BaseCache, clock: FrozenClock) -> None:
    cache.set("counter", 1, 10)
    clock.advance(5)
    assert cache.incr("counter") == 2
    clock.advance(4)
    assert cache.get("counter") == 2
    clock.advance(2)  # 11 s after the set
    assert cache.get("counter") is None


def test_data_types(cache: BaseCache) -> None:
    stuff = {
        "string": "this is a string",
        "int": 42,
        "float": 1.5,
        "bool": True,
        "list": [1, 2, 3, 4],
        "tuple": (1, 2, 3, 4),
        "dict": {"A": 1, "B": 2},
        "set": {1, 2, 3},
        "function": a_function,
        "class": Point,
        "object": Point(1, 2),
    }
    cache.set("stuff", stuff)
    got = cache.get("stuff")
    assert got == stuff
    assert got["function"]() == "function"
    for i, falsy in enumerate((0, 0.0, "", b"", False, [], {}, ())):
        cache.set(f"falsy{i}", falsy)
        got = cache.get(f"falsy{i}", "default")
        assert got == falsy and type(got) is type(falsy)


def test_none_is_a_value_not_a_miss(cache: BaseCache) -> None:
    sentinel = object()
    cache.set("null", None)
    assert cache.get("null", sentinel) is None
    assert cache.get("missing", sentinel) is sentinel
    assert cache.add("null", "other") is False
    assert cache.get("null", sentinel) is None


def test_unicode(cache: BaseCache) -> None:
    stuff = {
        "ascii": "ascii_value",
        "unicode_ascii": "Iñtërnâtiônàlizætiøn1",
        "Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
        "ascii2": {"x": 1},
        "日本語": "値",
    }
    for key, value in stuff.items():
        cache.set(key, value)
        assert cache.get(key) == value
    for key in stuff:
        assert cache.delete(key) is True
        cache.add(key, stuff[key])
        assert cache.get(key) == stuff[key]
    cache.delete_many(stuff)
    cache.set_many(stuff)
    assert cache.get_many(stuff) == stuff


def test_binary(cache: BaseCache) -> None:
    value = "value_to_be_compressed" * 100
    compressed = zlib.compress(value.encode())
    cache.set("binary1", compressed)
    assert zlib.decompress(cache.get("binary1")).decode() == value
    assert cache.add("binary2", bytes(range(256))) is True
    assert cache.get("binary2") == bytes(range(256))
    cache.set_many({"binary3": compressed})
    assert cache.get("binary3") == compressed


def test_big_value(cache: BaseCache) -> None:
    big = os.urandom(1 << 20)
    cache.set("big", big)
    assert cache.get("big") == big


def test_unpicklable_value_raises_and_keeps_the_old(cache: BaseCache) -> None:
    cache.set("unpicklable", "old")
    with pytest.raises(pickle.PickleError):
        cache.set("unpicklable", Unpicklable())
    assert cache.get("unpicklable") == "old"
    with pytest.raises(pickle.PickleError):
        cache.add("fresh", Unpicklable())
    assert cache.get("fresh") is None


def test_expiration(cache: BaseCache, clock: FrozenClock) -> None:
    cache.set("expire1", "very quickly", 1)
    cache.set("expire2", "very quickly", 1)
    cache.set("expire3", "very quickly", 1)
    clock.advance(0.5)
    assert cache.get("expire1") == "very quickly"
    clock.advance(1)
    assert cache.get("expire1") is None
    assert cache.add("expire2", "newvalue") is True
    assert cache.get("expire2") == "newvalue"
    assert not cache.has_key("expire3")
    assert cache.get_many(["expire1", "expire3"]) == {}


def test_float_timeout(cache: BaseCache, clock: FrozenClock) -> None:
    cache.set("key", "value", 1.5)
    clock.advance(1)
    assert cache.get("key") == "value"
    clock.advance(1)
    assert cache.get("key") is None


def test_default_timeout(make: Factory, clock: FrozenClock) -> None:
    short = make(TIMEOUT=1)
    assert short.default_timeout == 1
    short.set("key", "value")
    assert short.add("added", "value") is True
    clock.advance(0.5)
    assert short.get("key") == "value"
    clock.advance(1)
    assert short.get("key") is None
    assert short.get("added") is None


def test_default_timeout_none_is_forever(make: Factory, clock: FrozenClock) -> None:
    forever = make(TIMEOUT=None)
    forever.set("key", "value")
    clock.advance(10 * 365 * 24 * 3600)
    assert forever.get("key") == "value"


def test_default_timeout_zero_caches_nothing(make: Factory, clock: FrozenClock) -> None:
    nothing = make(TIMEOUT=0)
    nothing.set("key", "value")
    clock.advance(0.001)  # (FileBasedCache's item expires after its instant, not at it)
    assert nothing.get("key") is None


def test_forever_timeout(cache: BaseCache, clock: FrozenClock) -> None:
    cache.set("key1", "eggs", None)
    assert cache.add("key2", "ham", None) is True
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, None)
    clock.advance(10 * 365 * 24 * 3600)
    assert cache.get("key1") == "eggs"
    assert cache.add("key1", "newvalue", None) is False
    assert cache.get_many(["key2", "key3", "key4"]) == {
        "key2": "ham",
        "key3": "sausage",
        "key4": "lobster bisque",
    }


def test_zero_timeout(cache: BaseCache) -> None:
    cache.set("key1", "eggs", 0)
    assert cache.get("key1") is None
    assert cache.add("key2", "ham", 0) is True  # added, and expired at once
    assert cache.get("key2") is None
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, 0)
    assert cache.get_many(["key3", "key4"]) == {}
    cache.set("key5", "belgian fries", None)
    assert cache.add("key5", "other", 0) is False  # the key holds an item
    assert cache.get("key5") == "belgian fries"
    cache.set("key5", "replaced", 0)  # a set with timeout 0 drops the old item
    assert cache.get("key5") is None


def test_negative_timeout(cache: BaseCache) -> None:
    cache.set("key1", "eggs", -1)
    assert cache.get("key1") is None
    cache.set("key2", "ham")
    cache.set("key2", "spam", -1)
    assert cache.get("key2") is None
    assert cache.add("key3", "x", -1) is True
    assert cache.get("key3") is None


def test_long_timeout(cache: BaseCache, clock: FrozenClock) -> None:
    # Memcached reads a timeout over 30 days as a timestamp; Django's backends must not
    long = 60 * 60 * 24 * 30 + 1
    cache.set("key1", "eggs", long)
    assert cache.add("key2", "ham", long) is True
    cache.set_many({"key3": "sausage"}, long)
    clock.advance(60 * 60 * 24 * 29)
    assert cache.get_many(["key1", "key2", "key3"]) == {
        "key1": "eggs",
        "key2": "ham",
        "key3": "sausage",
    }
    clock.advance(60 * 60 * 24 * 2)
    assert cache.get_many(["key1", "key2", "key3"]) == {}


def test_touch(cache: BaseCache, clock: FrozenClock) -> None:
    cache.set("expire1", "very quickly", timeout=1)
    assert cache.touch("expire1", timeout=4) is True
    clock.advance(2)
    assert cache.has_key("expire1")
    clock.advance(3)
    assert not cache.has_key("expire1")
    cache.set("expire2", "very quickly", timeout=1)
    assert cache.touch("expire2", timeout=None) is True
    clock.advance(2)
    assert cache.has_key("expire2")
    assert cache.touch("nonexistent") is False


def test_touch_expired(cache: BaseCache, clock: FrozenClock) -> None:
    cache.set("expired", "x", timeout=1)
    clock.advance(2)
    assert cache.touch("expired") is False  # nothing to touch
    assert cache.get("expired") is None


def test_touch_default_and_zero_timeout(make: Factory, clock: FrozenClock) -> None:
    cache = make(TIMEOUT=10)
    cache.set("key", "value", None)
    assert cache.touch("key") is True  # from never to the default, 10 s
    clock.advance(9)
    assert cache.get("key") == "value"
    clock.advance(2)
    assert cache.get("key") is None
    cache.set("gone", "value", None)
    assert cache.touch("gone", 0) is True  # there was an item; it expires now
    assert cache.get("gone") is None
    assert cache.touch("gone", 0) is False


def test_clear(cache: BaseCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    cache.clear()
    assert cache.get_many(["key1", "key2"]) == {}
    cache.set("key1", "again")  # usable after
    assert cache.get("key1") == "again"


def test_get_or_set(cache: BaseCache) -> None:
    assert cache.get("projector") is None
    assert cache.get_or_set("projector", 42) == 42
    assert cache.get("projector") == 42
    assert cache.get_or_set("projector", 99) == 42
    assert cache.get_or_set("null", None) is None
    assert cache.get("null", "default") is None  # None was stored
    assert cache.get_or_set("callable", lambda: "computed") == "computed"
    assert cache.get_or_set("callable", lambda: "again") == "computed"
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    assert cache.get("brian", version=1) is None
    assert cache.get("brian", version=2) == 1979


def test_get_or_set_with_timeout(cache: BaseCache, clock: FrozenClock) -> None:
    assert cache.get_or_set("key", "first", 1) == "first"
    clock.advance(1.5)
    assert cache.get_or_set("key", "second", 1) == "second"


def test_close_keeps_data(cache: BaseCache) -> None:
    cache.set("key", "value")
    cache.close()
    assert cache.get("key") == "value"
    cache.set("key2", "value2")
    cache.close()
    assert cache.get_many(["key", "key2"]) == {"key": "value", "key2": "value2"}


def test_versions(make: Factory) -> None:
    cache = make()
    v2 = make(VERSION=2)
    cache.set("answer1", 42)
    assert cache.get("answer1") == 42
    assert cache.get("answer1", version=1) == 42
    assert cache.get("answer1", version=2) is None
    assert v2.get("answer1") is None
    assert v2.get("answer1", version=1) == 42
    cache.set("answer2", 42, version=2)
    assert cache.get("answer2") is None
    assert cache.get("answer2", version=2) == 42
    assert v2.get("answer2") == 42
    assert cache.has_key("answer2", version=2)
    assert not cache.has_key("answer2")
    assert cache.add("answer2", 37) is True  # version 1 is another key
    assert cache.add("answer2", 37, version=2) is False
    assert cache.get_many(["answer1", "answer2"], version=2) == {"answer2": 42}
    assert cache.delete("answer2", version=2) is True
    assert cache.get("answer2") == 37
    cache.set("counter", 1, version=3)
    assert cache.incr("counter", version=3) == 2
    with pytest.raises(ValueError):
        cache.incr("counter")
    cache.delete_many(["counter"], version=3)
    assert cache.get("counter", version=3) is None


def test_incr_decr_version(make: Factory) -> None:
    cache = make()
    cache.set("answer", 42)
    assert cache.incr_version("answer") == 2
    assert cache.get("answer") is None
    assert cache.get("answer", version=1) is None
    assert cache.get("answer", version=2) == 42
    assert make(VERSION=2).get("answer") == 42
    assert cache.decr_version("answer", version=2) == 1
    assert cache.get("answer") == 42
    assert cache.get("answer", version=2) is None
    assert cache.incr_version("answer", delta=5) == 6
    assert cache.get("answer", version=6) == 42
    cache.set("null", None)
    assert cache.incr_version("null") == 2  # None is a value: it moves too
    assert cache.get("null", "default", version=2) is None
    with pytest.raises(ValueError):
        cache.incr_version("does_not_exist")
    with pytest.raises(ValueError):
        cache.decr_version("does_not_exist")


def test_key_prefix(make: Factory) -> None:
    first = make(KEY_PREFIX="first")
    second = make(KEY_PREFIX="second")
    first.set("key", "value")
    assert second.get("key") is None
    assert not second.has_key("key")
    assert second.add("key", "other") is True
    assert first.get("key") == "value"
    assert make(KEY_PREFIX="first").get("key") == "value"
    assert second.delete("key") is True
    assert first.get("key") == "value"


def test_custom_key_function(make: Factory) -> None:
    custom = make(KEY_FUNCTION=reverse_key)
    assert custom.make_key("abc") == "custom::1:cba"
    custom.set("answer", 42)
    assert custom.get("answer") == 42
    assert make().get("answer") is None
    assert make(KEY_FUNCTION=reverse_key).get("answer") == 42
    make().set("answer", "default")
    assert custom.get("answer") == 42


def key_operations(cache: BaseCache, key: str) -> list[Callable[[], object]]:
    """Every operation of the API on ``key``, in an order in which each finds what it needs."""
    return [
        lambda: cache.set(key, "value"),
        lambda: cache.get(key),
        lambda: cache.add(key, "value"),
        lambda: cache.has_key(key),
        lambda: cache.touch(key),
        lambda: cache.get_many([key]),
        lambda: cache.set_many({key: 1}),
        lambda: cache.incr(key),
        lambda: cache.decr(key),
        lambda: cache.get_or_set(key, 2),
        lambda: cache.incr_version(key),
        lambda: cache.delete_many([key]),
        lambda: cache.delete(key),
    ]


def test_key_warnings(cache: BaseCache) -> None:
    for key in ("a" * 251, "key with spaces", "key\nwith\x7fcontrol"):
        for operation in key_operations(cache, key):
            with pytest.warns(CacheKeyWarning, match="memcached"):
                operation()
    # the warnings are only warnings: the items are stored
    with pytest.warns(CacheKeyWarning):
        cache.set("a" * 300, "long")
    with pytest.warns(CacheKeyWarning):
        assert cache.get("a" * 300) == "long"


def test_async_methods(cache: BaseCache) -> None:
    async def use() -> None:
        await cache.aset("key", 1)
        assert await cache.aget("key") == 1
        assert await cache.aadd("key", 2) is False
        assert await cache.aincr("key", 5) == 6
        assert await cache.ahas_key("key")
        assert await cache.aget_many(["key", "missing"]) == {"key": 6}
        assert await cache.atouch("key", None) is True
        assert await cache.adelete("key") is True
        assert await cache.aget_or_set("key", "computed") == "computed"
        await cache.aclear()
        assert await cache.aget("key") is None
        await cache.aclose()

    asyncio.run(use())


# ============================================================ viperdbm's own
def handler_for(location: Path, **params: Any) -> CacheHandler:
    return CacheHandler({"default": {"BACKEND": BACKEND, "LOCATION": str(location), **params}})


def test_configured_through_caches_settings(tmp_path: Path) -> None:
    location = tmp_path / "store.vdb"
    handler = handler_for(location, TIMEOUT=60, KEY_PREFIX="site", OPTIONS={"size_limit": 10**6})
    cache = handler["default"]
    try:
        assert isinstance(cache, ViperCache)
        assert cache.default_timeout == 60
        assert cache.location == os.path.realpath(location)
        cache.set("key", "value")
        store = cache.store
        assert store.size_limit == 10**6
        # Django gives each thread its own backend object: they share the store
        found: list[object] = []

        def in_a_thread() -> None:
            other = handler["default"]
            found.append(other is cache)
            found.append(other.store is store)
            found.append(other.get("key"))
            other.set("from-thread", "hi")

        thread = threading.Thread(target=in_a_thread)
        thread.start()
        thread.join()
        assert found == [False, True, "value"]
        assert cache.get("from-thread") == "hi"
        # the end of every request closes the caches: the store stays open
        handler.close_all()
        assert cache.store is store
        assert cache.get("key") == "value"
    finally:
        cache.close_store()
        shutil.rmtree(location, ignore_errors=True)


def test_threads_share_one_writer(tmp_path: Path) -> None:
    handler = handler_for(tmp_path / "store.vdb")
    handler["default"].set("counter", 0)
    errors: list[BaseException] = []

    def count() -> None:
        try:
            for _ in range(50):
                handler["default"].incr("counter")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert handler["default"].get("counter") == 200
    finally:
        handler["default"].close_store()
        shutil.rmtree(tmp_path / "store.vdb", ignore_errors=True)


def test_data_and_expiry_survive_reopening(
    viper: Callable[..., ViperCache], clock: FrozenClock
) -> None:
    first = viper()
    first.set("forever", {"answer": 42}, None)
    first.set("ten-seconds", "soon gone", 10)
    first.set("counter", 1, 10)
    first.incr("counter")
    old_store = first.store
    first.close_store()
    assert "closed" in repr(old_store.db)
    second = viper()
    assert second.store is not old_store
    assert second.get("forever") == {"answer": 42}
    assert second.get("ten-seconds") == "soon gone"
    assert first.get("counter") == 2  # the first object opens it again too
    clock.advance(11)
    assert second.get("ten-seconds") is None
    assert second.get("counter") is None
    assert second.get("forever") == {"answer": 42}


def test_size_limit_bounds_the_volume(viper: Callable[..., ViperCache]) -> None:
    cache = viper(OPTIONS={"size_limit": 20_000})
    for i in range(100):
        cache.set(f"key{i}", bytes(1000))
        assert cache.store.volume() <= 20_000
    assert cache.get("key99") == bytes(1000)
    assert cache.get("key0") is None  # the least recently stored went first
    kept = cache.get_many([f"key{i}" for i in range(100)])
    assert 10 <= len(kept) < 20
    # an item bigger than the bound on its own is not stored: set_many reports it
    assert cache.set_many({"big": bytes(30_000), "small": 1}) == ["big"]
    assert cache.get("big") is None
    assert cache.get("small") == 1


def test_options_are_checked(tmp_path: Path) -> None:
    location = tmp_path / "store.vdb"
    bad: list[dict[str, Any]] = [
        {"sizelimit": 10},
        {"flag": "x"},
        {"flag": 1},
        {"size_limit": -1},
        {"size_limit": "big"},
        {"mode": True},
    ]
    for options in bad:
        with pytest.raises(ImproperlyConfigured):
            ViperCache(location, {"OPTIONS": options})
    with pytest.raises(ImproperlyConfigured):
        ViperCache("", {})
    # Django's entry-count options are accepted (the bound is size_limit), in any case
    ViperCache(location, {"OPTIONS": {"MAX_ENTRIES": 10, "CULL_FREQUENCY": 2, "SIZE_LIMIT": 5}})
    assert not location.exists()  # nothing is opened before the first use


def test_one_location_has_one_set_of_options(viper: Callable[..., ViperCache]) -> None:
    viper().set("key", "value")
    other = viper(OPTIONS={"size_limit": 1000})
    with pytest.raises(ImproperlyConfigured, match="same OPTIONS"):
        other.get("key")
    assert viper(KEY_PREFIX="other", TIMEOUT=5).get("key") is None  # other params are free


def test_flag_r_reads_and_refuses_writes(viper: Callable[..., ViperCache]) -> None:
    writer = viper()
    writer.set("key", "value")
    writer.close_store()
    reader = viper(OPTIONS={"flag": "r"})
    assert reader.get("key") == "value"
    assert reader.store.readonly
    with pytest.raises(viperdbm.ReadonlyError, match="configured read-only"):
        reader.set("key", "other")
    assert reader.get("key") == "value"


CHILD_WRITER = """
import sys
from django.conf import settings
settings.configure()
from viperdbm.cache.django import ViperCache
cache = ViperCache(sys.argv[1], {})
cache.set("from-child", "hello")
print("ready", flush=True)
for line in sys.stdin:
    key = line.strip()
    if key == "quit":
        break
    cache.set(key, key.upper())
    print("done", flush=True)
"""


def test_a_second_process_reads_beside_the_writer(
    viper: Callable[..., ViperCache], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_WRITER, str(tmp_path / "store.vdb")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        cache = viper()
        assert cache.get("from-child") == "hello"
        assert cache.has_key("from-child")
        assert cache.store.readonly
        with pytest.raises(viperdbm.LockError) as raised:
            cache.set("key", "value")
        message = str(raised.value)
        assert "another process writes this cache" in message
        assert "several processes" in message
        assert "Redis" in message and "Memcached" in message
        assert isinstance(raised.value.__cause__, viperdbm.LockError)  # the open's own error
        writes: list[Callable[[], object]] = [
            lambda: cache.add("key", 1),
            lambda: cache.set_many({"key": 1}),
            lambda: cache.touch("from-child"),
            lambda: cache.incr("from-child"),
            lambda: cache.delete("from-child"),
            lambda: cache.delete_many(["from-child"]),
            lambda: cache.clear(),
        ]
        for write in writes:
            with pytest.raises(viperdbm.LockError, match="another process writes"):
                write()
        # the reader follows the writer's later writes
        child.stdin.write("live\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
        assert cache.get("live") == "LIVE"
        assert cache.get("from-child") == "hello"
        # once the writer has gone, this process writes (at its next write)
        child.stdin.write("quit\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0, child.stderr.read()
        monkeypatch.setattr(ViperCache, "writer_retry_interval", 0.0)
        cache.set("key", "value")
        assert not cache.store.readonly
        assert cache.get_many(["key", "live"]) == {"key": "value", "live": "LIVE"}
    finally:
        if child.poll() is None:
            kill_quietly(child)
        child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()


def test_fork_child_reopens_the_store(viper: Callable[..., ViperCache]) -> None:
    cache = viper()
    cache.set("before-fork", 1)
    store = cache.store
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, and never return into pytest
        status = 1
        try:
            result: dict[str, object] = {"store is the parent's": cache.store is store}
            result["value"] = cache.get("before-fork")
            result["readonly"] = cache.store.readonly  # the parent is the writer
            try:
                cache.set("from-child", 1)
                result["set"] = "stored"
            except viperdbm.LockError:
                result["set"] = "LockError"
            os.write(write_end, json.dumps(result).encode())
            status = 0
        except BaseException as error:
            os.write(write_end, json.dumps({"error": repr(error)}).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report == {
        "store is the parent's": False,
        "value": 1,
        "readonly": True,
        "set": "LockError",
    }
    # the parent's store is untouched by the child
    assert cache.store is store
    cache.set("after-fork", 2)
    assert cache.get_many(["before-fork", "after-fork", "from-child"]) == {
        "before-fork": 1,
        "after-fork": 2,
    }


CHILD_EXITS = """
import atexit, sys
from django.conf import settings
settings.configure()

def report():  # registered first, so it runs last
    print("ok" if "closed" in repr(store.db) else "still open", flush=True)

atexit.register(report)
from viperdbm.cache.django import ViperCache
cache = ViperCache(sys.argv[1], {})
cache.set("key", "value", None)
cache.close()
store = cache.store
"""


def test_the_store_is_closed_at_exit(viper: Callable[..., ViperCache], tmp_path: Path) -> None:
    run_script_ok(CHILD_EXITS, str(tmp_path / "store.vdb"))
    cache = viper()
    assert cache.get("key") == "value"
    assert not cache.store.readonly  # the child's writer lock went with it
