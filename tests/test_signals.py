"""Ctrl-C at any instant: real SIGINT storms against a child that keeps using its store.

``KeyboardInterrupt`` can land between any two bytecodes of the engine's maintenance (a new
block, the reserve, freeing dead blocks, compaction, ``sync()``, ``reorganize()``). The
child (tests/_signal_child.py) runs puts (small, block-sized and over 1 MiB), deletes,
reads, ``sync()`` and ``reorganize()`` while this process sends it SIGINT every few hundred
microseconds. The contract checked:

* no exception but ``KeyboardInterrupt``, ``KeyError`` (a missing key) and ``ClosedError``
  ever escapes (no ``CorruptedError: overlapping blocks``, no bare ``ValueError``);
* every read in the handle, during the storm and after it, matches what was acknowledged
  (the operation in flight may have happened or not);
* after ``close()`` and a reopen the store holds exactly that too.

The storm is random; its seed is printed on failure (``VIPERDBM_SIGNAL_SEED`` replays the
schedule of operations; the signal timing is the machine's). CI runs fixed seeds for a few
seconds each; ``VIPERDBM_SIGNAL_SECONDS`` runs longer.

A second test enumerates instead of sampling: a child sends one real SIGINT to itself at
the N-th line the engine executes (a trace function does the counting) during a small
workload of slow paths, and checks the same contract after each. CI runs every 53rd line;
``VIPERDBM_SIGNAL_STRIDE=1`` runs every one (about 4,300; some 15 minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _vdbtools import HERE, child_env, digest
from test_limits import small_fs

import viperdbm

__all__ = ["small_fs"]  # the fixture, shared with test_limits

SEEDS = (
    [int(os.environ["VIPERDBM_SIGNAL_SEED"])]
    if "VIPERDBM_SIGNAL_SEED" in os.environ
    else [11, 12, 13]
)
SECONDS = float(os.environ.get("VIPERDBM_SIGNAL_SECONDS", "4"))


@pytest.fixture
def store_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="viperdbm-signals-", dir="/dev/shm"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _storm(
    path: Path, seed: int, seconds: float, threaded: bool = False
) -> tuple[dict[str, Any], int]:
    """Run the child under SIGINT every 100-600 µs; its report and the signals sent."""
    args = ["storm", str(path), str(seed), str(seconds)] + (["threaded"] if threaded else [])
    child = subprocess.Popen(
        [sys.executable, str(HERE / "_signal_child.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert child.stdout is not None
    rng = random.Random(seed)
    sent = 0
    try:
        line = child.stdout.readline()
        assert line == b"RUNNING\n", f"seed {seed}: child did not start: {line!r}"
        give_up = time.monotonic() + seconds + 60
        while time.monotonic() < give_up:
            ready, _, _ = select.select([child.stdout], [], [], rng.uniform(100e-6, 600e-6))
            if ready:
                break  # STOPPED (or the child died)
            child.send_signal(signal.SIGINT)
            sent += 1
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = out.decode(errors="replace").splitlines()
    assert child.returncode == 0 and lines and lines[0] == "STOPPED", (
        f"seed {seed}: child exited with status {child.returncode} after {sent} signals: "
        f"{err.decode(errors='replace')[-3000:]}"
    )
    return json.loads(lines[-1]), sent


def _check_reopened(path: Path, model: dict[str, list[str | None]], what: str) -> None:
    with viperdbm.open(path, "r") as db:
        stored = {k.decode(): digest(db[k]) for k in db}
    wrong = []
    for key, allowed in model.items():
        if stored.get(key) not in allowed:
            wrong.append(f"{key}: {stored.get(key)} not in {allowed}")
    extra = sorted(set(stored) - set(model))
    assert not wrong and not extra, (
        f"{what}: after reopen {len(wrong)} keys wrong {wrong[:5]}, extra {extra[:5]}"
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_sigint_storm_loses_nothing(store_dir: Path, seed: int) -> None:
    _storm_and_check(store_dir / "store", seed)


def test_sigint_storm_with_another_thread(store_dir: Path) -> None:
    """An idle thread that takes signals: the kernel gives it the SIGINT that the main
    thread defers, and Python still runs the handler in the main thread."""
    _storm_and_check(store_dir / "store", SEEDS[0] + 200, threaded=True)


def test_sigint_storm_on_a_full_disk(small_fs: Path) -> None:
    """The same on a 48 MiB file system that fills up: the reserve is taken and given
    back again and again while the signals land (puts may raise StoreFullError)."""
    _storm_and_check(small_fs / "store", SEEDS[0] + 100)


def _storm_and_check(path: Path, seed: int, threaded: bool = False) -> None:
    report, sent = _storm(path, seed, SECONDS, threaded)
    what = (
        f"seed {seed} (VIPERDBM_SIGNAL_SEED={seed} to replay): {sent} SIGINT sent, "
        f"{report['ops']} ops, {report['acked']} acknowledged, {report['interrupted']} "
        f"interrupted, {report['missed']} landed outside an operation, {report['full']} "
        "StoreFullError"
    )
    print(what)
    assert not report["problems"], f"{what}: {report['problems']}"
    assert report["interrupted"] > 0, f"{what}: no operation was ever interrupted"
    _check_reopened(path, report["model"], what)
    after: dict[str, list[str | None]] = {}
    with viperdbm.open(path, "w") as db:  # and it still takes writes (space permitting)
        try:
            db[b"after"] = b"1"
            after["after"] = [digest(b"1")]
        except viperdbm.StoreFullError:
            assert b"after" not in db, f"{what}: a refused put wrote its key"
        with contextlib.suppress(viperdbm.StoreFullError):
            db.reorganize()
    _check_reopened(path, {**report["model"], **after}, what)


def test_sigint_at_engine_lines(store_dir: Path) -> None:
    stride = int(os.environ.get("VIPERDBM_SIGNAL_STRIDE", "53"))
    child = subprocess.Popen(
        [sys.executable, str(HERE / "_signal_child.py"), "enumerate", str(store_dir), str(stride)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        text=True,
    )
    try:
        out, err = child.communicate(timeout=120 + 0.5 * 4500 / stride)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        point = [ln for ln in out.splitlines() if ln.startswith("POINT")][-1:]
        failed = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
        pytest.fail(f"the child hung at {point} (stride {stride}; failed before: {failed[:5]})")
    lines = out.splitlines()
    assert child.returncode == 0 and lines and lines[-1] == "DONE", (
        f"status {child.returncode}: {lines[-3:]} {err[-2000:]}"
    )
    total = int(lines[0].split()[1])
    assert total > 1000, f"the workload ran only {total} engine lines"
    failures = [f"{p} {r}" for p, r in zip(lines[1::2], lines[2::2], strict=False) if r != "OK"]
    points = (len(lines) - 2) // 2
    print(f"SIGINT at {points} of {total} engine lines (every {stride}th)")
    assert not failures, f"{len(failures)} of {points} points failed: {failures[:5]}"


DEFERRAL = r"""
import os, signal, sys, threading, time
from viperdbm._signals import Deferred

