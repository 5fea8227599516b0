"""The child of tests/test_enumerate.py: one deterministic workload over several stores.

Usage: ``_enumerate_child.py WORKDIR FLAG ACKLOG`` (FLAG ``-`` for none, else ``s``). The
parent runs it under strace, which kills it (or fails a system call) at the N-th call of one
system call, or with ``VIPERDBM_CRASH_AT=N`` (the native core's crash-point hook). The
workload is the same in every run, so the N-th call is the same point of it every time.

Everything the parent needs to know what was acknowledged is in ACKLOG, appended one line
per ``os.write`` (unbuffered, ``O_APPEND``): a line written is on the file even if the
process is killed right after, and a line not written was not acknowledged.

* ``B <i> <store> <kind> [<key hex> [<value digest>]]``: operation *i* begins. ``<store>``
  is one of :data:`STORES`; for ``load`` and ``copy`` the argument is the store whose
  content is copied (``main``), for ``put`` the key and the digest of its value, for
  ``delete`` the key.
  For ``batch`` the rest is its writes, ``<key hex>=<value digest>`` or ``<key hex>=-`` (a
  delete), separated by commas: all of them happened, or none.
* ``A <i>``: operation *i* returned (acknowledged).
* ``E <i> <type> <message>``: it raised a ``viperdbm.error`` (or ``KeyError`` from a
  delete): allowed in the error mode; the child goes on with the same handle.
* ``X <i> <type> <message>``: it raised anything else: always a violation.
* ``R <i> <key hex> <value digest>``: what ``verify`` read through the open handle (each
  key of ``keys()``), then ``A <i>`` (or ``E``/``X`` when the reads raised).
* ``S <i>``: skipped, because an earlier failure left no open handle for that store.
* ``DONE`` at the end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from _vdbtools import digest, value_for

SEED = "enumerate"
#: the stores of the workload, by tag (directories under WORKDIR)
STORES = {"main": "main.vdb", "target": "target.vdb"}
DUMP = "main.dump"

#: one operation: (store tag, kind, key, value size); key and size only for put/delete; for
#: a batch, the prefix of its keys and how many writes it has (see :func:`batch_writes`)
Step = tuple[str, str, bytes, int]

KIB, MIB = 1024, 1 << 20
NEEDS_HANDLE = ("put", "delete", "batch", "sync", "reorganize", "verify", "close")


def _small(i: int) -> int:
    return 40 + (i * 397) % 3000


def batch_writes(i: int, prefix: bytes, count: int) -> list[tuple[bytes, bytes | None]]:
    """The writes of batch operation *i*: puts of ``prefix + NN``, every fourth a delete of
    one of the small keys (present or not). ``prefix`` ``J`` makes values of 300 KiB, so the
    batch is over 1 MiB; ``M`` values of 200 KiB, so that it needs a new block."""
    size = {b"J": 300 * KIB, b"M": 200 * KIB}.get(prefix, 0)
    writes: list[tuple[bytes, bytes | None]] = []
    for j in range(count):
        if j % 4 == 3:
            writes.append((b"s%02d" % ((i + j) % 16), None))
        else:
            value = value_for(SEED, i * 100 + j, size or _small(i + j))
            writes.append((prefix + b"%02d" % j, value))
    return writes


def workload() -> list[Step]:
    """The operations, in order: a pure function (the parent reads them from the log)."""
    steps: list[Step] = []

    def put(key: bytes, size: int, store: str = "main") -> None:
        steps.append((store, "put", key, size))

    def delete(key: bytes, store: str = "main") -> None:
        steps.append((store, "delete", key, 0))

    def do(kind: str, store: str = "main") -> None:
        steps.append((store, kind, b"", 0))

    def batch(prefix: bytes, count: int) -> None:
        steps.append(("main", "batch", prefix, count))

    # the old store that load --replace, copy --replace and flag 'n' replace in turn
    do("create", "target")
    for i in range(3):
        put(b"old-%d" % i, _small(i), "target")
    do("close", "target")
    do("create")
    for i in range(16):
        put(b"s%02d" % i, _small(i))
    # 300 KiB values: standard blocks, overwritten below so that whole blocks die
    for i in range(6):
        put(b"b%d" % i, 300 * KIB + i)
    # values over 1 MiB: jumbo blocks; the pool grows past its first part file
    for i in range(3):
        put(b"j%d" % i, MIB + 200 * KIB * (i + 1))
    do("verify")
    # atomic batches: small ones, one that needs a new block, one over 1 MiB (a jumbo
    # block), one that overwrites the first
    batch(b"a", 7)
    batch(b"M", 6)
    batch(b"J", 5)
    batch(b"a", 4)
    # the jumbo reuse of the issue: K over 1 MiB, overwritten, deleted, synced; then
    # overwrites until compaction drops K's tombstone, and new jumbo values in its space
    put(b"K", MIB + 500 * KIB)
    put(b"K", MIB + 300 * KIB)
    delete(b"K")
    do("sync")
    for i in range(6):  # every 300 KiB block dies: freed at the next sync
        put(b"b%d" % i, 10 + i)
    delete(b"j0")
    do("sync")
    for n in range(40):
        put(b"s%02d" % (n % 16), _small(n + 100))
        if n % 13 == 7:
            delete(b"s%02d" % ((n * 7) % 16))
    put(b"j3", MIB + 100 * KIB)
    put(b"j0", MIB + 250 * KIB)
    do("sync")
    do("reorganize")
    do("verify")
    do("close")
    do("open")
    # growth: about 1 MiB values, inline and jumbo, into a third part file
    for i in range(8):
        put(b"g%02d" % i, MIB - 64 + (i % 3) * 64 * KIB - 32 * KIB)
    for i in range(8):
        if i != 5:
            delete(b"g%02d" % i)
    put(b"j1", 30)
    do("sync")
    do("verify")
    do("close")
    # the command line, on the closed main store: dump, load --replace, copy --replace
    do("dump")
    do("load", "target")
    do("copy", "target")
    # flag 'n' on an existing store, then writes to the new one
    do("truncate", "target")
    put(b"n0", _small(7), "target")
    put(b"n1", MIB + 5, "target")
    do("close", "target")
    do("open")
    for i in range(4):
        put(b"t%d" % i, _small(i + 50))
    batch(b"c", 9)  # (in a store reopened: its root already says it holds batches)
    delete(b"s03")
    delete(b"g05")
    do("verify")
    do("close")
    return steps


# --------------------------------------------------------------------------- the child
class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def line(self, *fields: object) -> None:
        text = " ".join(str(f) for f in fields).replace("\n", " ")
        os.write(self.fd, text.encode("utf-8", "backslashreplace") + b"\n")


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__} {str(exc)[:300] or '-'}"


class Runner:
    """Performs the workload's operations on real stores, holding their open handles."""

    def __init__(self, workdir: str, flag: str, log: Log) -> None:
        import viperdbm

        self.viperdbm = viperdbm
        self.extra = "" if flag == "-" else flag
        self.work = Path(workdir)
        self.path = {tag: str(self.work / name) for tag, name in STORES.items()}
        self.log = log
        self.handles: dict[str, Any] = {}

    def cli(self, *argv: str) -> None:
        """The command's own code, without main()'s catch-all: an exception that is no
        viperdbm.error must be seen here, not turned into a message."""
        from viperdbm import _cli

        args = _cli.build_parser().parse_args(argv)
        if args.func(args) != 0:
            raise self.viperdbm.error(f"viperdbm {argv[0]} exited with a failure")

    def perform(self, i: int, tag: str, kind: str, key: bytes, value: bytes) -> None:
        db = self.handles.get(tag)
        if kind in ("create", "open", "truncate"):
            letter = {"create": "c", "open": "w", "truncate": "n"}[kind]
            if db is not None:
                self.handles.pop(tag).close()
            self.handles[tag] = self.viperdbm.open(self.path[tag], letter + self.extra)
        elif kind == "dump":
            self.cli("dump", self.path["main"], str(self.work / DUMP))
        elif kind == "load":
            self.cli("load", "--replace", str(self.work / DUMP), self.path[tag])
        elif kind == "copy":
            self.cli("copy", "--replace", self.path["main"], self.path[tag])
        elif db is None:
            raise AssertionError(f"{kind} needs an open handle")
        elif kind == "put":
            db[key] = value
        elif kind == "batch":
            with db.batch() as batch:
                for k, v in batch_writes(i, key, len(value)):
                    if v is None:
                        batch.pop(k, None)
                    else:
                        batch[k] = v
        elif kind == "delete":
            del db[key]
        elif kind in ("sync", "reorganize"):
            getattr(db, kind)()
        elif kind == "verify":
            keys: list[bytes] = db.keys()
            for k in keys:
                self.log.line("R", i, k.hex(), digest(db[k]))
        elif kind == "close":
            self.handles.pop(tag)  # a failed close leaves no handle to use
            db.close()
        else:
            raise AssertionError(kind)


