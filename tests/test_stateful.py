"""A Hypothesis state machine that runs random operation sequences against a store and a
``dict`` model side by side, including close+reopen and reorganize steps."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import Backend, Key, Store
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)


def _big(size: int) -> bytes:
    return bytes((i * 7 + size) % 251 for i in range(min(size, 4096))) * (size // 4096) + bytes(
        (i * 7 + size) % 251 for i in range(size % 4096)
    )


BIG_SIZES = [4095, 4096, 4097, 65_536, 1 << 20]
any_keys: st.SearchStrategy[Key] = st.one_of(
    st.binary(max_size=2),  # a small space, so keys collide and get overwritten
    st.text(alphabet="aäb\x00", max_size=2),
    st.sampled_from([b"", b"\x00", b"\x00" * 8, b"\xff" * 255, _big(4097)]),
    st.binary(min_size=3, max_size=64),
)
any_values: st.SearchStrategy[Key] = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=10),
    st.sampled_from([b"", b"\x00", *(_big(n) for n in BIG_SIZES)]),
)
byte_values = st.one_of(st.binary(max_size=40), st.sampled_from([b"", _big(65_536)]))


def norm(data: Key) -> bytes:
    return data.encode() if isinstance(data, str) else data


class StoreVersusDict(RuleBasedStateMachine):
    backend: Backend
    base_dir: Path

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base_dir))
        self.path = self.dir / "store"
        self.db: Store = self.backend.open(self.path, "c")
        self.model: dict[bytes, bytes] = {}

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir)

    def check_everything(self) -> None:
        assert len(self.db) == len(self.model)
        assert sorted(self.db.keys()) == sorted(self.model)
        assert sorted(self.db) == sorted(self.model)
        for key, value in self.model.items():
            assert self.db[key] == value

    @rule(key=any_keys, value=any_values)
    def set(self, key: Key, value: Key) -> None:
        self.db[key] = value
        self.model[norm(key)] = norm(value)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), value=any_values)
    def overwrite_existing(self, data: st.DataObject, value: Key) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.db[key] = value
        self.model[key] = norm(value)

    @rule(key=any_keys)
    def get(self, key: Key) -> None:
        want = self.model.get(norm(key))
        assert self.db.get(key) == want
        if want is None:
            with pytest.raises(KeyError):
                self.db[key]
        else:
            assert self.db[key] == want

    @rule(key=any_keys)
    def contains(self, key: Key) -> None:
        assert (key in self.db) == (norm(key) in self.model)

    @rule(key=any_keys)
    def delete(self, key: Key) -> None:
        if norm(key) in self.model:
            del self.db[key]
            del self.model[norm(key)]
        else:
            with pytest.raises(KeyError):
                del self.db[key]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_existing(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        del self.db[key]
        del self.model[key]

    @rule()
    def length(self) -> None:
        assert len(self.db) == len(self.model)

    @rule()
    def keys(self) -> None:
        got = self.db.keys()
        assert isinstance(got, list)
        assert sorted(got) == sorted(self.model)

    @rule()
    def clear(self) -> None:
        self.db.clear()
        self.model.clear()

    @rule(key=any_keys, default=byte_values)
    def setdefault(self, key: Key, default: bytes) -> None:
        assert self.db.setdefault(key, default) == self.model.setdefault(norm(key), default)

    @rule(key=any_keys, with_default=st.booleans())
    def pop(self, key: Key, with_default: bool) -> None:
        if with_default:
            assert self.db.pop(key, b"dflt") == self.model.pop(norm(key), b"dflt")
        elif norm(key) in self.model:
            assert self.db.pop(key) == self.model.pop(norm(key))
        else:
            with pytest.raises(KeyError):
                self.db.pop(key)

    @precondition(lambda self: self.model)
    @rule()
    def popitem(self) -> None:
        key, value = self.db.popitem()
        assert self.model.pop(key) == value

    @rule(flag=st.sampled_from(["w", "c"]))
    def close_and_reopen(self, flag: str) -> None:
        self.db.close()
        self.db = self.backend.open(self.path, flag)
        self.check_everything()

    @rule()
    def reopen_read_only_then_writable(self) -> None:
        self.db.close()
        self.db = self.backend.open(self.path, "r")
        self.check_everything()
        self.db.close()
        self.db = self.backend.open(self.path, "w")

    @precondition(lambda self: hasattr(self.db, "reorganize"))
    @rule()
    def reorganize(self) -> None:
        self.db.reorganize()
        self.check_everything()

    @rule()
    def sync(self) -> None:
        self.db.sync()

    @rule()
    def check_all(self) -> None:
        self.check_everything()

    @invariant()
    def length_agrees(self) -> None:
        assert len(self.db) == len(self.model)


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_store_behaves_like_a_dict(backend: Backend, store_dir: Path) -> None:
    class Machine(StoreVersusDict):
        pass

    Machine.backend = backend
    Machine.base_dir = store_dir
    run_state_machine_as_test(Machine, settings=SETTINGS)
