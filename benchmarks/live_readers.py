#!/usr/bin/env python3
"""live_readers.py -- readers alongside a writer (issue 12): what a reader's get, open and
memory cost while one process writes, and what readers following it cost the writer.

    python benchmarks/live_readers.py                      # N = 1M, 16-byte keys, 100-byte values
    python benchmarks/live_readers.py --n 100000 --out /tmp/x   # a smaller run

One run, every role in its own process (multiprocessing, spawn), the store on tmpfs
(/dev/shm), the same deterministic keys in every process (a function of the seed):

  writer get        the writer's own get rate (G random existing keys), nothing else running
  closed open       a reader's open() + one get of the store after the writer closed (today's
                    path), in a fresh process each time, repeated --open-repeats times
  reader, closed    a reader's get rate on the closed store (today's path; reference only)
  live open         the same open under a live, idle writer
  reader idle       a reader's get rate (the same G keys) while the writer is idle
  reader busy       gets of the same keys in a loop, timed over exactly the writer's insert
                    of N new keys at full speed (the writer is never idle meanwhile); the
                    median of 3 rounds
  insert alone      the writer inserts I new keys, nobody else attached (the median of
                    --rounds phases before the readers attach and --rounds after)
  insert + 3        the same I keys (deleted again in between, untimed) with three reader
                    processes following, each doing gets in a loop (median of --rounds;
                    on fewer than 4 cores this measures CPU sharing as much as the engine)
  insert + 3 paced  the same with the three readers each doing one get per millisecond:
                    each still catches up with every write, without taking the writer's core
  memory            each reader's anonymous RSS (/proc/self/status RssAnon) after its open

The ratios are checked against the issue's targets (reader idle / writer get >= 0.8, reader
busy / writer get >= 0.5, insert + 3 (busy and paced) / insert alone >= 0.8, live open /
closed open <= 1.0 within the noise of the repeated opens).  A build without live readers
(a reader under a writer gets LockError) still runs the writer-alone and closed-store parts
and reports the rest as "live readers not supported by this build".

Writes <out>/live-readers-<date>.json and <out>/live-readers-<date>.md and prints the table;
progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402 -- the harness next to this file: fs_type
import run as suite  # noqa: E402 -- the suite next to this file: machine facts, git state

KEY_SIZE = 16
VALUE_SIZE = 100
SEED = 42
DISTINCT_VALUES = 1024  # values are drawn from a pool: their content costs the engine nothing
CHUNK = 1024  # operations between two looks at the parent's "stop"
FOLLOWERS = 3
BUSY_ROUNDS = 3  # rounds of the reader's gets beside an inserting writer
PACED_PAUSE = 0.001  # seconds between two gets of a paced follower
UNSUPPORTED = "live readers not supported by this build"

Reply = dict[str, Any]


# --------------------------------------------------------------------------- the data


def make_keys(n: int, seed: int) -> list[bytes]:
    """n random 16-byte keys, the same in every process for the same seed.  Two equal keys
    among 2M random 128-bit ones are too unlikely to check for here; the build checks that
    the store holds exactly n records."""
    blob = random.Random(seed).randbytes(n * KEY_SIZE)
    return [blob[i : i + KEY_SIZE] for i in range(0, n * KEY_SIZE, KEY_SIZE)]


def make_values() -> list[bytes]:
    blob = random.Random(SEED + 7).randbytes(DISTINCT_VALUES * VALUE_SIZE)
    return [blob[i : i + VALUE_SIZE] for i in range(0, len(blob), VALUE_SIZE)]


def get_order(n: int, count: int, seed: int) -> list[bytes]:
    """count of the n existing keys in a random order of its own (seed)."""
    order = make_keys(n, SEED)
    random.Random(seed).shuffle(order)
    del order[count:]
    return order


def memory() -> dict[str, int]:
    """This process's resident memory by kind, in bytes (RssAnon: its private memory;
    RssFile/RssShmem: pages of mapped files, the store's among them on tmpfs)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                out[name] = int(rest.split()[0]) * 1024
    return out


# --------------------------------------------------------------------------- the child


