"""The child of tests/test_signals.py: a seeded stream of operations under a storm of SIGINT.

The parent sends SIGINT every few hundred microseconds. SIGINT's handler here raises
``KeyboardInterrupt`` exactly as Python's default one does, but only while an operation of
the store is in flight ("armed"); a signal that lands in this harness's own bookkeeping is
counted and dropped, so the model of what the store must hold stays exact.

The model: for each key, the set of contents it may have (a value digest, or None for
absent). An acknowledged put or delete sets it to exactly one; an interrupted one adds its
outcome to the set (the one in flight is old or new, never torn). Every read (in the
handle, during the stream and at the end) is checked against it.

Usage: ``_signal_child.py storm PATH SEED SECONDS [threaded]`` (``threaded``: with an idle
thread that takes signals). Report (stdout): ``RUNNING`` once the
store is open, ``STOPPED`` when the stream ends (the parent stops signalling then), then one
JSON line: ``acked``/``interrupted``/``missed``/``full`` (StoreFullError) counts,
``problems`` (strings), ``closed`` (whether the handle raised ClosedError) and ``model``
(key -> list of allowed digests).

``_signal_child.py enumerate DIR STRIDE [FIRST]``: the deterministic variant. A trace
function counts the lines the engine executes during a fixed workload of slow paths only
(:func:`workload`) and sends this process one real SIGINT at the N-th, for N = FIRST,
FIRST + STRIDE, ... up to the count; after each run the handle, a reopen and a reorganize
are checked. Report: ``TOTAL <lines>``, then ``POINT <n>`` before each run and ``OK`` or
``FAIL <what>`` after it, then ``DONE``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from _vdbtools import digest

import viperdbm

armed = False
missed = 0


def on_sigint(signum: int, frame: FrameType | None) -> None:
    global missed
    if armed:
        raise KeyboardInterrupt
    missed += 1


def storm(path: str, seed: int, seconds: float, threaded: bool) -> None:
    global armed
    if threaded:
        # a thread that does not block signals: while the main thread defers them, the
        # kernel hands SIGINT to this one, and Python still runs the handler in the main
        # thread (the engine swaps the handler for its sections then)
        threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()
    rng = random.Random(seed)
    model: dict[bytes, set[str | None]] = {}
    problems: list[str] = []
    counts = {"acked": 0, "interrupted": 0}
    keys = [b"k%04d" % i for i in range(1500)]
    jumbo_keys = [b"J%02d" % i for i in range(12)]
    filler = random.Random(seed ^ 0x5A5A).randbytes(1_600_000)
    db = viperdbm.open(path, "c")
    signal.signal(signal.SIGINT, on_sigint)
    print("RUNNING", flush=True)
    closed = False
    full = 0
    deadline = time.monotonic() + seconds
    index = 0

    def check(key: bytes, got: bytes | None, when: str) -> None:
        found = None if got is None else digest(got)
        allowed = model.get(key, {None})
        if found not in allowed:
            problems.append(f"{when} op {index}: {key!r} holds {found}, allowed {allowed}")

    while time.monotonic() < deadline and not closed and len(problems) < 5:
        index += 1
        roll = rng.random()
        kind: str
        key = b""
        value = b""
        if roll < 0.50:
            kind, key = "put", rng.choice(keys)
            size = rng.choice((40, 3000, 60_000, 250_000))
        elif roll < 0.56:
            kind, key = "put", rng.choice(jumbo_keys)
            size = rng.randint(1_050_000, 1_500_000)
        elif roll < 0.86:
            kind, key = "delete", rng.choice(keys + jumbo_keys)
        elif roll < 0.95:
            kind, key = "get", rng.choice(keys + jumbo_keys)
        elif roll < 0.985:
            kind = "sync"
        else:
            kind = "reorganize"
        if kind == "put":
            start = rng.randrange(0, len(filler) - size + 1)
            value = b"%d:" % index + filler[start : start + size]
        outcome: str | None = digest(value) if kind == "put" else None
        ok = False
        missing = False
        got: bytes | None = None
        try:
            armed = True
            if kind == "put":
                db[key] = value
            elif kind == "delete":
                try:
                    del db[key]
                except KeyError:
                    missing = True
            elif kind == "get":
                got = db.get(key)
            elif kind == "sync":
                db.sync()
            else:
                db.reorganize()
            ok = True
            armed = False
        except KeyboardInterrupt:
            armed = False
        except viperdbm.ClosedError:
            armed = False
            closed = True
        except viperdbm.StoreFullError:
            armed = False
            full += 1
            if kind in ("put", "delete"):
                # refused: nothing was written, the key holds what it held
                check(key, db.get(key), f"after StoreFullError of a {kind}:")
                continue
        except BaseException as exc:  # anything else is a finding
            armed = False
            where = " <- ".join(
                f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                for f in reversed(traceback.extract_tb(exc.__traceback__)[-6:])
            )
            problems.append(f"op {index} {kind} {key!r}: {type(exc).__name__}: {exc} at {where}")
        if kind in ("put", "delete") and key:
            if ok:
                counts["acked"] += 1
                if missing:
                    check(key, None, "delete said KeyError:")
                model[key] = {outcome}
            else:
                counts["interrupted"] += 1
                model.setdefault(key, {None}).add(outcome)
        elif kind == "get" and ok:
            check(key, got, "get")
        elif ok:
            counts["acked"] += 1
        else:
            counts["interrupted"] += 1
    print("STOPPED", flush=True)
    time.sleep(0.05)  # signals the parent sent before it read STOPPED land disarmed
    if not closed:
        try:
            for key in keys + jumbo_keys:
                check(key, db.get(key), "final read")
            stored = set(db.keys())
            for key in stored - set(keys) - set(jumbo_keys):
                problems.append(f"final: unknown key {key!r} in the store")
            db.close()
        except viperdbm.ClosedError:
            closed = True
        except BaseException as exc:
            problems.append(f"final check: {type(exc).__name__}: {exc}")
    report = {
        **counts,
        "missed": missed,
        "full": full,
        "ops": index,
        "problems": problems,
        "closed": closed,
        "model": {k.decode(): sorted(v, key=str) for k, v in model.items()},
    }
    print(json.dumps(report), flush=True)


# --------------------------------------------------------------------------- enumeration
class SigintAtLine:
    """A trace function that sends SIGINT to this process at the N-th line of the engine."""

    FILES = (
        "_engine.py",
        "_opening.py",
        "_recovery.py",
        "_readers.py",
        "_space.py",
        "_writepath.py",
        "_dbm.py",
        "_pmemobj.py",
    )

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if not frame.f_code.co_filename.endswith(self.FILES):
            return None
        if event == "line":
            self.count += 1
            if self.count == self.target:
                os.kill(os.getpid(), signal.SIGINT)
        return self


def workload(db: Any, model: dict[bytes, set[str | None]], step: list[int]) -> None:
    """Slow paths only: new blocks, jumbo puts and deletes, freeing, reorganize, sync."""
    big = bytes(range(256)) * 1024  # 256 KiB: a block holds 15
    ops: list[tuple[str, bytes, bytes]] = []
    for i in range(40):
        ops.append(("put", b"k%02d" % (i % 20), b"%d" % i + big))
    ops.append(("put", b"jumbo", b"J" * 1_200_000))
    ops += [("delete", b"k%02d" % i, b"") for i in range(0, 20, 3)]
    ops.append(("sync", b"", b""))
    ops.append(("put", b"jumbo", b"j" * 1_100_000))
    ops.append(("delete", b"jumbo", b""))
    ops.append(("reorganize", b"", b""))
    ops += [("put", b"k%02d" % i, b"%d" % i + big) for i in range(20, 40)]
    ops.append(("reorganize", b"", b""))
    for kind, key, value in ops:
        step[0] += 1
        try:
            if kind == "put":
                db[key] = value
            elif kind == "delete":
                del db[key]
            elif kind == "sync":
                db.sync()
            else:
                db.reorganize()
        except KeyboardInterrupt:
            if key:
                model.setdefault(key, {None}).add(digest(value) if kind == "put" else None)
            continue
        if key:
            model[key] = {digest(value) if kind == "put" else None}


def _disagreement(db: Any, model: dict[bytes, set[str | None]]) -> str:
    for key, allowed in model.items():
        found = db.get(key)
        if (None if found is None else digest(found)) not in allowed:
            return f"{key!r} lost its acknowledged content"
    return ""


def run_interrupted(path: Path, target: int) -> str:
    """The workload with one SIGINT at engine line ``target``; what went wrong, or ''."""
    model: dict[bytes, set[str | None]] = {}
    step = [0]
    db = viperdbm.open(path, "c")
    problem = ""
    try:
        sys.settrace(SigintAtLine(target))
        try:
            workload(db, model, step)
        finally:
            sys.settrace(None)
        problem = _disagreement(db, model)
        if not problem:
            db[b"after"] = b"x"
            db.reorganize()
            model[b"after"] = {digest(b"x")}
    except KeyboardInterrupt:
        # the workload catches it around each call: this one ran its handler after the
        # call returned (delivered late, in the harness's own bookkeeping)
        problem = f"op {step[0]}: KeyboardInterrupt after the store's call returned"
    except BaseException as exc:
        problem = f"op {step[0]}: {type(exc).__name__}: {exc}"
    try:
        db.close()
    except BaseException as exc:
        problem = problem or f"close: {type(exc).__name__}: {exc}"
    if problem:
        return problem
    with viperdbm.open(path, "r") as db:
        problem = _disagreement(db, model)
    return f"after reopen, {problem}" if problem else ""


def enumerate_points(directory: str, stride: int, first: int) -> None:
    counter = SigintAtLine(0)
    with viperdbm.open(os.path.join(directory, "count"), "c") as db:
        sys.settrace(counter)
        try:
            workload(db, {}, [0])
        finally:
            sys.settrace(None)
    print(f"TOTAL {counter.count}", flush=True)
    for target in range(first, counter.count + 1, stride):
        path = Path(directory) / f"n{target}"
        print(f"POINT {target}", flush=True)
        problem = run_interrupted(path, target)
        print(f"FAIL {problem}" if problem else "OK", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "storm":
        storm(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:] == ["threaded"])
    else:
        enumerate_points(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if sys.argv[4:] else 1)
