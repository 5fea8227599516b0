#!/usr/bin/env python3
"""scale.py -- viperdbm at 100M records on ext4, and the same workloads at 1M beside it
(issue 13, "Scale benchmark"), with durable writes against lmdb and SQLite.

    python benchmarks/scale.py                           # N = 100M and 1M on /tmp (~30 min)
    python benchmarks/scale.py --n 2000000 --out /tmp/x  # a smaller run
    python benchmarks/scale.py --quick                   # smoke run, tiny N, a few seconds

16-byte keys, 100-byte values.  Each N runs in a child process of its own (a fresh
interpreter, so that one N's memory cannot show in the other's figures), in this order:

  build         N records through ``db.update()`` in batches of 100,000 (only the update()
                calls are timed; the keys are made between them); each batch's time and the
                index / pool / block counters of ``stats()`` after it, so that a batch that
                took longer than the median can be matched to what grew in it
  single puts   1M new keys, ``db[k] = v`` one at a time, each timed alone
                (``perf_counter_ns`` on both sides): rate (puts / the sum of their times),
                p50, p99, p99.99, max, how many over 2 ms and over 10 ms, and the store's
                size at the worst; ``stats()`` after every 1,000 puts tells what grew around
                a slow one (the index growing, the pool growing, a block added)
  gets          2M gets of existing keys, random order (with repetition), rate
  misses        1M gets of absent keys, rate
  updates       1M puts of new values to existing keys, random order, rate
  deletes       1M distinct existing keys, random order, rate
  update()+sync()  batches of 1,000 new records, each ``update()`` (an atomic batch)
                followed by ``sync()`` (power-fail durable at the sync); after one ``sync()``
                that writes back what the phases above left dirty (its time is reported)
  close         timed
  reopen        ``open(path, 'w')`` + one get in a fresh process, timed: wall and process
                CPU time (all threads), so CPU / wall says how many cores the open used;
                that process's RssAnon before and after, and the index after
  flag 's'      ``open(path, 'ws')`` (timed, a second reopen), 10k single puts of new keys
                (each msynced before it returns) and ``update()`` of batches of 1,000 under
                's' (atomic batches, one msync each: group commit), rates; then close and
                remove the store

The peers for the durable writes run once on a small store (100k records; their cost is the
sync, not the size): lmdb with ``sync=True`` (one write txn per put; one per batch of 1,000)
and SQLite in WAL mode with ``synchronous=FULL`` (one txn per put; one per batch).  A peer
that cannot be imported is reported as not measured.

Keys are a bijection of a counter (the counter XOR a salt, times an odd 128-bit multiplier,
mod 2^128; salt and multiplier from --seed): 16 bytes, distinct, the same in every process,
made batch by batch (no list of N keys is ever held).  Values are drawn from 1,024 distinct
random 100-byte values.  The targets of issue 13 are evaluated with their verdicts.

Before starting, free disk (``shutil.disk_usage``) and available RAM (MemAvailable) are
checked against what the largest N needs; the run is refused if either is short.  The
package is copied first and every child imports the copy, so a rebuild of the checkout
during the run cannot mix two versions.  Every store is removed at the end, also on error.

The small N runs first, then the peers, then the large N (so that a failure at the large N
still leaves the rest measured; what a failed child had done is in the report, with the
phase it failed in).  Writes <out>/scale-<date>.json and .md and prints the markdown;
progress on stderr.  ``--quick`` writes to a new temporary directory unless --out is given,
so a smoke run never overwrites the day's results.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import datetime
import importlib
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

KEY_SIZE = 16
VALUE_SIZE = 100
DISTINCT_VALUES = 1024
SEED = 42
PROGRESS_EVERY = 5.0  # seconds between two progress lines of a phase
STATS_EVERY = 1000  # single puts between two stats() snapshots
SLOW_NS = (2_000_000, 10_000_000)  # the two latency thresholds reported (2 ms, 10 ms)
KEPT_OUTLIERS = 20  # slow single puts kept with their causes
BYTES_PER_RECORD_EST = 150  # disk per record for the pre-flight check (about 132 + slack)
MASK128 = (1 << 128) - 1

# key namespaces: index ranges of the counter (the bijection keeps them apart)
NS_MAIN = 0  # build keys 0..N-1, then the single puts N..N+P-1
NS_DURABLE = 1 << 100  # single puts under 's'
NS_SYNC_BATCH = 2 << 100  # update()+sync() batches
NS_S_BATCH = 3 << 100  # update() batches under 's'
NS_MISS = 4 << 100  # never written

Doc = dict[str, Any]


@dataclass(frozen=True)
class Ops:
    """How many operations each phase runs (independent of N)."""

    batch: int  # records per update() call of the build
    puts: int
    gets: int
    misses: int
    updates: int
    deletes: int
    durable_puts: int
    durable_batch: int  # records per durable batch (update()+sync(), update() under 's')
    sync_batches: int
    s_batches: int
    peer_n: int  # records in the peers' stores before their timed writes
    peer_puts: int
    peer_batches: int
    chunk: int  # operations per chunk of a timed phase (keys are made between chunks)


FULL_OPS = Ops(
    batch=100_000,
    puts=1_000_000,
    gets=2_000_000,
    misses=1_000_000,
    updates=1_000_000,
    deletes=1_000_000,
    durable_puts=10_000,
    durable_batch=1_000,
    sync_batches=100,
    s_batches=100,
    peer_n=100_000,
    peer_puts=10_000,
    peer_batches=100,
    chunk=100_000,
)
QUICK_OPS = Ops(
    batch=5_000,
    puts=10_000,
    gets=20_000,
    misses=10_000,
    updates=10_000,
    deletes=10_000,
    durable_puts=300,
    durable_batch=1_000,
    sync_batches=10,
    s_batches=2,
    peer_n=5_000,
    peer_puts=300,
    peer_batches=10,
    chunk=5_000,
)
QUICK_N, QUICK_SMALL_N = 50_000, 10_000

DURABILITY = {
    "viperdbm s put": "power-fail durable per put (msync before it returns); not a txn",
    "viperdbm s update()": "power-fail durable as it returns (one msync of the batch); atomic "
    "batch",
    "viperdbm update()+sync()": "power-fail durable at sync(), which msyncs the whole pool; "
    "atomic batch",
    "lmdb txn per put": "sync=True: fdatasync per commit; power-fail durable, atomic per txn",
    "lmdb txn per batch": "sync=True: fdatasync per commit; power-fail durable, atomic batch",
    "sqlite txn per put": "WAL, synchronous=FULL: WAL fsync per commit; power-fail durable, "
    "atomic per txn",
    "sqlite txn per batch": "WAL, synchronous=FULL: WAL fsync per commit; power-fail "
    "durable, atomic batch",
}


# --------------------------------------------------------------------------- small helpers


def say(text: str) -> None:
    print(f"scale.py: {text}", file=sys.stderr, flush=True)


def kib_field(path: str, name: str) -> int:
    """The ``name:`` line of a /proc file that counts in kB, in bytes (0 if absent)."""
    with open(path) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_anon() -> int:
    """This process's anonymous resident memory (RssAnon of /proc/self/status), bytes."""
    return kib_field("/proc/self/status", "RssAnon")