class Worker:
    """One role's process: the writer or a reader.  It answers the parent's commands over
    a pipe: ("ok", reply), ("error", {type, message}), ("progress", text) on the way, and
    ("started", {}) for the commands that run until the parent says "stop"."""

    def __init__(self, conn: Connection, params: dict[str, Any]) -> None:
        self.conn = conn
        self.n: int = params["n"]
        self.db: Any = None
        self.keys: list[bytes] = []
        self.fresh: list[bytes] = []
        self.values: list[bytes] = []
        self.orders: dict[tuple[int, int], list[bytes]] = {}

    def progress(self, text: str) -> None:
        self.conn.send(("progress", text))

    def stopped(self) -> bool:
        return self.conn.poll()

    # -- every role

    def do_open(self, path: str, flag: str, probe_key: bytes | None = None) -> Reply:
        """open() and one get, timed (as a user's first read); memory before and after."""
        import viperdbm

        before = memory()
        t0 = time.perf_counter()
        self.db = viperdbm.open(path, flag)
        if probe_key is not None and self.db.get(probe_key) is None:
            raise RuntimeError("the probe key is missing right after open")
        seconds = time.perf_counter() - t0
        return {"open_s": seconds, "memory_before": before, "memory_after": memory()}

    def order(self, count: int, seed: int) -> list[bytes]:
        """Made once per (count, seed) and kept: a timed run never pays for making it."""
        if (count, seed) not in self.orders:
            self.orders[count, seed] = get_order(self.n, count, seed)
        return self.orders[count, seed]

    def do_prepare(self, count: int, seed: int) -> Reply:
        self.order(count, seed)
        return {}

    def do_gets(self, count: int, seed: int) -> Reply:
        order = self.order(count, seed)
        get = self.db.get
        misses = 0
        t0 = time.perf_counter()
        for k in order:
            if get(k) is None:
                misses += 1
        seconds = time.perf_counter() - t0
        return {"rate": count / seconds, "seconds": seconds, "misses": misses}

    def do_follow(self, seed: int, pause: float = 0.0) -> Reply:
        """Gets of existing keys in a loop until the parent says stop: at full speed, or one
        get per ``pause`` seconds (a reader that follows its writer without using a core)."""
        order = get_order(self.n, self.n, seed)
        get = self.db.get
        done = misses = 0
        batch = 1 if pause else CHUNK
        self.conn.send(("started", {}))
        t0 = time.perf_counter()
        while not self.stopped():
            start = done % len(order)
            chunk = order[start : start + batch]
            for k in chunk:
                if get(k) is None:
                    misses += 1
            done += len(chunk)
            if pause:
                time.sleep(pause)
        seconds = time.perf_counter() - t0
        self.conn.recv()  # the stop
        return {"rate": done / seconds, "gets": done, "seconds": seconds, "misses": misses}

    def do_touch(self, key: bytes) -> Reply:
        """One get: the reader catches up with the writer."""
        return {"found": self.db.get(key) is not None}

    def do_stats(self) -> Reply:
        return dict(self.db.stats())

    def do_close(self) -> Reply:
        if self.db is not None:
            self.db.close()
            self.db = None
        return {}

    # -- the writer

    def writer_data(self) -> None:
        if not self.keys:
            self.keys = make_keys(self.n, SEED)
            self.fresh = make_keys(self.n, SEED + 1)  # never in the store before the run
            self.values = make_values()

    def do_build(self, path: str) -> Reply:
        import viperdbm

        self.writer_data()
        self.db = viperdbm.open(path, "n")
        put, vals = self.db.__setitem__, self.values
        t0 = time.perf_counter()
        next_report = t0 + 2.0
        for start in range(0, self.n, CHUNK):
            for i in range(start, min(start + CHUNK, self.n)):
                put(self.keys[i], vals[i % DISTINCT_VALUES])
            if time.perf_counter() > next_report:
                self.progress(f"build: {start + CHUNK:,} of {self.n:,}")
                next_report += 2.0
        self.db.sync()
        seconds = time.perf_counter() - t0
        records = self.db.stats()["records"]
        if records != self.n:
            raise RuntimeError(f"the store holds {records:,} records after {self.n:,} puts")
        return {"rate": self.n / seconds, "seconds": seconds, "probe_key": self.keys[0]}

    def do_reopen(self, path: str) -> Reply:
        self.writer_data()
        return self.do_open(path, "w", self.keys[0])

    def do_insert(self, count: int) -> Reply:
        """count fresh keys at full speed (puts only: no sync, which tmpfs makes free)."""
        put, vals, keys = self.db.__setitem__, self.values, self.fresh[:count]
        t0 = time.perf_counter()
        for i, k in enumerate(keys):
            put(k, vals[i % DISTINCT_VALUES])
        seconds = time.perf_counter() - t0
        return {"rate": count / seconds, "seconds": seconds, "inserted": count}

    def do_reorganize(self) -> Reply:
        """Untimed, between phases: every delete of the phases before leaves a tombstone,
        and the compaction that drops them costs the writer for a reason of its own (see
        benchmarks/README.md), which no phase here means to measure."""
        self.db.reorganize()
        return {}

    def do_delete_fresh(self, count: int) -> Reply:
        """Take the first count fresh keys out again, so that every insert phase starts from
        the same N records (and the same index size)."""
        delete = self.db.__delitem__
        t0 = time.perf_counter()
        for k in self.fresh[:count]:
            delete(k)
        return {"seconds": time.perf_counter() - t0}


