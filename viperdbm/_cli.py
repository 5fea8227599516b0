"""The ``viperdbm`` command line (also ``python -m viperdbm``).

Exit status: 0 success, 1 the store reported an error, 2 a usage error. A user's mistake
prints one line saying what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shelve
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from . import __version__, error
from . import open as open_store
from . import shelve as vshelve


def _say(text: str) -> None:
    print(text, flush=True)


def _progress(done: int, total: int, label: str) -> None:
    if sys.stderr.isatty():
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


_CRASH_CHILD = """
import sys, viperdbm
db = viperdbm.open(sys.argv[1], "w")
i = 0
while True:
    db[b"crash-%08d" % i] = b"value-%08d" % i
    print(i, flush=True)
    i += 1
"""


def cmd_demo(args: argparse.Namespace) -> int:
    n = args.records
    with tempfile.TemporaryDirectory(prefix="viperdbm-demo-", dir=args.dir) as tmp:
        path = os.path.join(tmp, "demo.vdb")
        _say(f"viperdbm {__version__} demo: a store at {path}")

        started = time.perf_counter()
        with open_store(path, "c") as db:
            step = max(n // 20, 1)
            for i in range(n):
                db[b"key-%010d" % i] = b"value-%010d-" % i + b"x" * 80
                if i % step == 0:
                    _progress(i, n, "insert")
            _progress(n, n, "insert")
            elapsed = time.perf_counter() - started
            _say(f"  inserted {n:,} records in {elapsed:.2f} s ({n / elapsed:,.0f} puts/s)")
            started = time.perf_counter()
            for i in range(0, n, 7):
                assert db[b"key-%010d" % i].startswith(b"value-%010d-" % i)
            elapsed = time.perf_counter() - started
            reads = (n + 6) // 7
            _say(f"  read back every 7th record: {reads:,} gets ({reads / elapsed:,.0f} gets/s)")
            for i in range(0, n, 2):
                del db[b"key-%010d" % i]
            db["greeting"] = "hello, persistent world"

        started = time.perf_counter()
        with open_store(path, "r") as db:
            elapsed = time.perf_counter() - started
            stats = db.stats()
            _say(
                f"  reopened in {elapsed * 1e3:.1f} ms: {len(db):,} records, index rebuilt in "
                f"{stats['rebuild_seconds'] * 1e3:.1f} ms; db['greeting'] = {db['greeting']!r}"
            )
        with open_store(path, "w") as db:
            before = db.stats()
            db.reorganize()
            after = db.stats()
            _say(
                f"  reorganize(): dead bytes {before['dead_bytes']:,} -> {after['dead_bytes']:,}, "
                f"{len(db):,} records kept"
            )

        _say("  kill -9 while writing:")
        child = subprocess.Popen(
            [sys.executable, "-c", _CRASH_CHILD, path], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        acked = -1
        for line in child.stdout:
            acked = int(line)
            if acked >= 2000:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        with open_store(path, "r") as db:
            lost = [i for i in range(acked + 1) if db.get(b"crash-%08d" % i) != b"value-%08d" % i]
            _say(
                f"    the writer was killed after {acked + 1:,} acknowledged puts; after reopen "
                f"{acked + 1 - len(lost):,} of them are there ({len(lost)} lost)"
            )

        shelf_path = os.path.join(tmp, "shelf.vdb")
        with vshelve.open(shelf_path) as shelf:
            shelf["config"] = {"retries": 3, "hosts": ["a", "b"], "ratio": 0.5}
        with shelve.Shelf[object](open_store(shelf_path, "r")) as shelf:
            _say(f"  shelve over viperdbm: shelf['config'] = {shelf['config']!r}")
    _say("demo done")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args.path, "r") as db:
        stats = db.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for name, value in stats.items():
            print(
                f"{name:>16}: {value:,}" if isinstance(value, int) else f"{name:>16}: {value:.4f}"
            )
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with open_store(args.path, "r") as db:
        value = db.get(args.key.encode())
    if value is None:
        print(f"viperdbm: no key {args.key!r} in {args.path}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(value + b"\n")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    with open_store(args.path, "c") as db:
        db[args.key.encode()] = args.value.encode()
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_store(args.path, "w") as db:
        try:
            del db[args.key.encode()]
        except KeyError:
            print(f"viperdbm: no key {args.key!r} in {args.path}", file=sys.stderr)
            return 1
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    with open_store(args.path, "r") as db:
        keys = db.keys()
        for key in keys:
            sys.stdout.buffer.write(key + b"\n")
    return 0


def cmd_reorganize(args: argparse.Namespace) -> int:
    with open_store(args.path, "w") as db:
        before = db.stats()
        db.reorganize()
        after = db.stats()
    print(f"dead bytes {before['dead_bytes']:,} -> {after['dead_bytes']:,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="viperdbm", description="Inspect and use viperdbm stores."
    )
    parser.add_argument("--version", action="version", version=f"viperdbm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run a demo of the store in a temporary directory")
    p.add_argument(
        "--records", type=int, default=200_000, help="records to insert (default 200,000)"
    )
    p.add_argument("--dir", default=None, help="where to make the temporary store")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("stats", help="counters of a store")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("get", help="print the value of a key")
    p.add_argument("path")
    p.add_argument("key")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("set", help="store a value (creates the store if needed)")
    p.add_argument("path")
    p.add_argument("key")
    p.add_argument("value")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("delete", help="delete a key")
    p.add_argument("path")
    p.add_argument("key")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("keys", help="print every key, one a line")
    p.add_argument("path")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("reorganize", help="reclaim the space of dead records")
    p.add_argument("path")
    p.set_defaults(func=cmd_reorganize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except error as exc:
        print(f"viperdbm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
