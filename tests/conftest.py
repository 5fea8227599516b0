"""Fixtures of the viperdbm test suite: the backend under test and fresh store paths.

The dbm contract suite (test_dbm_contract.py) runs over every backend this Python has, in one
run: ``contract_backend_names()``; its known differences are one table in that file, applied
here at collection (``pytest_collection_modifyitems``). Every other test file uses the one
backend chosen by the environment variable ``VIPERDBM_TEST_BACKEND``:

* unset or ``viperdbm``: viperdbm. It must import; if it does not, every test that uses
  the backend *fails* (it is never skipped).
* ``dbm.dumb``: the standard library's ``dbm.dumb``, whose semantics are the closest to
  viperdbm's. It is how the suite was developed before viperdbm existed, and it keeps the
  tests themselves honest. Contract points that ``dbm.dumb`` does not implement are marked
  ``@pytest.mark.beyond_dumb(reason)``; under ``dbm.dumb`` only they become strict xfails,
  so a test that unexpectedly passes there is reported too.
"""

from __future__ import annotations

import importlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

import pytest
from hypothesis import settings

# Hypothesis draws the same examples in every run, and in every xdist worker, for the tests
# that do not say otherwise; VIPERDBM_FRESH_SEEDS=1 draws new ones. A failure prints the
# falsifying example and the blob that replays it.
settings.register_profile("viperdbm-fixed", derandomize=True, print_blob=True)
settings.register_profile("viperdbm-fresh", print_blob=True)
settings.load_profile(
    "viperdbm-fresh" if os.environ.get("VIPERDBM_FRESH_SEEDS") == "1" else "viperdbm-fixed"
)
BACKEND_ENV = "VIPERDBM_TEST_BACKEND"
BACKENDS = ("viperdbm", "dbm.dumb")
CLOSED_MESSAGE = "DBM object has already been closed"
# Every backend the contract suite knows: viperdbm, then the standard library's in the order
# of dbm._names (dbm.sqlite3 exists from Python 3.13; dbm.gnu only where the interpreter was
# built with it, e.g. Debian's python3-gdbm). dbm.ndbm is not in it yet: Debian's (Berkeley
# DB's emulation) drops a key stored with an empty value and leaves the empty key out of
# len(), so its lockstep with a dict needs an oracle of its own, not a table row.
CONTRACT_CANDIDATES = ("viperdbm", "dbm.sqlite3", "dbm.gnu", "dbm.dumb")

# The two filesystems every store test runs on (the one table of them); ids are the fixture ids.
FILESYSTEMS = {"tmpfs": "/dev/shm", "ext4": "/tmp"}

Key = bytes | str