def child_main(conn: Connection, params: dict[str, Any]) -> None:
    worker = Worker(conn, params)
    try:
        while True:
            cmd, args = conn.recv()
            if cmd == "exit":
                return
            try:
                reply = getattr(worker, "do_" + cmd)(**args)
            except Exception as exc:  # reported to the parent, which decides what it means
                conn.send(("error", {"type": type(exc).__name__, "message": str(exc)}))
            else:
                conn.send(("ok", reply))
    finally:
        if worker.db is not None:
            worker.db.close()


# --------------------------------------------------------------------------- the parent


class ChildError(Exception):
    def __init__(self, role: str, cmd: str, kind: str, message: str) -> None:
        super().__init__(f"{role}: {cmd}: {kind}: {message}")
        self.kind = kind
        self.message = message


def say(text: str) -> None:
    print(f"live_readers.py: {text}", file=sys.stderr, flush=True)


class Child:
    """A role's process and its end of the pipe."""

    def __init__(self, role: str, n: int, timeout: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.role, self.timeout = role, timeout
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=child_main, args=(theirs, {"n": n}), name=role)
        self.proc.start()
        theirs.close()
        self.cmd = ""

    def _wait(self, until: str) -> Reply:
        while True:
            if not self.conn.poll(self.timeout):
                self.proc.kill()
                raise ChildError(self.role, self.cmd, "Timeout", f"no answer in {self.timeout} s")
            try:
                kind, body = self.conn.recv()
            except EOFError:
                raise ChildError(
                    self.role, self.cmd, "Died", f"exit code {self.proc.exitcode}"
                ) from None
            if kind == "progress":
                say(f"  {self.role}: {body}")
            elif kind == "error":
                raise ChildError(self.role, self.cmd, body["type"], body["message"])
            elif kind == until:
                return dict(body)

    def call(self, cmd: str, **args: Any) -> Reply:
        self.cmd = cmd
        self.conn.send((cmd, args))
        return self._wait("ok")

    def begin(self, cmd: str, **args: Any) -> None:
        """Start a command that runs until end()."""
        self.cmd = cmd
        self.conn.send((cmd, args))
        self._wait("started")

    def end(self) -> Reply:
        self.conn.send(("stop", {}))
        return self._wait("ok")

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):  # it may have died already
                self.conn.send(("exit", {}))
            self.proc.join(self.timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


@dataclass
class OpenSeries:
    seconds: list[float]
    anon_after: list[int]
    anon_growth: list[int]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """The noise of this series: its interquartile range / its median (one slow open,
        from other work on the machine, does not make the whole series noise)."""
        if len(self.seconds) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return (q3 - q1) / self.median

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "median_s": self.median,
            "spread": self.spread,
            "rss_anon_after": self.anon_after,
            "rss_anon_growth": self.anon_growth,
        }


def anon(reply: Reply) -> tuple[int, int]:
    """(RssAnon after the open, its growth over the open) from an open's reply."""
    after = int(reply["memory_after"]["RssAnon"])
    return after, after - int(reply["memory_before"]["RssAnon"])


def open_series(a: argparse.Namespace, path: str, probe_key: bytes, what: str) -> OpenSeries:
    """--open-repeats opens, each by a fresh reader process."""
    series = OpenSeries([], [], [])
    for i in range(a.open_repeats):
        reader = Child(f"reader ({what} open {i + 1})", a.n, a.timeout)
        try:
            reply = reader.call("open", path=path, flag="r", probe_key=probe_key)
            reader.call("close")
        finally:
            reader.close()
        series.seconds.append(float(reply["open_s"]))
        after, growth = anon(reply)
        series.anon_after.append(after)
        series.anon_growth.append(growth)
    say(f"{what} open: median {series.median * 1e3:.1f} ms, spread {series.spread:.0%}")
    return series


