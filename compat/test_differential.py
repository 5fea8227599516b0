"""Differential tests: viperdbm against every dbm backend available, and a dict oracle.

Method
------
* Backends: viperdbm (required: its import failing fails the suite, unless
  VIPERDBM_TEST_BACKEND=dbm.dumb), dbm.dumb (always), dbm.sqlite3 (where
  ``importlib.util.find_spec('dbm.sqlite3')``, i.e. Python >= 3.13) and dbm.gnu (where it
  imports). Each runs on a fresh directory of its own.
* Data: the same operation sequences — seeded scripts and a Hypothesis-generated one —
  run on every backend in lockstep with ``DictOracle``, a dict with the dbm conventions
  (str -> UTF-8, KeyError for missing keys, keys() a list). Every result, and the type
  of every exception, must equal the oracle's. The only ops a backend may skip are the
  ones ``LACKS`` says it does not have (dbm.gnu is not a full mapping).
* Misuse: each case in ``CASES`` (bad flags, wrong types, missing keys, use after close,
  writes on 'r', 'r'/'w' on a missing path, keys() type, setdefault/get defaults, str vs
  bytes keys, iteration, locking, not-a-store paths, gdbm extras) returns an outcome: a
  value, or the *category* of the exception: "error" for the backend's ``error`` or any
  OSError, else the exception's class name (KeyError, TypeError, ValueError, ...).
  ``EXPECTED`` is the contract, i.e. what viperdbm must do: dbm.gnu's behaviour for
  errors and gdbm extras, dict's for data. ``KNOWN_DIFFERENCES`` is the one table of
  where a stdlib backend departs from it (verified by running dbm.gnu of Debian's
  python3-gdbm 3.11.2, dbm.sqlite3 of CPython 3.13.0, dbm.dumb of 3.11.7); its viperdbm
  rows are the few places the viperdbm contract deliberately differs from gdbm.
  Every backend must match its expectation, so a stale table entry fails too.
"""

from __future__ import annotations

import collections.abc
import errno
import functools
import importlib
import importlib.util
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BACKEND_ENV = "VIPERDBM_TEST_BACKEND"
Outcome = tuple[str, object]
Op = tuple[Any, ...]


def backend_names() -> list[str]:
    names = []
    if (os.environ.get(BACKEND_ENV, "") or "viperdbm") != "dbm.dumb":
        names.append("viperdbm")  # required: an ImportError fails, never skips
    names.append("dbm.dumb")
    if importlib.util.find_spec("dbm.sqlite3") is not None:
        names.append("dbm.sqlite3")
    try:
        importlib.import_module("dbm.gnu")
    except ImportError:
        pass
    else:
        names.append("dbm.gnu")
    return names


BACKENDS = backend_names()


@pytest.fixture(params=BACKENDS)
def module(request: pytest.FixtureRequest) -> ModuleType:
    name: str = request.param
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            f"cannot import {name} ({exc}); set {BACKEND_ENV}=dbm.dumb to run without it",
            pytrace=False,
        )


