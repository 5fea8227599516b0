"""A full disk as a state the store lives in, on a real small file system.

The file systems are tests/test_limits.py's (a 48 MiB tmpfs and a 64 MiB ext4 image on a loop
device; root is needed, otherwise the tests are skipped). Each scenario runs in a child
process (a SIGBUS would kill it, not the test run) that reports what every operation did.

* The reserve: a writable store keeps a block's worth of space that only deletes (and the
  compaction they trigger) may use. Once a delete has taken it, puts are refused with
  ``StoreFullError`` and write nothing (they must not fill what deletes need), deletes keep
  working in the same handle and after reopen after reopen, and once deletes have freed
  enough, puts work again.
* ``reorganize()`` of a store that is 95% dead works on a full disk (it frees dead space
  block by block first).
* A ``reorganize()`` that cannot work (the live data fills the disk) raises
  ``StoreFullError`` and leaves the handle as it was: reads, deletes, then puts work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _vdbtools import child_env, digest
from test_limits import small_fs

import viperdbm

__all__ = ["small_fs"]  # the fixture, shared with test_limits

PRELUDE = r"""
import hashlib, json, sys
import viperdbm

path = sys.argv[1]
out = {"model": {}, "events": []}
def d(v): return hashlib.blake2b(v, digest_size=16).hexdigest()
def val(i, n): return (b"%08d" % i) * (n // 8) + b"x" * (n % 8)
def ev(*a): out["events"].append(list(a))
def put(db, key, value):
    try:
        db[key] = value
    except viperdbm.StoreFullError as exc:
        return ["full", str(exc), db.get(key) is None]
    out["model"][key.decode()] = d(value)
    return ["ok"]
def delete(db, key):
    try:
        del db[key]
    except viperdbm.StoreFullError as exc:
        return ["full", str(exc)]
    out["model"].pop(key.decode(), None)
    return ["ok"]
def fill(db, make_key, size):
    i = 0
    while True:
        r = put(db, make_key(i), val(i, size))
        if r[0] != "ok":
            ev("fill ended", i, *r)
            return i
        i += 1
def verify(db, when):
    got = {k.decode(): d(db[k]) for k in db}
    bad = sorted(k for k in set(got) | set(out["model"]) if got.get(k) != out["model"].get(k))
    ev("verify", when, len(bad), bad[:3])
def reorganize(db, *label):
    try:
        db.reorganize()
        ev("reorganize", *label, "ok")
    except BaseException as exc:
        ev("reorganize", *label, type(exc).__name__, str(exc))
def finish(db):
    db.close()
    print(json.dumps(out))
def fill_with_50k_values():
    db = viperdbm.open(path, "c")
    return db, fill(db, key, 50_000)
"""

RESERVE = (
    PRELUDE
    + r"""
# keys of 1 KiB, so that tombstones take room: deletes alone can fill a block
key = lambda i: b"%06d-" % i + b"K" * 1000
db = viperdbm.open(path, "c")
n = fill(db, key, 3000)
# delete every third key (no block becomes entirely dead) until a delete takes the reserve
taken = None
for i in range(0, n, 3):
    r = delete(db, key(i))
    if r[0] != "ok":
        ev("delete before reserve", i, *r)
        break
    if db._engine._reserve_off is None:
        taken = i
        break
ev("reserve taken at", taken)
# puts now: refused at once, nothing written
refused = 0
for j in range(300):
    r = put(db, b"late-%d" % j, val(j, 3000))
    if r[0] == "ok":
        continue
    ev("put after reserve", j, *r)
    refused = 1
    break
verify(db, "handle")
db.close()
# reopen after reopen on the full disk: deletes keep working (the next third of the keys)
rest = [i for i in range(1, n, 3)]
for rnd in range(3):
    db = viperdbm.open(path, "w")
    verify(db, "reopen %d" % rnd)
    chunk, rest = rest[: len(rest) // 3 + 1], rest[len(rest) // 3 + 1 :]
    failed = [i for i in chunk if delete(db, key(i))[0] != "ok"]
    ev("deletes after reopen", rnd, len(chunk), len(failed))
    db.close()
# delete the first half of the keys entirely: whole blocks die, space comes back
db = viperdbm.open(path, "w")
alive = [i for i in range(n // 2) if key(i).decode() in out["model"]]
failed = [i for i in alive if delete(db, key(i))[0] != "ok"]
ev("deletes of half", len(failed))
ev("put after freeing", *put(db, b"back", val(7, 3000)))
verify(db, "end")
finish(db)
"""
)

MOSTLY_DEAD = (
    PRELUDE
    + r"""
key = lambda i: b"k%06d" % i
db, n = fill_with_50k_values()
failed = [i for i in range(n) if i % 20 and delete(db, key(i))[0] != "ok"]
ev("deletes", len(failed))
for rnd in range(2):
    reorganize(db, rnd)
    verify(db, "after reorganize %d" % rnd)
    ev("put after reorganize", rnd, *put(db, b"new%d" % rnd, val(rnd, 50_000)))
    db.close()
    db = viperdbm.open(path, "w")
    verify(db, "reopen %d" % rnd)
finish(db)
"""
)

FAILED_REORGANIZE = (
    PRELUDE
    + r"""
key = lambda i: b"k%06d" % i
db, n = fill_with_50k_values()
reorganize(db)
ev("has active block", db._engine.core.has_active)
verify(db, "after failed reorganize")
failed = [i for i in range(0, n // 2) if delete(db, key(i))[0] != "ok"]
ev("deletes", len(failed))
ev("put", *put(db, b"after", val(1, 50_000)))
verify(db, "handle")
finish(db)
"""
)


def _run(script: str, store: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", script, str(store)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"the child died (status {proc.returncode}; -7 is SIGBUS): {proc.stderr[-3000:]}"
    )
    out: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return out


def _events(out: dict[str, Any], name: str) -> list[list[Any]]:
    return [e[1:] for e in out["events"] if e[0] == name]


def _check_verified(out: dict[str, Any], store: Path) -> None:
    for when, nbad, sample in _events(out, "verify"):
        assert nbad == 0, f"{when}: {nbad} keys differ from what was acknowledged: {sample}"
    with viperdbm.open(store, "r") as db:
        got = {k.decode(): digest(db[k]) for k in db}
    assert got == out["model"], "after the last close the store differs from the model"


def test_the_reserve_is_for_deletes(small_fs: Path) -> None:
    store = small_fs / "store"
    out = _run(RESERVE, store)
    (fill,) = _events(out, "fill ended")
    assert fill[1] == "full" and fill[3], f"the fill ended with {fill}"
    assert not _events(out, "delete before reserve"), out["events"]
    (taken,) = _events(out, "reserve taken at")
    assert taken[0] is not None, "no delete ever needed the reserve: the scenario did not happen"
    refusals = _events(out, "put after reserve")
    assert refusals and refusals[0][0] == 0, (
        f"puts went on after a delete took the reserve (they fill what deletes need): {refusals}"
    )
    _, kind, message, absent = refusals[0]
    assert kind == "full" and absent, refusals[0]
    assert "deletes still work" in message, message
    for rnd, asked, failed in _events(out, "deletes after reopen"):
        assert failed == 0, f"reopen {rnd}: {failed} of {asked} deletes failed on the full disk"
    assert _events(out, "deletes of half") == [[0]], out["events"]
    (back,) = _events(out, "put after freeing")
    assert back == ["ok"], f"puts did not come back once deletes freed whole blocks: {back}"
    _check_verified(out, store)


def test_reorganize_of_a_mostly_dead_store_on_a_full_disk(small_fs: Path) -> None:
    store = small_fs / "store"
    out = _run(MOSTLY_DEAD, store)
    (fill,) = _events(out, "fill ended")
    assert fill[1] == "full", fill
    assert _events(out, "deletes") == [[0]], out["events"]
    for event in _events(out, "reorganize"):
        assert event[1] == "ok", f"reorganize() of a 95% dead store on a full disk: {event}"
    for rnd, *result in _events(out, "put after reorganize"):
        assert result == ["ok"], f"round {rnd}: a put after reorganize(): {result}"
    _check_verified(out, store)


def test_a_failed_reorganize_leaves_the_handle_as_it_was(small_fs: Path) -> None:
    store = small_fs / "store"
    out = _run(FAILED_REORGANIZE, store)
    (result,) = _events(out, "reorganize")
    if result[0] == "ok":
        pytest.skip("reorganize() found room on this file system: nothing to check")
    assert result[0] == "StoreFullError", result
    assert "as it was" in result[1], result[1]
    assert _events(out, "has active block") == [[True]], (
        "after the failed reorganize() the handle has no block to append to"
    )
    assert _events(out, "deletes") == [[0]], out["events"]
    assert _events(out, "put") == [["ok"]], out["events"]
    _check_verified(out, store)
