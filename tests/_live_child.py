"""The children of tests/test_live_readers.py: a writer, a reader and a remote-controlled store.

The writer and the readers of the cross-process linearizability test share one store and
leave their history in log files OUTSIDE the store, each line appended with one ``os.write``
on an ``O_APPEND`` descriptor (no buffering: a line is in the file the moment the call
returns, and a SIGKILL never loses a line that was written):

* ``intents``: ``<version> <key> <kind> <size> .`` appended by the writer BEFORE it asks the
  store for the write (kind ``p`` put, ``d`` delete, ``r`` reorganize);
* ``acks``: ``<version> <key> .`` appended AFTER the store returned;
* ``reader-<name>``: one line per observation of a reader (:func:`observation_line`);
* ``writer-stats``: ``<version> <readers> <held_bytes> .`` every few writes.

Versions are global: every operation of the writer takes the next number, so the versions
of one key grow with time, a delete is a version too, and a writer started after a SIGKILL
continues after the last intent it finds. Values are :func:`make_value` of (key, version,
size): a reader checks every byte it reads, so a torn value, another key's value or a value
never written is caught in the reader.

Usage:
``_live_child.py writer STORE LOGDIR SEED`` (until the file LOGDIR/stop-writer exists);
``_live_child.py reader STORE LOGDIR SEED NAME`` (until LOGDIR/stop-readers exists);
``_live_child.py serve STORE FLAG [TIMEOUT]``: one JSON command a line on stdin, one JSON
answer a line on stdout (see :func:`serve`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import sys
from collections.abc import Callable
from typing import Any, cast

KEY_COUNT = 64
KEYS = [b"key-%02d" % i for i in range(KEY_COUNT)]
JUMBO_MIN = (1 << 20) + 4096  # over the 1 MiB inline limit: a jumbo block
MIN_VALUE = 40  # bytes: room for a header with a 12-digit version and an 8-digit size
STATS_EVERY = 16  # writes between two lines of writer-stats
STOP_CHECK_EVERY = 32  # reader operations between two looks for the stop file


# --------------------------------------------------------------------------- values
def value_header(key: int, version: int, size: int) -> bytes:
    return b"%d|%d|%d|" % (key, version, size)


def make_value(key: int, version: int, size: int) -> bytes:
    """The value of ``key`` at ``version``: a header naming them and the length, then a
    pattern derived from the header; ``size`` is raised to MIN_VALUE (room for the header),
    so that ``make_value(key, version, len(value))`` is ``value`` again."""
    size = max(size, MIN_VALUE)
    head = value_header(key, version, size)
    pattern = hashlib.blake2b(head, digest_size=64).digest()
    rest = size - len(head)
    return head + (pattern * (rest // len(pattern) + 1))[:rest]


def decode_value(key: int, value: bytes) -> tuple[int, int] | str:
    """``(version, size)`` of a value read under ``key``, or what is wrong with it."""
    fields = value[:64].split(b"|", 3)
    if len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
        return f"not a value of this test ({len(value)} bytes, starts {value[:24]!r})"
    found_key, version, size = (int(f) for f in fields[:3])
    if found_key != key:
        return f"the value of key {found_key} (version {version}) read under key {key}"
    if len(value) != size:
        return f"key {key} version {version}: {len(value)} bytes, the header says {size}"
    if value != make_value(key, version, size):
        return f"key {key} version {version}: torn (the bytes differ from what was written)"
    return version, size


#: (share of the puts, smallest, largest): mostly small values, some tens of KiB, some
#: hundreds, a few jumbo ones (over 1 MiB)
SIZE_CLASSES = [
    (0.55, 0, 300),
    (0.25, 10_000, 70_000),
    (0.15, 100_000, 600_000),
    (0.05, JUMBO_MIN, JUMBO_MIN + 600_000),
]


def value_size(rng: random.Random) -> int:
    shares, classes = [c[0] for c in SIZE_CLASSES], [c[1:] for c in SIZE_CLASSES]
    smallest, largest = rng.choices(classes, weights=shares)[0]
    return rng.randint(smallest, largest)


# --------------------------------------------------------------------------- logs
def append_fd(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def append_line(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())


def repair_tail(path: str) -> None:
    """End a log cut by a SIGKILL in the middle of a line (a write crossing a page may be
    cut short), so that the next line starts on a line of its own; the cut line lacks its
    ``.`` and is ignored by the parser."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                fd = append_fd(path)
                try:
                    os.write(fd, b"\n")
                finally:
                    os.close(fd)


