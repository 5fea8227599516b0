"""The dbm contract of viperdbm, point by point (in the style of CPython's test_dbm).

Each class covers one intent; each test states one rule of the contract. The backend is
the one selected in conftest.py (viperdbm, or dbm.dumb while developing the suite).
"""

from __future__ import annotations

import collections.abc
import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import CLOSED_MESSAGE, Backend, OpenStore, Store

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

    @pytest.mark.beyond_dumb("dbm.dumb has no error subclasses")
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

    @pytest.mark.beyond_dumb("dbm.dumb's default flag is 'c'")
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

    @pytest.mark.beyond_dumb("dbm.dumb rejects gdbm's modifier flags")
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

    @pytest.mark.beyond_dumb("dbm.dumb has no reorganize()")
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


CLOSED_USES: dict[str, Callable[[Store], object]] = {
    "getitem": lambda db: db[b"a"],
    "setitem": lambda db: db.__setitem__(b"a", b"v"),
    "delitem": lambda db: db.__delitem__(b"a"),
    "contains": lambda db: b"a" in db,
    "len": len,
    "iter": lambda db: list(db),
    "keys": lambda db: db.keys(),
    "items": lambda db: list(db.items()),
    "values": lambda db: list(db.values()),
    "get": lambda db: db.get(b"a"),
    "get-missing": lambda db: db.get(b"missing", b"d"),
    "setdefault": lambda db: db.setdefault(b"a", b"v"),
    "pop": lambda db: db.pop(b"a"),
    "pop-default": lambda db: db.pop(b"missing", None),
    "popitem": lambda db: db.popitem(),
    "update": lambda db: db.update({b"a": b"v"}),
    "clear": lambda db: db.clear(),
    "sync": lambda db: db.sync(),
    "firstkey": lambda db: db.firstkey(),
    "nextkey": lambda db: db.nextkey(b"a"),
    "reorganize": lambda db: db.reorganize(),
}
DUMB_CLOSED_GAPS = {
    "sync": "dbm.dumb's sync() after close() silently does nothing",
    "firstkey": "dbm.dumb has no firstkey()",
    "nextkey": "dbm.dumb has no nextkey()",
    "reorganize": "dbm.dumb has no reorganize()",
}


class TestMisuse:
    @pytest.mark.parametrize(
        "name",
        [
            pytest.param(name, marks=pytest.mark.beyond_dumb(DUMB_CLOSED_GAPS[name]))
            if name in DUMB_CLOSED_GAPS
            else name
            for name in CLOSED_USES
        ],
    )
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
NOT_A_STORE_FLAGS = [
    "r",
    "w",
    pytest.param("c", marks=pytest.mark.beyond_dumb("dbm.dumb creates files next to anything")),
]


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
    @pytest.mark.beyond_dumb("dbm.dumb does no locking")
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

    @pytest.mark.beyond_dumb("dbm.dumb does no locking")
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

    @pytest.mark.beyond_dumb(
        "dbm.dumb answers KeyError/False for a key of the wrong type (but TypeError for an "
        "unhashable one)",
        strict=False,
    )
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

    @pytest.mark.beyond_dumb(
        "dbm.dumb's text index takes ~10 s and 1 GiB for a 64 MiB key (validated once)",
        run=False,
    )
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
    @pytest.mark.beyond_dumb("dbm.dumb has no firstkey()/nextkey()")
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

    @pytest.mark.beyond_dumb("dbm.dumb has no firstkey()/nextkey()")
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

    @pytest.mark.beyond_dumb("dbm.dumb has no reorganize()")
    def test_reorganize_then_reopen(self, open_store: OpenStore) -> None:
        db = open_store("c")
        data = {b"k%d" % i: bytes([i % 256]) * (i * 37 % 5000) for i in range(2000)}
        populate(db, data)
        for i in range(0, 2000, 2):
            del db[b"k%d" % i]
            del data[b"k%d" % i]
        for i in range(1, 2000, 6):
            db[b"k%d" % i] = data[b"k%d" % i] = b"new %d" % i
        db.reorganize()
        assert contents(db) == data
        db[b"after"] = data[b"after"] = b"reorganize"
        db.close()
        db = open_store("w")
        assert contents(db) == data
        db.reorganize()
        db.close()
        assert contents(open_store("r")) == data

    @pytest.mark.beyond_dumb("dbm.dumb has no reorganize()")
    def test_reorganize_empty_store(self, open_store: OpenStore) -> None:
        db = open_store("c")
        db.reorganize()
        db[b"k"] = b"v"
        del db[b"k"]
        db.reorganize()
        db.close()
        assert len(open_store("r")) == 0
