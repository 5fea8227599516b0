"""The ``viperdbm`` command line (also ``python -m viperdbm``); reference in docs/cli.md.

Exit status: 0 success, 1 the store (or the dump) reported an error, a key was missing or
``check`` found problems, 2 a usage error. A user's mistake prints one line on standard
error saying what to do, never a traceback. Long operations draw a progress bar on standard
error when it is a terminal (``--progress`` overrides); ``--json`` prints data as JSON.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import errno as _errno
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__, error
from . import open as open_store
from ._progress import Progress, Ticker

# What only some commands need is imported in them: every run of the command, and the test
# suite runs it hundreds of times, would otherwise pay for all of them (checking and
# dumping, json, shelve and pickle, subprocess, tempfile, pathlib) before doing anything.

PROG = "viperdbm"


def _say(text: str) -> None:
    print(text, flush=True)


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _progress_enabled(args: argparse.Namespace) -> bool | None:
    choice = getattr(args, "progress", "auto")
    return None if choice == "auto" else choice == "always"


def _bar(
    args: argparse.Namespace, label: str, total: int | None = None, unit: str = ""
) -> Progress:
    return Progress(label, total, unit=unit, enabled=_progress_enabled(args))


def _existing_store(path: str) -> str:
    """``path``, or a one-line error when nothing is there (the engine's hint is for code)."""
    if not os.path.lexists(path):
        raise error(
            "no viperdbm store at this path",
            filename=path,
            errno=_errno.ENOENT,
            hint="check the path; 'viperdbm set' and 'viperdbm load' create a store",
        )
    return path


def _emit_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, sort_keys=True))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover


