"""The dbm contract, point by point, over every dbm backend in one run.

The shape is CPython's Lib/test/test_dbm.py: the same tests run against each backend this
Python has (``conftest.contract_backend_names()``): viperdbm, dbm.sqlite3 (Python >= 3.13),
dbm.gnu (where the interpreter has it), dbm.dumb; and a dict is the reference for data
(``DictOracle``). Each class covers one intent; each test states one rule. A stdlib backend
this Python lacks is asserted absent for that reason (test_every_stdlib_backend_runs_...).
To check the stdlib rows on another interpreter (3.13 for dbm.sqlite3, Debian's with
python3-gdbm for dbm.gnu), run this file there with VIPERDBM_TEST_BACKEND=dbm.dumb, which
leaves viperdbm out.

Where a standard library backend departs from the contract, ``KNOWN_DIFFERENCES`` (the one
table, at the end of this file) says what it does instead and why: an exact outcome for a
misuse case, the exception a lockstep op raises for a capability the backend lacks, or the
exception a point test ends in (a strict xfail that must fail exactly so: a stale row fails
the run). No test is skipped because a backend lacks something; the lack is asserted.
viperdbm has no rows: it is the contract.

Sections: the point tests (TestModule ... TestGdbmExtras), CPython's AnyDBM cases
(TestAnyDBM), the differential part (seeded and generated op scripts in lockstep with the
dict oracle; misuse cases compared by outcome), then the table.
"""

from __future__ import annotations

import collections.abc
import errno
import functools
import hashlib
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, NamedTuple, cast

