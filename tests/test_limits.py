"""A full disk, and the largest keys and values.

Full disk: a small file system (a 48 MiB tmpfs, or a 64 MiB ext4 image on a loop device;
we are root, otherwise the tests are skipped with the reason) is filled through viperdbm.
The README's promise (and ``StoreFullError``'s hint): the write that does not fit raises
``StoreFullError`` (a ``viperdbm.error``), every earlier write is intact, and the store can
still be read and deleted from, in the same handle and after a reopen. The filling runs in
a child process, so a SIGBUS (a write into a mapping the file system cannot back) is seen.

Limits: a key or value over ``MAX_KEY``/``MAX_VALUE`` (the format's constants) gives a clear error
naming the limit (``ValueError`` or ``viperdbm.error``) and writes nothing. The oversized
objects are ``bytes(n)``: calloc'ed zero pages that are never touched, so 4 GiB costs
nothing. Boundary sizes (page, 1 MiB inline limit, the 4095 key-length escape, a key over
1 MiB) round-trip through a reopen and a reorganize.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _strace import growth_fallocates, inject
from _vdbtools import child_env, digest, value_for

import viperdbm
from viperdbm import _layout as layout

MAX_KEY = layout.FORMAT["constants"]["MAX_KEY"]
MAX_VALUE = layout.FORMAT["constants"]["MAX_VALUE"]

FILLER = r"""
import json, sys, hashlib
import viperdbm

