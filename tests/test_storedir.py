"""The store directory (viperdbm/_storedir.py): one answer to "is this a store?" for every
module, check under any path and for a user who may only read, messages in the user's
terms, and one listing of parts/ per open. Real stores, real users (setpriv), real
system calls (strace)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _strace import strace_or_skip
from _vdbtools import as_nobody, run_as_nobody, scratch_dir_for_nobody

import viperdbm
from viperdbm import compat

ROOT = Path(viperdbm.__file__).resolve().parent.parent  # the package under test
CLI = [sys.executable, "-m", "viperdbm"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _make(path: Path, records: dict[bytes, bytes] | None = None, mode: int = 0o666) -> Path:
    with viperdbm.open(path, "c", mode) as db:
        for k, v in (records or {b"k": b"v"}).items():
            db[k] = v
    return path


# ---------------------------------------------------------------------- check
def test_check_of_a_store_under_a_path_with_spaces_is_ok(tmp_path: Path) -> None:
    """The README promises any path; pool.set cannot name such a path, so check must not
    read it as damage, and libpmemobj's own check still runs."""
    store = _make(tmp_path / "with space #1.vdb", {b"a": b"1", b"b": b"2"})
    proc = subprocess.run(
        [*CLI, "check", "--json", str(store)], capture_output=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["ok"] and report["records"] == 2, report
    assert report["pool_check"] == "consistent", report


def test_check_of_a_moved_store_runs_pmemobj_check_before_any_open(tmp_path: Path) -> None:
    store = _make(tmp_path / "a.vdb")
    moved = tmp_path / "b.vdb"
    store.rename(moved)
    report = viperdbm.check(moved)
    assert report.ok and report.pool_check == "consistent", report
    assert any("moved or copied" in n for n in report.notes), report.notes


def test_check_by_a_user_who_may_read_but_not_write_the_store() -> None:
    """The lock file (and every file) is the owner's, 0644: check needs no write access."""
    as_nobody("run check as another user")  # or skip
    with scratch_dir_for_nobody("viperdbm-ro-") as base:
        store = _make(base / "s.vdb", {b"a": b"1"}, 0o644)
        assert (store / "lock").stat().st_mode & 0o777 == 0o644
        proc = run_as_nobody(*CLI, "check", "--json", str(store))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] and report["records"] == 1 and report["records_read"] == 1, report
        assert "write access" in report["pool_check"], report
        # and the store was left as it was: still the owner's, still opens for writing
        with viperdbm.open(store, "w") as db:
            assert db[b"a"] == b"1"


# ---------------------------------------------------------------------- is this a store?
def _parts_only(p: Path) -> None:
    _make(p)
    (p / "pool.set").unlink()


def _set_only(p: Path) -> None:
    _make(p)
    shutil.rmtree(p / "parts")


def _garbage_set(p: Path) -> None:
    _make(p)
    (p / "pool.set").write_bytes(random.Random(7).randbytes(200))


@pytest.mark.parametrize(
    ("what", "is_store"),
    [("parts only", False), ("pool.set only", False), ("a damaged pool.set", True)],
)
def test_every_module_gives_one_answer_to_is_this_a_store(
    tmp_path: Path, what: str, is_store: bool
) -> None:
    """open, check, copy --replace and compat.whichdb/compat.open agree (they used four
    criteria: check took a directory with parts/ alone, compat wanted a readable
    PMEMPOOLSET line that the engine does not need)."""
    path = tmp_path / "x.vdb"
    {"parts only": _parts_only, "pool.set only": _set_only, "a damaged pool.set": _garbage_set}[
        what
    ](path)
    assert (compat.whichdb(path) == "viperdbm") is is_store
    if is_store:
        with viperdbm.open(path) as db, compat.open(path) as db2:  # pool.set is not needed
            assert db[b"k"] == b"v" == db2[b"k"]
        report = viperdbm.check(path)
        assert any("pool.set" in p for p in report.problems), report
        return
    with pytest.raises(viperdbm.NotAStoreError):
        viperdbm.open(path, "r")
    with pytest.raises(viperdbm.NotAStoreError):
        viperdbm.check(path)
    src = _make(tmp_path / "src.vdb")
    with pytest.raises(viperdbm.NotAStoreError):
        viperdbm.copy(src, path, replace=True)


# ---------------------------------------------------------------------- messages
def test_a_damaged_pool_header_is_not_shown_as_raw_bytes(tmp_path: Path) -> None:
    store = _make(tmp_path / "g.vdb")
    (store / "blocks").unlink()  # readers would not look at the header at all
    with open(store / "parts" / "000000.pmem", "r+b") as f:
        f.write(random.Random(5).randbytes(4096))
    with pytest.raises(viperdbm.error) as info:
        viperdbm.open(store, "r").close()
    report = viperdbm.check(store)
    for text in (str(info.value), *report.problems, report.pool_check):
        assert "\ufffd" not in text and text.isprintable(), repr(text)
    # a damaged store is not "not a store, use flag 'n'" (which would discard it)
    assert "flag 'n'" not in str(info.value), str(info.value)
    assert not report.ok


DUMP_PROBE = r"""
import json, sys, viperdbm
try:
    viperdbm.dump(sys.argv[1], sys.argv[2])
    print(json.dumps(["ok"]))
except viperdbm.error as exc:
    print(json.dumps([exc.errno, exc.filename, exc.hint]))
"""


def test_a_dump_refused_for_permission_gets_no_hint_about_the_store() -> None:
    """A dump file that may not be written is not the store: the hint must not send the
    user to the store's permissions (the store is fine), only to the dump's path."""
    as_nobody("write a dump as another user")  # or skip
    with scratch_dir_for_nobody("viperdbm-dump-perm-") as base:
        store = _make(base / "s.vdb", {b"a": b"1"}, 0o644)
        closed = base / "closed"  # root's, 0755: nobody may not create the dump in it
        closed.mkdir(0o755)
        proc = run_as_nobody(sys.executable, "-c", DUMP_PROBE, str(store), str(closed / "d"))
        assert proc.returncode == 0, proc.stderr
        code, filename, hint = json.loads(proc.stdout)
        assert code == errno.EACCES and filename == str(closed / "d"), proc.stdout
        assert "permissions" in hint and "store" not in hint, hint
        assert sorted(p.name for p in closed.iterdir()) == []


# ---------------------------------------------------------------------- one listing of parts/
PYTHON_OPEN_W = [
    sys.executable,
    "-c",
    "import sys, viperdbm; viperdbm.open(sys.argv[1], 'w').close()",
]


def test_a_writable_open_lists_the_parts_directory_once(tmp_path: Path) -> None:
    """viperdbm lists parts/ once per open, libpmemobj once more (it was 7 + 1)."""
    strace = strace_or_skip()
    store = _make(tmp_path / "s.vdb")
    out = tmp_path / "trace"
    subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=getdents64",
            "-o",
            str(out),
            *PYTHON_OPEN_W,
            str(store),
        ],
        check=True,
        env=_env(),
        timeout=120,
    )
    parts = str(store / "parts")
    # a listing ends with the getdents64 that returns 0
    listings = [
        line for line in out.read_text().splitlines() if f"<{parts}>" in line and "= 0" in line
    ]
    assert 1 <= len(listings) <= 2, "\n".join(listings)