# ---------------------------------------------------------------------- demo
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
    import shelve
    import subprocess
    import tempfile

    from . import shelve as vshelve

    n = args.records
    if n < 1:
        raise _UsageError("--records must be at least 1")
    with tempfile.TemporaryDirectory(prefix="viperdbm-demo-", dir=args.dir) as tmp:
        path = os.path.join(tmp, "demo.vdb")
        _say(f"viperdbm {__version__} demo: a store at {path}")

        started = time.perf_counter()
        with open_store(path, "c") as db:
            with _bar(args, "insert", n) as bar:
                step = max(n // 100, 1)
                for i in range(n):
                    db[b"key-%010d" % i] = b"value-%010d-" % i + b"x" * 80
                    if i % step == step - 1:
                        bar.update(step)
                bar.update(n - bar.done)
            elapsed = time.perf_counter() - started
            _say(f"  inserted {n:,} records in {elapsed:.2f} s ({n / elapsed:,.0f} puts/s)")
            started = time.perf_counter()
            for i in range(0, n, 7):
                if not db[b"key-%010d" % i].startswith(b"value-%010d-" % i):
                    raise error(f"demo: record {i} reads back wrong")
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
        child.stdout.close()
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


# ---------------------------------------------------------------------- inspecting
def cmd_stats(args: argparse.Namespace) -> int:
    with open_store(_existing_store(args.path), "r") as db:
        stats = db.stats()
    if args.json:
        _emit_json(stats)
        return 0
    _say(f"store            {os.path.abspath(args.path)}")
    _say(f"records          {stats['records']:,}")
    _say(f"live bytes       {_human_bytes(stats['live_bytes'])} ({stats['live_bytes']:,})")
    _say(f"dead bytes       {_human_bytes(stats['dead_bytes'])} ({stats['dead_bytes']:,})")
    _say(f"pool size        {_human_bytes(stats['pool_bytes'])} ({stats['pool_bytes']:,})")
    _say(f"index rebuild    {stats['rebuild_seconds'] * 1e3:.1f} ms (at this open)")
    shown = {"records", "live_bytes", "dead_bytes", "pool_bytes", "rebuild_seconds"}
    for name, value in stats.items():
        if name not in shown:
            label = name.replace("_", " ")
            _say(f"{label:<16} {value:,}" if isinstance(value, int) else f"{label:<16} {value}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ._check import check, salvage

    engine_log = logging.getLogger("viperdbm")
    level = engine_log.level
    if not args.verbose:
        engine_log.setLevel(logging.ERROR)  # the report says what the open's warnings say
    try:
        with _bar(args, "check") as bar:
            report = check(args.path, progress=bar)
    finally:
        engine_log.setLevel(level)
    if args.json:
        data = report.to_dict()
    else:
        _say(str(report))
    status = 0 if report.ok else 1
    if args.salvage is not None:
        with _bar(args, "salvage") as bar:
            saved = salvage(args.path, args.salvage, replace=args.replace, progress=bar)
        if args.json:
            data["salvage"] = {"out": args.salvage, **saved._asdict()}
        else:
            _say(
                f"salvaged {saved.copied:,} records into {args.salvage} "
                f"({saved.unreadable:,} unreadable)"
            )
    if args.json:
        _emit_json(data)
    return status


def _key_arg(args: argparse.Namespace, text: str, what: str = "KEY") -> bytes:
    if args.base64:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _UsageError(f"{what} is not valid base64: {text!r}") from None
    return os.fsencode(text)  # the argument's own bytes, even if they are not UTF-8


def _write_line(data: bytes, args: argparse.Namespace) -> None:
    sys.stdout.buffer.write((base64.b64encode(data) if args.base64 else data) + b"\n")


def cmd_get(args: argparse.Namespace) -> int:
    key = _key_arg(args, args.key)
    with open_store(_existing_store(args.path), "r") as db:
        value = db.get(key)
    if value is None:
        _note(f"{PROG}: no key {args.key!r} in {args.path}")
        return 1
    _write_line(value, args)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    key = _key_arg(args, args.key)
    value = _key_arg(args, args.value, "VALUE")
    with open_store(args.path, "c") as db:
        db[key] = value
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    key = _key_arg(args, args.key)
    with open_store(_existing_store(args.path), "w") as db:
        try:
            del db[key]
        except KeyError:
            _note(f"{PROG}: no key {args.key!r} in {args.path}")
            return 1
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    with open_store(_existing_store(args.path), "r") as db:
        keys = sorted(db.keys())
    if args.json:
        if args.base64:
            _emit_json([base64.b64encode(k).decode("ascii") for k in keys])
            return 0
        try:
            _emit_json([k.decode("utf-8") for k in keys])
        except UnicodeDecodeError:
            raise error(
                "a key is not UTF-8 text, so it cannot be a JSON string",
                filename=args.path,
                errno=_errno.EILSEQ,
                hint="add --base64",
            ) from None
        return 0
    for key in keys:
        _write_line(key, args)
    return 0


# ---------------------------------------------------------------------- long operations
def cmd_dump(args: argparse.Namespace) -> int:
    from ._dump import dump

    path = _existing_store(args.path)
    to_stdout = args.out in (None, "-")
    if to_stdout and args.json:
        raise _UsageError("--json needs OUT: the dump itself goes to standard output")
    started = time.perf_counter()
    with _bar(args, "dump") as bar:
        if to_stdout:
            count = dump(path, sys.stdout.buffer, progress=bar)
            sys.stdout.buffer.flush()
        else:
            count = dump(path, args.out, progress=bar)
    elapsed = time.perf_counter() - started
    summary = {"records": count, "out": "-" if to_stdout else args.out, "seconds": elapsed}
    if args.json:
        _emit_json(summary)
    elif not to_stdout:
        _say(f"dumped {count:,} records to {args.out} in {elapsed:.2f} s")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from ._dump import load

    started = time.perf_counter()
    with _bar(args, "load") as bar:
        if args.dump == "-":
            count = load(sys.stdin.buffer, args.path, replace=args.replace, progress=bar)
        else:
            count = load(args.dump, args.path, replace=args.replace, progress=bar)
    elapsed = time.perf_counter() - started
    if args.json:
        _emit_json({"records": count, "path": args.path, "seconds": elapsed})
    else:
        _say(f"loaded {count:,} records into {args.path} in {elapsed:.2f} s")
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    from ._dump import copy

    started = time.perf_counter()
    with _bar(args, "copy") as bar:
        count = copy(_existing_store(args.src), args.dst, replace=args.replace, progress=bar)
    elapsed = time.perf_counter() - started
    if args.json:
        _emit_json({"records": count, "src": args.src, "dst": args.dst, "seconds": elapsed})
    else:
        _say(f"copied {count:,} records from {args.src} to {args.dst} in {elapsed:.2f} s")
    return 0


def cmd_reorganize(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with open_store(_existing_store(args.path), "w") as db:
        before = db.stats()
        with Ticker("reorganize", enabled=_progress_enabled(args)):
            db.reorganize()
        after = db.stats()
    elapsed = time.perf_counter() - started
    if args.json:
        _emit_json({"before": before, "after": after, "seconds": elapsed})
    else:
        _say(
            f"reorganized {args.path} in {elapsed:.2f} s: dead bytes "
            f"{before['dead_bytes']:,} -> {after['dead_bytes']:,}, pool "
            f"{_human_bytes(before['pool_bytes'])} -> {_human_bytes(after['pool_bytes'])}, "
            f"{after['records']:,} records"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    where = (
        Path(args.benchmarks)
        if args.benchmarks
        else Path(__file__).resolve().parent.parent / "benchmarks"
    )
    runner = where / "run.py"
    if not runner.is_file():
        raise error(
            f"the benchmarks are not here (no {runner})",
            errno=_errno.ENOENT,
            hint="they ship with the source checkout, not with an installed package: run "
            "'viperdbm bench' from a clone of the repository, or pass --benchmarks DIR",
        )
    extra = list(args.args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    command = [sys.executable, str(runner), "--full" if args.full else "--quick", *extra]
    _note(f"{PROG}: running {' '.join(command)}")
    return subprocess.call(command, cwd=str(where.parent))


# ---------------------------------------------------------------------- parser
class _UsageError(Exception):
    """A mistake in the command line found after parsing (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Inspect, check, dump, load, copy and reorganize viperdbm stores.",
        epilog="Exit status: 0 success, 1 error or problems found, 2 usage error. "
        "Reference: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"viperdbm {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what the store does (open and index-rebuild timing) on standard error",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    progress = _Parser(add_help=False)
    progress.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="draw a progress bar on standard error: when it is a terminal (auto, the "
        "default), always or never",
    )
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the result as JSON")
    b64 = _Parser(add_help=False)
    b64.add_argument(
        "--base64",
        action="store_true",
        help="keys and values on the command line and in the output are base64 (for binary data)",
    )
    replace = _Parser(add_help=False)
    replace.add_argument(
        "--replace", action="store_true", help="overwrite the destination if it is a store"
    )

    p = sub.add_parser(
        "demo", parents=[progress], help="run a demo of the store in a temporary directory"
    )
    p.add_argument(
        "--records", type=int, default=200_000, help="records to insert (default 200,000)"
    )
    p.add_argument("--dir", default=None, help="where to make the temporary store")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "stats",
        parents=[as_json],
        help="records, live and dead bytes, pool size, index rebuild time",
    )
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "check",
        parents=[as_json, progress, replace],
        help="verify a closed store; exit status 1 if anything is wrong",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument(
        "--salvage", metavar="OUT", help="also copy every readable record into a new store OUT"
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "dump", parents=[as_json, progress], help="write every record as a text dump"
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("out", metavar="OUT", nargs="?", help="the dump file (default: standard output)")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser(
        "load", parents=[as_json, progress, replace], help="make a new store from a dump"
    )
    p.add_argument("dump", metavar="DUMP", help="the dump file ('-' for standard input)")
    p.add_argument("path", metavar="PATH", help="the store to create")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser(
        "copy", parents=[as_json, progress, replace], help="copy the live records into a new store"
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser(
        "reorganize", parents=[as_json, progress], help="reclaim the space of dead records"
    )
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_reorganize)

    # the commands on single records: their positional arguments, named as shown
    record_commands: tuple[
        tuple[
            str,
            list[_Parser],
            str,
            tuple[str, ...],
            Callable[[argparse.Namespace], int],
        ],
        ...,
    ]
    record_commands = (
        ("get", [b64], "print the value of a key", ("path", "key"), cmd_get),
        (
            "set",
            [b64],
            "store a value (creates the store if needed)",
            ("path", "key", "value"),
            cmd_set,
        ),
        ("delete", [b64], "delete a key", ("path", "key"), cmd_delete),
        ("keys", [b64, as_json], "print every key, one a line, sorted", ("path",), cmd_keys),
    )
    for name, parents, summary, positional, func in record_commands:
        p = sub.add_parser(name, parents=parents, help=summary)
        for arg in positional:
            p.add_argument(arg, metavar=arg.upper())
        p.set_defaults(func=func)

    p = sub.add_parser(
        "bench", help="run the benchmarks of a source checkout (benchmarks/run.py --quick)"
    )
    p.add_argument("--full", action="store_true", help="run.py --full instead of --quick")
    p.add_argument(
        "--benchmarks", metavar="DIR", help="the benchmarks directory (default: the checkout's)"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed on to run.py (after --)")
    p.set_defaults(func=cmd_bench)
    return parser


def _fail(message: str) -> int:
    _note(f"{PROG}: {message}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The library installs no handler; the command line is an application and shows the
    # store's warnings (and with -v its debug timing) as plain lines on standard error.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    engine_log = logging.getLogger("viperdbm")
    engine_log.addHandler(handler)
    previous_level = engine_log.level
    engine_log.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        result: int = args.func(args)
        return result
    except _UsageError as exc:
        _note(f"{PROG}: error: {exc} (see '{PROG} {args.command} --help')")
        return 2
    except error as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        # the reader went away (e.g. 'viperdbm keys STORE | head'): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f": {exc.filename!r}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        _note(f"{PROG}: interrupted")
        return 130
    finally:
        engine_log.removeHandler(handler)
        engine_log.setLevel(previous_level)