path = sys.argv[1]
out = {"acked": {}, "deleted": [], "events": []}
def d(v): return hashlib.blake2b(v, digest_size=16).hexdigest()
def val(i, n): return (b"%08d" % i) * (n // 8) + b"x" * (n % 8)

db = viperdbm.open(path, "c")
index = 0
phases = (("big", 1_300_000, 400), ("block", 200_000, 2000), ("small", 100, 400_000))
for phase, size, limit in phases:
    for _ in range(limit):
        key = b"%s-%06d" % (phase.encode(), index)
        value = val(index, size)
        try:
            db[key] = value
        except viperdbm.StoreFullError as exc:
            absent = db.get(key) is None
            out["events"].append([phase, "StoreFullError", str(exc), key.decode(), absent])
            break
        except BaseException as exc:
            out["events"].append([phase, type(exc).__name__, str(exc), key.decode(), None])
            break
        out["acked"][key.decode()] = d(value)
        index += 1
    print(json.dumps({"phase": phase, "acked": len(out["acked"])}), file=sys.stderr, flush=True)
# reads in the same handle
bad = [k for k, v in out["acked"].items() if d(db.get(k.encode(), b"")) != v]
out["events"].append(["reads after full", len(bad)])
# deletes in the same handle: every third key
for k in list(out["acked"])[::3]:
    try:
        del db[k.encode()]
        out["deleted"].append(k)
    except BaseException as exc:
        out["events"].append(["delete", type(exc).__name__, str(exc), k])
        break
try:
    db.close()
    out["events"].append(["close", "ok"])
except BaseException as exc:
    out["events"].append(["close", type(exc).__name__, str(exc)])
print(json.dumps(out))
"""


def _mount_tmpfs(where: Path) -> str | None:
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    return None if proc.returncode == 0 else f"cannot mount a tmpfs: {proc.stderr.strip()}"


def _mount_ext4(where: Path, image: Path) -> str | None:
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is not installed"
    with image.open("wb") as f:
        f.truncate(64 << 20)
    mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if mkfs.returncode != 0:
        return f"mkfs.ext4 failed: {mkfs.stderr.strip()}"
    proc = subprocess.run(
        ["mount", "-o", "loop", str(image), str(where)], capture_output=True, text=True
    )
    return None if proc.returncode == 0 else f"cannot loop-mount ext4: {proc.stderr.strip()}"


@pytest.fixture(params=["tmpfs-48m", "ext4-loop-64m"])
def small_fs(request: pytest.FixtureRequest) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="viperdbm-full-", dir="/tmp"))
    mount_point = base / "mnt"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    if request.param.startswith("tmpfs"):
        problem = _mount_tmpfs(mount_point)
    else:
        problem = _mount_ext4(mount_point, base / "fs.img")
    if problem is not None:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(problem)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_a_full_disk(small_fs: Path) -> None:
    store = small_fs / "store"
    proc = subprocess.run(
        [sys.executable, "-c", FILLER, str(store)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"the filling process died (status {proc.returncode}; a negative status is a signal, "
        f"-7 is SIGBUS): {proc.stderr[-2000:]}"
    )
    out = json.loads(proc.stdout.splitlines()[-1])
    events = out["events"]
    acked: dict[str, str] = out["acked"]
    fulls = [e for e in events if len(e) == 5]
    assert fulls, f"the disk never filled up: {events}"
    for phase, exc_type, message, key, absent in fulls:
        assert exc_type == "StoreFullError", f"{phase}: {exc_type}: {message}"
        assert message.strip(), f"{phase}: an empty message"
        assert absent, f"{phase}: the write that did not fit left {key!r} behind"
    assert ["reads after full", 0] in events, events
    assert ["close", "ok"] in events, events
    want = {k: v for k, v in acked.items() if k not in set(out["deleted"])}
    with viperdbm.open(store, "r") as db:
        got = {k.decode(): digest(db[k]) for k in db}
    assert got == want, "after reopen: " + _diff(got, want)
    deletes_failed = [e for e in events if e[0] == "delete"]
    assert not deletes_failed, (
        f"a delete failed on the full store after {len(out['deleted'])} deletes "
        f"(the hint promises deletes): {deletes_failed}"
    )
    with viperdbm.open(store, "w") as db:  # writable again on the full disk: deletes work
        for k in list(want)[:50]:
            del db[k.encode()]
            del want[k]
    with viperdbm.open(store, "r") as db:
        got = {k.decode(): digest(db[k]) for k in db}
    assert got == want, "after deletes in a reopened full store: " + _diff(got, want)


def _diff(got: dict[str, str], want: dict[str, str]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    return (
        f"{len(missing)} missing {missing[:5]}, {len(extra)} extra {extra[:5]}, {len(wrong)} wrong"
    )


def _take_the_disk(filler: Path) -> None:
    """Something else fills the file system to its last block."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12):
            try:
                while True:
                    os.write(fd, b"\xff" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def test_a_live_reader_joins_a_writer_on_a_full_disk(small_fs: Path) -> None:
    """A reader's slot is a page of the sparse readers file that no reader may have written
    yet: the writer allocates the header's and every slot's page when it opens, so a reader
    still joins it once the disk is full (and does not fall back to keeping writers out,
    which an open writer would refuse)."""
    store = small_fs / "store"
    with viperdbm.open(store, "c") as writer:
        writer[b"k"] = b"v"
        _take_the_disk(small_fs / "filler")
        with viperdbm.open(store, "r") as reader:
            assert reader[b"k"] == b"v"
            writer[b"k2"] = b"v2"  # (the store's active block has room)
            assert reader[b"k2"] == b"v2"
        (small_fs / "filler").unlink()  # (the writer's close writes its blocks file)


LARGEST_FOLIO = 2 << 20


def test_the_readers_file_is_allocated_ahead_of_the_block_table(tmp_path: Path) -> None:
    """The writer stores block entries through a mapping of the sparse readers file; a
    store into a hole on a full disk is a SIGBUS, and so is a store into an allocated page
    whose page-cache folio spans a hole (Linux caches files in folios of up to 2 MiB: ext4
    since 6.16, xfs). So every entry it may take next is allocated first, in whole 2 MiB
    regions (readers_room before each block; st_blocks counts it on tmpfs and ext4 alike),
    checked after each of 40 jumbo blocks."""
    store = tmp_path / "store"
    entry = layout.FORMAT["structures"]["VdReadersBlock"]["size"]
    at, size = layout.FORMAT["structures"]["VdReadersHeader"]["fields"]["table_used"]
    table_at = layout._CONSTANTS["READERS_BLOCKS_AT"]
    with viperdbm.open(store, "c") as db:
        for i in range(40):
            db[b"J%03d" % i] = bytes([i % 251]) * (1 << 20 | 64)
            with open(store / layout.READERS_FILE, "rb") as f:
                used = int.from_bytes(f.read(at + size)[at:], "little")
                allocated = os.fstat(f.fileno()).st_blocks * 512
            # the header, the slots, the next entry: in whole 2 MiB regions (the largest
            # page-cache folio, whose write fault takes space for every hole in it)
            need = -(-(table_at + (used + 1) * entry) // LARGEST_FOLIO) * LARGEST_FOLIO
            assert used >= i and allocated >= need, (
                f"after {i + 1} jumbo puts: {used} entries in use, {allocated} bytes of the "
                f"readers file allocated, {need} needed for the next entry"
            )


# --------------------------------------------------------------------------- limits
@pytest.fixture
def db_path() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="viperdbm-limits-", dir="/dev/shm"))
    yield directory / "store"
    shutil.rmtree(directory, ignore_errors=True)


def _blocks(db: viperdbm.Database) -> int:
    return int(db.stats()["blocks"])


@pytest.mark.parametrize("what", ["value", "key"])
def test_over_the_limit_is_a_clear_error_and_writes_nothing(db_path: Path, what: str) -> None:
    limit = MAX_VALUE if what == "value" else MAX_KEY
    huge = bytes(limit + 1)  # calloc'ed: no page of it is ever touched
    with viperdbm.open(db_path, "c") as db:
        db[b"before"] = b"1"
        blocks = _blocks(db)
        with pytest.raises((ValueError, viperdbm.error)) as info:
            if what == "value":
                db[b"k"] = huge
            else:
                db[huge] = b"v"
        message = str(info.value)
        assert what in message.lower(), message
        assert str(limit) in message or "4 GiB" in message or "GiB" in message, message
        assert _blocks(db) == blocks, "a block was allocated for a record that was refused"
        assert len(db) == 1 and db.get(b"k") is None
        if what == "key":
            assert huge not in db and db.get(huge) is None
            with pytest.raises(KeyError):
                del db[huge]
        db[b"after"] = b"2"
    with viperdbm.open(db_path, "r") as db:
        assert {k: db[k] for k in db} == {b"before": b"1", b"after": b"2"}
    del huge


def test_a_value_exactly_at_the_limit(db_path: Path) -> None:
    if os.environ.get("VIPERDBM_HUGE") != "1":
        pytest.skip("writes 4 GiB: set VIPERDBM_HUGE=1 to run it")
    value = b"\x01" * MAX_VALUE
    with viperdbm.open(db_path, "c") as db:
        db[b"k"] = value
    with viperdbm.open(db_path, "r") as db:
        assert db[b"k"] == value


def _near_boundaries() -> list[tuple[bytes, int]]:
    cases: list[tuple[bytes, int]] = []
    for klen in (0, 1, 4094, 4095, 4096, 70_000):
        key = b"K" * klen
        header = 20 if klen > 4094 else 16
        for total in (4080, 4095, 4096, 4097, 8192, (1 << 20) - 4, 1 << 20, (1 << 20) + 1):
            vlen = total - header - klen
            if vlen >= 0:
                cases.append((key, vlen))
    cases.append((b"H" * ((1 << 20) + 5), 0))  # a key alone needs a jumbo block
    cases.append((b"H" * ((1 << 20) + 5), 3000))
    return cases


def test_boundary_sizes_round_trip(db_path: Path) -> None:
    written: dict[bytes, bytes] = {}
    with viperdbm.open(db_path, "c") as db:
        for n, (key, vlen) in enumerate(_near_boundaries()):
            k = key + b"#%d" % n
            written[k] = value_for("limits", n, vlen)
            db[k] = written[k]
        for k in list(written)[::2]:
            del db[k]
            del written[k]
    with viperdbm.open(db_path, "r") as db:
        assert {k: db[k] for k in db} == written
    with viperdbm.open(db_path, "w") as db:
        db.reorganize()
    with viperdbm.open(db_path, "r") as db:
        assert {k: db[k] for k in db} == written


# --------------------------------------------------------------------------- failed growth
GROWER = r"""
import json, os, sys, time
import viperdbm

path, flag = sys.argv[1], sys.argv[2]
os.umask(0)
out = {"acked": [], "errors": [], "deleted": False}
db = viperdbm.open(path, "c", 0o640)
if flag == "c":  # a first process makes the store, with one key
    db[b"first"] = b"1"
    db.close()
    sys.exit(0)
started = time.monotonic()
for i in range(24):  # ~22 MB: the pool grows several times
    key = b"g%02d" % i
    try:
        db[key] = bytes([i]) * 900_000
    except viperdbm.error as exc:
        out["errors"].append([type(exc).__name__, exc.errno, str(exc), db.get(key) is None])
        continue
    out["acked"].append(key.decode())
out["seconds"] = time.monotonic() - started
del db[b"first"]  # a delete still works after a failed growth
out["deleted"] = True
db.close()
print(json.dumps(out))
"""


def _growth_calls(scratch: Path) -> list[int]:
    """The numbers of the GROWER writer's fallocate calls that grow the pool (see
    :func:`_strace.growth_fallocates`), counted on a store made the same way."""
    copy = scratch / "growth-count"
    subprocess.run([sys.executable, "-c", GROWER, str(copy), "c"], env=child_env(), check=True)
    trace = str(scratch / "growth-count.trace")
    growth = growth_fallocates([sys.executable, "-c", GROWER, str(copy), "w"], trace, child_env())
    shutil.rmtree(copy)
    assert len(growth) >= 2, f"the writer grew the pool {len(growth)} times"
    return growth


@pytest.mark.parametrize("when", ["first growth", "second growth", "every fallocate"])
def test_a_failed_growth_is_store_full_and_leaves_the_store_whole(db_path: Path, when: str) -> None:
    """libpmemobj 1.12.1 counts a part it failed to create: without care, the next growth
    made a part after a gap (lost at the next open) and the pool grew without bound.

    The ENOSPC is real, injected by strace into the fallocate of a writer (that opened an
    existing store) that grows the pool, or into every one of its fallocate calls."""
    subprocess.run([sys.executable, "-c", GROWER, str(db_path), "c"], env=child_env(), check=True)
    if when == "every fallocate":
        nth = "1+"
    else:
        nth = str(_growth_calls(db_path.parent)[0 if when == "first growth" else 1])
    inject_rule = f"fallocate:error=ENOSPC:when={nth}"
    proc = subprocess.run(
        [*inject(inject_rule), sys.executable, "-c", GROWER, str(db_path), "w"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 0, f"{inject_rule}: the writer failed: {proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["errors"], f"{inject_rule}: the failed fallocate went unnoticed"
    for name, code, message, absent in out["errors"]:
        assert name == "StoreFullError" and code == errno.ENOSPC, (name, code, message)
        assert "/proc/self/fd" not in message, message
        assert absent, f"the put that failed left its key behind: {message}"
    assert out["deleted"], out
    assert out["seconds"] < 60, f"{inject_rule}: the writer took {out['seconds']:.0f} s"
    parts = sorted(os.listdir(db_path / "parts"))
    assert parts == [f"{i:06d}.pmem" for i in range(len(parts))], f"a gap: {parts}"
    assert len(parts) <= 4, f"{inject_rule}: the pool ran away: {len(parts)} parts"
    for name in parts:
        part = db_path / "parts" / name
        assert part.stat().st_size > 0, f"an empty part {name}"
        assert stat.S_IMODE(part.stat().st_mode) == 0o640, (name, oct(part.stat().st_mode))
    want = {k.encode(): bytes([int(k[1:])]) * 900_000 for k in out["acked"]}
    for flag in ("r", "w"):  # reopens, grows again, keeps everything
        with viperdbm.open(db_path, flag) as db:
            assert {k: db[k] for k in db} == want, f"{inject_rule}: after reopen with {flag!r}"
            if flag == "w":
                db[b"after"] = b"x" * 3_000_000
                want[b"after"] = b"x" * 3_000_000
    with viperdbm.open(db_path, "r") as db:
        assert {k: db[k] for k in db} == want