def main(workdir: str, flag: str, acklog: str) -> None:
    log = Log(acklog)
    runner = Runner(workdir, flag, log)
    error = runner.viperdbm.error
    for i, (tag, kind, key, size) in enumerate(workload()):
        value = value_for(SEED, i, size) if kind == "put" else b""
        if kind == "put":
            log.line("B", i, tag, kind, key.hex(), digest(value))
        elif kind == "batch":
            value = b"x" * size  # (its length: how many writes)
            writes = ",".join(
                f"{k.hex()}={'-' if v is None else digest(v)}"
                for k, v in batch_writes(i, key, size)
            )
            log.line("B", i, tag, kind, writes)
        elif kind == "delete":
            log.line("B", i, tag, kind, key.hex())
        elif kind in ("load", "copy"):
            log.line("B", i, tag, kind, "main")
        else:
            log.line("B", i, tag, kind)
        if kind in NEEDS_HANDLE and tag not in runner.handles:
            log.line("S", i)  # an earlier failure left no handle
            continue
        try:
            runner.perform(i, tag, kind, key, value)
        except (error, KeyError) as exc:
            log.line("E", i, _message(exc))
            continue
        except BaseException as exc:  # every other type is what this test looks for
            log.line("X", i, _message(exc))
            continue
        log.line("A", i)
    log.line("DONE")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