class Store(Protocol):
    """What the tests use of an open store (a dbm object)."""

    def __getitem__(self, key: Key, /) -> bytes: ...
    def __setitem__(self, key: Key, value: Key, /) -> None: ...
    def __delitem__(self, key: Key, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def keys(self) -> list[bytes]: ...
    def items(self) -> Iterable[tuple[bytes, bytes]]: ...
    def values(self) -> Iterable[bytes]: ...
    def get(self, key: Key, default: object = None, /) -> object: ...
    def setdefault(self, key: Key, default: Key = ..., /) -> object: ...
    def pop(self, key: Key, /, *default: object) -> object: ...
    def popitem(self) -> tuple[bytes, bytes]: ...
    def update(self, *args: Any, **kwargs: Key) -> None: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...
    def sync(self) -> None: ...
    def firstkey(self) -> bytes | None: ...
    def nextkey(self, key: Key, /) -> bytes | None: ...
    def reorganize(self) -> None: ...


def selected_backend_name() -> str:
    """The backend named by ``VIPERDBM_TEST_BACKEND`` (default: viperdbm)."""
    name = os.environ.get(BACKEND_ENV, "") or "viperdbm"
    if name not in BACKENDS:
        raise pytest.UsageError(f"{BACKEND_ENV}={name!r}: expected one of {BACKENDS}")
    return name


@dataclass(frozen=True)
class Backend:
    """The module under test, with the few differences between candidates spelled out."""

    name: str
    module: ModuleType = field(repr=False)

    @property
    def is_viperdbm(self) -> bool:
        return self.name == "viperdbm"

    @property
    def error(self) -> type[OSError]:
        return cast(type[OSError], self.module.error)

    def error_class(self, kind: str) -> type[OSError]:
        """viperdbm's ``error`` subclass *kind*; the base ``error`` for a stdlib module."""
        if self.is_viperdbm:
            return cast(type[OSError], getattr(self.module, kind))
        return self.error

    def open(self, path: str | os.PathLike[str], flag: str = "r", mode: int = 0o666) -> Store:
        return cast(Store, self.module.open(path, flag, mode))

    def shelve_open(
        self,
        filename: str | os.PathLike[str],
        flag: str = "c",
        protocol: int | None = None,
        writeback: bool = False,
        *,
        mode: int = 0o666,
    ) -> Any:
        """``viperdbm.shelve.open``; for a stdlib module, the same thing built on Shelf."""
        if self.is_viperdbm:
            helper = importlib.import_module("viperdbm.shelve")
            return helper.open(filename, flag, protocol, writeback, mode=mode)
        import shelve

        return shelve.Shelf(self.module.open(filename, flag, mode), protocol, writeback)

    def child_env(self) -> dict[str, str]:
        """Environment for a child ``python -c`` that must import this backend."""
        env = dict(os.environ)
        top = importlib.import_module(self.name.split(".")[0])
        if top.__file__ is not None and not self.name.startswith("dbm"):
            root = str(Path(top.__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        return env


def missing_backends() -> dict[str, str]:
    """The standard library backends this Python lacks, each with its ImportError."""
    missing = {}
    for name in CONTRACT_CANDIDATES[1:]:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing[name] = str(exc)
    return missing


def contract_backend_names() -> list[str]:
    """The backends the contract suite runs over: viperdbm (required: an ImportError fails
    its tests, never skips them; left out only when ``VIPERDBM_TEST_BACKEND=dbm.dumb``, e.g.
    to check the table of differences on another Python) and every stdlib one present."""
    names = [] if selected_backend_name() == "dbm.dumb" else ["viperdbm"]
    missing = missing_backends()
    return names + [name for name in CONTRACT_CANDIDATES[1:] if name not in missing]


def load_backend(name: str) -> Backend:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            f"cannot import {name} ({exc}); build it first, or set {BACKEND_ENV}=dbm.dumb "
            "to run the suite against dbm.dumb",
            pytrace=False,
        )
    return Backend(name, module)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "beyond_dumb(reason, strict=True, run=True): a contract point dbm.dumb lacks; "
        "xfail when VIPERDBM_TEST_BACKEND=dbm.dumb",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # A test module may say how a test ends on a backend that differs (the contract
        # suite's table of known differences): a strict xfail raising exactly that.
        known = getattr(getattr(item, "module", None), "known_difference", None)
        mark = known(item) if known is not None else None
        if mark is not None:
            item.add_marker(mark)
    if selected_backend_name() != "dbm.dumb":
        return
    for item in items:
        marker = item.get_closest_marker("beyond_dumb")
        if marker is None:
            continue
        reason = marker.args[0] if marker.args else "dbm.dumb lacks this"
        item.add_marker(
            pytest.mark.xfail(
                reason=f"dbm.dumb: {reason}",
                strict=marker.kwargs.get("strict", True),
                run=marker.kwargs.get("run", True),
            )
        )


@pytest.fixture(scope="session")
def backend() -> Backend:
    return load_backend(selected_backend_name())


def _rmtree(path: Path) -> None:
    def make_writable(func: Callable[..., object], name: str, _exc: object) -> None:
        os.chmod(os.path.dirname(name), stat.S_IRWXU)
        os.chmod(name, stat.S_IRWXU)
        func(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)


@pytest.fixture(params=list(FILESYSTEMS))
def store_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh, empty directory on tmpfs or ext4, removed afterwards."""
    root = FILESYSTEMS[request.param]
    if not os.path.isdir(root):
        pytest.skip(f"{root} does not exist here")
    path = Path(tempfile.mkdtemp(prefix="viperdbm-test-", dir=root))
    try:
        yield path
    finally:
        _rmtree(path)


@pytest.fixture
def store_path(store_dir: Path) -> Path:
    """A path where no store exists yet, inside ``store_dir``."""
    return store_dir / "store"


OpenStore = Callable[..., Store]


@pytest.fixture
def open_store(backend: Backend, store_path: Path) -> Iterator[OpenStore]:
    """``open_store(flag='c', mode=0o666, path=store_path)``; every store it opened is
    closed at teardown (close is idempotent), so a failing test leaks nothing."""
    opened: list[Store] = []

    def opener(flag: str = "c", mode: int = 0o666, path: Path | None = None) -> Store:
        db = backend.open(store_path if path is None else path, flag, mode)
        opened.append(db)
        return db

    yield opener
    for db in reversed(opened):
        db.close()