def log_lines(data: bytes) -> list[tuple[int, list[str]]]:
    """The complete lines of a log (``(end offset, fields without the final '.')``); a line
    cut short by a kill, or cut by the prefix ``data`` is, is left out."""
    out: list[tuple[int, list[str]]] = []
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            return out
        fields = data[pos:end].decode("ascii", "replace").split()
        if fields and fields[-1] == ".":
            out.append((end + 1, fields[:-1]))
        pos = end + 1


def last_intent_version(logdir: str) -> int:
    """The highest version in the intent log (-1 when empty): a new writer continues after."""
    path = os.path.join(logdir, "intents")
    if not os.path.exists(path):
        return -1
    with open(path, "rb") as f:
        lines = log_lines(f.read())
    return max((int(fields[0]) for _, fields in lines if len(fields) == 4), default=-1)


def observation_line(acks_before: int, intents_after: int, op: str, key: int, seen: str) -> str:
    """A reader's observation: the size of the ack log before the operation began, the size
    of the intent log after it returned, the operation, the key (-1 for len/keys) and what
    it saw: ``v<version>``, ``present``, ``absent``, ``n<len>``, ``k<hex bitmap of keys>``,
    or ``E<problem>`` (no spaces)."""
    return f"{acks_before} {intents_after} {op} {key} {seen} ."


# --------------------------------------------------------------------------- the writer
def writer(store: str, logdir: str, seed: int) -> None:
    import viperdbm

    for name in ("intents", "acks", "writer-stats"):
        repair_tail(os.path.join(logdir, name))
    version = last_intent_version(logdir) + 1
    rng = random.Random(f"writer/{seed}/{version}")
    intents = append_fd(os.path.join(logdir, "intents"))
    acks = append_fd(os.path.join(logdir, "acks"))
    stats_fd = append_fd(os.path.join(logdir, "writer-stats"))
    stop = os.path.join(logdir, "stop-writer")
    db = viperdbm.open(store, "w")
    print("opened", flush=True)
    while not os.path.exists(stop):
        key = rng.randrange(KEY_COUNT)
        r = rng.random()
        if r < 0.004:
            append_line(intents, f"{version} -1 r 0 .")
            db.reorganize()
            append_line(acks, f"{version} -1 .")
        elif r < 0.27:
            append_line(intents, f"{version} {key} d 0 .")
            db.pop(KEYS[key], None)
            append_line(acks, f"{version} {key} .")
        else:
            value = make_value(key, version, value_size(rng))
            append_line(intents, f"{version} {key} p {len(value)} .")
            db[KEYS[key]] = value
            append_line(acks, f"{version} {key} .")
        if version % STATS_EVERY == 0:
            stats = db.stats()
            readers, held = stats.get("readers", -1), stats.get("held_bytes", -1)
            append_line(stats_fd, f"{version} {readers} {held} .")
        version += 1
    db.close()
    print("closed", flush=True)


# --------------------------------------------------------------------------- a reader
def reader(store: str, logdir: str, seed: int, name: str) -> None:
    import viperdbm

    rng = random.Random(f"reader/{seed}/{name}")
    acks = os.open(os.path.join(logdir, "acks"), os.O_RDONLY | os.O_CREAT, 0o644)
    intents = os.open(os.path.join(logdir, "intents"), os.O_RDONLY | os.O_CREAT, 0o644)
    out = append_fd(os.path.join(logdir, f"reader-{name}"))
    stop = os.path.join(logdir, "stop-readers")
    db = viperdbm.open(store, "r")
    print("opened", flush=True)
    count = 0
    while count % STOP_CHECK_EVERY or not os.path.exists(stop):
        count += 1
        key = rng.randrange(KEY_COUNT)
        r = rng.random()
        before = os.fstat(acks).st_size
        seen: str
        if r < 0.40:
            op, found = "get", db.get(KEYS[key])
            seen = "absent" if found is None else _version_seen(key, found)
        elif r < 0.65:
            op = "item"
            try:
                seen = _version_seen(key, db[KEYS[key]])
            except KeyError:
                seen = "absent"
        elif r < 0.90:
            op, seen = "in", "present" if KEYS[key] in db else "absent"
        elif r < 0.95:
            op, key, seen = "len", -1, f"n{len(db)}"
        else:
            op, key = "keys", -1
            seen = "k" + keys_bitmap(db.keys())
        after = os.fstat(intents).st_size
        append_line(out, observation_line(before, after, op, key, seen))
    db.close()
    print("closed", flush=True)