# Python raises KeyboardInterrupt for SIGINT only if SIGINT was not ignored when it started,
# and a shell without job control starts background commands (`make test &` in a script)
# with SIGINT ignored: install the handler, or this test depends on how it was started.
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.argv[1] == "threaded":
    threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()
for poll in (False, True):
    d = Deferred()
    where = "inside"
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):
            pass
        where = "at the end"
        if poll:
            d.poll()
            where = "not delivered by poll()"
    except KeyboardInterrupt:
        where = "at poll()" if where == "at the end" else where
    finally:
        try:
            d.end()
        except KeyboardInterrupt:
            pass
    print(where, flush=True)
"""


@pytest.mark.parametrize("threads", ["single", "threaded"])
def test_a_deferred_signal_waits_for_the_end_of_the_section(threads: str) -> None:
    """SIGINT sent inside a section is raised at its end (or at poll()), never inside it;
    with another thread that takes the signal as well."""
    proc = subprocess.run(
        [sys.executable, "-c", DEFERRAL, threads],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["at the end", "at poll()"], proc.stdout


ENGINE_THREADS = r"""
import signal, sys, threading
import viperdbm
from viperdbm._progress import Ticker

def blocked(thread):
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        mask = int(next(ln for ln in status if ln.startswith("SigBlk:")).split()[1], 16)
    return [sig.name for sig in (signal.SIGINT, signal.SIGTERM) if mask & (1 << (sig - 1))]

path = sys.argv[1]
with viperdbm.open(path, "c") as db:
    db[b"k"] = b"v"
with viperdbm.open(path, "r") as db, Ticker("waiting", enabled=True):
    for thread in threading.enumerate():
        if thread.name.startswith("viperdbm-"):
            print(thread.name, *blocked(thread))
"""


def test_the_engines_own_threads_take_no_signals(store_dir: Path) -> None:
    """The reader's idle catch-up and the progress ticker block SIGINT and SIGTERM: a
    signal the kernel gave one of them while the main thread deferred it would run its
    handler late, at whatever the main thread does once that thread is scheduled (CI saw a
    KeyboardInterrupt land after the put it was sent in had returned)."""
    proc = subprocess.run(
        [sys.executable, "-c", ENGINE_THREADS, str(store_dir / "store")],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(proc.stdout.splitlines()) == [
        "viperdbm-readers SIGINT SIGTERM",
        "viperdbm-ticker SIGINT SIGTERM",
    ], proc.stdout
