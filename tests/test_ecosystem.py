"""Fitting the ecosystem: whichdb, compat.open, logging, ResourceWarning, the public names,
the docstring examples (doctest) and the generated API page."""

from __future__ import annotations

import dbm
import dbm.dumb
import doctest
import gc
import importlib
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

import viperdbm
from viperdbm import compat

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_pinned() -> None:
    assert sorted(viperdbm.__all__) == [
        "CheckReport", "ClosedError", "CorruptedError", "Database", "DumpError", "LockError",
        "NotAStoreError", "ReadonlyError", "Salvaged", "StoreFullError", "VersionMismatchError",
        "Viper", "ViperClient", "ViperReadOnlyClient", "__version__", "check", "copy", "dump",
        "error", "load", "open", "salvage", "whichdb",
    ]  # fmt: skip
    for name in viperdbm.__all__:
        assert hasattr(viperdbm, name)


# ---------------------------------------------------------------------- whichdb and compat
def test_whichdb(tmp_path: Path) -> None:
    with viperdbm.open(tmp_path / "v.vdb", "c"):
        pass
    with dbm.dumb.open(str(tmp_path / "d"), "c") as db:
        db[b"k"] = b"v"
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    assert viperdbm.whichdb(tmp_path / "v.vdb") == "viperdbm"
    assert viperdbm.whichdb(str(tmp_path / "d")) == "dbm.dumb" == dbm.whichdb(str(tmp_path / "d"))
    assert viperdbm.whichdb(tmp_path / "missing") is None
    assert viperdbm.whichdb(tmp_path / "dir") is None
    assert viperdbm.whichdb(tmp_path / "empty") == ""
    # the standard library cannot tell
    assert dbm.whichdb(str(tmp_path / "v.vdb")) in (None, "")


def test_compat_open_opens_both_and_creates_viperdbm(tmp_path: Path) -> None:
    dumb_path = str(tmp_path / "legacy")
    with dbm.dumb.open(dumb_path, "c") as db:
        db[b"k"] = b"from dumb"
    with compat.open(dumb_path) as db:
        assert db[b"k"] == b"from dumb"
    with compat.open(dumb_path, "w") as db:
        db[b"k2"] = b"more"
    assert dbm.whichdb(dumb_path) == "dbm.dumb"

    new = tmp_path / "new.vdb"
    with compat.open(new, "c") as db:
        db[b"k"] = b"v"
        assert isinstance(db, viperdbm.Database)
    assert compat.whichdb(new) == "viperdbm"
    with compat.open(new) as db:
        assert db[b"k"] == b"v"

    with pytest.raises(viperdbm.error) as info:
        compat.open(tmp_path / "missing")
    assert isinstance(info.value, dbm.error)  # dbm.error is (dbm.error, OSError)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "junk").write_bytes(b"not a database at all" * 10)
    with pytest.raises(compat.error, match="could not be determined"):
        compat.open(tmp_path / "junk")


# ---------------------------------------------------------------------- logging, warnings
def test_logging_has_no_handlers_and_never_shows_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = "import logging, viperdbm; print(logging.getLogger('viperdbm').handlers)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    secret_key, secret_value = b"SECRET-KEY-3141", b"SECRET-VALUE-2718"
    with caplog.at_level(logging.DEBUG, logger="viperdbm"):
        with viperdbm.open(tmp_path / "s.vdb", "c") as db:
            db[secret_key] = secret_value
            db.reorganize()
        with viperdbm.open(tmp_path / "s.vdb", "r") as db:
            assert db[secret_key] == secret_value
    opened = [r for r in caplog.records if r.name == "viperdbm" and "rebuilt" in r.getMessage()]
    assert opened and all(r.levelno == logging.DEBUG for r in opened)
    assert "ms" in opened[-1].getMessage()
    for record in caplog.records:
        text = record.getMessage()
        assert "SECRET" not in text


def test_an_unclosed_store_warns_when_collected(tmp_path: Path) -> None:
    db = viperdbm.open(tmp_path / "s.vdb", "c")
    db[b"k"] = b"v"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del db
        gc.collect()
    assert any(
        issubclass(w.category, ResourceWarning) and "was not closed" in str(w.message)
        for w in caught
    )
    with viperdbm.open(tmp_path / "s.vdb") as again:  # it was closed by the finaliser
        assert again[b"k"] == b"v"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        closed = viperdbm.open(tmp_path / "s.vdb")
        closed.close()
        del closed
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# ---------------------------------------------------------------------- docs
@pytest.mark.parametrize(
    "module",
    [
        "viperdbm",
        "viperdbm._dbm",
        "viperdbm._dump",
        "viperdbm._check",
        "viperdbm.cache",
        "viperdbm.compat",
        "viperdbm.shelve",
        "viperdbm.viper",
    ],
)
def test_docstring_examples_run(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples use mkdtemp()
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_api_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "page", ["tutorial", "api", "durability", "cli", "migration", "dump-format", "cache"]
)
def test_doc_pages_exist_and_their_links_resolve(page: str) -> None:
    import re

    path = ROOT / "docs" / f"{page}.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        if target.startswith("../benchmarks/"):
            continue  # the benchmark results are published by the benchmark work
        assert (path.parent / target).exists(), f"{page}.md links to missing {target}"


def test_tutorial_code_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of the tutorial runs, in order, in a scratch directory."""
    import re

    text = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "tutorial"}
    for block in blocks:
        exec(compile(block, "tutorial.md", "exec"), namespace)