def _version_seen(key: int, value: bytes) -> str:
    decoded = decode_value(key, value)
    if isinstance(decoded, str):
        return "E" + decoded.replace(" ", "_")
    return f"v{decoded[0]}"


def keys_bitmap(keys: list[bytes]) -> str:
    """The keys of the test as a bitmap in hex; a key that is not one of them: ``E...``."""
    foreign = [k for k in keys if k not in KEYS]
    if foreign:
        return "E" + f"keys()_returned_keys_never_written:_{foreign[:3]!r}".replace(" ", "_")
    bits = sum(1 << KEYS.index(k) for k in keys)
    return f"{bits:x}"


# --------------------------------------------------------------------------- a remote store
def serve(store: str, flag: str, timeout: float | None) -> None:
    """A store held open in this process and driven from stdin. Commands (JSON lists):
    ``["put", key_b64, value_b64]``, ``["put_made", key, version, size]``,
    ``["delete", key_b64]``, ``["get", key_b64]``, ``["contains", key_b64]``, ``["len"]``,
    ``["keys"]``, ``["digests"]``, ``["stats"]``, ``["reorganize"]``, ``["snapshot"]``,
    ``["end_snapshot"]`` (enter and leave ``db.snapshot()``), ``["close"]``,
    ``["close_after", seconds]`` (answers at once, then closes after that long and exits). Answers:
    ``{"ok": result}`` or ``{"error": class name, "message": text}``; the first answer says
    whether the open succeeded."""
    from _vdbtools import digest

    import viperdbm

    def answer(payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    try:
        # timeout= is LIVE.md's new keyword: waits up to that long for the writer's lock
        opener = cast(Callable[..., Any], viperdbm.open)
        db = opener(store, flag) if timeout is None else opener(store, flag, timeout=timeout)
    except Exception as exc:
        answer({"error": type(exc).__name__, "message": str(exc)})
        return
    answer({"ok": "opened"})
    snapshots = contextlib.ExitStack()
    for line in sys.stdin:
        command = json.loads(line)
        name, args = command[0], command[1:]
        try:
            result: Any = None
            if name == "put":
                db[base64.b64decode(args[0])] = base64.b64decode(args[1])
            elif name == "put_made":
                db[KEYS[args[0]]] = make_value(args[0], args[1], args[2])
            elif name == "delete":
                del db[base64.b64decode(args[0])]
            elif name == "get":
                found = db.get(base64.b64decode(args[0]))
                result = None if found is None else base64.b64encode(found).decode()
            elif name == "contains":
                result = base64.b64decode(args[0]) in db
            elif name == "len":
                result = len(db)
            elif name == "keys":
                result = sorted(base64.b64encode(k).decode() for k in db)
            elif name == "digests":  # the store as one snapshot: key digest -> value digest
                result = {digest(k): digest(v) for k, v in db.items()}
            elif name == "stats":
                result = db.stats()
            elif name == "reorganize":
                db.reorganize()
            elif name == "snapshot":
                snapshots.enter_context(db.snapshot())
            elif name == "end_snapshot":
                snapshots.close()
            elif name == "close":
                db.close()
                answer({"ok": None})
                return
            elif name == "close_after":
                answer({"ok": None})
                import time

                time.sleep(float(args[0]))
                db[b"closed-by-the-holder"] = b"1"
                db.close()
                return
            else:
                raise ValueError(f"unknown command {name!r}")
            answer({"ok": result})
        except Exception as exc:
            answer({"error": type(exc).__name__, "message": str(exc)})


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "writer":
        writer(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif role == "reader":
        reader(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif role == "serve":
        serve(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        raise SystemExit(f"unknown role {role!r}")
