"""shelve over viperdbm: ``shelve.Shelf(viperdbm.open(...))`` and ``viperdbm.shelve.open``,
for every pickle protocol, with and without writeback (after CPython's test_shelve)."""

from __future__ import annotations

import datetime
import decimal
import fractions
import os
import pickle
import shelve
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import Backend, Store

PROTOCOLS = list(range(pickle.HIGHEST_PROTOCOL + 1))


def shelf_over(db: Store, protocol: int | None = None) -> shelve.Shelf[Any]:
    """``shelve.Shelf(store)``, the stdlib way to put a third-party dbm under shelve."""
    return shelve.Shelf(cast("MutableMapping[bytes, bytes]", db), protocol)


@dataclass(frozen=True)
class Point:
    x: int
    y: int


VALUES: dict[str, Any] = {
    "int": 42,
    "bigint": 2**200 + 1,
    "negative": -1,
    "float": 3.5,
    "nan-free float": float("inf"),
    "complex": 1 + 2j,
    "bool": True,
    "none": None,
    "str": "text",
    "unicode": "ключ ✓ \x00",
    "bytes": b"\x00\xff raw",
    "bytearray": bytearray(b"mutable"),
    "empty bytes": b"",
    "empty str": "",
    "list": [1, "two", 3.0, None],
    "tuple": (1, (2, (3,))),
    "dict": {"a": 1, 2: "b", (3, 4): [5]},
    "set": {1, 2, 3},
    "frozenset": frozenset({"x"}),
    "nested": {"list": [{"deep": ["er", {"est": b"!"}]}]},
    "large": list(range(50_000)),
    "large bytes": os.urandom(300_000),
    "date": datetime.date(2026, 1, 2),
    "datetime": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    "decimal": decimal.Decimal("1.10"),
    "fraction": fractions.Fraction(1, 3),
    "dataclass": Point(1, 2),
    "range": range(3, 30, 3),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shelf_over_the_store_round_trips_every_type(
    backend: Backend, store_path: Path, protocol: int
) -> None:
    with shelf_over(backend.open(store_path, "c"), protocol) as shelf:
        for key, value in VALUES.items():
            shelf[key] = value
        assert len(shelf) == len(VALUES)
        for key, value in VALUES.items():
            assert shelf[key] == value
    with shelf_over(backend.open(store_path, "r")) as shelf:
        assert sorted(shelf) == sorted(VALUES)
        for key, value in VALUES.items():
            assert shelf[key] == value
            assert type(shelf[key]) is type(value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shelve_open_helper(backend: Backend, store_path: Path, protocol: int) -> None:
    shelf = backend.shelve_open(store_path, "c", protocol)
    assert isinstance(shelf, shelve.Shelf)
    with shelf:
        shelf["p"] = Point(protocol, -protocol)
        shelf["ключ"] = {"protocol": protocol}
    with backend.shelve_open(str(store_path), "r") as shelf:
        assert shelf["p"] == Point(protocol, -protocol)
        assert shelf["ключ"] == {"protocol": protocol}
        assert "ключ" in shelf
        assert sorted(shelf.keys()) == ["p", "ключ"]


def test_shelve_open_defaults_to_c_and_is_writable(backend: Backend, store_path: Path) -> None:
    with backend.shelve_open(store_path) as shelf:
        shelf["k"] = [1]
    with backend.shelve_open(store_path) as shelf:
        assert shelf["k"] == [1]
        shelf["k2"] = 2
    with backend.shelve_open(store_path, "r") as shelf:
        assert dict(shelf) == {"k": [1], "k2": 2}


def test_shelve_open_mode_is_keyword_only_and_applied(
    backend: Backend, store_dir: Path, store_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        with backend.shelve_open(store_path, "c", None, False, mode=0o600) as shelf:
            shelf["k"] = "v"
    finally:
        os.umask(old)
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert files
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)


def test_shelve_open_r_on_missing_path(backend: Backend, store_dir: Path, store_path: Path) -> None:
    with pytest.raises(backend.error):
        backend.shelve_open(store_path, "r")
    assert list(store_dir.iterdir()) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_writeback_true_persists_mutations(
    backend: Backend, store_path: Path, protocol: int
) -> None:
    with backend.shelve_open(store_path, "c", protocol, writeback=True) as shelf:
        shelf["list"] = []
        shelf["list"].append(1)
        shelf["dict"] = {}
        shelf["dict"]["k"] = "v"
        shelf.sync()
        shelf["list"].append(2)
    with backend.shelve_open(store_path, "r") as shelf:
        assert shelf["list"] == [1, 2]
        assert shelf["dict"] == {"k": "v"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_writeback_false_drops_in_place_mutations(
    backend: Backend, store_path: Path, protocol: int
) -> None:
    with backend.shelve_open(store_path, "c", protocol, writeback=False) as shelf:
        shelf["list"] = [0]
        shelf["list"].append(1)  # mutates a temporary copy
        assert shelf["list"] == [0]
        value = shelf["list"]
        value.append(1)
        shelf["list"] = value
    with backend.shelve_open(store_path, "r") as shelf:
        assert shelf["list"] == [0, 1]


def test_shelf_mapping_operations_and_reopen(backend: Backend, store_path: Path) -> None:
    with backend.shelve_open(store_path, "c") as shelf:
        shelf.update({"a": 1, "b": 2, "c": 3})
        del shelf["b"]
        assert "b" not in shelf
        assert shelf.get("b") is None
        assert shelf.pop("c") == 3
        assert shelf.setdefault("d", [4]) == [4]
        assert len(shelf) == 2
    with backend.shelve_open(store_path, "w") as shelf:
        assert dict(shelf) == {"a": 1, "d": [4]}
        shelf.clear()
    with backend.shelve_open(store_path, "r") as shelf:
        assert len(shelf) == 0


def test_shelf_on_read_only_store_refuses_writes(backend: Backend, store_path: Path) -> None:
    with backend.shelve_open(store_path, "c") as shelf:
        shelf["k"] = 1
    with backend.shelve_open(store_path, "r") as shelf:
        with pytest.raises(backend.error_class("ReadonlyError")):
            shelf["k"] = 2
        with pytest.raises(backend.error_class("ReadonlyError")):
            del shelf["k"]
        assert shelf["k"] == 1


def test_closed_shelf_raises_valueerror(backend: Backend, store_path: Path) -> None:
    shelf = backend.shelve_open(store_path, "c")
    shelf["k"] = 1
    shelf.close()
    with pytest.raises(ValueError, match="closed shelf"):
        shelf["k"]
    shelf.close()


def test_shelf_keys_are_utf8_in_the_store(backend: Backend, store_path: Path) -> None:
    with backend.shelve_open(store_path, "c", protocol=2) as shelf:
        shelf["ключ"] = "значение"
    with backend.open(store_path, "r") as db:
        assert db.keys() == ["ключ".encode()]
        assert pickle.loads(db["ключ".encode()]) == "значение"