def category(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "KeyError"
    if isinstance(exc, OSError):  # every backend's error is an OSError (dumb's *is* OSError)
        return "error"
    return type(exc).__name__


def outcome(action: Callable[[], object]) -> Outcome:
    try:
        return ("ok", action())
    except Exception as exc:
        return ("raises", category(exc))


def ok(value: object = None) -> Outcome:
    return ("ok", value)


def raises(name: str) -> Outcome:
    return ("raises", name)


def norm(data: object) -> object:
    return data.encode() if isinstance(data, str) else data


# -- the dict oracle and the lockstep runner -----------------------------------------------


class DictOracle:
    """A dict with the dbm conventions: the expected *data* behaviour of every backend."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def __getitem__(self, key: bytes | str) -> bytes:
        return self.data[self._key(key)]

    def __setitem__(self, key: bytes | str, value: bytes | str) -> None:
        self.data[self._key(key)] = self._value(value)

    def __delitem__(self, key: bytes | str) -> None:
        del self.data[self._key(key)]

    def __contains__(self, key: bytes | str) -> bool:
        return self._key(key) in self.data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self.data))

    def keys(self) -> list[bytes]:
        return list(self.data)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.data.items())

    def values(self) -> list[bytes]:
        return list(self.data.values())

    def get(self, key: bytes | str, default: object = None) -> object:
        return self.data.get(self._key(key), default)

    def setdefault(self, key: bytes | str, default: bytes | str) -> bytes:
        return self.data.setdefault(self._key(key), self._value(default))

    def pop(self, key: bytes | str, *default: object) -> object:
        return self.data.pop(self._key(key), *default)

    def update(self, other: dict[Any, Any]) -> None:
        for key, value in other.items():
            self[key] = value

    def clear(self) -> None:
        self.data.clear()

    def sync(self) -> None:
        pass

    def walk(self) -> list[bytes]:
        return sorted(self.data)

    @staticmethod
    def _key(key: object) -> bytes:
        if isinstance(key, str):
            return key.encode()
        if type(key) is bytes:
            return key
        raise TypeError("keys must be bytes or str")

    @staticmethod
    def _value(value: object) -> bytes:
        return DictOracle._key(value)


def firstkey_walk(db: Any) -> list[bytes]:
    seen = []
    key = db.firstkey()
    while key is not None:
        seen.append(key)
        key = db.nextkey(key)
    return sorted(seen)


# Data ops the reference gdbm object does not have (it is not a full mapping).
GNU_LACKS = {"iter", "items", "values", "pop", "pop_default", "popitem", "update"}
if sys.version_info < (3, 13):
    GNU_LACKS.add("clear")
# The gdbm extras that only dbm.gnu and viperdbm have.
EXTRAS = {"walk", "reorganize"}
LACKS: dict[str, set[str]] = {
    "viperdbm": set(),
    "dbm.dumb": EXTRAS | ({"reorganize"} if sys.version_info < (3, 15) else set()),
    "dbm.sqlite3": EXTRAS | {"sync"},
    "dbm.gnu": GNU_LACKS,
}


def apply(db: Any, op: Op) -> object:
    """Run one op on a store or on the oracle; results are made order-independent."""
    name, *args = op
    match name:
        case "set":
            db[args[0]] = args[1]
            return None
        case "getitem":
            return db[args[0]]
        case "get":
            return db.get(*args)
        case "delitem":
            del db[args[0]]
            return None
        case "contains":
            return args[0] in db
        case "len":
            return len(db)
        case "keys":
            keys = db.keys()
            return (type(keys).__name__, sorted(keys))
        case "iter":
            return sorted(db)
        case "items":
            return sorted(db.items())
        case "values":
            return sorted(db.values())
        case "setdefault":
            return db.setdefault(*args)
        case "pop" | "pop_default":
            return db.pop(*args)
        case "update":
            db.update(args[0])
            return None
        case "clear":
            db.clear()
            return None
        case "sync":
            db.sync()
            return None
        case "walk":
            return db.walk() if isinstance(db, DictOracle) else firstkey_walk(db)
        case "reorganize":
            if not isinstance(db, DictOracle):
                db.reorganize()
            return None
    raise AssertionError(f"unknown op {name}")


def run_lockstep(module: ModuleType, path: Path, script: list[Op]) -> None:
    """Run *script* on a store and on the oracle; every outcome must be the same."""
    lacks = LACKS[module.__name__]
    oracle = DictOracle()
    db = module.open(str(path), "c")
    try:
        for step, op in enumerate(script):
            if op[0] in lacks:
                continue
            if op[0] == "reopen":
                db.close()
                db = module.open(str(path), op[1])
                continue
            if op[0] == "popitem":
                got = outcome(db.popitem)
                if got[0] == "ok":
                    key, value = cast(tuple[bytes, bytes], got[1])
                    assert oracle.data.pop(key, None) == value, f"step {step}: {op} -> {got}"
                else:
                    assert got == raises("KeyError") and not oracle.data, f"step {step}: {got}"
                continue
            want = outcome(functools.partial(apply, oracle, op))
            got = outcome(functools.partial(apply, db, op))
            assert got == want, f"step {step}: {op!r}: {module.__name__} {got!r}, dict {want!r}"
        assert sorted(db.keys()) == sorted(oracle.data)
        for key, value in oracle.data.items():
            assert db[key] == value
    finally:
        db.close()


KEYS: list[bytes | str] = [
    b"a",
    "a",
    b"",
    "",
    b"\x00",
    b"a\x00b",
    "ä",
    "ä".encode(),
    "ключ",
    b"k" * 300,
    b"\xff\xfe",
]
VALUES: list[bytes | str] = [b"", b"v", "v", b"\x00\xff", "ö", b"x" * 5000, bytes(range(256))]


def random_script(rng: random.Random, length: int) -> list[Op]:
    def key() -> bytes | str:
        return rng.choice(KEYS)

    def value() -> bytes | str:
        return rng.choice(VALUES)

    makers: list[Callable[[], Op]] = [
        lambda: ("set", key(), value()),
        lambda: ("set", key(), value()),
        lambda: ("set", key(), value()),
        lambda: ("getitem", key()),
        lambda: ("get", key()),
        lambda: ("get", key(), b"dflt"),
        lambda: ("delitem", key()),
        lambda: ("contains", key()),
        lambda: ("len",),
        lambda: ("keys",),
        lambda: ("iter",),
        lambda: ("items",),
        lambda: ("values",),
        lambda: ("setdefault", key(), rng.choice([b"", b"sd", b"\x00"])),
        lambda: ("pop", key()),
        lambda: ("pop_default", key(), None),
        lambda: ("popitem",),
        lambda: ("update", {key(): value(), key(): value()}),
        lambda: ("sync",),
        lambda: ("walk",),
        lambda: ("reorganize",),
        lambda: ("reopen", rng.choice(["w", "c"])),
    ]
    script = [rng.choice(makers)() for _ in range(length)]
    if rng.random() < 0.3:
        script.insert(rng.randrange(length), ("clear",))
    return script


@pytest.mark.parametrize("seed", range(12))
def test_seeded_script(module: ModuleType, tmp_path: Path, seed: int) -> None:
    run_lockstep(module, tmp_path / "store", random_script(random.Random(seed), 250))


keys_st = st.sampled_from(KEYS)
values_st = st.sampled_from(VALUES)
ops_st: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("set"), keys_st, values_st),
    st.tuples(st.sampled_from(["getitem", "get", "delitem", "contains", "pop"]), keys_st),
    st.tuples(st.just("get"), keys_st, values_st),
    st.tuples(st.just("setdefault"), keys_st, st.sampled_from([b"", b"sd"])),
    st.tuples(st.just("pop_default"), keys_st, st.none()),
    st.tuples(st.sampled_from(["len", "keys", "iter", "items", "values", "popitem", "clear"])),
    st.tuples(st.sampled_from(["sync", "walk", "reorganize"])),
    st.tuples(st.just("update"), st.dictionaries(keys_st, values_st, max_size=3)),
    st.tuples(st.just("reopen"), st.sampled_from(["w", "c"])),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=st.lists(ops_st, max_size=40))
def test_generated_script(
    module: ModuleType, tmp_path_factory: pytest.TempPathFactory, script: list[Op]
) -> None:
    run_lockstep(module, tmp_path_factory.mktemp("gen") / "store", script)


# -- misuse cases ------------------------------------------------------------------------

Case = Callable[[ModuleType, Path], object]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert name not in CASES
        CASES[name] = fn
        return fn

    return register


def fresh(module: ModuleType, path: Path, data: dict[bytes, bytes] | None = None) -> Any:
    """A new store at *path* holding *data*, open 'c'."""
    db = module.open(str(path / "store"), "c")
    for key, value in (data or {}).items():
        db[key] = value
    return db


def closed(module: ModuleType, path: Path) -> Any:
    db = fresh(module, path, {b"k": b"v"})
    db.close()
    return db


def readonly(module: ModuleType, path: Path) -> Any:
    fresh(module, path, {b"k": b"v"}).close()
    return module.open(str(path / "store"), "r")


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def open_flag(flag: str) -> Case:
    def run(module: ModuleType, path: Path) -> object:
        fresh(module, path).close()
        return outcome(lambda: module.open(str(path / "store"), flag).close())

    return run


FLAGS = ["", "x", "C", "rw", "fc", "cff", "rss", "cfsu", "cs", "ru", "nf", "wsf"]
for _flag in FLAGS:
    case(f"flag {_flag!r}")(open_flag(_flag))


@case("bad flag creates nothing")
def _bad_flag_creates_nothing(module: ModuleType, path: Path) -> object:
    return outcome(lambda: module.open(str(path / "store"), "x")), listing(path)


for _flag in "rw":

    @case(f"{_flag!r} on a missing path")
    def _missing(module: ModuleType, path: Path, flag: str = _flag) -> object:
        try:
            module.open(str(path / "store"), flag)
        except Exception as exc:
            return category(exc), getattr(exc, "errno", None), listing(path)
        return "opened", listing(path)


@case("'n' on an existing store")
def _n_existing(module: ModuleType, path: Path) -> object:
    fresh(module, path, {b"k": b"v"}).close()
    with module.open(str(path / "store"), "n") as db:
        return len(db), db.keys()


BAD_TYPES: dict[str, Callable[[Any], object]] = {
    "set int key": lambda db: db.__setitem__(1, b"v"),
    "set float key": lambda db: db.__setitem__(1.5, b"v"),
    "set int value": lambda db: db.__setitem__(b"k", 1),
    "set None value": lambda db: db.__setitem__(b"k", None),
    "getitem int key": lambda db: db[1],
    "contains int key": lambda db: 1 in db,
    "delitem int key": lambda db: db.__delitem__(1),
    "get int key": lambda db: db.get(1),
    "setdefault int value": lambda db: db.setdefault(b"new", 1),
}
MISSING: dict[str, Callable[[Any], object]] = {
    "getitem missing": lambda db: db[b"missing"],
    "delitem missing": lambda db: db.__delitem__(b"missing"),
    "pop missing": lambda db: db.pop(b"missing"),
    "pop missing with default": lambda db: db.pop(b"missing", b"d"),
    "popitem empty": lambda db: (db.__delitem__(b"k"), db.popitem()),
    "get missing": lambda db: db.get(b"missing"),
    "get missing with str default": lambda db: db.get(b"missing", "dflt"),
    "setdefault missing, no default": lambda db: db.setdefault(b"new"),
    "setdefault missing, str default": lambda db: (db.setdefault(b"new", "v"), db[b"new"]),
    "setdefault missing, bytes default": lambda db: (db.setdefault(b"new", b"v"), db[b"new"]),
    "setdefault existing": lambda db: db.setdefault(b"k", b"other"),
}
DATA: dict[str, Callable[[Any], object]] = {
    "keys() type": lambda db: type(db.keys()).__name__,
    "str key is utf-8": lambda db: (
        db.__setitem__("ä", "ö"),
        db["ä".encode()],
        "ä" in db,
        "ä".encode() in db,
        sorted(db.keys()),
    ),
    "bytes key read with str": lambda db: (db["k"], "k" in db, db.get("k")),
    "results are bytes": lambda db: (db.__setitem__("s", "t"), type(db["s"]).__name__),
    "iteration": lambda db: sorted(db),
    "items": lambda db: sorted(db.items()),
    "values": lambda db: sorted(db.values()),
    "len": len,
    "is a MutableMapping": lambda db: isinstance(db, collections.abc.MutableMapping),
    "firstkey/nextkey walk": lambda db: (db.__setitem__(b"", b"e"), firstkey_walk(db)),
    "firstkey on empty": lambda db: (db.__delitem__(b"k"), db.firstkey()),
    "reorganize keeps data": lambda db: (
        db.__setitem__(b"x", b"y"),
        db.__delitem__(b"k"),
        db.reorganize(),
        sorted(db.items()) if hasattr(db, "items") else db[b"x"],
    ),
    "sync": lambda db: db.sync(),
}
for _name, _action in {**BAD_TYPES, **MISSING, **DATA}.items():

    @case(_name)
    def _on_fresh(
        module: ModuleType, path: Path, action: Callable[[Any], object] = _action
    ) -> object:
        db = fresh(module, path, {b"k": b"v"})
        try:
            return outcome(lambda: action(db))
        finally:
            db.close()


USES: dict[str, Callable[[Any], object]] = {
    "getitem": lambda db: db[b"k"],
    "setitem": lambda db: db.__setitem__(b"k", b"v"),
    "delitem": lambda db: db.__delitem__(b"k"),
    "delitem missing": lambda db: db.__delitem__(b"missing"),
    "contains": lambda db: b"k" in db,
    "len": len,
    "iter": lambda db: list(db),
    "keys": lambda db: db.keys(),
    "items": lambda db: list(db.items()),
    "values": lambda db: list(db.values()),
    "get": lambda db: db.get(b"k"),
    "setdefault existing": lambda db: db.setdefault(b"k", b"v"),
    "setdefault missing": lambda db: db.setdefault(b"new", b"v"),
    "pop": lambda db: db.pop(b"k"),
    "popitem": lambda db: db.popitem(),
    "update": lambda db: db.update({b"k": b"v"}),
    "clear": lambda db: db.clear(),
    "sync": lambda db: db.sync(),
    "firstkey": lambda db: db.firstkey(),
    "nextkey": lambda db: db.nextkey(b"k"),
    "reorganize": lambda db: db.reorganize(),
    "close": lambda db: db.close(),
}
for _name, _action in USES.items():

    @case(f"closed: {_name}")
    def _on_closed(
        module: ModuleType, path: Path, action: Callable[[Any], object] = _action
    ) -> object:
        return outcome(lambda: action(closed(module, path)))

    @case(f"read-only: {_name}")
    def _on_readonly(
        module: ModuleType, path: Path, action: Callable[[Any], object] = _action
    ) -> object:
        db = readonly(module, path)
        try:
            result = outcome(lambda: action(db))
            return result, outcome(db.keys)
        finally:
            db.close()


@case("context manager closes")
def _context_manager(module: ModuleType, path: Path) -> object:
    with fresh(module, path) as db:
        db[b"k"] = b"v"
    return outcome(lambda: len(db))


@case("second writer, same process")
def _second_writer(module: ModuleType, path: Path) -> object:
    fresh(module, path, {b"k": b"v"}).close()
    db = module.open(str(path / "store"), "w")
    try:
        return outcome(lambda: module.open(str(path / "store"), "w").close())
    finally:
        db.close()


@case("'c' on a regular file")
def _regular_file(module: ModuleType, path: Path) -> object:
    (path / "store").write_bytes(b"not a store")
    return outcome(lambda: module.open(str(path / "store"), "c").close())


@case("'c' on a directory with foreign files")
def _foreign_dir(module: ModuleType, path: Path) -> object:
    (path / "store").mkdir()
    (path / "store" / "notes.txt").write_bytes(b"mine")
    return outcome(lambda: module.open(str(path / "store"), "c").close())


ERROR = raises("error")
NOT_HAVE = raises("AttributeError")
RO = ok([b"k"])  # what a read-only store holds after each attempt

# The contract: what viperdbm must do. Errors and gdbm extras as dbm.gnu does them, data as
# a dict does.
EXPECTED: dict[str, object] = {
    **{f"flag {f!r}": raises("ValueError") for f in ["", "x", "C", "rw", "fc", "cff", "rss"]},
    **{f"flag {f!r}": ok() for f in ["cfsu", "cs", "ru", "nf", "wsf"]},
    "bad flag creates nothing": (raises("ValueError"), []),
    "'r' on a missing path": ("error", errno.ENOENT, []),
    "'w' on a missing path": ("error", errno.ENOENT, []),
    "'n' on an existing store": (0, []),
    **{name: raises("TypeError") for name in BAD_TYPES},
    "getitem missing": raises("KeyError"),
    "delitem missing": raises("KeyError"),
    "pop missing": raises("KeyError"),
    "pop missing with default": ok(b"d"),
    "popitem empty": raises("KeyError"),
    "get missing": ok(None),
    "get missing with str default": ok("dflt"),  # a default is returned as given
    "setdefault missing, no default": raises("TypeError"),  # None is not a value
    "setdefault missing, str default": ok((b"v", b"v")),
    "setdefault missing, bytes default": ok((b"v", b"v")),
    "setdefault existing": ok(b"v"),
    "keys() type": ok("list"),
    "str key is utf-8": ok((None, "ö".encode(), True, True, sorted([b"k", "ä".encode()]))),
    "bytes key read with str": ok((b"v", True, b"v")),
    "results are bytes": ok((None, "bytes")),
    "iteration": ok([b"k"]),
    "items": ok([(b"k", b"v")]),
    "values": ok([b"v"]),
    "len": ok(1),
    "is a MutableMapping": ok(True),
    "firstkey/nextkey walk": ok((None, [b"", b"k"])),
    "firstkey on empty": ok((None, None)),
    "reorganize keeps data": ok((None, None, None, [(b"x", b"y")])),
    "sync": ok(None),
    **{f"closed: {name}": ERROR for name in USES},
    "closed: close": ok(None),  # close() is idempotent
    **{f"read-only: {name}": (ERROR, RO) for name in USES},
    **{
        f"read-only: {name}": (ok(value), RO)
        for name, value in [
            ("getitem", b"v"),
            ("contains", True),
            ("len", 1),
            ("iter", [b"k"]),
            ("keys", [b"k"]),
            ("items", [(b"k", b"v")]),
            ("values", [b"v"]),
            ("get", b"v"),
            ("setdefault existing", b"v"),
            ("sync", None),
            ("firstkey", b"k"),
            ("nextkey", None),
        ]
    },
    "read-only: close": (ok(None), ERROR),
    "context manager closes": ERROR,
    "second writer, same process": ERROR,  # LockError
    "'c' on a regular file": ERROR,  # NotAStoreError
    "'c' on a directory with foreign files": ERROR,  # NotAStoreError
}

# The one table of known differences: (backend, case) -> what that backend does instead.
# Each entry was observed by running the backend (see the module docstring).
_gnu_lacks_uses = ["iter", "items", "values", "pop", "popitem", "update"]
_before_313 = sys.version_info < (3, 13)
_before_315 = sys.version_info < (3, 15)
KNOWN_DIFFERENCES: dict[tuple[str, str], object] = {
    # viperdbm vs gdbm, by the viperdbm contract: a bad flag is a ValueError (as in
    # dbm.dumb/dbm.sqlite3), and each modifier may appear once; gdbm raises its error for a
    # bad flag and accepts 'cff'/'rss'.
    **{("dbm.gnu", f"flag {f!r}"): ERROR for f in ["", "x", "C", "rw", "fc"]},
    ("dbm.gnu", "flag 'cff'"): ok(),
    ("dbm.gnu", "flag 'rss'"): ok(),
    ("dbm.gnu", "bad flag creates nothing"): (ERROR, []),
    # viperdbm is a full MutableMapping; gdbm objects are not iterable and lack these.
    ("dbm.gnu", "iteration"): raises("TypeError"),
    ("dbm.gnu", "items"): NOT_HAVE,
    ("dbm.gnu", "values"): NOT_HAVE,
    ("dbm.gnu", "pop missing"): NOT_HAVE,
    ("dbm.gnu", "pop missing with default"): NOT_HAVE,
    ("dbm.gnu", "popitem empty"): NOT_HAVE,
    ("dbm.gnu", "is a MutableMapping"): ok(False),
    ("dbm.gnu", "reorganize keeps data"): ok((None, None, None, b"y")),
    ("dbm.gnu", "closed: iter"): raises("TypeError"),
    ("dbm.gnu", "read-only: iter"): (raises("TypeError"), RO),
    **{("dbm.gnu", f"closed: {n}"): NOT_HAVE for n in _gnu_lacks_uses if n != "iter"},
    **{("dbm.gnu", f"read-only: {n}"): (NOT_HAVE, RO) for n in _gnu_lacks_uses if n != "iter"},
    **(
        {("dbm.gnu", "closed: clear"): NOT_HAVE, ("dbm.gnu", "read-only: clear"): (NOT_HAVE, RO)}
        if _before_313
        else {}
    ),
    # dbm.dumb: no firstkey/nextkey (nor reorganize before 3.15); any object is a
    # "missing key" for lookups (only setitem checks types); setdefault returns the
    # default as given; no locking; it puts its .dat/.dir files next to whatever is at
    # the path; sync() after close() does nothing; 'r'/'w' on a missing path raise
    # FileNotFoundError (an OSError: category "error", errno ENOENT).
    ("dbm.dumb", "getitem int key"): raises("KeyError"),
    ("dbm.dumb", "contains int key"): ok(False),
    ("dbm.dumb", "delitem int key"): raises("KeyError"),
    ("dbm.dumb", "get int key"): ok(None),
    ("dbm.dumb", "setdefault missing, str default"): ok(("v", b"v")),
    ("dbm.dumb", "second writer, same process"): ok(),
    ("dbm.dumb", "'c' on a regular file"): ok(),
    ("dbm.dumb", "'c' on a directory with foreign files"): ok(),
    ("dbm.dumb", "closed: sync"): ok(None),
    ("dbm.dumb", "firstkey/nextkey walk"): NOT_HAVE,
    ("dbm.dumb", "firstkey on empty"): NOT_HAVE,
    ("dbm.dumb", "closed: firstkey"): NOT_HAVE,
    ("dbm.dumb", "closed: nextkey"): NOT_HAVE,
    ("dbm.dumb", "read-only: firstkey"): (NOT_HAVE, RO),
    ("dbm.dumb", "read-only: nextkey"): (NOT_HAVE, RO),
    **(
        {
            ("dbm.dumb", "reorganize keeps data"): NOT_HAVE,
            ("dbm.dumb", "closed: reorganize"): NOT_HAVE,
            ("dbm.dumb", "read-only: reorganize"): (NOT_HAVE, RO),
        }
        if _before_315
        else {}
    ),
    # dbm.sqlite3: coerces any key/value type to BLOB (1 -> b'1'), so no TypeError; None
    # violates its NOT NULL column (its error); setdefault returns the default as given;
    # errors from sqlite carry no errno; no sync(); no firstkey/nextkey (nor reorganize
    # before 3.15); no locking against a second writer; a regular file raises
    # sqlite3.DatabaseError, which is not an OSError.
    ("dbm.sqlite3", "set int key"): ok(),
    ("dbm.sqlite3", "set float key"): ok(),
    ("dbm.sqlite3", "set int value"): ok(),
    ("dbm.sqlite3", "set None value"): ERROR,
    ("dbm.sqlite3", "getitem int key"): raises("KeyError"),
    ("dbm.sqlite3", "contains int key"): ok(False),
    ("dbm.sqlite3", "delitem int key"): raises("KeyError"),
    ("dbm.sqlite3", "get int key"): ok(None),
    ("dbm.sqlite3", "setdefault int value"): ok(1),
    ("dbm.sqlite3", "setdefault missing, no default"): ERROR,
    ("dbm.sqlite3", "setdefault missing, str default"): ok(("v", b"v")),
    ("dbm.sqlite3", "'r' on a missing path"): ("error", None, []),
    ("dbm.sqlite3", "'w' on a missing path"): ("error", None, []),
    ("dbm.sqlite3", "second writer, same process"): ok(),
    ("dbm.sqlite3", "'c' on a regular file"): raises("DatabaseError"),
    ("dbm.sqlite3", "sync"): NOT_HAVE,
    ("dbm.sqlite3", "closed: sync"): NOT_HAVE,
    ("dbm.sqlite3", "read-only: sync"): (NOT_HAVE, RO),
    ("dbm.sqlite3", "firstkey/nextkey walk"): NOT_HAVE,
    ("dbm.sqlite3", "firstkey on empty"): NOT_HAVE,
    ("dbm.sqlite3", "closed: firstkey"): NOT_HAVE,
    ("dbm.sqlite3", "closed: nextkey"): NOT_HAVE,
    ("dbm.sqlite3", "read-only: firstkey"): (NOT_HAVE, RO),
    ("dbm.sqlite3", "read-only: nextkey"): (NOT_HAVE, RO),
    **(
        {
            ("dbm.sqlite3", "reorganize keeps data"): NOT_HAVE,
            ("dbm.sqlite3", "closed: reorganize"): NOT_HAVE,
            ("dbm.sqlite3", "read-only: reorganize"): (NOT_HAVE, RO),
        }
        if _before_315
        else {}
    ),
}
# Flags with gdbm modifiers: only gdbm (and viperdbm) know them.
for _flag in ["cfsu", "cs", "ru", "nf", "wsf"]:
    for _other in ["dbm.dumb", "dbm.sqlite3"]:
        KNOWN_DIFFERENCES[(_other, f"flag {_flag!r}")] = raises("ValueError")


def expected(backend: str, name: str) -> object:
    return KNOWN_DIFFERENCES.get((backend, name), EXPECTED[name])


def test_tables_are_consistent() -> None:
    assert set(EXPECTED) == set(CASES)
    for backend, name in KNOWN_DIFFERENCES:
        assert backend in {"dbm.gnu", "dbm.dumb", "dbm.sqlite3"}, backend
        assert name in CASES, name
        assert KNOWN_DIFFERENCES[backend, name] != EXPECTED[name], (backend, name)


@pytest.mark.parametrize("name", list(CASES))
def test_misuse(module: ModuleType, tmp_path: Path, name: str) -> None:
    got = CASES[name](module, tmp_path)
    want = expected(module.__name__, name)
    assert got == want, f"{module.__name__}: {name}"


def test_error_is_an_oserror(module: ModuleType) -> None:
    assert issubclass(module.error, OSError)


def test_closed_message(module: ModuleType, tmp_path: Path) -> None:
    db = closed(module, tmp_path)
    with pytest.raises(OSError) as info:
        db[b"k"]
    want = "GDBM object" if module.__name__ == "dbm.gnu" else "DBM object"
    assert f"{want} has already been closed" in str(info.value)


def test_invalid_flag_message_names_the_valid_flags(module: ModuleType, tmp_path: Path) -> None:
    with pytest.raises((ValueError, OSError)) as info:
        module.open(str(tmp_path / "store"), "x")
    for flag in "rwcn":
        assert f"'{flag}'" in str(info.value)