class Bench:
    def __init__(self, a: argparse.Namespace, path: str) -> None:
        self.a, self.path = a, path
        self.results: dict[str, Any] = {}
        self.unsupported: str | None = None
        self.unsupported_why = ""
        self.probe_key = b""

    def run(self) -> None:
        a, res = self.a, self.results
        writer = Child("writer", a.n, a.timeout)
        try:
            say(f"writer: building the store, N={a.n:,}")
            build = writer.call("build", path=self.path)
            self.probe_key = build.pop("probe_key")
            res["build"] = build
            say(f"writer: built in {build['seconds']:.1f} s ({build['rate']:,.0f} puts/s)")
            res["writer_get"] = writer.call("gets", count=a.gets, seed=SEED + 2)
            say(f"writer: get {res['writer_get']['rate']:,.0f}/s (idle, alone)")
            res["writer_index_bytes"] = writer.call("stats").get("index_bytes")
            writer.call("close")
            self.closed_store()
            res["writer_reopen"] = writer.call("reopen", path=self.path)
            say(f"writer: reopened in {res['writer_reopen']['open_s'] * 1e3:.0f} ms")
            self.live(writer)
            self.inserts(writer)
            writer.call("close")
        finally:
            writer.close()

    def closed_store(self) -> None:
        """Today's path: readers of the store after the writer closed."""
        a, res = self.a, self.results
        res["closed_open"] = open_series(a, self.path, self.probe_key, "closed-store")
        reader = Child("reader (closed store)", a.n, a.timeout)
        try:
            reader.call("open", path=self.path, flag="r", probe_key=self.probe_key)
            res["reader_get_closed"] = reader.call("gets", count=a.gets, seed=SEED + 2)
            reader.call("close")
        finally:
            reader.close()
        say(f"reader of the closed store: get {res['reader_get_closed']['rate']:,.0f}/s")

    def live(self, writer: Child) -> None:
        """A reader under the live writer: open, gets while it idles and while it inserts."""
        a, res = self.a, self.results
        try:
            res["live_open"] = open_series(a, self.path, self.probe_key, "live")
        except ChildError as exc:
            if exc.kind != "LockError":
                raise
            self.unsupported = UNSUPPORTED
            self.unsupported_why = f"a reader opening under the writer got LockError: {exc.message}"
            say(f"{UNSUPPORTED}: {self.unsupported_why}")
            return
        reader = Child("reader", a.n, a.timeout)
        try:
            opened = reader.call("open", path=self.path, flag="r", probe_key=self.probe_key)
            res["reader_memory"] = [anon(opened)]
            reader.call("prepare", count=a.gets, seed=SEED + 2)
            res["reader_get_idle"] = reader.call("gets", count=a.gets, seed=SEED + 2)
            say(f"reader: get {res['reader_get_idle']['rate']:,.0f}/s (writer idle)")
            # timed over exactly the writer's inserts (N fresh keys): it is never idle
            # meanwhile; the median of a few rounds (how much of the machine each of the two
            # gets varies from one to the next: the reader replays what the writer writes)
            busy_rounds, reader_rounds = [], []
            for round_ in range(BUSY_ROUNDS):
                if round_:
                    writer.call("delete_fresh", count=a.n)
                reader.begin("follow", seed=SEED + 2)
                busy_rounds.append(writer.call("insert", count=a.n))
                reader_rounds.append(reader.end())
            res["writer_insert_busy"] = busy = median_of(busy_rounds) | {"inserted": a.n}
            res["reader_get_busy"] = median_of(reader_rounds)
            say(
                f"reader: get {res['reader_get_busy']['rate']:,.0f}/s while the writer "
                f"inserted {busy['inserted']:,} keys ({busy['rate']:,.0f}/s)"
            )
            # what an idle reader costs in space: the writer deletes what it just inserted
            # (the blocks it frees are held for the reader, which has not caught up), then
            # the reader reads once (it has caught up: nothing need be held for it any more)
            writer.call("delete_fresh", count=busy["inserted"])
            res["held_idle_reader"] = writer.call("stats").get("held_bytes")
            reader.call("touch", key=self.probe_key)
            res["held_after_touch"] = writer.call("stats").get("held_bytes")
            reader.call("close")
        finally:
            reader.close()

    def inserts(self, writer: Child) -> None:
        """The writer's insert rate alone and with three readers following, each the median
        of --rounds phases (one phase takes a fraction of a second: alone, the rate varies
        by 20% from one to the next on a shared machine); alone before and after."""
        a, res = self.a, self.results
        count = a.insert_keys

        def insert() -> Reply:
            reply = writer.call("insert", count=count)
            writer.call("delete_fresh", count=count)
            return reply

        # once untimed: the pool and the index grow to what N + count needs, so that no
        # timed phase pays a growth the others do not
        writer.call("reorganize")
        insert()
        alone = [insert() for _ in range(a.rounds)]
        if self.unsupported:
            res["insert_alone"] = median_of(alone)
            say(f"writer: insert {res['insert_alone']['rate']:,.0f}/s alone")
            return
        followers = [Child(f"follower {i + 1}", a.n, a.timeout) for i in range(FOLLOWERS)]
        busy, paced = [], []
        try:
            for f in followers:
                opened = f.call("open", path=self.path, flag="r", probe_key=self.probe_key)
                res["reader_memory"].append(anon(opened))
            writer.call("reorganize")
            for _ in range(a.rounds):
                for i, f in enumerate(followers):
                    f.begin("follow", seed=SEED + 10 + i)
                busy.append(writer.call("insert", count=count))
                res["writer_stats_followed"] = writer.call("stats")
                res["followers"] = [f.end() for f in followers]
                writer.call("delete_fresh", count=count)
                # the same readers, each reading once a millisecond: what following costs
                # the writer when the readers do not take its core
                for i, f in enumerate(followers):
                    f.begin("follow", seed=SEED + 10 + i, pause=PACED_PAUSE)
                paced.append(writer.call("insert", count=count))
                res["followers_paced"] = [f.end() for f in followers]
                writer.call("delete_fresh", count=count)
            for f in followers:
                f.call("close")
        finally:
            for f in followers:
                f.close()
        writer.call("reorganize")
        alone += [insert() for _ in range(a.rounds)]
        res["insert_alone"] = median_of(alone)
        res["insert_followed"] = median_of(busy)
        res["insert_followed_paced"] = median_of(paced)
        say(f"writer: insert {res['insert_alone']['rate']:,.0f}/s alone (median)")
        rates = ", ".join(f"{f['rate']:,.0f}" for f in res["followers"])
        say(
            f"writer: insert {res['insert_followed']['rate']:,.0f}/s with {FOLLOWERS} readers "
            f"following (median; their gets/s in the last round: {rates}), "
            f"{res['insert_followed_paced']['rate']:,.0f}/s with them at one get per ms"
        )