def mem_available() -> int:
    return kib_field("/proc/meminfo", "MemAvailable")


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    busy = sum(parts[:8]) - parts[3] - (parts[4] if len(parts) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def disk_bytes(path: str) -> int:
    """Allocated bytes (st_blocks) of every file under path."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def index_bytes_for(count: int) -> int:
    """The most the index holding count keys takes: its segments are at least 0.71 full
    (native/index.c), 8 bytes a slot, 12 bytes a key with room to spare."""
    return 12 * count + (1 << 20)


def pct(sorted_values: array.array[int] | list[int], p: float) -> int:
    """The nearest-rank p-quantile of sorted values."""
    n = len(sorted_values)
    return sorted_values[max(0, min(n - 1, math.ceil(p * n) - 1))]


def fmt_rate(r: float | None) -> str:
    if r is None:
        return "n/a"
    if r >= 1e6:
        return f"{r / 1e6:.2f}M/s"
    if r >= 1e3:
        return f"{r / 1e3:.1f}k/s"
    return f"{r:.0f}/s"


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "n/a"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "n/a"
    if b >= 2**30:
        return f"{b / 2**30:.2f} GiB"
    return f"{b / 2**20:.1f} MiB"


def fmt_n(n: int) -> str:
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= div and n % (div // 1000 or 1) == 0:
            value = n / div
            return f"{value:.3f}".rstrip("0").rstrip(".") + unit
    return str(n)


def index_shape(stats: Doc) -> str:
    """The index's slots and segments, as stats() gives them."""
    slots, segments = int(stats["index_slots"]), int(stats.get("index_segments", 1))
    return f"{slots:,} slots in {segments:,} segments"


def fmt_eta(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.0f} s"


class Keys:
    """Key i: (i XOR salt) * odd multiplier mod 2^128, 16 bytes little-endian: a bijection
    of the counter, so distinct counters give distinct keys, in every process alike."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.salt = rng.getrandbits(128)
        self.mul = rng.getrandbits(128) | 1

    def range(self, start: int, stop: int) -> list[bytes]:
        s, m, mask = self.salt, self.mul, MASK128
        return [(((i ^ s) * m) & mask).to_bytes(KEY_SIZE, "little") for i in range(start, stop)]

    def of(self, indices: Iterable[int]) -> list[bytes]:
        s, m, mask = self.salt, self.mul, MASK128
        return [(((i ^ s) * m) & mask).to_bytes(KEY_SIZE, "little") for i in indices]

    def one(self, i: int) -> bytes:
        return (((i ^ self.salt) * self.mul) & MASK128).to_bytes(KEY_SIZE, "little")


def make_values(seed: int) -> list[bytes]:
    blob = random.Random(seed + 7).randbytes(DISTINCT_VALUES * VALUE_SIZE)
    return [blob[i : i + VALUE_SIZE] for i in range(0, len(blob), VALUE_SIZE)]


def values_from(values: list[bytes], start: int, count: int) -> list[bytes]:
    """The values of keys start..start+count-1 (key i's value is values[i % 1024])."""
    rot = start % len(values)
    cycle = values[rot:] + values[:rot]
    return (cycle * (count // len(cycle) + 1))[:count]


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


class Meter:
    """Progress of one phase on stderr, every PROGRESS_EVERY seconds: done, rate, ETA."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "ops",
        on_tick: Callable[[int], None] | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.t0 = self.last = time.monotonic()
        self.last_done = 0
        self.on_tick = on_tick
        say(f"{label}: {total:,} {unit}")

    def tick(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        elapsed = now - self.t0
        rate_now = (done - self.last_done) / (now - self.last)
        rate_avg = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate_avg if rate_avg > 0 else 0.0
        say(
            f"{self.label}: {done:,}/{self.total:,} ({done / self.total:.0%}), "
            f"{fmt_rate(rate_now)} now, {fmt_rate(rate_avg)} overall (wall), "
            f"{elapsed:.0f} s, ETA {fmt_eta(eta)}{', ' + extra if extra else ''}"
        )
        self.last, self.last_done = now, done
        if self.on_tick is not None:
            self.on_tick(done)

    def done(self, extra: str = "") -> float:
        elapsed = time.monotonic() - self.t0
        say(f"{self.label}: done in {elapsed:.1f} s{', ' + extra if extra else ''}")
        return elapsed


class Recorder:
    """A child's results, saved to its JSON file after every phase (and on progress), so
    that the parent knows how far a child got even if it is killed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.doc: Doc = {"phases_done": [], "in_progress": None, "cpu": {}}
        self._clock = (0.0, 0.0, 0.0)

    def begin(self, phase: str) -> None:
        self.doc["in_progress"] = {"phase": phase}
        self._clock = (time.perf_counter(), time.process_time(), machine_busy_s())
        self.save()

    def progress(self, **facts: Any) -> None:
        cur = self.doc.get("in_progress") or {}
        cur.update(facts)
        self.doc["in_progress"] = cur
        self.save()

    def end(self, phase: str, result: Any) -> None:
        t0, c0, b0 = self._clock
        wall = time.perf_counter() - t0
        own = time.process_time() - c0
        self.doc["cpu"][phase] = {
            "wall_s": wall,
            "own_cores": own / wall if wall > 0 else 0.0,
            # every CPU's busy time but this process's: other work on the machine
            "other_cpus": max(0.0, machine_busy_s() - b0 - own) / wall if wall > 0 else 0.0,
        }
        self.doc[phase] = result
        self.doc["phases_done"].append(phase)
        self.doc["in_progress"] = None
        self.save()

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1)
        os.replace(tmp, self.path)


def stat_int(stats: dict[str, int | float], key: str) -> int:
    return int(stats.get(key, 0))


def what_grew(a: dict[str, int | float], b: dict[str, int | float]) -> list[str]:
    """What changed between two stats() snapshots that can make one write slow."""
    out = []
    if stat_int(b, "index_slots") != stat_int(a, "index_slots"):
        out.append(
            f"index grew {stat_int(a, 'index_slots'):,} -> {stat_int(b, 'index_slots'):,} slots "
            f"({stat_int(b, 'index_segments'):,} segments)"
        )
    grown = stat_int(b, "pool_bytes") - stat_int(a, "pool_bytes")
    if grown:
        out.append(f"pool grew {fmt_bytes(grown)}")
    blocks = stat_int(b, "blocks") - stat_int(a, "blocks")
    if blocks > 0:
        out.append(f"{blocks} block{'s' if blocks > 1 else ''} added")
    return out


def kind_of(causes: list[str]) -> str:
    if any(c.startswith("index") for c in causes):
        return "index growth"
    if any(c.startswith("pool") for c in causes):
        return "pool growth"
    if causes:
        return "block added"
    return "nothing grew"


def latency_summary(lat: array.array[int]) -> Doc:
    s = sorted(lat)
    total = sum(s)
    return {
        "count": len(s),
        "sum_ns": total,
        "rate": len(s) / (total / 1e9) if total else None,
        "p50_ns": pct(s, 0.50),
        "p99_ns": pct(s, 0.99),
        "p9999_ns": pct(s, 0.9999),
        "max_ns": s[-1],
        "over_2ms": sum(1 for x in s if x > SLOW_NS[0]),
        "over_10ms": sum(1 for x in s if x > SLOW_NS[1]),
    }


# --------------------------------------------------------------------------- timed loops
# Each loop is a plain Python for loop over the store's own bound methods, as a user would
# write it; the keys are made before the loop (untimed).


def loop_get(get: Callable[[bytes], bytes | None], keys: list[bytes]) -> float:
    t0 = time.perf_counter()
    for k in keys:
        get(k)
    return time.perf_counter() - t0


def loop_put(put: Callable[[bytes, bytes], None], keys: list[bytes], vals: list[bytes]) -> float:
    t0 = time.perf_counter()
    for k, v in zip(keys, vals, strict=True):
        put(k, v)
    return time.perf_counter() - t0


def loop_delete(delete: Callable[[bytes], None], keys: list[bytes]) -> float:
    t0 = time.perf_counter()
    for k in keys:
        delete(k)
    return time.perf_counter() - t0


def loop_put_timed(
    put: Callable[[bytes, bytes], None],
    keys: list[bytes],
    vals: list[bytes],
    record: Callable[[int], None],
) -> float:
    """Each put timed alone; returns the loop's wall time (with the timer calls)."""
    ns = time.perf_counter_ns
    t_start = time.perf_counter()
    for k, v in zip(keys, vals, strict=True):
        t0 = ns()
        put(k, v)
        record(ns() - t0)
    return time.perf_counter() - t_start


# --------------------------------------------------------------------------- child: one N


class ScaleRun:
    """The workloads at one N, in a child process (see the module docstring)."""

    def __init__(self, params: Doc) -> None:
        self.n: int = params["n"]
        self.ops = Ops(**params["ops"])
        self.store: str = params["store"]
        self.label: str = params["label"]
        self.keys = Keys(params["seed"])
        self.values = make_values(params["seed"])
        self.rng = random.Random(params["seed"] + self.n)
        self.rec = Recorder(params["json"])
        self.db: Any = None
        self.total = self.n  # keys 0..total-1 of NS_MAIN were written

    def say(self, text: str) -> None:
        say(f"[N={fmt_n(self.n)}] {text}")

    def timed_batches(
        self, label: str, base: int, count: int, *, sync: bool
    ) -> tuple[list[float], float]:
        """``count`` update() calls of ``ops.durable_batch`` new records from key number
        ``base`` on, each followed by ``sync()`` if ``sync``: the seconds of each, and the
        records per second over all of them."""
        db, size = self.db, self.ops.durable_batch
        meter = self.meter(label, count, "batches")
        per: list[float] = []
        for b in range(count):
            pairs = self.pairs(base + b * size, base + (b + 1) * size)
            t0 = time.perf_counter()
            db.update(pairs)
            if sync:
                db.sync()
            per.append(time.perf_counter() - t0)
            meter.tick(b + 1)
        rate = count * size / sum(per)
        meter.done(f"{fmt_rate(rate)} records")
        return per, rate

    def pairs(self, start: int, stop: int) -> list[tuple[bytes, bytes]]:
        """The (key, value) pairs of records ``start`` to ``stop``, for one update() batch."""
        return list(
            zip(
                self.keys.range(start, stop),
                values_from(self.values, start, stop - start),
                strict=True,
            )
        )

    def meter(self, phase: str, total: int, unit: str = "ops") -> Meter:
        """Progress on stderr; the JSON file is saved at each progress line too."""
        return Meter(
            f"[N={fmt_n(self.n)}] {phase}", total, unit, lambda done: self.rec.progress(done=done)
        )

    def stats(self) -> dict[str, int | float]:
        return dict(self.db.stats())

    def run(self) -> int:
        import viperdbm

        self.rec.doc.update(
            {
                "n": self.n,
                "label": self.label,
                "ops": asdict(self.ops),
                "viperdbm_file": viperdbm.__file__,
                "pid": os.getpid(),
                "rss_anon_start": rss_anon(),
            }
        )
        self.rec.save()
        try:
            self.build()
            self.single_puts()
            self.gets()
            self.misses()
            self.updates()
            self.deletes()
            self.sync_batches()
            self.close("close")
            self.reopen()
            self.reopen("reopen_read_only", "r")
            self.durable()
            return 0
        except BaseException as exc:
            cur = self.rec.doc.get("in_progress") or {}
            self.rec.doc["error"] = {
                "phase": cur.get("phase", "?"),
                "at": cur,
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }
            self.rec.save()
            self.say(f"FAILED in {cur.get('phase', '?')}: {type(exc).__name__}: {exc}")
            return 1
        finally:
            if self.db is not None:
                with contextlib.suppress(Exception):
                    self.db.close()
            shutil.rmtree(self.store, ignore_errors=True)

    # -- the phases

    def build(self) -> None:
        import viperdbm

        self.rec.begin("build")
        self.db = db = viperdbm.open(self.store, "n")
        ops = self.ops
        update = db.update
        meter = self.meter(f"build: update() batches of {ops.batch:,}", self.n, "records")
        timed = 0.0
        batches: list[Doc] = []
        prev = self.stats()
        t_wall = time.perf_counter()
        for start, stop in chunks(self.n, ops.batch):
            pairs = self.pairs(start, stop)
            t0 = time.perf_counter()
            update(pairs)
            dt = time.perf_counter() - t0
            timed += dt
            st = self.stats()
            batches.append(
                {
                    "n_before": start,
                    "records": stop - start,
                    "s": dt,
                    "grew": what_grew(prev, st),
                    "index_slots_added": stat_int(st, "index_slots")
                    - stat_int(prev, "index_slots"),
                }
            )
            prev = st
            meter.tick(
                stop,
                f"update() {fmt_rate(stop / timed)}, index {stat_int(st, 'index_slots'):,}"
                f" slots, RssAnon {fmt_bytes(rss_anon())}",
            )
        wall = time.perf_counter() - t_wall
        del pairs
        if len(db) != self.n:
            raise RuntimeError(f"the store holds {len(db):,} records after the build, not {self.n}")
        for i in (0, self.n - 1):
            if db[self.keys.one(i)] != self.values[i % DISTINCT_VALUES]:
                raise RuntimeError(f"key {i} reads back wrong after the build")
        st = self.stats()
        result: Doc = {
            "records": self.n,
            "batch": ops.batch,
            "update_s": timed,
            "wall_s": wall,
            "rate": self.n / timed,
            "wall_rate": self.n / wall,
            "stats": st,
            "index_bytes_per_key": stat_int(st, "index_bytes") / self.n,
            "rss_anon": rss_anon(),
            "disk_bytes": disk_bytes(self.store),
            "batches": batch_analysis(batches),
        }
        meter.done(
            f"update() {fmt_rate(result['rate'])}, wall incl. making keys "
            f"{fmt_rate(result['wall_rate'])}; RssAnon {fmt_bytes(result['rss_anon'])}; "
            f"index {fmt_bytes(stat_int(st, 'index_bytes'))}; store "
            f"{fmt_bytes(result['disk_bytes'])} on disk"
        )
        self.rec.end("build", result)

    def single_puts(self) -> None:
        self.rec.begin("single_puts")
        ops, db = self.ops, self.db
        put = db.__setitem__
        base = self.n
        lat: array.array[int] = array.array("q")
        record = lat.append
        outliers: list[Doc] = []
        tally: dict[str, int] = {}
        meter = self.meter(f"single puts on top of {self.n:,}", ops.puts, "puts")
        wall = 0.0
        worst_ns = 0
        last = self.stats()
        for start, stop in chunks(ops.puts, STATS_EVERY):
            keys = self.keys.range(base + start, base + stop)
            vals = values_from(self.values, base + start, stop - start)
            first = len(lat)
            wall += loop_put_timed(put, keys, vals, record)
            now = self.stats()
            slow = [j for j in range(first, len(lat)) if lat[j] > SLOW_NS[0]]
            if slow:
                causes = what_grew(last, now)
                kind = kind_of(causes)
                tally[kind] = tally.get(kind, 0) + len(slow)
                for j in slow:
                    outliers.append(
                        {"n_at": base + j, "ns": lat[j], "kind": kind, "grew_in_1000": causes}
                    )
                outliers.sort(key=lambda o: -int(o["ns"]))
                del outliers[KEPT_OUTLIERS:]
            last = now
            worst_ns = max(worst_ns, max(lat[first:]))
            meter.tick(stop, f"worst so far {fmt_ns(worst_ns)}")
        self.total = base + ops.puts
        summary = latency_summary(lat)
        worst = max(range(len(lat)), key=lat.__getitem__)
        st = self.stats()
        result: Doc = {
            **summary,
            "wall_s": wall,
            "wall_rate": ops.puts / wall,
            "worst_n_at": base + worst,
            "slow_by_kind": tally,
            "outliers": outliers,
            "stats": st,
            "index_bytes_per_key": stat_int(st, "index_bytes") / self.total,
            "rss_anon": rss_anon(),
        }
        if len(db) != self.total:
            raise RuntimeError(f"{len(db):,} records after the single puts, not {self.total:,}")
        meter.done(
            f"{fmt_rate(summary['rate'])}; p50 {fmt_ns(summary['p50_ns'])}, p99.99 "
            f"{fmt_ns(summary['p9999_ns'])}, max {fmt_ns(summary['max_ns'])} at N="
            f"{base + worst:,}; {summary['over_2ms']} over 2 ms, {summary['over_10ms']} over 10 ms"
        )
        self.rec.end("single_puts", result)

    def random_existing(self, count: int) -> list[int]:
        rnd, total = self.rng.random, self.total
        return [int(rnd() * total) for _ in range(count)]

    def gets(self) -> None:
        self.timed_gets(
            "gets",
            "gets of existing keys, random order",
            self.ops.gets,
            lambda start, stop: self.keys.of(self.random_existing(stop - start)),
            found=True,
        )

    def misses(self) -> None:
        self.timed_gets(
            "misses",
            "gets of absent keys",
            self.ops.misses,
            lambda start, stop: self.keys.range(NS_MISS + start, NS_MISS + stop),
            found=False,
        )

    def timed_gets(
        self,
        phase: str,
        label: str,
        count: int,
        keys_for: Callable[[int, int], list[bytes]],
        *,
        found: bool,
    ) -> None:
        """A phase of ``count`` gets of ``keys_for(start, stop)`` per chunk, timed apart
        from making the keys; the first 100 of each chunk must be ``found`` (or missing)."""
        self.rec.begin(phase)
        get = self.db.get
        meter = self.meter(label, count)
        timed = 0.0
        for start, stop in chunks(count, self.ops.chunk):
            keys = keys_for(start, stop)
            timed += loop_get(get, keys)
            if any((get(k) is not None) != found for k in keys[:100]):
                raise RuntimeError(f"a get of an {'existing' if found else 'absent'} key was wrong")
            meter.tick(stop, f"{fmt_rate(stop / timed)} in the gets")
        rate = count / timed
        meter.done(fmt_rate(rate))
        self.rec.end(phase, {"count": count, "s": timed, "rate": rate})

    def updates(self) -> None:
        self.rec.begin("updates")
        put = self.db.__setitem__
        meter = self.meter("updates of existing keys, random order", self.ops.updates)
        timed = 0.0
        idx: list[int] = []
        for start, stop in chunks(self.ops.updates, self.ops.chunk):
            idx = self.random_existing(stop - start)
            keys = self.keys.of(idx)
            vals = [self.values[(i + 1) % DISTINCT_VALUES] for i in idx]
            timed += loop_put(put, keys, vals)
            meter.tick(stop, f"{fmt_rate(stop / timed)} in the puts")
        for i in idx[-100:]:
            if self.db[self.keys.one(i)] != self.values[(i + 1) % DISTINCT_VALUES]:
                raise RuntimeError(f"key {i} does not read back its updated value")
        if len(self.db) != self.total:
            raise RuntimeError("the record count changed during the updates")
        rate = self.ops.updates / timed
        meter.done(fmt_rate(rate))
        self.rec.end("updates", {"count": self.ops.updates, "s": timed, "rate": rate})

    def deletes(self) -> None:
        self.rec.begin("deletes")
        delete = self.db.__delitem__
        count = min(self.ops.deletes, self.total)
        # distinct keys in a random order: j -> (offset + j * step) mod total, step coprime
        step = self.rng.randrange(self.total // 3 + 1, self.total) | 1
        while math.gcd(step, self.total) != 1:
            step += 2
        offset = self.rng.randrange(self.total)
        meter = self.meter("deletes of existing keys, random order", count)
        timed = 0.0
        keys: list[bytes] = []
        for start, stop in chunks(count, self.ops.chunk):
            keys = self.keys.of((offset + j * step) % self.total for j in range(start, stop))
            timed += loop_delete(delete, keys)
            meter.tick(stop, f"{fmt_rate(stop / timed)} in the deletes")
        if any(k in self.db for k in keys[-100:]):
            raise RuntimeError("a deleted key is still there")
        if len(self.db) != self.total - count:
            raise RuntimeError(f"{len(self.db):,} records after the deletes")
        st = self.stats()
        rate = count / timed
        meter.done(fmt_rate(rate))
        self.rec.end("deletes", {"count": count, "s": timed, "rate": rate, "stats": st})

    def sync_batches(self) -> None:
        self.rec.begin("sync_batches")
        db, ops = self.db, self.ops
        self.say("sync() before the batches ...")
        t0 = time.perf_counter()
        db.sync()
        first_sync = time.perf_counter() - t0
        self.say(f"sync() before the batches (writes back what is dirty): {first_sync:.2f} s")
        per, rate = self.timed_batches(
            f"update()+sync() batches of {ops.durable_batch:,}",
            NS_SYNC_BATCH,
            ops.sync_batches,
            sync=True,
        )
        self.rec.end(
            "sync_batches",
            {
                "first_sync_s": first_sync,
                "batches": ops.sync_batches,
                "batch": ops.durable_batch,
                "rate": rate,
                "batch_p50_s": statistics.median(per),
                "batch_max_s": max(per),
                "probe_key": self.keys.one(NS_SYNC_BATCH).hex(),
            },
        )

    def close(self, phase: str) -> None:
        self.rec.begin(phase)
        st = self.stats()
        self.say(f"{phase} ...")
        t0 = time.perf_counter()
        db, self.db = self.db, None
        db.close()
        seconds = time.perf_counter() - t0
        self.say(f"{phase}: {seconds:.2f} s ({stat_int(st, 'records'):,} records)")
        self.rec.end(phase, {"s": seconds, "stats": st, "disk_bytes": disk_bytes(self.store)})

    def reopen(self, phase: str = "reopen", flag: str = "w") -> None:
        """open(path, flag) + one get in a fresh process (its memory is the open's alone)."""
        self.rec.begin(phase)
        self.say(f"{phase} ({flag!r}) in a fresh process ...")
        probe = self.rec.doc["sync_batches"]["probe_key"]
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "reopen",
                "--params",
                json.dumps({"store": self.store, "flag": flag, "probe": probe}),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the reopen process exited {proc.returncode}")
        result: Doc = json.loads(proc.stdout.strip().splitlines()[-1])
        st = result["stats"]
        result["index_bytes_per_key"] = stat_int(st, "index_bytes") / max(
            1, stat_int(st, "records")
        )
        self.say(
            f"{phase}: {result['wall_s']:.2f} s wall, {result['cpu_s']:.2f} s CPU "
            f"({result['cores_used']:.2f} cores); rebuild {st.get('rebuild_seconds', 0):.2f} s; "
            f"RssAnon {fmt_bytes(result['rss_anon_before'])} -> "
            f"{fmt_bytes(result['rss_anon_after'])}"
        )
        self.rec.end(phase, result)
        # the open ran in the child process: count its CPU as this phase's own, not others'
        cpu = self.rec.doc["cpu"][phase]
        child_cores = float(result["cpu_s"]) / cpu["wall_s"]
        cpu["own_cores"] += child_cores
        cpu["other_cpus"] = max(0.0, cpu["other_cpus"] - child_cores)
        self.rec.save()

    def durable(self) -> None:
        """Flag 's': a second reopen (in this process), single puts and update() batches."""
        import viperdbm

        self.rec.begin("durable")
        ops = self.ops
        c0, t0 = time.process_time(), time.perf_counter()
        self.db = db = viperdbm.open(self.store, "ws")
        open_s, open_cpu = time.perf_counter() - t0, time.process_time() - c0
        self.say(f"open('ws'): {open_s:.2f} s ({open_cpu / open_s:.2f} cores)")
        meter = self.meter("single puts under 's'", ops.durable_puts, "puts")
        lat: array.array[int] = array.array("q")
        for start, stop in chunks(ops.durable_puts, ops.durable_batch):
            keys = self.keys.range(NS_DURABLE + start, NS_DURABLE + stop)
            vals = values_from(self.values, start, stop - start)
            loop_put_timed(db.__setitem__, keys, vals, lat.append)
            meter.tick(stop)
        puts = latency_summary(lat)
        meter.done(f"{fmt_rate(puts['rate'])}, p50 {fmt_ns(puts['p50_ns'])}")
        per, s_rate = self.timed_batches(
            f"update() batches of {ops.durable_batch:,} under 's'",
            NS_S_BATCH,
            ops.s_batches,
            sync=False,
        )
        expected = (
            self.total
            - min(self.ops.deletes, self.total)
            + ops.durable_batch * (ops.sync_batches + ops.s_batches)
            + ops.durable_puts
        )
        if len(db) != expected:
            raise RuntimeError(f"{len(db):,} records under 's', expected {expected:,}")
        self.rec.end(
            "durable",
            {
                "open_s": open_s,
                "open_cpu_s": open_cpu,
                "puts": puts,
                "s_update_rate": s_rate,
                "s_update_batch_p50_s": statistics.median(per),
                "s_batches": ops.s_batches,
            },
        )
        self.close("close_s")


def batch_analysis(batches: list[Doc]) -> Doc:
    """The build's update() calls: median time, and the slowest ones with what grew."""
    times = [float(b["s"]) for b in batches]
    per_record = [float(b["s"]) / int(b["records"]) for b in batches]
    median_per_record = statistics.median(per_record)
    for b in batches:
        b["excess_s"] = float(b["s"]) - median_per_record * int(b["records"])
    # A batch is filed under index growth only when it grew the index more than twice as
    # much as the median batch: the segments grow at fills of their own, so nearly every
    # batch grows the index a little, and a slow batch that grew it as much as the others
    # was slowed by something else (at 100M: write-back).
    added = [int(b.get("index_slots_added", 0)) for b in batches]
    usual = statistics.median(added) if added else 0
    by_kind: dict[str, Doc] = {}
    for b in batches:
        grew = [c for c in b["grew"] if not c.endswith("added")]
        if int(b.get("index_slots_added", 0)) <= 2 * usual:
            grew = [c for c in grew if not c.startswith("index")]
        kind = kind_of(grew) if grew else ""
        kind = kind if kind in ("index growth", "pool growth") else "neither"
        cur = by_kind.setdefault(kind, {"batches": 0, "max_excess_s": 0.0, "at": 0})
        cur["batches"] += 1
        if b["excess_s"] > cur["max_excess_s"]:
            cur["max_excess_s"], cur["at"] = b["excess_s"], b["n_before"]
    slowest = sorted(batches, key=lambda b: -float(b["excess_s"]))[:8]
    return {
        "count": len(batches),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "median_per_record_s": median_per_record,
        "by_kind": by_kind,
        "slowest": slowest,
        "times_s": [round(t, 5) for t in times],
    }


def child_reopen(params: Doc) -> int:
    """Open a closed store with flag params['flag'] and read one key; print a JSON line."""
    import viperdbm

    before = rss_anon()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0, t0 = time.process_time(), time.perf_counter()
    db = viperdbm.open(params["store"], params["flag"])
    if db.get(bytes.fromhex(params["probe"])) is None:
        raise RuntimeError("the probe key is missing after the reopen")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    after = rss_anon()
    st = dict(db.stats())
    threads = len(os.listdir("/proc/self/task"))
    db.close()
    print(
        json.dumps(
            {
                "flag": params["flag"],
                "wall_s": wall,
                "cpu_s": cpu,
                "user_s": r1.ru_utime - r0.ru_utime,
                "sys_s": r1.ru_stime - r0.ru_stime,
                "cores_used": cpu / wall if wall > 0 else 0.0,
                "threads_after_open": threads,
                "major_faults": r1.ru_majflt - r0.ru_majflt,
                "rss_anon_before": before,
                "rss_anon_after": after,
                "stats": st,
            }
        ),
        flush=True,
    )
    return 0


# --------------------------------------------------------------------------- child: peers


def child_peers(params: Doc) -> int:
    """lmdb (sync=True) and SQLite (WAL, synchronous=FULL): synced txn per put and per batch
    of 1,000 on a small store; writes its JSON to params['json']."""
    ops = Ops(**params["ops"])
    keys, values = Keys(params["seed"]), make_values(params["seed"])
    rec = Recorder(params["json"])
    for name, runner in (("lmdb", peer_lmdb), ("sqlite", peer_sqlite)):
        work = tempfile.mkdtemp(prefix=f"viperdbm-scale-{name}-", dir=params["dir"])
        rec.begin(name)
        try:
            rec.end(name, runner(work, ops, keys, values))
        except ImportError as exc:
            rec.end(name, {"skipped": f"{type(exc).__name__}: {exc}"})
            say(f"peers: {name} not measured: {exc}")
        except Exception as exc:
            rec.end(name, {"error": f"{type(exc).__name__}: {exc}"})
            say(f"peers: {name} FAILED: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def peer_batches(ops: Ops, keys: Keys, values: list[bytes]) -> Iterator[list[tuple[bytes, bytes]]]:
    for b in range(ops.peer_batches):
        start = NS_SYNC_BATCH + b * ops.durable_batch
        yield list(
            zip(
                keys.range(start, start + ops.durable_batch),
                values_from(values, start, ops.durable_batch),
                strict=True,
            )
        )


def peer_lmdb(work: str, ops: Ops, keys: Keys, values: list[bytes]) -> Doc:
    lmdb: Any = importlib.import_module("lmdb")
    env = lmdb.open(work, map_size=1 << 32, sync=True, metasync=True)
    try:
        say(f"peers: lmdb {lmdb.__version__} (sync=True): {ops.peer_n:,} records first")
        with env.begin(write=True) as txn:
            for s, e in chunks(ops.peer_n, ops.chunk):
                for k, v in zip(keys.range(s, e), values_from(values, s, e - s), strict=True):
                    txn.put(k, v)
        lat: array.array[int] = array.array("q")
        ns = time.perf_counter_ns
        for s, e in chunks(ops.peer_puts, ops.durable_batch):
            pairs = zip(
                keys.range(NS_DURABLE + s, NS_DURABLE + e),
                values_from(values, s, e - s),
                strict=True,
            )
            for k, v in pairs:
                t0 = ns()
                with env.begin(write=True) as txn:
                    txn.put(k, v)
                lat.append(ns() - t0)
        per: list[float] = []
        for batch in peer_batches(ops, keys, values):
            t0f = time.perf_counter()
            with env.begin(write=True) as txn:
                for k, v in batch:
                    txn.put(k, v)
            per.append(time.perf_counter() - t0f)
        with env.begin() as txn:
            count = txn.stat()["entries"]
    finally:
        env.close()
    expected = ops.peer_n + ops.peer_puts + ops.peer_batches * ops.durable_batch
    if count != expected:
        raise RuntimeError(f"lmdb holds {count:,} records, expected {expected:,}")
    return peer_result(f"lmdb {lmdb.__version__}", lat, per, ops)


def peer_sqlite(work: str, ops: Ops, keys: Keys, values: list[bytes]) -> Doc:
    import sqlite3

    con = sqlite3.connect(os.path.join(work, "db.sqlite"), isolation_level=None)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        con.execute("PRAGMA synchronous=FULL")
        sync = con.execute("PRAGMA synchronous").fetchone()[0]
        if mode != "wal" or sync != 2:
            raise RuntimeError(f"SQLite is in journal_mode={mode}, synchronous={sync}")
        con.execute("CREATE TABLE kv (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL)")
        sql = (
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        say(f"peers: SQLite {sqlite3.sqlite_version} (WAL, FULL): {ops.peer_n:,} records first")
        con.execute("BEGIN")
        for s, e in chunks(ops.peer_n, ops.chunk):
            con.executemany(sql, zip(keys.range(s, e), values_from(values, s, e - s), strict=True))
        con.execute("COMMIT")
        lat: array.array[int] = array.array("q")
        ns = time.perf_counter_ns
        execute = con.execute
        for s, e in chunks(ops.peer_puts, ops.durable_batch):
            pairs = zip(
                keys.range(NS_DURABLE + s, NS_DURABLE + e),
                values_from(values, s, e - s),
                strict=True,
            )
            for k, v in pairs:
                t0 = ns()
                execute(sql, (k, v))  # autocommit: one transaction
                lat.append(ns() - t0)
        per: list[float] = []
        for batch in peer_batches(ops, keys, values):
            t0f = time.perf_counter()
            con.execute("BEGIN")
            con.executemany(sql, batch)
            con.execute("COMMIT")
            per.append(time.perf_counter() - t0f)
        count = con.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
    finally:
        con.close()
    expected = ops.peer_n + ops.peer_puts + ops.peer_batches * ops.durable_batch
    if count != expected:
        raise RuntimeError(f"SQLite holds {count:,} records, expected {expected:,}")
    return peer_result(f"SQLite {sqlite3.sqlite_version}", lat, per, ops)


def peer_result(version: str, lat: array.array[int], per: list[float], ops: Ops) -> Doc:
    puts = latency_summary(lat)
    rate = ops.peer_batches * ops.durable_batch / sum(per)
    say(f"peers: {version}: txn per put {fmt_rate(puts['rate'])}, per batch {fmt_rate(rate)}")
    return {
        "version": version,
        "n": ops.peer_n,
        "puts": puts,
        "batch_rate": rate,
        "batch_p50_s": statistics.median(per),
        "batches": ops.peer_batches,
    }


# --------------------------------------------------------------------------- the parent


def preflight(a: argparse.Namespace, ops: Ops) -> Doc:
    """What the largest N needs on disk and in RAM, against what there is."""
    biggest = max(a.n, a.small_n)
    written = (
        biggest
        + ops.puts
        + ops.updates
        + ops.deletes
        + ops.durable_puts
        + ops.durable_batch * (ops.sync_batches + ops.s_batches)
    )
    need_disk = int(written * BYTES_PER_RECORD_EST * 1.1) + (1 << 30)
    index_bytes = index_bytes_for(biggest + ops.puts)
    need_ram = index_bytes + (1 << 30)
    free_disk = shutil.disk_usage(a.dir).free
    avail = mem_available()
    out = {
        "records_written_at_largest_n": written,
        "need_disk": need_disk,
        "free_disk": free_disk,
        "need_ram": need_ram,
        "mem_available": avail,
        "pool_fits_in_page_cache": written * BYTES_PER_RECORD_EST < avail - need_ram,
        "problems": [],
    }
    if free_disk < need_disk:
        out["problems"].append(
            f"{a.dir} has {fmt_bytes(free_disk)} free; N = {biggest:,} needs about "
            f"{fmt_bytes(need_disk)} ({BYTES_PER_RECORD_EST} B/record, +10 %, +1 GiB)"
        )
    if avail < need_ram:
        out["problems"].append(
            f"MemAvailable is {fmt_bytes(avail)}; N = {biggest:,} needs about "
            f"{fmt_bytes(need_ram)} (the index, {fmt_bytes(index_bytes)}, +1 GiB)"
        )
    return out


def run_child(kind: str, params: Doc, env: dict[str, str]) -> tuple[int, Doc]:
    """Run this file as a child of the given kind; returns (exit status, its JSON)."""
    cmd = [sys.executable, __file__, "--child", kind, "--params", json.dumps(params)]
    proc = subprocess.run(cmd, env=env, check=False)
    doc: Doc = {}
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(Path(params["json"]).read_text())
    if proc.returncode != 0:
        why = (
            f"killed by signal {-proc.returncode}"
            + (" (SIGKILL: the kernel's OOM killer?)" if proc.returncode == -9 else "")
            if proc.returncode < 0
            else f"exit status {proc.returncode}"
        )
        doc.setdefault("error", {})
        doc["error"].setdefault("phase", (doc.get("in_progress") or {}).get("phase", "?"))
        doc["error"]["process"] = why
        say(f"{kind} child failed: {why}; phases done: {doc.get('phases_done')}")
    return proc.returncode, doc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="viperdbm at 100M records, beside 1M (issue 13).")
    p.add_argument("--n", type=int, help="records of the large store (default 100,000,000)")
    p.add_argument("--small-n", type=int, help="records of the small store (default 1,000,000)")
    p.add_argument("--dir", default="/tmp", help="where the stores go (ext4 here)")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="tiny N and op counts: a smoke test")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--child", choices=("run", "reopen", "peers"), help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.n is None:
        a.n = QUICK_N if a.quick else 100_000_000
    if a.small_n is None:
        a.small_n = QUICK_SMALL_N if a.quick else 1_000_000
    if a.out is None:
        # a smoke run never overwrites the day's real results
        a.out = (
            Path(tempfile.mkdtemp(prefix="viperdbm-scale-quick-")) if a.quick else HERE / "results"
        )
    if a.n < 1 or a.small_n < 1:
        p.error("--n and --small-n must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.child:
        params = json.loads(a.params)
        if a.child == "run":
            return ScaleRun(params).run()
        if a.child == "reopen":
            return child_reopen(params)
        return child_peers(params)
    return parent(a)


def parent(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE))
    suite: Any = importlib.import_module("run")  # machine facts, git state, package snapshot
    ops = QUICK_OPS if a.quick else FULL_OPS
    fs = suite.peers.fs_type(a.dir)
    pre = preflight(a, ops)
    say(
        f"N = {a.n:,} and {a.small_n:,}; {KEY_SIZE}-byte keys, {VALUE_SIZE}-byte values; "
        f"stores in {a.dir} ({fs}); free disk {fmt_bytes(pre['free_disk'])} (need about "
        f"{fmt_bytes(pre['need_disk'])}), MemAvailable {fmt_bytes(pre['mem_available'])} "
        f"(need about {fmt_bytes(pre['need_ram'])})"
    )
    if pre["problems"]:
        for problem in pre["problems"]:
            say(f"REFUSED: {problem}")
        say("free the space or memory, or pass a smaller --n")
        return 2
    if fs != "ext4":
        say(f"note: {a.dir} is {fs}, not ext4 (the issue's figures are on ext4)")
    meta: Doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "n": a.n,
        "small_n": a.small_n,
        "quick": a.quick,
        "seed": a.seed,
        "key_size": KEY_SIZE,
        "value_size": VALUE_SIZE,
        "ops": asdict(ops),
        "dir": a.dir,
        "fs": fs,
        "mount": suite.mount_of(a.dir),
        "preflight": pre,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "machine": suite.machine_facts(),
        "python": sys.version.split()[0],
        "checkout": suite.git_state(),
        "libpmemobj": suite.dpkg_version("libpmemobj1"),
        "other_cpus_busy": round(suite.cpu_busy(1.0) * (os.cpu_count() or 1), 1),
    }
    snapshot = tempfile.mkdtemp(prefix="viperdbm-scale-pkg-")
    work = tempfile.mkdtemp(prefix="viperdbm-scale-", dir=a.dir)
    results: Doc = {}
    status = 0
    t_run = time.monotonic()
    try:
        meta["package_digest"] = suite.snapshot_package(Path(snapshot))
        env = {**os.environ, "PYTHONPATH": snapshot}
        for label, n in (("small", a.small_n), ("large", a.n)):
            if label == "large":
                rc, doc = run_child(
                    "peers",
                    {
                        "ops": asdict(ops),
                        "seed": a.seed,
                        "dir": work,
                        "json": os.path.join(work, "peers.json"),
                    },
                    env,
                )
                results["peers"] = doc
                status |= rc != 0
            say(f"N = {n:,} ({label}) in a child process")
            rc, doc = run_child(
                "run",
                {
                    "n": n,
                    "label": label,
                    "ops": asdict(ops),
                    "seed": a.seed,
                    "store": os.path.join(work, f"store-{label}"),
                    "json": os.path.join(work, f"{label}.json"),
                },
                env,
            )
            results[label] = doc
            status |= rc != 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(snapshot, ignore_errors=True)
    meta["run_seconds"] = round(time.monotonic() - t_run, 1)
    meta["loadavg_after"] = suite.machine_facts()["loadavg"]
    verdicts = targets(results, a, ops)
    md = render(meta, results, verdicts)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"scale-{datetime.date.today().isoformat()}"
    doc = {"meta": meta, "results": results, "targets": verdicts}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    stem.with_suffix(".md").write_text(md)
    print(md, flush=True)
    say(f"wrote {stem}.md and {stem}.json ({meta['run_seconds']:.0f} s)")
    return 1 if status else 0


# --------------------------------------------------------------------------- verdicts


def get(doc: Doc, *path: str) -> Any:
    cur: Any = doc
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "not met"


def targets(res: Doc, a: argparse.Namespace, ops: Ops) -> list[Doc]:
    big, small, peers = res.get("large", {}), res.get("small", {}), res.get("peers", {})
    nb, ns = fmt_n(a.n), fmt_n(a.small_n)
    out: list[Doc] = []

    def add(target: str, figure: str, ratio: float | None, ok: bool | None, note: str = "") -> None:
        out.append(
            {
                "target": target,
                "figure": figure,
                "ratio": None if ratio is None else round(ratio, 3),
                "verdict": verdict(ok),
                "note": note,
            }
        )

    rb, rs = get(big, "single_puts", "rate"), get(small, "single_puts", "rate")
    ratio = rb / rs if rb and rs else None
    add(
        f"single puts at {nb} >= 0.5x their rate at {ns}",
        f"{fmt_rate(rb)} at {nb}, {fmt_rate(rs)} at {ns}",
        ratio,
        None if ratio is None else ratio >= 0.5,
    )

    # worst put latency from 0 to N: the timed single puts of both windows, and the build's
    # batches (a batch whose excess over the median is under 10 ms held no put over 10 ms)
    worst = [
        (int(w), int(get(d, "single_puts", "worst_n_at")))
        for d in (small, big)
        if (w := get(d, "single_puts", "max_ns")) is not None
    ]
    kinds = get(big, "build", "batches", "by_kind") or {}
    excess = max((float(k["max_excess_s"]) for k in kinds.values()), default=None)
    idx_excess = get(kinds, "index growth", "max_excess_s")
    w_ns, w_at = max(worst) if worst else (None, None)
    figure = f"worst timed put {fmt_ns(w_ns)} at N={w_at:,}" if w_at is not None else "n/a"
    note = (
        f"single puts timed from {a.small_n:,} to {a.small_n + ops.puts:,} and from "
        f"{a.n:,} to {a.n + ops.puts:,}; the build from 0 to {a.n:,} in update() batches: "
        f"worst batch excess over the median {fmt_ns(None if excess is None else excess * 1e9)}"
        + (
            f", in a batch where the index grew {fmt_ns(float(idx_excess) * 1e9)}"
            if idx_excess is not None
            else ""
        )
    )
    index_stall = idx_excess is not None and float(idx_excess) * 1e9 >= SLOW_NS[1]
    if w_ns is None:
        ok = None
    elif w_ns >= SLOW_NS[1] or index_stall:
        ok = False
    elif excess is not None and excess * 1e9 >= SLOW_NS[1]:
        ok, note = None, note + " (not shown either way: a slow batch, no single put timed)"
    else:
        ok = True
    add("worst put latency < 10 ms, 0 to N", figure, None if w_ns is None else w_ns / 1e7, ok, note)

    g = get(big, "gets", "rate")
    add(
        f"gets >= 1.2M/s at {nb}",
        fmt_rate(g),
        None if g is None else g / 1.2e6,
        None if g is None else g >= 1.2e6,
    )

    r = get(big, "reopen", "wall_s")
    cores = get(big, "reopen", "cores_used")
    ro = get(big, "reopen_read_only", "wall_s")
    add(
        f"reopen <= 8 s at {nb}",
        "n/a" if r is None else f"{r:.2f} s ({cores:.2f} cores)",
        None if r is None else r / 8.0,
        None if r is None else r <= 8.0,
        "" if ro is None else f"read-only ('r'): {ro:.2f} s",
    )

    points = [
        (where, v)
        for where, v in (
            ("after the build", get(big, "build", "index_bytes_per_key")),
            ("after the single puts", get(big, "single_puts", "index_bytes_per_key")),
            ("after reopen", get(big, "reopen", "index_bytes_per_key")),
        )
        if v is not None
    ]
    top = max(points, key=lambda p: float(p[1])) if points else None
    add(
        f"index <= 12 B/key at {nb}",
        "n/a" if top is None else ", ".join(f"{float(v):.1f} {w}" for w, v in points),
        None if top is None else float(top[1]) / 12.0,
        None if top is None else float(top[1]) <= 12.0,
        "the largest of the three counts",
    )

    vs = get(big, "durable", "puts", "rate")
    lm, sq = get(peers, "lmdb", "puts", "rate"), get(peers, "sqlite", "puts", "rate")
    lm_why = get(peers, "lmdb", "skipped") or get(peers, "lmdb", "error")
    ratio = vs / lm if vs and lm else None
    add(
        "durable one write at a time under 's' >= 1.5x lmdb's synced txn per put",
        f"viperdbm {fmt_rate(vs)} at {nb}; lmdb {fmt_rate(lm)}; SQLite {fmt_rate(sq)}",
        ratio,
        None if ratio is None else ratio >= 1.5,
        (f"lmdb not measured: {lm_why}; " if lm_why else "")
        + (f"{vs / sq:.2f}x SQLite's txn per put" if vs and sq else ""),
    )

    ub = get(big, "durable", "s_update_rate")
    lb, sb = get(peers, "lmdb", "batch_rate"), get(peers, "sqlite", "batch_rate")
    to_lmdb = ub / lb if ub and lb else None
    to_sqlite = ub / sb if ub and sb else None
    add(
        "atomic batches of 1,000 under 's' >= 1.5x lmdb's synced txn per batch, >= 5x SQLite's",
        f"viperdbm update() under 's' {fmt_rate(ub)} at {nb}; lmdb {fmt_rate(lb)}; "
        f"SQLite {fmt_rate(sb)}",
        to_lmdb,
        None if to_lmdb is None or to_sqlite is None else to_lmdb >= 1.5 and to_sqlite >= 5,
        (f"{to_sqlite:.2f}x SQLite's" if to_sqlite else "")
        + (f" (lmdb not measured: {lm_why})" if lm_why else ""),
    )
    return out


# --------------------------------------------------------------------------- the report


def n_table(d: Doc, n: int, ops: Ops) -> list[str]:
    """The figures of one N as markdown rows."""
    rows: list[tuple[str, str]] = []

    def row(what: str, figure: str) -> None:
        rows.append((what, figure))

    b = d.get("build")
    if b:
        row(
            f"build: update(), batches of {ops.batch:,}",
            f"{fmt_rate(b['rate'])} in the update() calls ({b['update_s']:.1f} s); "
            f"{fmt_rate(b['wall_rate'])} wall with making the keys",
        )
        ba = b["batches"]
        row(
            "build: update() call time",
            f"median {fmt_ns(ba['median_s'] * 1e9)}, slowest {fmt_ns(ba['max_s'] * 1e9)}",
        )
        for kind, k in sorted(ba["by_kind"].items()):
            row(
                f"build: worst excess over the median, batches with {kind}",
                f"{fmt_ns(k['max_excess_s'] * 1e9)} at N={k['at']:,} ({k['batches']} batches)",
            )
        row(
            "store on disk after the build",
            f"{fmt_bytes(b['disk_bytes'])} ({b['disk_bytes'] / n:.0f} B/record); pool "
            f"{fmt_bytes(b['stats'].get('pool_bytes'))}, {b['stats'].get('blocks')} blocks",
        )
        row(
            "index after the build",
            f"{index_shape(b['stats'])}, "
            f"{fmt_bytes(b['stats']['index_bytes'])}: {b['index_bytes_per_key']:.1f} B/key",
        )
        row(
            "RssAnon after the build",
            f"{fmt_bytes(b['rss_anon'])} (process start {fmt_bytes(d['rss_anon_start'])})",
        )
    p = d.get("single_puts")
    if p:
        row(
            f"single puts, {p['count']:,} new keys",
            f"{fmt_rate(p['rate'])} (sum of per-put times); {fmt_rate(p['wall_rate'])} wall "
            "with the timer calls",
        )
        row(
            "single put latency p50 / p99 / p99.99 / max",
            f"{fmt_ns(p['p50_ns'])} / {fmt_ns(p['p99_ns'])} / {fmt_ns(p['p9999_ns'])} / "
            f"**{fmt_ns(p['max_ns'])}** at N={p['worst_n_at']:,}",
        )
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(p["slow_by_kind"].items()))
        row(
            "single puts over 2 ms / over 10 ms",
            f"{p['over_2ms']} / {p['over_10ms']}" + (f" (over 2 ms: {kinds})" if kinds else ""),
        )
        for o in p["outliers"][:5]:
            row(
                f"slow put at N={o['n_at']:,}",
                f"{fmt_ns(o['ns'])}: {o['kind']} ("
                + ("; ".join(o["grew_in_1000"]) or "no counter changed")
                + " within its 1,000 puts)",
            )
        row(
            "index after the single puts",
            f"{index_shape(p['stats'])}, "
            f"{fmt_bytes(p['stats']['index_bytes'])}: {p['index_bytes_per_key']:.1f} B/key",
        )
        row("RssAnon after the single puts", fmt_bytes(p["rss_anon"]))
    for phase, what in (
        ("gets", "gets of existing keys, random order"),
        ("misses", "gets of absent keys"),
        ("updates", "updates of existing keys, random order"),
        ("deletes", "deletes of existing keys, random order"),
    ):
        x = d.get(phase)
        if x:
            row(f"{what} ({x['count']:,})", fmt_rate(x["rate"]))
    s = d.get("sync_batches")
    if s:
        row(
            f"update()+sync(), batches of {s['batch']:,}",
            f"{fmt_rate(s['rate'])} records; batch p50 {fmt_ns(s['batch_p50_s'] * 1e9)}, max "
            f"{fmt_ns(s['batch_max_s'] * 1e9)}; the first sync() after the phases "
            f"{s['first_sync_s']:.2f} s",
        )
    c = d.get("close")
    if c:
        row("close", f"{c['s']:.2f} s")
    r = d.get("reopen")
    if r:
        row(
            "reopen: open('w') + 1 get, fresh process",
            f"**{r['wall_s']:.2f} s** wall, {r['cpu_s']:.2f} s CPU: {r['cores_used']:.2f} cores "
            f"(rebuild_seconds {float(r['stats'].get('rebuild_seconds', 0)):.2f}; "
            f"{r['major_faults']} major faults; the scan reads every block: "
            f"{fmt_bytes(r['stats'].get('block_bytes'))} in {r['stats'].get('blocks')} blocks, "
            f"{fmt_bytes(r['stats'].get('dead_bytes'))} of it dead, "
            f"{int(r['stats'].get('tombstones', 0)):,} tombstones)",
        )
        row(
            "index after reopen",
            f"{index_shape(r['stats'])}, "
            f"{fmt_bytes(r['stats']['index_bytes'])}: {r['index_bytes_per_key']:.1f} B/key "
            f"({int(r['stats']['records']):,} keys)",
        )
        row(
            "RssAnon of the reopening process",
            f"{fmt_bytes(r['rss_anon_after'])} after the open ({fmt_bytes(r['rss_anon_before'])}"
            " before)",
        )
    u = d.get("durable")
    if u:
        row(
            "open('ws') (second reopen, same process)",
            f"{u['open_s']:.2f} s, {u['open_cpu_s'] / u['open_s']:.2f} cores",
        )
        q = u["puts"]
        row(
            f"durable single puts under 's' ({q['count']:,})",
            f"{fmt_rate(q['rate'])}; p50 {fmt_ns(q['p50_ns'])}, p99 {fmt_ns(q['p99_ns'])}, max "
            f"{fmt_ns(q['max_ns'])}",
        )
        row(
            f"update() under 's', batches of {ops.durable_batch:,} ({u['s_batches']})",
            f"{fmt_rate(u['s_update_rate'])} records (atomic batches, one msync each)",
        )
    cs = d.get("close_s")
    if cs:
        row("close ('s' store)", f"{cs['s']:.2f} s")
    err = d.get("error")
    if err:
        row(
            "**FAILED**",
            f"in phase {err.get('phase')}: {err.get('type', '')} {err.get('message', '')} "
            f"{err.get('process', '')} (at {err.get('at')})",
        )
    out = ["| | figure |", "|---|---|", *[f"| {w} | {f} |" for w, f in rows]]
    cpu = d.get("cpu") or {}
    if cpu:
        out += [
            "",
            "Each phase's wall time (with making its keys), this process's CPU use (1.00 = one "
            "core all the time; less: it waited, for the disk or for a core) and what other "
            "work used meanwhile (CPUs, from /proc/stat):",
            "",
            "| phase | wall | own cores | other work, CPUs |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {phase} | {c['wall_s']:.1f} s | {c['own_cores']:.2f} | {c['other_cpus']:.2f} |"
            for phase, c in cpu.items()
        ]
    return out


def render(meta: Doc, res: Doc, verdicts: list[Doc]) -> str:
    ops = Ops(**meta["ops"])
    m = meta["machine"]
    big, small = res.get("large", {}), res.get("small", {})
    lines = [
        f"# viperdbm at scale: N = {meta['n']:,} beside N = {meta['small_n']:,}",
        "",
        f"{meta['date']}; `benchmarks/scale.py {' '.join(meta['argv'])}`; {meta['checkout']} "
        f"(package copy sha256 {meta.get('package_digest', '?')}); libpmemobj "
        f"{meta['libpmemobj']}; Python {meta['python']}.",
        f"{KEY_SIZE}-byte keys, {VALUE_SIZE}-byte values; stores in {meta['dir']} "
        f"({meta['fs']}, {meta['mount'].get('source', '?')}); {m['cpu']}, "
        f"{meta['cpu_count']} cores ({meta['usable_cores']} usable), {m['ram_gib']:.1f} GiB RAM,"
        f" kernel {m['kernel']}; other work used {meta['other_cpus_busy']} CPUs at the start; "
        f"load average before / after {' '.join(m['loadavg'])} / "
        f"{' '.join(meta['loadavg_after'])}; the run took {meta['run_seconds'] / 60:.1f} min.",
        "",
        "## Targets (issue 13)",
        "",
        "| target | measured | ratio | verdict | note |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        ratio = "" if v["ratio"] is None else f"{v['ratio']:.2f}"
        lines.append(
            f"| {v['target']} | {v['figure']} | {ratio} | **{v['verdict']}** | {v['note']} |"
        )
    lines += [
        "",
        "Ratios are measured / threshold, or viperdbm / peer, or large N / small N as the "
        "target reads (the latency and index rows: measured / limit, > 1 is over it).",
        "",
        "## Side by side",
        "",
        f"| workload | N = {fmt_n(meta['small_n'])} | N = {fmt_n(meta['n'])} | large / small |",
        "|---|---|---|---|",
    ]
    for what, path in (
        ("build, update() batches", ("build", "rate")),
        ("single puts", ("single_puts", "rate")),
        ("gets", ("gets", "rate")),
        ("misses", ("misses", "rate")),
        ("updates", ("updates", "rate")),
        ("deletes", ("deletes", "rate")),
        ("update()+sync(), batches of 1,000", ("sync_batches", "rate")),
        ("single puts under 's'", ("durable", "puts", "rate")),
        ("update() under 's'", ("durable", "s_update_rate")),
    ):
        s, b = get(small, *path), get(big, *path)
        ratio = f"{b / s:.2f}" if s and b else ""
        lines.append(f"| {what} | {fmt_rate(s)} | {fmt_rate(b)} | {ratio} |")
    for what, path, fmt in (
        ("worst single put", ("single_puts", "max_ns"), fmt_ns),
        ("single put p99.99", ("single_puts", "p9999_ns"), fmt_ns),
        ("reopen (s)", ("reopen", "wall_s"), lambda x: f"{x:.2f} s"),
        ("reopen read-only (s)", ("reopen_read_only", "wall_s"), lambda x: f"{x:.2f} s"),
        (
            "index B/key after the single puts",
            ("single_puts", "index_bytes_per_key"),
            lambda x: f"{x:.1f}",
        ),
        ("RssAnon after the build", ("build", "rss_anon"), fmt_bytes),
        ("RssAnon after reopen", ("reopen", "rss_anon_after"), fmt_bytes),
    ):
        s, b = get(small, *path), get(big, *path)
        ratio = f"{b / s:.2f}" if s and b else ""
        lines.append(
            f"| {what} | {'n/a' if s is None else fmt(s)} | {'n/a' if b is None else fmt(b)} "
            f"| {ratio} |"
        )
    for label, n in (("small", meta["small_n"]), ("large", meta["n"])):
        lines += ["", f"## N = {n:,}", ""]
        lines += n_table(res.get(label, {}), n, ops)
    lines += ["", "## Durable writes: viperdbm against the peers", ""]
    peers = res.get("peers", {})
    lines += [
        "| store, write | records/s | p50 / max per put | durability class |",
        "|---|---|---|---|",
    ]
    for label, n in (("small", meta["small_n"]), ("large", meta["n"])):
        d = res.get(label, {})
        q = get(d, "durable", "puts")
        if q:
            lines.append(
                f"| viperdbm at {fmt_n(n)}, single puts under 's' | {fmt_rate(q['rate'])} | "
                f"{fmt_ns(q['p50_ns'])} / {fmt_ns(q['max_ns'])} | "
                f"{DURABILITY['viperdbm s put']} |"
            )
        r = get(d, "durable", "s_update_rate")
        if r:
            lines.append(
                f"| viperdbm at {fmt_n(n)}, update() of 1,000 under 's' | {fmt_rate(r)} | | "
                f"{DURABILITY['viperdbm s update()']} |"
            )
        r = get(d, "sync_batches", "rate")
        if r:
            lines.append(
                f"| viperdbm at {fmt_n(n)}, update() of 1,000 + sync() | {fmt_rate(r)} | | "
                f"{DURABILITY['viperdbm update()+sync()']} |"
            )
    for name in ("lmdb", "sqlite"):
        x = peers.get(name, {})
        why = x.get("skipped") or x.get("error")
        if why or not x:
            lines.append(f"| {name} | not measured: {why or 'no result'} | | |")
            continue
        q = x["puts"]
        lines.append(
            f"| {x['version']} at {fmt_n(x['n'])}, txn per put | {fmt_rate(q['rate'])} | "
            f"{fmt_ns(q['p50_ns'])} / {fmt_ns(q['max_ns'])} | {DURABILITY[name + ' txn per put']} |"
        )
        lines.append(
            f"| {x['version']} at {fmt_n(x['n'])}, txn per batch of {ops.durable_batch:,} | "
            f"{fmt_rate(x['batch_rate'])} | | {DURABILITY[name + ' txn per batch']} |"
        )
    pre = meta["preflight"]
    lines += [
        "",
        "## Method",
        "",
        "Each N runs in a fresh child process (a copy of the package taken at the start); "
        "the phases run in the order of the tables on one store, so the gets, misses, "
        f"updates and deletes run on N + {ops.puts:,} records. Rates count only the store's "
        "calls: the keys (a bijection of a counter, 16 bytes) are made between timed chunks. "
        "Single puts are timed one by one with `perf_counter_ns` (their rate is puts / the "
        "sum of the per-put times; the wall rate includes the timer calls); `stats()` is read "
        f"after every {STATS_EVERY:,} puts, so a slow put is matched to what grew within its "
        "1,000 puts (index growth, pool growth, a block added; 'nothing grew' leaves page "
        "faults, the kernel's writeback throttling, scheduling). The build is timed per "
        "update() call, so its 0..N range shows stalls only as a batch slower than the "
        "median: the excess bounds from above what any single put inside it waited. "
        "Reopen runs in a fresh process: `open(path, 'w')` plus one get; cores = process "
        "CPU time (every thread) / wall. The pool was just written, so the reopen reads it "
        "from the page cache "
        + (
            "(it fits in RAM here)."
            if pre.get("pool_fits_in_page_cache")
            else "as far as it fits (it may not fit in RAM here)."
        )
        + " The index is a directory of segments, each open addressing with 8-byte slots; "
        "a segment grows by 1/8 when 4/5 full, and past 65,536 slots splits in two (one "
        "growth touches one segment): index B/key = stats()['index_bytes'] / records "
        "(slots, segment headers and the directory), between 10 and 11.3 once a segment is "
        "past 4,096 slots.",
        "",
        f"The peers run on a store of {ops.peer_n:,} records (their cost per write is the "
        f"sync), {ops.peer_puts:,} puts each in its own transaction, then "
        f"{ops.peer_batches} transactions of {ops.durable_batch:,} puts; viperdbm's durable "
        f"figures are on its N-record store: {ops.durable_puts:,} puts under 's', "
        f"{ops.s_batches} update() calls of {ops.durable_batch:,} under 's', and "
        f"{ops.sync_batches} update() + sync() pairs under 'n'.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