import pytest
from conftest import (
    CLOSED_MESSAGE,
    CONTRACT_CANDIDATES,
    Backend,
    OpenStore,
    Store,
    contract_backend_names,
    load_backend,
    missing_backends,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BACKEND_NAMES = contract_backend_names()


@pytest.fixture(scope="module", params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn (overrides conftest's single, environment-chosen one)."""
    return load_backend(request.param)


MiB = 1024 * 1024


def assert_same_bytes(got: object, want: bytes) -> None:
    """Compare possibly huge byte strings without pytest printing them."""
    assert isinstance(got, bytes), f"expected bytes, got {type(got).__name__}"
    if got != want:
        pytest.fail(
            f"bytes differ: got {len(got)} bytes sha256 {hashlib.sha256(got).hexdigest()[:16]}, "
            f"want {len(want)} bytes sha256 {hashlib.sha256(want).hexdigest()[:16]}",
            pytrace=False,
        )


def populate(db: Store, data: dict[bytes, bytes]) -> None:
    for key, value in data.items():
        db[key] = value


def contents(db: Store) -> dict[bytes, bytes]:
    keys = db.keys()  # the contract's list, not iteration
    return {key: db[key] for key in keys}


def tree(path: Path) -> list[str]:
    """Every file and directory under *path*, relative to it."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


SAMPLE = {b"a": b"1", b"bb": b"22", b"\x00nul\x00": b"\x00\xff", b"": b"empty key", b"e": b""}


class TestModule:
    def test_error_is_an_oserror(self, backend: Backend) -> None:
        assert issubclass(backend.error, OSError)

    @pytest.mark.parametrize(
        "name",
        [
            "ReadonlyError",
            "LockError",
            "NotAStoreError",
            "CorruptedError",
            "ClosedError",
            "StoreFullError",
            "VersionMismatchError",
        ],
    )
    def test_error_subclasses(self, backend: Backend, name: str) -> None:
        cls = getattr(backend.module, name)
        assert issubclass(cls, backend.error)
        assert cls is not backend.error

    def test_object_is_a_mutable_mapping(self, open_store: OpenStore) -> None:
        assert isinstance(open_store("c"), collections.abc.MutableMapping)

    def test_default_flag_is_r(self, backend: Backend, store_path: Path) -> None:
        with pytest.raises(backend.error):
            backend.module.open(store_path)
        assert not store_path.exists()
        with backend.open(store_path, "c") as db:
            db[b"k"] = b"v"
        db = backend.module.open(store_path)
        try:
            assert db[b"k"] == b"v"
            with pytest.raises(backend.error_class("ReadonlyError")):
                db[b"k"] = b"w"
        finally:
            db.close()


class TestOpenFlags:
    def test_c_creates_a_missing_store(self, open_store: OpenStore) -> None:
        db = open_store("c")
        assert len(db) == 0
        db[b"k"] = b"v"
        db.close()
        assert open_store("r")[b"k"] == b"v"

    def test_c_keeps_an_existing_store(self, open_store: OpenStore) -> None:
        db = open_store("c")
        populate(db, SAMPLE)
        db.close()
        open_store("c").close()  # a second 'c' must not wipe anything
        assert contents(open_store("r")) == SAMPLE

    def test_w_opens_an_existing_store_read_write(self, open_store: OpenStore) -> None:
        open_store("c").close()
        db = open_store("w")
        db[b"k"] = b"v"
        db.close()
        assert contents(open_store("r")) == {b"k": b"v"}

    @pytest.mark.parametrize("flag", ["r", "w"])
    def test_r_and_w_on_a_missing_path_raise_enoent_and_create_nothing(
        self, backend: Backend, store_dir: Path, store_path: Path, flag: str
    ) -> None:
        with pytest.raises(backend.error) as info:
            backend.open(store_path, flag)
        assert info.value.errno == errno.ENOENT
        assert tree(store_dir) == []

    def test_n_creates_a_missing_store(self, open_store: OpenStore) -> None:
        db = open_store("n")
        assert len(db) == 0
        db[b"k"] = b"v"
        db.close()
        assert contents(open_store("r")) == {b"k": b"v"}

    def test_n_on_an_existing_store_empties_it(self, open_store: OpenStore) -> None:
        db = open_store("c")
        populate(db, SAMPLE)
        db.close()
        db = open_store("n")
        assert len(db) == 0
        assert db.keys() == []
        db[b"new"] = b"value"
        db.close()
        assert contents(open_store("r")) == {b"new": b"value"}

    def test_str_and_pathlike_paths(self, backend: Backend, store_path: Path) -> None:
        with backend.open(str(store_path), "c") as db:
            db[b"k"] = b"v"
        with backend.open(store_path, "r") as db:
            assert db[b"k"] == b"v"

    @pytest.mark.parametrize(
        "flag", ["cf", "cs", "cu", "cfs", "csu", "cusf", "nfsu", "wf", "wsu", "rf", "ru", "rsf"]
    )
    def test_gdbm_modifier_flags_are_accepted(self, open_store: OpenStore, flag: str) -> None:
        db = open_store("c")
        db[b"k"] = b"v"
        db.close()
        db = open_store(flag)
        if flag[0] == "n":
            assert len(db) == 0
        else:
            assert db[b"k"] == b"v"
        if flag[0] != "r":
            db[b"k2"] = b"v2"
            db.sync()
        db.close()
        assert b"k2" in open_store("r") or flag[0] == "r"

    @pytest.mark.parametrize(
        "flag",
        ["", "x", "R", "C", "rw", "cc", "fc", "cff", "cfsuf", "cx", "r ", " r", "c+", "rb", "rss"],
    )
    def test_invalid_flag_raises_valueerror_naming_the_valid_flags(
        self, backend: Backend, store_dir: Path, store_path: Path, flag: str
    ) -> None:
        with pytest.raises(ValueError) as info:
            backend.open(store_path, flag)
        message = str(info.value)
        for valid in "rwcn":
            assert f"'{valid}'" in message, message
        assert tree(store_dir) == []


class TestMode:
    @pytest.mark.parametrize(
        ("mode", "umask", "want"),
        [
            (0o666, 0o022, 0o644),
            (0o666, 0o027, 0o640),
            (0o600, 0o000, 0o600),
            (0o644, 0o077, 0o600),
        ],
    )
    def test_mode_with_umask_applies_to_every_created_file(
        self, backend: Backend, store_dir: Path, store_path: Path, mode: int, umask: int, want: int
    ) -> None:
        old = os.umask(umask)
        try:
            db = backend.open(store_path, "c", mode)
            db[b"k"] = b"v" * 1000
            db.sync()
            db.close()
        finally:
            os.umask(old)
        want_dir = want | ((want & 0o444) >> 2)
        created = sorted(store_dir.rglob("*"))
        assert created, "the store created no file"
        for path in created:
            perm = path.stat().st_mode & 0o7777
            expected = want_dir if path.is_dir() else want
            assert oct(perm) == oct(expected), f"{path.relative_to(store_dir)}"


class TestReadOnly:
    @pytest.fixture
    def readonly(self, open_store: OpenStore) -> Store:
        db = open_store("c")
        populate(db, SAMPLE)
        db.close()
        return open_store("r")

    def test_reads_work(self, readonly: Store) -> None:
        assert contents(readonly) == SAMPLE
        assert len(readonly) == len(SAMPLE)
        assert b"a" in readonly
        assert readonly.get(b"a") == b"1"
        assert readonly.get(b"missing") is None
        assert readonly.setdefault(b"a", b"other") == b"1"
        assert sorted(readonly) == sorted(SAMPLE)
        readonly.sync()

    MUTATORS: ClassVar[dict[str, Callable[[Store], object]]] = {
        "setitem-new": lambda db: db.__setitem__(b"new", b"v"),
        "setitem-existing": lambda db: db.__setitem__(b"a", b"v"),
        "delitem": lambda db: db.__delitem__(b"a"),
        "delitem-missing": lambda db: db.__delitem__(b"missing"),
        "pop": lambda db: db.pop(b"a"),
        "pop-default": lambda db: db.pop(b"a", None),
        "popitem": lambda db: db.popitem(),
        "setdefault-missing": lambda db: db.setdefault(b"new", b"v"),
        "update": lambda db: db.update({b"new": b"v"}),
        "update-kwargs": lambda db: db.update(new=b"v"),
        "clear": lambda db: db.clear(),
    }

    @pytest.mark.parametrize("name", list(MUTATORS))
    def test_every_mutator_raises_readonly_error(
        self, backend: Backend, readonly: Store, name: str
    ) -> None:
        with pytest.raises(backend.error_class("ReadonlyError")):
            self.MUTATORS[name](readonly)
        assert contents(readonly) == SAMPLE

    def test_reorganize_raises_readonly_error(self, backend: Backend, readonly: Store) -> None:
        with pytest.raises(backend.error_class("ReadonlyError")):
            readonly.reorganize()
        assert contents(readonly) == SAMPLE

    def test_failed_writes_change_nothing_on_disk(
        self, backend: Backend, open_store: OpenStore, readonly: Store
    ) -> None:
        for mutator in self.MUTATORS.values():
            with pytest.raises(backend.error):
                mutator(readonly)
        readonly.close()
        assert contents(open_store("r")) == SAMPLE


#: one use of each operation of a handle (the contract table runs each on a closed and on a
#: read-only handle)
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
#: the uses of a closed handle that must raise ClosedError (close() is idempotent)
CLOSED_USES: dict[str, Callable[[Any], object]] = {
    **{name: use for name, use in USES.items() if name != "close"},
    "get missing": lambda db: db.get(b"missing", b"d"),
    "pop missing": lambda db: db.pop(b"missing", None),
}


class TestMisuse:
    @pytest.mark.parametrize("name", list(CLOSED_USES))
    def test_use_after_close_raises_closed_error(
        self, backend: Backend, open_store: OpenStore, name: str
    ) -> None:
        db = open_store("c")
        db[b"a"] = b"1"
        db.close()
        with pytest.raises(backend.error_class("ClosedError")) as info:
            CLOSED_USES[name](db)
        assert CLOSED_MESSAGE in str(info.value)

    @pytest.mark.parametrize("flag", ["c", "r"])
    def test_double_close(self, open_store: OpenStore, flag: str) -> None:
        open_store("c").close()
        db = open_store(flag)
        db.close()
        db.close()

    def test_context_manager_closes(self, backend: Backend, store_path: Path) -> None:
        with backend.open(store_path, "c") as db:
            db[b"k"] = b"v"
        with pytest.raises(backend.error_class("ClosedError")):
            db[b"k"]
        db.close()
        with backend.open(store_path, "r") as again:
            assert again[b"k"] == b"v"

    def test_context_manager_closes_on_exception(self, backend: Backend, store_path: Path) -> None:
        with pytest.raises(ZeroDivisionError), backend.open(store_path, "c") as db:
            db[b"k"] = b"v"
            1 / 0  # noqa: B018
        with pytest.raises(backend.error):
            len(db)
        with backend.open(store_path, "r") as again:
            assert again[b"k"] == b"v"

    def test_missing_key_raises_keyerror(self, open_store: OpenStore) -> None:
        db = open_store("c")
        with pytest.raises(KeyError):
            db[b"missing"]
        with pytest.raises(KeyError):
            del db[b"missing"]
        with pytest.raises(KeyError):
            db.pop(b"missing")
        with pytest.raises(KeyError):
            db.popitem()


# dbm.dumb refuses 'r'/'w' here only because its .dat file is missing; with 'c' it
# quietly creates store.dat/store.dir next to whatever is at the path.
NOT_A_STORE_FLAGS = ["r", "w", "c"]


class TestNotAStore:
    @pytest.mark.parametrize("flag", NOT_A_STORE_FLAGS)
    def test_regular_file(self, backend: Backend, store_path: Path, flag: str) -> None:
        store_path.write_bytes(b"not a store\n")
        with pytest.raises(backend.error_class("NotAStoreError")):
            backend.open(store_path, flag)
        assert store_path.read_bytes() == b"not a store\n"

    @pytest.mark.parametrize("flag", NOT_A_STORE_FLAGS)
    def test_directory_with_foreign_files(
        self, backend: Backend, store_path: Path, flag: str
    ) -> None:
        store_path.mkdir()
        (store_path / "notes.txt").write_bytes(b"mine")
        with pytest.raises(backend.error_class("NotAStoreError")):
            backend.open(store_path, flag)
        assert tree(store_path) == ["notes.txt"]
        assert (store_path / "notes.txt").read_bytes() == b"mine"

    @pytest.mark.parametrize("flag", ["r", "w"])
    def test_empty_directory(self, backend: Backend, store_path: Path, flag: str) -> None:
        store_path.mkdir()
        with pytest.raises(backend.error_class("NotAStoreError")):
            backend.open(store_path, flag)
        assert tree(store_path) == []


CHILD_OPEN = textwrap.dedent(
    """
    import importlib, sys
    module = importlib.import_module(sys.argv[1])
    try:
        db = module.open(sys.argv[2], sys.argv[3])
    except Exception as exc:
        print(type(exc).__name__, isinstance(exc, module.error))
    else:
        db.close()
        print("opened")
    """
)


class TestLocking:
    @pytest.mark.parametrize("second", ["w", "c"])
    def test_second_writer_in_process(
        self, backend: Backend, open_store: OpenStore, second: str
    ) -> None:
        first = open_store("c")
        first[b"k"] = b"v"
        with pytest.raises(backend.error_class("LockError")):
            open_store(second)
        first[b"k2"] = b"v2"  # the first handle is unharmed
        assert contents(first) == {b"k": b"v", b"k2": b"v2"}
        first.close()
        db = open_store("w")  # the lock goes with the handle
        assert contents(db) == {b"k": b"v", b"k2": b"v2"}

    @pytest.mark.parametrize("second", ["w", "c"])
    def test_second_writer_in_another_process(
        self, backend: Backend, open_store: OpenStore, store_path: Path, second: str
    ) -> None:
        first = open_store("c")
        first[b"k"] = b"v"
        child = subprocess.run(
            [sys.executable, "-c", CHILD_OPEN, backend.name, str(store_path), second],
            capture_output=True,
            text=True,
            env=backend.child_env(),
            timeout=120,  # protection against a hang, not a timing assertion
            check=False,
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["LockError", "True"], child.stderr
        assert first[b"k"] == b"v"
        first.close()


class TestDataTypes:
    def test_str_keys_and_values_are_utf8(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db["ключ"] = "значение"
        db["a"] = b"bytes"
        db[b"b"] = "text"
        assert db["ключ".encode()] == "значение".encode()
        assert db["ключ"] == "значение".encode()
        assert "ключ" in db
        assert "ключ".encode() in db
        assert db["a"] == db[b"a"] == b"bytes"
        assert db[b"b"] == b"text"
        assert sorted(db.keys()) == sorted([b"a", b"b", "ключ".encode()])
        assert all(type(k) is bytes for k in db)
        db.close()
        db = open_store("r")
        assert db["ключ"] == "значение".encode()
        assert type(db["a"]) is bytes

    def test_results_are_bytes(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db["k"] = "v"
        for value in [db["k"], db.get("k"), db.setdefault("k", "x"), db.pop("k")]:
            assert type(value) is bytes
        db["k"] = "v"
        key, value = db.popitem()
        assert (type(key), type(value)) == (bytes, bytes)

    def test_empty_key_and_empty_value(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db[b""] = b""
        db[b"k"] = b""
        db[""] = b"via str"
        assert db[b""] == b"via str"
        assert db[b"k"] == b""
        assert b"" in db
        db.close()
        db = open_store("w")
        assert contents(db) == {b"": b"via str", b"k": b""}
        del db[b""]
        assert b"" not in db
        db.close()
        assert contents(open_store("r")) == {b"k": b""}

    def test_binary_keys_and_values_with_nul(self, open_store: OpenStore) -> None:
        every_byte = bytes(range(256))
        data = {
            every_byte: every_byte[::-1],
            b"\x00": b"\x00",
            b"\x00\x00": b"\x00" * 1000,
            b"a\x00b": b"\xff\xfe\x00",
            b"\xff" * 3: b"\n\r\t\x00",
        }
        db = open_store("c")
        populate(db, data)
        assert contents(db) == data
        assert b"a" not in db  # a prefix up to a NUL is not the key
        db.close()
        assert contents(open_store("r")) == data

    BAD: ClassVar[list[Any]] = [1, 1.5, None, ["k"], ("k",), object()]

    @pytest.mark.parametrize("bad", BAD, ids=lambda v: type(v).__name__)
    def test_setitem_with_other_types_raises_typeerror(
        self, open_store: OpenStore, bad: Any
    ) -> None:
        db = open_store("c")
        with pytest.raises(TypeError):
            db[bad] = b"v"
        with pytest.raises(TypeError):
            db[b"k"] = bad
        assert len(db) == 0

    @pytest.mark.parametrize("bad", BAD, ids=lambda v: type(v).__name__)
    def test_lookups_with_other_key_types_raise_typeerror(
        self, open_store: OpenStore, bad: Any
    ) -> None:
        db = open_store("c")
        db[b"1"] = b"v"
        with pytest.raises(TypeError):
            db[bad]
        with pytest.raises(TypeError):
            bad in db  # noqa: B015
        with pytest.raises(TypeError):
            del db[bad]
        with pytest.raises(TypeError):
            db.get(bad)
        assert contents(db) == {b"1": b"v"}

    def test_setdefault_with_other_value_types_raises_typeerror(
        self, open_store: OpenStore
    ) -> None:
        db = open_store("c")
        with pytest.raises(TypeError):
            db.setdefault(b"k", 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            db.setdefault(b"k")  # the default None is no value
        assert b"k" not in db

    def test_1_mib_value(self, open_store: OpenStore) -> None:
        value = os.urandom(MiB)
        db = open_store("c")
        db[b"big"] = value
        db[b"small"] = b"s"
        assert_same_bytes(db[b"big"], value)
        db.close()
        db = open_store("r")
        assert_same_bytes(db[b"big"], value)
        assert db[b"small"] == b"s"

    def test_64_mib_value(self, open_store: OpenStore) -> None:
        value = bytes(range(256)) * (64 * MiB // 256)
        db = open_store("c")
        db[b"huge"] = value
        db[b"after"] = b"a"
        assert_same_bytes(db[b"huge"], value)
        db.close()
        db = open_store("r")
        assert_same_bytes(db[b"huge"], value)
        assert db[b"after"] == b"a"
        assert len(db) == 2

    def test_64_mib_key(self, open_store: OpenStore) -> None:
        key = bytes(range(255, -1, -1)) * (64 * MiB // 256)
        db = open_store("c")
        db[key] = b"value of a huge key"
        db[b"k"] = b"v"
        assert db[key] == b"value of a huge key"
        assert key in db
        assert key[:-1] not in db
        db.close()
        db = open_store("r")
        assert db[key] == b"value of a huge key"
        keys = db.keys()
        found = [k for k in keys if len(k) > 1]
        assert len(found) == 1
        assert_same_bytes(found[0], key)


class TestMappingAPI:
    def test_keys_is_a_list_of_bytes(self, open_store: OpenStore) -> None:
        db = open_store("c")
        assert db.keys() == []
        populate(db, SAMPLE)
        keys = db.keys()
        assert type(keys) is list
        assert sorted(keys) == sorted(SAMPLE)

    def test_iteration_items_values(self, open_store: OpenStore) -> None:
        db = open_store("c")
        populate(db, SAMPLE)
        assert sorted(db) == sorted(SAMPLE)
        assert sorted(db.items()) == sorted(SAMPLE.items())
        assert sorted(db.values()) == sorted(SAMPLE.values())
        assert dict(db.items()) == SAMPLE

    def test_len_and_contains(self, open_store: OpenStore) -> None:
        db = open_store("c")
        assert len(db) == 0
        populate(db, SAMPLE)
        assert len(db) == len(SAMPLE)
        db[b"a"] = b"overwrite"
        assert len(db) == len(SAMPLE)
        assert all(k in db for k in SAMPLE)
        assert b"zz" not in db
        del db[b"a"]
        assert b"a" not in db
        assert len(db) == len(SAMPLE) - 1

    def test_get(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db[b"k"] = b"v"
        assert db.get(b"k") == b"v"
        assert db.get("k", b"d") == b"v"
        assert db.get(b"missing") is None
        assert db.get(b"missing", b"d") == b"d"
        sentinel = object()
        assert db.get(b"missing", sentinel) is sentinel

    def test_setdefault(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db[b"k"] = b"v"
        assert db.setdefault(b"k", b"other") == b"v"
        assert db.setdefault(b"new", b"dflt") == b"dflt"
        assert db[b"new"] == b"dflt"
        assert db.setdefault(b"empty", b"") == b""
        assert db[b"empty"] == b""

    def test_pop(self, open_store: OpenStore) -> None:
        db = open_store("c")
        populate(db, SAMPLE)
        assert db.pop(b"a") == b"1"
        assert b"a" not in db
        assert db.pop(b"a", None) is None
        assert db.pop(b"a", b"d") == b"d"
        assert len(db) == len(SAMPLE) - 1

    def test_popitem_drains(self, open_store: OpenStore) -> None:
        db = open_store("c")
        populate(db, SAMPLE)
        seen = {}
        while len(db):
            key, value = db.popitem()
            assert key not in seen
            seen[key] = value
        assert seen == SAMPLE
        with pytest.raises(KeyError):
            db.popitem()

    def test_update(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db.update({b"a": b"1"})
        db.update([(b"b", b"2"), ("c", "3")])
        db.update(d=b"4")
        db.update({b"a": b"one"}, e="5")
        assert contents(db) == {b"a": b"one", b"b": b"2", b"c": b"3", b"d": b"4", b"e": b"5"}

    def test_clear(self, open_store: OpenStore) -> None:
        db = open_store("c")
        populate(db, SAMPLE)
        db.clear()
        assert len(db) == 0
        assert db.keys() == []
        db.clear()
        db[b"after"] = b"clear"
        db.close()
        assert contents(open_store("r")) == {b"after": b"clear"}

    def test_sync(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db.sync()
        db[b"k"] = b"v"
        db.sync()
        assert db[b"k"] == b"v"


class TestLifecycle:
    def test_many_keys_then_reopen(self, open_store: OpenStore) -> None:
        data = {f"key-{i:05d}".encode(): (f"value-{i}-".encode() * (i % 7)) for i in range(10_000)}
        db = open_store("c")
        populate(db, data)
        assert len(db) == len(data)
        db.close()
        db = open_store("r")
        assert len(db) == len(data)
        assert sorted(db.keys()) == sorted(data)
        assert contents(db) == data

    def test_overwrite_then_reopen(self, open_store: OpenStore) -> None:
        db = open_store("c")
        for round_ in range(5):
            for i in range(200):
                # the size changes every round: shrink, grow, empty
                db[b"k%d" % i] = b"r%d-" % round_ * ((i * (round_ + 1)) % 97)
        db.close()
        db = open_store("r")
        assert len(db) == 200
        for i in range(200):
            assert db[b"k%d" % i] == b"r4-" * ((i * 5) % 97)

    def test_delete_then_reopen(self, open_store: OpenStore) -> None:
        db = open_store("c")
        for i in range(300):
            db[b"k%d" % i] = b"v%d" % i
        for i in range(0, 300, 3):
            del db[b"k%d" % i]
        db.close()
        db = open_store("w")
        assert len(db) == 200
        assert all((b"k%d" % i in db) == (i % 3 != 0) for i in range(300))
        db[b"k0"] = b"back"  # a deleted key can come back
        db.close()
        db = open_store("r")
        assert db[b"k0"] == b"back"
        assert len(db) == 201

    def test_reopen_many_times(self, open_store: OpenStore) -> None:
        for i in range(30):
            db = open_store("c" if i == 0 else "w")
            assert len(db) == i
            db[b"k%d" % i] = b"v%d" % i
            db.close()
        db = open_store("r")
        assert contents(db) == {b"k%d" % i: b"v%d" % i for i in range(30)}

    def test_two_stores_side_by_side(self, backend: Backend, store_dir: Path) -> None:
        with (
            backend.open(store_dir / "one", "c") as one,
            backend.open(store_dir / "two", "c") as two,
        ):
            one[b"k"] = b"1"
            two[b"k"] = b"2"
        with (
            backend.open(store_dir / "one", "r") as one,
            backend.open(store_dir / "two", "r") as two,
        ):
            assert (one[b"k"], two[b"k"]) == (b"1", b"2")


class TestGdbmExtras:
    @pytest.mark.parametrize("count", [0, 1, 2, 1000])
    def test_firstkey_nextkey_visit_each_key_once(self, open_store: OpenStore, count: int) -> None:
        db = open_store("c")
        want = {b"k%d" % i for i in range(count)} | ({b""} if count else set())
        for k in want:
            db[k] = b"v"
        seen: list[bytes] = []
        key = db.firstkey()
        while key is not None:
            assert type(key) is bytes
            seen.append(key)
            assert len(seen) <= len(want), "nextkey() does not end"
            key = db.nextkey(key)
        assert sorted(seen) == sorted(want)
        assert len(seen) == len(set(seen))

    def test_firstkey_nextkey_on_a_read_only_store(self, open_store: OpenStore) -> None:
        db = open_store("c")
        populate(db, SAMPLE)
        db.close()
        db = open_store("r")
        seen = []
        key = db.firstkey()
        while key is not None:
            seen.append(key)
            key = db.nextkey(key)
        assert sorted(seen) == sorted(SAMPLE)

    def test_reorganize_then_reopen(self, open_store: OpenStore) -> None:
        db = open_store("c")
        # looked up first: a backend without reorganize() fails here, not after the writes
        reorganize = db.reorganize
        data = {b"k%d" % i: bytes([i % 256]) * (i * 37 % 5000) for i in range(2000)}
        populate(db, data)
        for i in range(0, 2000, 2):
            del db[b"k%d" % i]
            del data[b"k%d" % i]
        for i in range(1, 2000, 6):
            db[b"k%d" % i] = data[b"k%d" % i] = b"new %d" % i
        reorganize()
        assert contents(db) == data
        db[b"after"] = data[b"after"] = b"reorganize"
        db.close()
        db = open_store("w")
        assert contents(db) == data
        db.reorganize()
        db.close()
        assert contents(open_store("r")) == data

    def test_reorganize_empty_store(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db.reorganize()
        db[b"k"] = b"v"
        del db[b"k"]
        db.reorganize()
        db.close()
        assert len(open_store("r")) == 0


# -- CPython's Lib/test/test_dbm.py cases (AnyDBMTestCase), for every backend ----------------

ANYDBM = {
    "0": b"",
    "a": b"Python:",
    "b": b"Programming",
    "c": b"the",
    "d": b"way",
    "f": b"Guido",
    "g": b"intended",
}


class TestAnyDBM:
    def init(self, open_store: OpenStore) -> None:
        db = open_store("n")
        for key, value in ANYDBM.items():
            db[key.encode("ascii")] = value
        db.close()

    def check_contents(self, db: Store) -> None:
        keys = db.keys()  # the dbm method: dbm.gnu objects are not iterable
        assert sorted(k.decode("ascii") for k in keys) == sorted(ANYDBM)
        for key, value in ANYDBM.items():
            assert db[key.encode("ascii")] == value

    def test_anydbm_not_existing(self, backend: Backend, store_path: Path) -> None:
        with pytest.raises(backend.error):
            backend.open(store_path)

    def test_anydbm_creation(self, open_store: OpenStore) -> None:
        db = open_store("c")
        assert list(db.keys()) == []
        for key, value in ANYDBM.items():
            db[key.encode("ascii")] = value
        self.check_contents(db)

    @pytest.mark.parametrize("garbage", [b"", b"not a store\n"], ids=["empty", "garbage"])
    def test_anydbm_creation_n_file_exists_with_invalid_contents(
        self, open_store: OpenStore, store_path: Path, garbage: bytes
    ) -> None:
        # 'n' always makes a new, empty store, whatever was at the path
        store_path.write_bytes(garbage)
        db = open_store("n")
        assert len(db) == 0
        db[b"k"] = b"v"
        db.close()
        assert contents(open_store("r")) == {b"k": b"v"}

    def test_anydbm_modification(self, open_store: OpenStore) -> None:
        self.init(open_store)
        db = open_store("c")
        db[b"g"] = b"indented"
        assert db[b"g"] == b"indented"
        db.close()
        db = open_store("r")
        assert db[b"g"] == b"indented"
        assert db[b"a"] == b"Python:"

    def test_anydbm_read(self, open_store: OpenStore) -> None:
        self.init(open_store)
        db = open_store("r")
        self.check_contents(db)
        assert db.get(b"a") == b"Python:"
        assert db.get(b"xxx", b"foo") == b"foo"
        assert db.get(b"xxx") is None
        with pytest.raises(KeyError):
            db[b"xxx"]

    def test_anydbm_keys(self, open_store: OpenStore) -> None:
        self.init(open_store)
        self.check_contents(open_store("r"))

    def test_empty_value(self, open_store: OpenStore) -> None:
        db = open_store("c")
        assert db.keys() == []
        db[b"empty"] = b""
        assert db.keys() == [b"empty"]
        assert b"empty" in db
        assert db[b"empty"] == b""
        assert db.get(b"empty") == b""
        assert db.setdefault(b"empty") == b""

    def test_anydbm_access(self, open_store: OpenStore) -> None:
        self.init(open_store)
        db = open_store("r")
        key = "a".encode("ascii")
        assert key in db
        assert db[key] == b"Python:"


@pytest.mark.parametrize("name", CONTRACT_CANDIDATES[1:])
def test_every_stdlib_backend_runs_or_is_absent_from_this_python(name: str) -> None:
    """A backend leaves the run only because this interpreter does not have it."""
    missing = missing_backends()
    assert (name in BACKEND_NAMES) == (name not in missing)
    if name == "dbm.sqlite3":  # new in 3.13
        assert (name in missing) == (sys.version_info < (3, 13))
    elif name in missing:  # built without the C module (Debian: python3-gdbm)
        assert "_gdbm" in missing[name] or "_dbm" in missing[name], missing[name]


# -- the differential part: every backend against a dict, and misuse by outcome -------------
#
# Data: the same op sequences (seeded scripts and a Hypothesis-generated one) run on every
# backend in lockstep with DictOracle, a dict with the dbm conventions (str -> UTF-8, KeyError
# for a missing key, keys() a list); every result and the kind of every exception must equal
# the oracle's. An op the backend lacks (its "op" rows in KNOWN_DIFFERENCES) must raise
# what that row says. Misuse: each case in CASES returns an outcome, a value or the
# *category* of the exception ("error" for the backend's error or any OSError, else the
# class name); EXPECTED is the contract (errors and gdbm extras as dbm.gnu does them, data as
# a dict does); every backend must match it or its "case" row.

Outcome = tuple[str, object]
Op = tuple[Any, ...]


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
        case "popitem":
            return db.popitem()
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
    lacks = lacking_ops(module.__name__)
    oracle = DictOracle()
    db = module.open(str(path), "c")
    try:
        for step, op in enumerate(script):
            if op[0] in lacks:  # a capability the backend lacks: asserted missing, not run
                got = outcome(functools.partial(apply, db, op))
                assert got == raises(lacks[op[0]]), f"step {step}: {op!r}: {got!r}"
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
def test_seeded_script(backend: Backend, tmp_path: Path, seed: int) -> None:
    run_lockstep(backend.module, tmp_path / "store", random_script(random.Random(seed), 250))


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
    backend: Backend, tmp_path_factory: pytest.TempPathFactory, script: list[Op]
) -> None:
    run_lockstep(backend.module, tmp_path_factory.mktemp("gen") / "store", script)


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
        db[b"x"],
        sorted(db.keys()),  # the same data as items(), which dbm.gnu lacks
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
    "reorganize keeps data": ok((None, None, None, b"y", [b"x"])),
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


# -- the one table of known differences ----------------------------------------------------


class Known(NamedTuple):
    """One way a standard library backend departs from the contract (viperdbm's)."""

    backend: str
    # "op NAME": a lockstep op; "case NAME": a misuse case; "Class::test": a point test
    test: str
    # op: the exception class name it raises; case: its outcome; test: the exception the
    # test ends in (AssertionError for a different value, DID_NOT_RAISE for a missing error)
    outcome: object
    why: str
    ids: tuple[str, ...] = ()  # a point test: only these parametrisations (ids)


DID_NOT_RAISE = pytest.fail.Exception  # what pytest.raises() raises when nothing is raised
NOT_RUN = "not run"  # a point test too costly on that backend; its row says why

_BEFORE_313 = sys.version_info < (3, 13)
_BEFORE_315 = sys.version_info < (3, 15)
GNU, DUMB, SQLITE = "dbm.gnu", "dbm.dumb", "dbm.sqlite3"


def sqlite3_error(name: str) -> type[BaseException]:
    """sqlite3's exception class *name* (sqlite3 is imported only where it is used)."""
    import sqlite3

    return cast(type[BaseException], getattr(sqlite3, name))


def _rows(backend: str, why: str, outcomes: dict[str, object]) -> list[Known]:
    return [Known(backend, test, result, why) for test, result in outcomes.items()]


_GNU_LACKS = ["items", "values", "pop", "popitem", "update"] + (["clear"] if _BEFORE_313 else [])
_FLAGS_GNU_REJECTS = ["", "x", "C", "rw", "fc"]
_GDBM_FLAGS = ["cfsu", "cs", "ru", "nf", "wsf"]
_NO_EXTRAS = ["walk"] + (["reorganize"] if _BEFORE_315 else [])
_NO_EXTRA_CASES = ["firstkey/nextkey walk", "firstkey on empty"]
_NO_EXTRA_USES = ["firstkey", "nextkey"]
if _BEFORE_315:
    _NO_EXTRA_CASES.append("reorganize keeps data")
    _NO_EXTRA_USES.append("reorganize")

KNOWN_DIFFERENCES: list[Known] = [
    # dbm.gnu (the reference for errors and the gdbm extras): a bad flag is its error, not
    # ValueError, and it accepts a repeated modifier; its object is not a full mapping.
    *_rows(
        GNU,
        "gdbm raises its error for a bad flag",
        {
            **{f"case flag {f!r}": ERROR for f in _FLAGS_GNU_REJECTS},
            "case bad flag creates nothing": (ERROR, []),
        },
    ),
    *_rows(
        GNU, "gdbm accepts a repeated modifier", {"case flag 'cff'": ok(), "case flag 'rss'": ok()}
    ),
    *_rows(
        GNU,
        "a gdbm object is not iterable",
        {
            "op iter": "TypeError",
            "case iteration": raises("TypeError"),
            "case closed: iter": raises("TypeError"),
            "case read-only: iter": (raises("TypeError"), RO),
        },
    ),
    *_rows(
        GNU,
        "a gdbm object is not a MutableMapping and lacks these methods",
        {
            **{f"op {n}": "AttributeError" for n in [*_GNU_LACKS, "pop_default"]},
            "case items": NOT_HAVE,
            "case values": NOT_HAVE,
            "case pop missing": NOT_HAVE,
            "case pop missing with default": NOT_HAVE,
            "case popitem empty": NOT_HAVE,
            "case is a MutableMapping": ok(False),
            **{f"case closed: {n}": NOT_HAVE for n in _GNU_LACKS},
            **{f"case read-only: {n}": (NOT_HAVE, RO) for n in _GNU_LACKS},
        },
    ),
    # dbm.dumb
    *_rows(
        DUMB,
        "dbm.dumb has no firstkey()/nextkey()" + (" nor reorganize()" if _BEFORE_315 else ""),
        {
            **{f"op {n}": "AttributeError" for n in _NO_EXTRAS},
            **{f"case {n}": NOT_HAVE for n in _NO_EXTRA_CASES},
            **{f"case closed: {n}": NOT_HAVE for n in _NO_EXTRA_USES},
            **{f"case read-only: {n}": (NOT_HAVE, RO) for n in _NO_EXTRA_USES},
        },
    ),
    *_rows(
        DUMB,
        "dbm.dumb treats any hashable object as a missing key (only setitem checks)",
        {
            "case getitem int key": raises("KeyError"),
            "case contains int key": ok(False),
            "case delitem int key": raises("KeyError"),
            "case get int key": ok(None),
        },
    ),
    *_rows(
        DUMB,
        "dbm.dumb's setdefault returns the default as given (str)",
        {"case setdefault missing, str default": ok(("v", b"v"))},
    ),
    *_rows(DUMB, "dbm.dumb does no locking", {"case second writer, same process": ok()}),
    *_rows(
        DUMB,
        "dbm.dumb puts its .dat/.dir files next to whatever is at the path",
        {
            "case 'c' on a regular file": ok(),
            "case 'c' on a directory with foreign files": ok(),
        },
    ),
    *_rows(
        DUMB,
        "dbm.dumb's sync() after close() silently does nothing",
        {"case closed: sync": ok(None)},
    ),
    *_rows(
        DUMB,
        "dbm.dumb rejects gdbm's modifier flags",
        {f"case flag {f!r}": raises("ValueError") for f in _GDBM_FLAGS},
    ),
    # dbm.sqlite3 (rows checked by running this file on 3.13 with VIPERDBM_TEST_BACKEND=dbm.dumb)
    *_rows(
        SQLITE,
        "dbm.sqlite3 stores any key/value type as a BLOB (1 -> b'1')",
        {
            "case set int key": ok(),
            "case set float key": ok(),
            "case set int value": ok(),
            "case getitem int key": raises("KeyError"),
            "case contains int key": ok(False),
            "case delitem int key": raises("KeyError"),
            "case get int key": ok(None),
            "case setdefault int value": ok(1),
        },
    ),
    *_rows(
        SQLITE,
        "None violates dbm.sqlite3's NOT NULL column (its error)",
        {
            "case set None value": ERROR,
            "case setdefault missing, no default": ERROR,
        },
    ),
    *_rows(
        SQLITE,
        "dbm.sqlite3's setdefault returns the default as given (str)",
        {"case setdefault missing, str default": ok(("v", b"v"))},
    ),
    *_rows(
        SQLITE,
        "errors from sqlite carry no errno",
        {
            "case 'r' on a missing path": ("error", None, []),
            "case 'w' on a missing path": ("error", None, []),
        },
    ),
    *_rows(
        SQLITE,
        "dbm.sqlite3 does no locking against a second writer",
        {"case second writer, same process": ok()},
    ),
    *_rows(
        SQLITE,
        "a regular file raises sqlite3.DatabaseError, not an OSError",
        {"case 'c' on a regular file": raises("DatabaseError")},
    ),
    *_rows(
        SQLITE,
        "dbm.sqlite3 has no sync()",
        {
            "op sync": "AttributeError",
            "case sync": NOT_HAVE,
            "case closed: sync": NOT_HAVE,
            "case read-only: sync": (NOT_HAVE, RO),
        },
    ),
    *_rows(
        SQLITE,
        "dbm.sqlite3 has no firstkey()/nextkey()" + (" nor reorganize()" if _BEFORE_315 else ""),
        {
            **{f"op {n}": "AttributeError" for n in _NO_EXTRAS},
            **{f"case {n}": NOT_HAVE for n in _NO_EXTRA_CASES},
            **{f"case closed: {n}": NOT_HAVE for n in _NO_EXTRA_USES},
            **{f"case read-only: {n}": (NOT_HAVE, RO) for n in _NO_EXTRA_USES},
        },
    ),
    *_rows(
        SQLITE,
        "dbm.sqlite3 rejects gdbm's modifier flags",
        {f"case flag {f!r}": raises("ValueError") for f in _GDBM_FLAGS},
    ),
    # the point tests of dbm.gnu (Debian's python3-gdbm 3.11.2); its error is an OSError
    Known(GNU, "TestModule::test_error_subclasses", AttributeError, "gdbm has one error class"),
    Known(
        GNU,
        "TestModule::test_object_is_a_mutable_mapping",
        AssertionError,
        "a gdbm object is not a MutableMapping",
    ),
    Known(
        GNU,
        "TestOpenFlags::test_invalid_flag_raises_valueerror_naming_the_valid_flags",
        OSError,
        "gdbm raises its error for a bad flag",
        ("", "x", "R", "C", "rw", "cc", "fc", "cx", "r ", " r", "c+", "rb", "rss"),
    ),
    Known(
        GNU,
        "TestOpenFlags::test_invalid_flag_raises_valueerror_naming_the_valid_flags",
        DID_NOT_RAISE,
        "gdbm accepts a repeated modifier",
        ("cff", "cfsuf"),
    ),
    Known(GNU, "TestReadOnly::test_reads_work", TypeError, "a gdbm object is not iterable"),
    Known(
        GNU,
        "TestReadOnly::test_every_mutator_raises_readonly_error",
        AttributeError,
        "a gdbm object lacks pop/popitem/update/clear",
        (
            "pop",
            "pop-default",
            "popitem",
            "update",
            "update-kwargs",
            *(["clear"] if _BEFORE_313 else []),
        ),
    ),
    Known(
        GNU,
        "TestReadOnly::test_failed_writes_change_nothing_on_disk",
        AttributeError,
        "a gdbm object lacks pop/popitem/update",
    ),
    Known(
        GNU,
        "TestMisuse::test_use_after_close_raises_closed_error",
        TypeError,
        "a gdbm object is not iterable",
        ("iter",),
    ),
    Known(
        GNU,
        "TestMisuse::test_use_after_close_raises_closed_error",
        AttributeError,
        "a gdbm object lacks these methods",
        (
            "items",
            "values",
            "pop",
            "pop-default",
            "popitem",
            "update",
            *(["clear"] if _BEFORE_313 else []),
        ),
    ),
    Known(
        GNU,
        "TestMisuse::test_missing_key_raises_keyerror",
        AttributeError,
        "a gdbm object has no pop()",
    ),
    Known(
        GNU,
        "TestLocking::test_second_writer_in_another_process",
        AssertionError,
        "gdbm's lock error is its plain error, not a LockError",
    ),
    Known(
        GNU,
        "TestDataTypes::test_str_keys_and_values_are_utf8",
        TypeError,
        "a gdbm object is not iterable",
    ),
    Known(
        GNU, "TestDataTypes::test_results_are_bytes", AttributeError, "a gdbm object has no pop()"
    ),
    Known(
        GNU,
        "TestMappingAPI::test_iteration_items_values",
        TypeError,
        "a gdbm object is not iterable",
    ),
    Known(GNU, "TestMappingAPI::test_pop", AttributeError, "a gdbm object has no pop()"),
    Known(
        GNU, "TestMappingAPI::test_popitem_drains", AttributeError, "a gdbm object has no popitem()"
    ),
    Known(GNU, "TestMappingAPI::test_update", AttributeError, "a gdbm object has no update()"),
    *(
        [
            Known(
                GNU,
                "TestMappingAPI::test_clear",
                AttributeError,
                "a gdbm object has no clear() before 3.13",
            )
        ]
        if _BEFORE_313
        else []
    ),
    # the point tests of dbm.sqlite3 (CPython 3.13.0); its error is an OSError
    Known(
        SQLITE,
        "TestModule::test_error_subclasses",
        AttributeError,
        "dbm.sqlite3 has one error class",
    ),
    Known(
        SQLITE,
        "TestOpenFlags::test_r_and_w_on_a_missing_path_raise_enoent_and_create_nothing",
        AssertionError,
        "errors from sqlite carry no errno",
    ),
    Known(
        SQLITE,
        "TestOpenFlags::test_gdbm_modifier_flags_are_accepted",
        ValueError,
        "dbm.sqlite3 rejects gdbm's modifier flags",
    ),
    Known(
        SQLITE,
        "TestMode::test_mode_with_umask_applies_to_every_created_file",
        AttributeError,
        "dbm.sqlite3 has no sync()",
    ),
    Known(SQLITE, "TestReadOnly::test_reads_work", AttributeError, "dbm.sqlite3 has no sync()"),
    Known(
        SQLITE,
        "TestMisuse::test_use_after_close_raises_closed_error",
        AttributeError,
        "dbm.sqlite3 has no sync(), firstkey()/nextkey()"
        + (" nor reorganize()" if _BEFORE_315 else ""),
        ("sync", "firstkey", "nextkey", *(["reorganize"] if _BEFORE_315 else [])),
    ),
    Known(
        SQLITE,
        "TestNotAStore::test_regular_file",
        sqlite3_error("DatabaseError"),
        "a regular file raises sqlite3.DatabaseError, not an OSError",
    ),
    Known(
        SQLITE,
        "TestLocking::test_second_writer_in_process",
        DID_NOT_RAISE,
        "dbm.sqlite3 does no locking against a second writer",
    ),
    Known(
        SQLITE,
        "TestLocking::test_second_writer_in_another_process",
        AssertionError,
        "dbm.sqlite3 does no locking against a second writer",
    ),
    Known(
        SQLITE,
        "TestDataTypes::test_setitem_with_other_types_raises_typeerror",
        DID_NOT_RAISE,
        "dbm.sqlite3 stores int/float as a BLOB",
        ("int", "float"),
    ),
    Known(
        SQLITE,
        "TestDataTypes::test_setitem_with_other_types_raises_typeerror",
        OSError,
        "sqlite cannot bind the type (its error)",
        ("NoneType", "list", "tuple", "object"),
    ),
    Known(
        SQLITE,
        "TestDataTypes::test_lookups_with_other_key_types_raise_typeerror",
        DID_NOT_RAISE,
        "dbm.sqlite3 looks up an int as a BLOB",
        ("int",),
    ),
    Known(
        SQLITE,
        "TestDataTypes::test_lookups_with_other_key_types_raise_typeerror",
        KeyError,
        "dbm.sqlite3 treats float/None as a missing key",
        ("float", "NoneType"),
    ),
    Known(
        SQLITE,
        "TestDataTypes::test_lookups_with_other_key_types_raise_typeerror",
        OSError,
        "sqlite cannot bind the type (its error)",
        ("list", "tuple", "object"),
    ),
    Known(
        SQLITE,
        "TestDataTypes::test_setdefault_with_other_value_types_raises_typeerror",
        DID_NOT_RAISE,
        "dbm.sqlite3 stores an int value as a BLOB",
    ),
    Known(SQLITE, "TestMappingAPI::test_sync", AttributeError, "dbm.sqlite3 has no sync()"),
    Known(
        SQLITE,
        "TestGdbmExtras::test_firstkey_nextkey_visit_each_key_once",
        AttributeError,
        "dbm.sqlite3 has no firstkey()/nextkey()",
    ),
    Known(
        SQLITE,
        "TestGdbmExtras::test_firstkey_nextkey_on_a_read_only_store",
        AttributeError,
        "dbm.sqlite3 has no firstkey()/nextkey()",
    ),
    *(
        [
            Known(
                SQLITE,
                "TestReadOnly::test_reorganize_raises_readonly_error",
                AttributeError,
                "dbm.sqlite3 has no reorganize() before 3.15",
            ),
            Known(
                SQLITE,
                "TestGdbmExtras::test_reorganize_then_reopen",
                AttributeError,
                "dbm.sqlite3 has no reorganize() before 3.15",
            ),
            Known(
                SQLITE,
                "TestGdbmExtras::test_reorganize_empty_store",
                AttributeError,
                "dbm.sqlite3 has no reorganize() before 3.15",
            ),
        ]
        if _BEFORE_315
        else []
    ),
    # the point tests of dbm.dumb
    Known(
        DUMB,
        "TestModule::test_error_subclasses",
        AttributeError,
        "dbm.dumb's only error is OSError",
    ),
    Known(
        DUMB, "TestModule::test_default_flag_is_r", DID_NOT_RAISE, "dbm.dumb's default flag is 'c'"
    ),
    Known(
        DUMB,
        "TestOpenFlags::test_gdbm_modifier_flags_are_accepted",
        ValueError,
        "dbm.dumb rejects gdbm's modifier flags",
    ),
    Known(
        DUMB,
        "TestMisuse::test_use_after_close_raises_closed_error",
        DID_NOT_RAISE,
        "dbm.dumb's sync() after close() silently does nothing",
        ("sync",),
    ),
    Known(
        DUMB,
        "TestMisuse::test_use_after_close_raises_closed_error",
        AttributeError,
        "dbm.dumb has no firstkey()/nextkey()",
        ("firstkey", "nextkey"),
    ),
    Known(
        DUMB,
        "TestNotAStore::test_regular_file",
        DID_NOT_RAISE,
        "dbm.dumb puts its .dat/.dir files next to whatever is at the path",
        ("c",),
    ),
    Known(
        DUMB,
        "TestNotAStore::test_directory_with_foreign_files",
        DID_NOT_RAISE,
        "dbm.dumb puts its .dat/.dir files next to whatever is at the path",
        ("c",),
    ),
    Known(
        DUMB,
        "TestLocking::test_second_writer_in_process",
        DID_NOT_RAISE,
        "dbm.dumb does no locking",
    ),
    Known(
        DUMB,
        "TestLocking::test_second_writer_in_another_process",
        AssertionError,
        "dbm.dumb does no locking (the child opens it)",
    ),
    Known(
        DUMB,
        "TestDataTypes::test_lookups_with_other_key_types_raise_typeerror",
        KeyError,
        "dbm.dumb treats any hashable object as a missing key (an unhashable one is a TypeError)",
        ("int", "float", "NoneType", "tuple", "object"),
    ),
    Known(
        DUMB,
        "TestDataTypes::test_64_mib_key",
        NOT_RUN,
        "dbm.dumb's text index takes ~10 s and 1 GiB for a 64 MiB key (validated once)",
    ),
    Known(
        DUMB,
        "TestGdbmExtras::test_firstkey_nextkey_visit_each_key_once",
        AttributeError,
        "dbm.dumb has no firstkey()/nextkey()",
    ),
    Known(
        DUMB,
        "TestGdbmExtras::test_firstkey_nextkey_on_a_read_only_store",
        AttributeError,
        "dbm.dumb has no firstkey()/nextkey()",
    ),
    *(
        [
            Known(
                DUMB,
                "TestMisuse::test_use_after_close_raises_closed_error",
                AttributeError,
                "dbm.dumb has no reorganize() before 3.15",
                ("reorganize",),
            ),
            Known(
                DUMB,
                "TestReadOnly::test_reorganize_raises_readonly_error",
                AttributeError,
                "dbm.dumb has no reorganize() before 3.15",
            ),
            Known(
                DUMB,
                "TestGdbmExtras::test_reorganize_then_reopen",
                AttributeError,
                "dbm.dumb has no reorganize() before 3.15",
            ),
            Known(
                DUMB,
                "TestGdbmExtras::test_reorganize_empty_store",
                AttributeError,
                "dbm.dumb has no reorganize() before 3.15",
            ),
        ]
        if _BEFORE_315
        else []
    ),
]


def _index() -> dict[tuple[str, str], list[Known]]:
    index: dict[tuple[str, str], list[Known]] = {}
    for row in KNOWN_DIFFERENCES:
        index.setdefault((row.backend, row.test), []).append(row)
    return index


KNOWN_INDEX = _index()


def lacking_ops(backend: str) -> dict[str, str]:
    """The lockstep ops *backend* lacks, each with the exception class name it raises."""
    return {
        test.removeprefix("op "): cast(str, rows[0].outcome)
        for (name, test), rows in KNOWN_INDEX.items()
        if name == backend and test.startswith("op ")
    }


def expected(backend: str, name: str) -> object:
    rows = KNOWN_INDEX.get((backend, f"case {name}"))
    return rows[0].outcome if rows else EXPECTED[name]


def known_difference(item: pytest.Item) -> pytest.MarkDecorator | None:
    """Called by conftest at collection: the strict xfail a point test's row asks for."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "backend" not in callspec.params:
        return None
    cls = getattr(item, "cls", None)
    test = getattr(item, "originalname", item.name)
    test = f"{cls.__name__}::{test}" if cls is not None else test
    for row in KNOWN_INDEX.get((callspec.params["backend"], test), []):
        if row.ids and not any(f"-{i}-" in f"-{callspec.id}-" for i in row.ids):
            continue
        reason = f"{row.backend}: {row.why}"
        if row.outcome == NOT_RUN:
            return pytest.mark.xfail(run=False, reason=reason)
        return pytest.mark.xfail(
            strict=True, raises=cast(type[BaseException], row.outcome), reason=reason
        )
    return None


def test_tables_are_consistent() -> None:
    assert set(EXPECTED) == set(CASES)
    tests = {
        f"{cls.__name__}::{name}" if cls is not None else name
        for cls in [
            None,
            *(
                v
                for v in globals().values()
                if isinstance(v, type) and v.__name__.startswith("Test")
            ),
        ]
        for name in (dir(cls) if cls is not None else list(globals()))
        if name.startswith("test_")
    }
    for row in KNOWN_DIFFERENCES:
        assert row.backend in CONTRACT_CANDIDATES[1:], row  # viperdbm is the contract
        assert row.why, row
        kind, _, name = row.test.partition(" ")
        if kind == "case":
            assert name in CASES, row
            assert row.outcome != EXPECTED[name], row  # a row equal to the contract is stale
        elif kind == "op":
            assert row.outcome in {"AttributeError", "TypeError"}, row
        else:
            assert row.test in tests, row
    keys = [(row.backend, row.test, row.ids) for row in KNOWN_DIFFERENCES]
    assert len(keys) == len(set(keys)), "a difference is listed twice"


@pytest.mark.parametrize("name", list(CASES))
def test_misuse(backend: Backend, tmp_path: Path, name: str) -> None:
    got = CASES[name](backend.module, tmp_path)
    want = expected(backend.name, name)
    assert got == want, f"{backend.name}: {name}"


def test_closed_message(backend: Backend, tmp_path: Path) -> None:
    db = closed(backend.module, tmp_path)
    with pytest.raises(OSError) as info:
        db[b"k"]
    want = "GDBM object" if backend.name == GNU else "DBM object"
    assert f"{want} has already been closed" in str(info.value)


def test_invalid_flag_message_names_the_valid_flags(backend: Backend, tmp_path: Path) -> None:
    with pytest.raises((ValueError, OSError)) as info:
        backend.module.open(str(tmp_path / "store"), "x")
    for flag in "rwcn":
        assert f"'{flag}'" in str(info.value)