def median_of(replies: list[Reply]) -> Reply:
    """The median rate of several timed phases, with every phase's rate beside it."""
    rates = [float(r["rate"]) for r in replies]
    out: Reply = {"rate": statistics.median(rates), "runs": rates}
    if all("misses" in r for r in replies):  # gets of keys that are there: all of them
        out["misses"] = sum(r["misses"] for r in replies)
    return out


# --------------------------------------------------------------------------- the report


@dataclass
class Row:
    what: str
    figure: str
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def rate(r: Reply | None) -> float | None:
    return float(r["rate"]) if r else None


def k_per_s(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1e3:,.0f}k/s" if value >= 10e3 else f"{value:,.0f}/s"


def mib(b: int) -> str:
    return f"{b / 2**20:.1f} MiB"


def ratio_row(
    what: str,
    num: float | None,
    den: float | None,
    at_least: float,
    unsupported: str | None,
    note: str = "",
) -> Row:
    target = f">= {at_least}"
    if num is None or den is None:
        return Row(what, "n/a", "n/a", target, f"not measured: {unsupported or 'missing'}")
    value = num / den
    verdict = "met" if value >= at_least else "not met"
    return Row(what, k_per_s(num), f"{value:.2f}", target, verdict + note)


def build_rows(b: Bench, cores: int) -> list[Row]:
    res, un = b.results, b.unsupported
    writer_get = rate(res.get("writer_get"))
    closed_get = rate(res.get("reader_get_closed"))
    rows = [
        Row("writer get (idle, alone)", k_per_s(writer_get)),
        Row(
            "reader get, store closed (today; reference)",
            k_per_s(closed_get),
            f"{closed_get / writer_get:.2f}" if closed_get and writer_get else "",
        ),
        ratio_row("reader get, writer idle", rate(res.get("reader_get_idle")), writer_get, 0.8, un),
    ]
    busy = res.get("writer_insert_busy")
    rows.append(
        ratio_row(
            "reader get, writer inserting", rate(res.get("reader_get_busy")), writer_get, 0.5, un
        )
    )
    if busy:
        rows.append(Row("writer insert meanwhile (1 reader)", k_per_s(rate(busy))))
    alone = rate(res.get("insert_alone"))
    rows.append(Row(f"writer insert alone (median of {2 * b.a.rounds})", k_per_s(alone)))
    crowded = ""
    if cores < FOLLOWERS + 1:
        crowded = (
            f" ({FOLLOWERS + 1} busy processes on {cores} usable cores: this measures CPU "
            "sharing as much as the engine)"
        )
    rows.append(
        ratio_row(
            f"writer insert, {FOLLOWERS} readers following",
            rate(res.get("insert_followed")),
            alone,
            0.8,
            un,
            crowded,
        )
    )
    for i, f in enumerate(res.get("followers", [])):
        rows.append(Row(f"  follower {i + 1}'s gets meanwhile", k_per_s(rate(f))))
    rows.append(
        ratio_row(
            f"writer insert, {FOLLOWERS} readers following, 1 get/ms each",
            rate(res.get("insert_followed_paced")),
            alone,
            0.8,
            un,
        )
    )
    for i, f in enumerate(res.get("followers_paced", [])):
        rows.append(Row(f"  follower {i + 1}'s gets meanwhile", k_per_s(rate(f))))
    closed: OpenSeries = res["closed_open"]
    rows.append(
        Row(
            "reader open + 1 get, store closed (today)",
            f"{closed.median * 1e3:.1f} ms (median of {len(closed.seconds)}, "
            f"spread {closed.spread:.0%})",
        )
    )
    live: OpenSeries | None = res.get("live_open")
    if live is None:
        why = f"not measured: {un or 'missing'}"
        rows.append(Row("reader open + 1 get, live writer", "n/a", "n/a", "<= 1.0", why))
    else:
        noise = max(live.spread, closed.spread)
        value = live.median / closed.median
        rows.append(
            Row(
                "reader open + 1 get, live writer",
                f"{live.median * 1e3:.1f} ms (spread {live.spread:.0%})",
                f"{value:.2f}",
                f"<= 1.0 (noise {noise:.0%})",
                "met"
                if value <= 1.0
                else "met within noise"
                if value <= 1.0 + noise
                else "not met",
            )
        )
    index_bytes = res.get("writer_index_bytes")
    if index_bytes is not None:  # what a reader with an index of its own repeats
        rows.append(Row("writer's index (stats()['index_bytes'])", mib(int(index_bytes))))
    for label, series in (("closed store", closed), ("live writer", live)):
        if series is not None:
            rows.append(
                Row(
                    f"opening reader's RssAnon, {label} (median)",
                    f"{mib(int(statistics.median(series.anon_after)))} "
                    f"(+{mib(int(statistics.median(series.anon_growth)))} by the open)",
                )
            )
    for i, (after, growth) in enumerate(res.get("reader_memory", [])):
        who = "reader" if i == 0 else f"follower {i}"
        rows.append(
            Row(f"  {who}: RssAnon after open", f"{mib(after)} (+{mib(growth)} by the open)")
        )
    stats = res.get("writer_stats_followed", {})
    if "readers" in stats:
        rows.append(Row("writer stats(): readers attached while followed", str(stats["readers"])))
    held, released = res.get("held_idle_reader"), res.get("held_after_touch")
    if held is not None and released is not None:
        deleted = res["writer_insert_busy"]["inserted"]
        rows.append(
            Row(
                f"writer held_bytes: 1 idle reader, {deleted:,} keys deleted",
                f"{mib(int(held))}, {mib(int(released))} after the reader's next get",
            )
        )
    return rows


def table(rows: list[Row]) -> list[str]:
    out = ["| measurement | figure | ratio | target | verdict |", "|---|---|---|---|---|"]
    out += [f"| {r.what} | {r.figure} | {r.ratio} | {r.target} | {r.verdict} |" for r in rows]
    return out


def plain(rows: list[Row]) -> str:
    w = max(len(r.what) for r in rows)
    f = max(len(r.figure) for r in rows)
    return "\n".join(
        f"{r.what:<{w}}  {r.figure:<{f}}  {r.ratio:>5}  {r.target:<17} {r.verdict}".rstrip()
        for r in rows
    )


def jsonable(value: Any) -> Any:
    if isinstance(value, OpenSeries):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Readers alongside a writer: rates, open, memory.")
    p.add_argument("--n", type=int, default=1_000_000, help="records in the store")
    p.add_argument("--gets", type=int, help="gets per measured get run (default: N)")
    p.add_argument("--insert-keys", type=int, help="keys per timed insert phase (default: N/4)")
    p.add_argument("--open-repeats", type=int, default=5, help="opens per open series")
    p.add_argument("--rounds", type=int, default=5, help="timed phases per insert figure")
    p.add_argument("--dir", default="/dev/shm", help="where the store goes (tmpfs)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child command")
    a = p.parse_args(argv)
    a.gets = a.gets or a.n
    a.insert_keys = a.insert_keys or max(1, a.n // 4)
    if a.gets > a.n or a.insert_keys > a.n:
        p.error("--gets and --insert-keys cannot exceed --n")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    usable = len(os.sched_getaffinity(0))
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "n": a.n,
        "key_size": KEY_SIZE,
        "value_size": VALUE_SIZE,
        "gets": a.gets,
        "insert_keys": a.insert_keys,
        "open_repeats": a.open_repeats,
        "dir": a.dir,
        "fs": peers.fs_type(a.dir),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "machine": suite.machine_facts(),
        "python": sys.version.split()[0],
        "checkout": suite.git_state(),
        # other work on the machine shares its cores with the roles measured here
        "other_cpus_busy": round(suite.cpu_busy(1.0) * (os.cpu_count() or 1), 1),
    }
    say(
        f"N={a.n:,}, {KEY_SIZE}-byte keys, {VALUE_SIZE}-byte values, store in {a.dir} "
        f"({meta['fs']}); cores: os.cpu_count()={os.cpu_count()}, usable "
        f"(sched_getaffinity)={usable}; other work uses {meta['other_cpus_busy']} CPUs"
    )
    work = tempfile.mkdtemp(prefix="viperdbm-live-", dir=a.dir)
    bench = Bench(a, os.path.join(work, "db"))
    try:
        bench.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["loadavg_after"] = suite.machine_facts()["loadavg"]
    rows = build_rows(bench, usable)
    header = (
        f"N = {a.n:,}, {KEY_SIZE}-byte keys, {VALUE_SIZE}-byte values, {a.dir} ({meta['fs']}), "
        f"one run; cores: os.cpu_count() = {os.cpu_count()}, usable = {usable}; "
        f"{meta['checkout']}; other work used {meta['other_cpus_busy']} CPUs at the start; "
        f"load average before / after {' '.join(meta['machine']['loadavg'])} / "
        f"{' '.join(meta['loadavg_after'])}"
    )
    unsupported = f"{bench.unsupported}: {bench.unsupported_why}" if bench.unsupported else ""
    print(header)
    if unsupported:
        print(unsupported)
    print(plain(rows), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"live-readers-{datetime.date.today().isoformat()}"
    doc = {
        "meta": meta,
        "unsupported": unsupported or None,
        "results": jsonable(bench.results),
        "rows": [r.__dict__ for r in rows],
    }
    Path(f"{stem}.json").write_text(json.dumps(doc, indent=1, default=bytes.hex))
    md = [
        "# Readers alongside a writer (`benchmarks/live_readers.py`)",
        "",
        header + ".",
        "",
        *([f"**{unsupported}**", ""] if unsupported else []),
        *table(rows),
        "",
        "Rates are gets or puts per second of one process's Python loop "
        f"(`get = db.get`, `put = db.__setitem__`); each get run is {a.gets:,} random existing "
        f"keys in the same order; each timed insert phase {a.insert_keys:,} fresh keys, "
        "deleted again (untimed) before the next. Opens are `open(path, 'r')` + one get in a "
        "fresh process; spread = interquartile range / median. RssAnon is from /proc/self/status.",
        "",
    ]
    Path(f"{stem}.md").write_text("\n".join(md))
    say(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
