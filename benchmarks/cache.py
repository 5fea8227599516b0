#!/usr/bin/env python3
"""cache.py -- viperdbm.cache.Cache against diskcache.Cache, in diskcache's own benchmark
shape (its tests/benchmark_core.py): a mix of get/set/delete on random keys, the latency of
every operation taken with a high-resolution timer, reported as median, 90th, 99th and
99.9th percentile, max and total, by 1 and by 8 workers (threads here, processes there).

    python benchmarks/cache.py                       # the full run, stores on /dev/shm (~1.5 min)
    python benchmarks/cache.py --dir /tmp            # the same on /tmp (ext4 here)
    python benchmarks/cache.py --quick --out /tmp/x  # a smoke run of a few thousand ops, ~7 s

Three stores, each with expiry on (every item is stored for an hour), each in a fresh child
process (multiprocessing, spawn) per thread count, all in one run on the same operations:

  viperdbm            viperdbm.cache.Cache(path, expire=3600); set(key, value, expire=3600)
  viperdbm+limit      the same with size_limit=1 GiB: a bound far above the data, so the
                      size ledger runs on every write but nothing is evicted (checked)
  diskcache           diskcache.Cache(path) (its defaults: size_limit 1 GiB,
                      least-recently-stored eviction); set(key, value, expire=3600)

Keys are --keys distinct 12-byte bytes keys (b"key-00000042"); every value is a small dict
{"id": int, "payload": 985 random bytes} whose pickle is 1 KiB (1,024 bytes at protocol 5):
an object both stores must pickle (diskcache stores bytes and str values raw, unpickled).
Phases, in this order, each split evenly over the threads (each thread its own share, its
own random keys from the fixed --seed), every latency of every thread gathered:

  fill      every key once, in a random order (one thread; inserts of new keys)
  warm-up   --warmup operations per thread, 90 % get / 10 % set, not recorded
  set       --sets sets of random existing keys (updates)
  get       --gets gets of random keys, all present (hits; checked)
  delete    --deletes distinct existing keys, each deleted once (hits; checked)
  mix       --mix operations, 90 % get / 9 % set / 1 % delete on random keys, as diskcache's
            benchmark (misses are the keys deleted before)

Each viperdbm job runs --repeat times (3; fresh processes, spread over the run) and each
statistic is the median of the runs'; diskcache's jobs run --peer-repeat times (1), as the
suite's run.py takes medians of 3 for its headline stores only.

Each operation is timed alone: ``t0 = perf_counter_ns(); store.get(key); t1 = ...``; the
median cost of the two clock calls themselves is reported (not subtracted). Percentiles are
diskcache's (``sorted(values)[int(len(values) * p) - 1]``). Ratios are diskcache / viperdbm,
so > 1 means viperdbm is faster; the issue's targets are viperdbm >= 20x faster on set and
>= 5x on get, in median latency (p99 ratio shown beside). With 8 threads CPython's GIL
serializes the Python parts of both stores: the per-op latency then includes waiting for
the GIL (viperdbm's native calls hold it; SQLite releases it while it works).

A call that raises is counted as an error of its action (and left out of the latencies),
the run goes on, and the report lists it under "Problems"; so do failed checks (gets or
deletes of present keys that miss, item counts after the get and delete phases). The exit
status is then 1.

Writes <out>/cache-<date>.json and .md (cache-<date>-<fs>.* when the store is not on tmpfs)
and prints the tables; progress lines go to stderr. Each report names the commit and a
digest of the copy of the package every child imported (taken when the run started).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import importlib
import json
import multiprocessing
import os
import pickle
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# The suite next to this file (machine facts, git state, the package snapshot, fs types).
# Imported by name at run time, so that mypy checks this file alone (run.py and peers.py
# are checked with the rest of benchmarks/ by `make lint`).
suite: Any = importlib.import_module("run")

SEED = 20240601
EXPIRE = 3600.0  # seconds: nothing expires during a run
SIZE_LIMIT = 2**30  # viperdbm+limit's bound: diskcache's default size_limit
VALUE_POOL = 256  # distinct values, made before any timing
PICKLE_SIZE = 1024  # bytes of each value's pickle (protocol 5), by the payload's size
GET, SET, DELETE = 0, 1, 2
ACTIONS = ("get", "set", "delete")
PHASES = ("fill", "set", "get", "delete", "mix")
MIX = (0.90, 0.99)  # get below the first, set below the second, delete above (diskcache's)
THREADS = (1, 8)
TARGETS = {"set": 20.0, "get": 5.0}  # the issue: diskcache / viperdbm median latency
PROGRESS_EVERY = 2.0  # seconds between two progress lines of a long single-thread loop

VIPERDBM_DURABILITY = (
    "every write survives a process crash; power-fail durable only at sync()/close() or "
    "with flag 's'"
)
VIPERDBM_NOTE = (
    "viperdbm.cache.Cache over viperdbm.open(path, 'c'): one store write per set/delete "
    "(the item's header and pickle in one record), no sync() during the run"
)


@dataclass(frozen=True)
class StoreKind:
    name: str
    variant: str
    durability: str
    note: str


STORES = {
    "viperdbm": StoreKind(
        "viperdbm",
        f"Cache(path, expire={EXPIRE:.0f})",
        VIPERDBM_DURABILITY,
        VIPERDBM_NOTE,
    ),
    "viperdbm+limit": StoreKind(
        "viperdbm+limit",
        f"Cache(path, expire={EXPIRE:.0f}, size_limit=1 GiB)",
        VIPERDBM_DURABILITY,
        VIPERDBM_NOTE + "; the size ledger is kept on every write, nothing is evicted",
    ),
    # class and note as in the team's peers.py (DiskcacheAdapter)
    "diskcache": StoreKind(
        "diskcache",
        "Cache(path) defaults (size_limit 1 GiB)",
        "survives process crash (page cache), fsync at WAL checkpoints only",
        "diskcache.Cache: SQLite in WAL mode with synchronous=NORMAL, one transaction per "
        "set/delete; commits are not fsynced (a power loss may roll back the last ones), "
        "values under 32 KiB stored inline; size_limit 1 GiB with eviction",
    ),
}
VIPERDBM_STORES = ("viperdbm", "viperdbm+limit")


def say(text: str) -> None:
    print(f"cache.py: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the data


def make_keys(n: int) -> list[bytes]:
    return [b"key-%08d" % i for i in range(n)]


def make_values(seed: int) -> list[dict[str, Any]]:
    """VALUE_POOL dicts, each pickling to PICKLE_SIZE bytes at protocol 5."""
    rng = random.Random(f"{seed}:values")
    overhead = len(pickle.dumps({"id": 0, "payload": b""}, 5))
    size = PICKLE_SIZE - overhead - 3  # bytes of 256+ take a 4-byte length, not 1
    values = [{"id": i, "payload": rng.randbytes(size)} for i in range(VALUE_POOL)]
    assert all(len(pickle.dumps(v, 5)) == PICKLE_SIZE for v in values)
    return values


Op = tuple[int, bytes, Any]


def share(total: int, threads: int, t: int) -> int:
    return total // threads + (1 if t < total % threads else 0)


def random_ops(
    total: int,
    threads: int,
    t: int,
    tag: str,
    seed: int,
    keys: list[bytes],
    values: list[dict[str, Any]],
    mix: tuple[float, float],
) -> list[Op]:
    """Thread t's share of ``total`` operations on random keys: get below mix[0], set below
    mix[1], delete above; the same for the same seed, tag and thread count."""
    rng = random.Random(f"{seed}:{tag}:{threads}:{t}")
    n = len(keys)
    ops: list[Op] = []
    for i in range(share(total, threads, t)):
        key = keys[rng.randrange(n)]
        choice = rng.random()
        if choice < mix[0]:
            ops.append((GET, key, None))
        elif choice < mix[1]:
            ops.append((SET, key, values[(i + t) % VALUE_POOL]))
        else:
            ops.append((DELETE, key, None))
    return ops


# --------------------------------------------------------------------------- the child


class CacheLike(Protocol):
    """What the benchmark calls: the same names and meaning in both stores."""

    def get(self, key: bytes) -> Any: ...

    def set(self, key: bytes, value: Any, expire: float) -> Any: ...

    def delete(self, key: bytes) -> bool: ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...


def open_store(kind: str, path: str) -> CacheLike:
    if kind == "diskcache":
        import diskcache  # type: ignore[import-untyped]

        dc: CacheLike = diskcache.Cache(path)
        return dc
    from viperdbm.cache import Cache

    limit = SIZE_LIMIT if kind == "viperdbm+limit" else None
    return Cache(path, expire=EXPIRE, size_limit=limit)


@dataclass
class Timings:
    """One thread's latencies (ns), misses and errors, by action."""

    lat: tuple[list[int], list[int], list[int]] = field(default_factory=lambda: ([], [], []))
    miss: list[int] = field(default_factory=lambda: [0, 0, 0])
    errors: list[int] = field(default_factory=lambda: [0, 0, 0])
    messages: list[str] = field(default_factory=list)

    def error(self, action: int, exc: Exception) -> None:
        """An op that raised: counted (not timed), its message kept, and the run goes on."""
        self.errors[action] += 1
        text = f"{ACTIONS[action]}: {type(exc).__name__}: {exc}"
        if len(self.messages) < 5 and text not in self.messages:
            self.messages.append(text)


def timed_ops(store: CacheLike, ops: list[Op], out: Timings) -> None:
    """The loop of every thread: each call timed on its own (diskcache's shape). An op that
    raises is counted as an error of its action and left out of the latencies."""
    get, put, delete = store.get, store.set, store.delete
    clock = time.perf_counter_ns
    gets, sets, deletes = out.lat
    miss = out.miss
    for action, key, value in ops:
        if action == GET:
            try:
                t0 = clock()
                result = get(key)
                t1 = clock()
            except Exception as exc:
                out.error(GET, exc)
                continue
            gets.append(t1 - t0)
            if result is None:
                miss[GET] += 1
        elif action == SET:
            try:
                t0 = clock()
                result = put(key, value, expire=EXPIRE)
                t1 = clock()
            except Exception as exc:
                out.error(SET, exc)
                continue
            sets.append(t1 - t0)
            if result is False:
                miss[SET] += 1
        else:
            try:
                t0 = clock()
                result = delete(key)
                t1 = clock()
            except Exception as exc:
                out.error(DELETE, exc)
                continue
            deletes.append(t1 - t0)
            if not result:
                miss[DELETE] += 1


def percentile(values: list[int], p: float) -> int:
    """diskcache's tests/utils.py percentile() of sorted values."""
    if p == 0:
        return values[0]
    return values[max(0, int(len(values) * p) - 1)]


def summarize(values: list[int], misses: int, errors: int = 0) -> dict[str, Any]:
    values.sort()
    if not values:
        return {"count": 0, "miss": misses, "errors": errors}
    return {
        "count": len(values),
        "miss": misses,
        "errors": errors,
        "min_ns": percentile(values, 0.0),
        "p50_ns": percentile(values, 0.5),
        "p90_ns": percentile(values, 0.9),
        "p99_ns": percentile(values, 0.99),
        "p999_ns": percentile(values, 0.999),
        "max_ns": percentile(values, 1.0),
        "total_ns": sum(values),
    }


def run_phase(store: CacheLike, per_thread: list[list[Op]]) -> dict[str, Any]:
    """Every thread runs its ops at once (they start together at a barrier); the wall time
    is from the barrier to the last thread's end."""
    outs = [Timings() for _ in per_thread]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(per_thread) + 1)

    def body(i: int) -> None:
        try:
            barrier.wait()
            timed_ops(store, per_thread[i], outs[i])
        except BaseException as exc:  # re-raised below, in the phase's own thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(per_thread))]
    for th in threads:
        th.start()
    barrier.wait()
    u0 = Usage.now()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    used = Usage.now() - u0
    if errors:
        raise errors[0]
    actions: dict[str, Any] = {}
    for a, name in enumerate(ACTIONS):
        merged = [x for o in outs for x in o.lat[a]]
        raised = sum(o.errors[a] for o in outs)
        if merged or raised:
            actions[name] = summarize(merged, sum(o.miss[a] for o in outs), raised)
    ops = sum(len(p) for p in per_thread)
    messages = sorted({m for o in outs for m in o.messages})
    return {
        "errors": messages,
        "ops": ops,
        "wall_s": wall,
        "ops_per_s": ops / wall,
        "actions": actions,
        **used.per(ops),
    }


@dataclass(frozen=True)
class Usage:
    """This process's CPU time (all threads) and context switches, from getrusage."""

    cpu_s: float
    voluntary: int
    involuntary: int

    @classmethod
    def now(cls) -> Usage:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return cls(r.ru_utime + r.ru_stime, r.ru_nvcsw, r.ru_nivcsw)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_s - other.cpu_s,
            self.voluntary - other.voluntary,
            self.involuntary - other.involuntary,
        )

    def per(self, ops: int) -> dict[str, float]:
        """CPU microseconds and context switches per op: a thread that waits for a lock
        held by a thread the GIL preempted switches voluntarily."""
        return {
            "cpu_us_per_op": self.cpu_s * 1e6 / ops,
            "voluntary_switches_per_op": self.voluntary / ops,
            "involuntary_switches_per_op": self.involuntary / ops,
        }


def timer_overhead_ns() -> int:
    clock = time.perf_counter_ns
    pairs = []
    for _ in range(20_000):
        t0 = clock()
        t1 = clock()
        pairs.append(t1 - t0)
    return int(statistics.median(pairs))


def run_job(params: dict[str, Any]) -> dict[str, Any]:
    """One store with one thread count, in a fresh process: every phase, checked."""
    kind: str = params["store"]
    threads: int = params["threads"]
    seed: int = params["seed"]
    label = f"{params['label']} {kind}, {threads} thread{'s' if threads > 1 else ''}"
    keys = make_keys(params["keys"])
    values = make_values(seed)
    n = len(keys)
    work = tempfile.mkdtemp(prefix="viperdbm-cache-bench-", dir=params["dir"])
    out: dict[str, Any] = {"store": kind, "threads": threads, "phases": {}, "checks": {}}
    try:
        store = open_store(kind, os.path.join(work, "cache"))
        try:
            import viperdbm

            out["viperdbm_module"] = os.path.dirname(viperdbm.__file__ or "?")
            out["timer_overhead_ns"] = timer_overhead_ns()
            phases: dict[str, Any] = out["phases"]

            def phase(name: str, per_thread: list[list[Op]]) -> dict[str, Any]:
                total = sum(len(p) for p in per_thread)
                say(f"  {label}: {name}, {total:,} ops")
                result = run_phase(store, per_thread)
                say(
                    f"  {label}: {name} done in {result['wall_s']:.1f} s "
                    f"({result['ops_per_s']:,.0f} ops/s)"
                )
                return result

            # fill: every key once, one thread, in chunks between which progress is shown
            order = list(range(n))
            random.Random(f"{seed}:fill").shuffle(order)
            fill_ops = [(SET, keys[i], values[i % VALUE_POOL]) for i in order]
            say(f"  {label}: fill, {n:,} keys")
            fill_out = Timings()
            u0 = Usage.now()
            t0 = time.perf_counter()
            next_report = time.monotonic() + PROGRESS_EVERY
            for start in range(0, n, 1_000):
                timed_ops(store, fill_ops[start : start + 1_000], fill_out)
                if time.monotonic() > next_report:
                    say(f"  {label}: fill, {min(start + 1_000, n):,} of {n:,}")
                    next_report += PROGRESS_EVERY
            wall = time.perf_counter() - t0
            phases["fill"] = {
                "ops": n,
                "wall_s": wall,
                "ops_per_s": n / wall,
                "actions": {
                    "set": summarize(fill_out.lat[SET], fill_out.miss[SET], fill_out.errors[SET])
                },
                "errors": fill_out.messages,
                **(Usage.now() - u0).per(n),
            }
            say(f"  {label}: fill done in {wall:.1f} s ({n / wall:,.0f} ops/s)")
            probe = store.get(keys[0])
            if probe != values[0]:
                raise RuntimeError(f"{kind}: the first key reads back {probe!r:.60}")

            def ops(tag: str, total: int, mix: tuple[float, float]) -> list[list[Op]]:
                return [
                    random_ops(total, threads, t, tag, seed, keys, values, mix)
                    for t in range(threads)
                ]

            run_phase(store, ops("warmup", params["warmup"] * threads, (0.9, 1.0)))
            phases["set"] = phase("set", ops("set", params["sets"], (0.0, 1.0)))
            phases["get"] = phase("get", ops("get", params["gets"], (1.0, 1.0)))
            out["checks"]["get_misses"] = phases["get"]["actions"]["get"]["miss"]
            out["checks"]["len_after_get"] = len(store)
            chosen = random.Random(f"{seed}:delete").sample(range(n), params["deletes"])
            phases["delete"] = phase(
                "delete",
                [[(DELETE, keys[i], None) for i in chosen[t::threads]] for t in range(threads)],
            )
            out["checks"]["delete_misses"] = phases["delete"]["actions"]["delete"]["miss"]
            out["checks"]["len_after_delete"] = len(store)
            phases["mix"] = phase("mix", ops("mix", params["mix"], MIX))
            if kind != "diskcache":
                stats = store.stats()  # type: ignore[attr-defined]
                out["checks"]["cache_stats"] = {"hits": stats.hits, "misses": stats.misses}
                if kind == "viperdbm+limit":
                    out["checks"]["volume"] = store.volume()  # type: ignore[attr-defined]
            out["checks"]["len_at_end"] = len(store)
        finally:
            store.close()
        out["checks"]["store_bytes"] = du(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    problems = []
    if out["checks"]["get_misses"]:
        problems.append(f"{out['checks']['get_misses']} gets of present keys missed")
    if out["checks"]["len_after_get"] != n:
        problems.append(f"{out['checks']['len_after_get']:,} items after the gets, not {n:,}")
    if out["checks"]["delete_misses"]:
        problems.append(f"{out['checks']['delete_misses']} deletes of present keys missed")
    if out["checks"]["len_after_delete"] != n - params["deletes"]:
        problems.append(f"{out['checks']['len_after_delete']:,} items after the deletes")
    for name, ph in out["phases"].items():
        problems += [f"{name} phase: {m}" for m in ph["errors"]]
        for action, summary in ph["actions"].items():
            if summary["errors"]:
                problems.append(f"{name} phase: {summary['errors']:,} {action} calls raised")
    out["problems"] = problems
    for p in problems:
        say(f"  {label}: PROBLEM: {p}")
    return out


def du(path: str) -> int:
    """Allocated bytes of the files under path."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def child_versions() -> dict[str, str]:
    import sqlite3

    import diskcache

    import viperdbm

    return {
        "viperdbm": str(getattr(viperdbm, "__version__", "?")),
        "diskcache": str(diskcache.__version__),
        "sqlite": sqlite3.sqlite_version,
        "python": sys.version.split()[0],
        "python_build": " ".join(sys.version.split()[1:]),
        "gil_switch_interval_s": str(sys.getswitchinterval()),
    }


def run_in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a fresh process (spawn): no store shares a heap, a GC or a page cache
    warm-up of the process with another."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


RATES = ("wall_s", "ops_per_s", "cpu_us_per_op")
SWITCHES = ("voluntary_switches_per_op", "involuntary_switches_per_op")


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One job's runs as one: every timing statistic is the median of the runs' (a run is
    a fresh process; on a shared machine one of them can be slow throughout); counts and
    misses are the first run's, errors and problems those of all runs. The runs are kept
    under "runs"; "p50_ns_runs" lists each run's median."""
    first = runs[0]
    out = {**first, "repeats": len(runs), "problems": [p for r in runs for p in r["problems"]]}
    if len(runs) == 1:
        return out
    out["runs"] = runs
    phases: dict[str, Any] = {}
    for name, ph in first["phases"].items():
        each = [r["phases"][name] for r in runs]
        merged: dict[str, Any] = {
            k: statistics.median(e[k] for e in each) for k in RATES + SWITCHES
        }
        merged["ops"] = ph["ops"]
        merged["errors"] = sorted({m for e in each for m in e["errors"]})
        actions: dict[str, Any] = {}
        for action, summary in ph["actions"].items():
            sums = [e["actions"][action] for e in each if action in e["actions"]]
            m = {
                k: statistics.median(x[k] for x in sums)
                for k in summary
                if k.endswith("_ns") and all(k in x for x in sums)
            }
            m.update(
                count=summary["count"],
                miss=summary["miss"],
                errors=sum(x["errors"] for x in sums),
                p50_ns_runs=[x.get("p50_ns") for x in sums],
            )
            actions[action] = m
        merged["actions"] = actions
        phases[name] = merged
    out["phases"] = phases
    return out


# --------------------------------------------------------------------------- the report


def us(ns: float | None) -> str:
    if ns is None:
        return "n/a"
    v = ns / 1e3
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def secs(ns: float) -> str:
    """diskcache's utils.secs(): the value in the largest unit it is at least 1 of."""
    value = ns / 1e9
    for unit in ("s", "ms", "us", "ns"):
        if value > 1 or unit == "ns":
            return f"{value:.3f}{unit}"
        value *= 1000
    return "?"


Results = dict[tuple[str, int], dict[str, Any]]

# (row label, phase, action): what the latency and ratio tables show, in their order
ROWS = (
    ("set (set phase)", "set", "set"),
    ("get (get phase)", "get", "get"),
    ("delete (delete phase)", "delete", "delete"),
    ("get (mix 90/9/1)", "mix", "get"),
    ("set (mix 90/9/1)", "mix", "set"),
    ("delete (mix 90/9/1)", "mix", "delete"),
    ("set of a new key (fill, 1 thread)", "fill", "set"),
)


def stat(res: Results, store: str, threads: int, phase: str, action: str, key: str) -> float | None:
    job = res.get((store, threads))
    if job is None:
        return None
    summary = job["phases"].get(phase, {}).get("actions", {}).get(action)
    return None if summary is None else float(summary[key])


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def latency_cell(res: Results, store: str, threads: int, phase: str, action: str) -> str:
    p50 = stat(res, store, threads, phase, action, "p50_ns")
    p99 = stat(res, store, threads, phase, action, "p99_ns")
    raised = int(stat(res, store, threads, phase, action, "errors") or 0)
    return f"{us(p50)} / {us(p99)}" + (f" ({raised:,} raised)" if raised else "")


def ratio_cell(res: Results, store: str, threads: int, phase: str, action: str) -> str:
    r50, r99 = (
        ratio(
            stat(res, "diskcache", threads, phase, action, key),
            stat(res, store, threads, phase, action, key),
        )
        for key in ("p50_ns", "p99_ns")
    )
    return f"**{fmt_ratio(r50)}** ({fmt_ratio(r99)})"


def latency_table(res: Results, threads_list: tuple[int, ...]) -> list[str]:
    out = [
        "| operation | threads | viperdbm p50 / p99 | viperdbm+limit p50 / p99 "
        "| diskcache p50 / p99 | ratio p50 (p99) vs viperdbm "
        "| ratio p50 (p99) vs viperdbm+limit |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, phase, action in ROWS:
        for threads in threads_list:
            if phase == "fill" and threads != threads_list[0]:
                continue  # one thread fills in every job: shown for the first job only
            at = (threads, phase, action)
            out.append(
                f"| {label} | {threads} | {latency_cell(res, 'viperdbm', *at)} "
                f"| {latency_cell(res, 'viperdbm+limit', *at)} "
                f"| {latency_cell(res, 'diskcache', *at)} "
                f"| {ratio_cell(res, 'viperdbm', *at)} "
                f"| {ratio_cell(res, 'viperdbm+limit', *at)} |"
            )
    return out


@dataclass
class Verdict:
    target: str
    threads: int
    store: str
    median_ratio: float | None
    p99_ratio: float | None
    at_least: float
    errors: int = 0

    @property
    def verdict(self) -> str:
        if self.median_ratio is None:
            return "not measured"
        met = "met" if self.median_ratio >= self.at_least else "not met"
        return f"{met} ({self.errors:,} calls raised)" if self.errors else met


def verdicts(res: Results, threads_list: tuple[int, ...]) -> list[Verdict]:
    out = []
    for action, at_least in TARGETS.items():
        for threads in threads_list:
            for store in VIPERDBM_STORES:
                r = [
                    ratio(
                        stat(res, "diskcache", threads, action, action, key),
                        stat(res, store, threads, action, action, key),
                    )
                    for key in ("p50_ns", "p99_ns")
                ]
                raised = sum(
                    int(stat(res, s, threads, action, action, "errors") or 0)
                    for s in (store, "diskcache")
                )
                target = f"{action}: viperdbm >= {at_least:.0f}x faster (median)"
                out.append(Verdict(target, threads, store, r[0], r[1], at_least, raised))
    return out


def verdict_table(vs: list[Verdict]) -> list[str]:
    out = [
        "| target (issue) | threads | viperdbm variant | median ratio | p99 ratio | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in vs:
        out.append(
            f"| {v.target} | {v.threads} | {v.store} | {fmt_ratio(v.median_ratio)} "
            f"| {fmt_ratio(v.p99_ratio)} | **{v.verdict}** |"
        )
    return out


def rate_table(res: Results, stores: tuple[str, ...], threads_list: tuple[int, ...]) -> list[str]:
    out = [
        "| phase | threads | " + " | ".join(stores) + " |",
        "|---|---|" + "---|" * len(stores),
    ]
    for phase in PHASES:
        for threads in threads_list:
            if phase == "fill" and threads != threads_list[0]:
                continue  # the fill is one thread in every job: shown once
            cells = []
            for store in stores:
                job = res.get((store, threads))
                if job is None:
                    cells.append("n/a")
                    continue
                ph = job["phases"][phase]
                cells.append(
                    f"{ph['ops_per_s']:,.0f} ({ph['cpu_us_per_op']:.1f} / "
                    f"{ph['voluntary_switches_per_op']:.2f})"
                )
            shown = "1" if phase == "fill" else str(threads)
            out.append(f"| {phase} | {shown} | " + " | ".join(cells) + " |")
    return out


def detail_table(job: dict[str, Any]) -> list[str]:
    """diskcache's display(): Action, Count, Miss, Min, P50, P90, P99, P999, Max, Total
    (and the calls that raised)."""
    out = [
        "| phase | action | count | miss | errors | min | p50 | p90 | p99 | p999 | max | total |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("min_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns", "total_ns")
    for phase in PHASES:
        ph = job["phases"].get(phase)
        if ph is None:
            continue
        for action in ACTIONS:
            s = ph["actions"].get(action)
            if s is None:
                continue
            cells = [secs(s[k]) if k in s else "n/a" for k in keys]
            if "p50_ns_runs" in s:  # a median of runs: each run's p50 beside
                cells[1] += " (" + ", ".join(us(x) for x in s["p50_ns_runs"]) + ")"
            out.append(
                f"| {phase} | {action} | {s['count']:,} | {s['miss']:,} | {s['errors']:,} | "
                + " | ".join(cells)
                + " |"
            )
    return out


def plain_table(md: list[str]) -> str:
    """A markdown table as aligned plain text, for the terminal."""
    rows = [[c.strip().replace("**", "") for c in ln.strip("|").split("|")] for ln in md]
    rows = [r for r in rows if not all(set(c) <= {"-"} for c in r)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# --------------------------------------------------------------------------- the parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="viperdbm.cache.Cache against diskcache.Cache: per-op latency, 1 and 8 threads."
    )
    p.add_argument("--dir", default="/dev/shm", help="where the stores go (default: tmpfs)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    p.add_argument("--keys", type=int, default=50_000, help="distinct keys (all filled first)")
    p.add_argument("--sets", type=int, default=50_000, help="ops of the set phase")
    p.add_argument("--gets", type=int, default=100_000, help="ops of the get phase")
    p.add_argument("--deletes", type=int, default=5_000, help="ops of the delete phase")
    p.add_argument("--mix", type=int, default=100_000, help="ops of the 90/9/1 mix phase")
    p.add_argument("--warmup", type=int, default=1_000, help="unrecorded ops per thread")
    p.add_argument("--threads", type=int, nargs="+", default=list(THREADS), help="thread counts")
    p.add_argument("--seed", type=int, default=SEED, help="seed of every key choice")
    p.add_argument(
        "--stores", nargs="+", default=list(STORES), choices=list(STORES), help="stores to run"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs (fresh processes) of each viperdbm job; figures are medians over them",
    )
    p.add_argument("--peer-repeat", type=int, default=1, help="runs of each diskcache job")
    p.add_argument("--quick", action="store_true", help="a smoke run: a few thousand ops")
    a = p.parse_args(argv)
    if a.quick:
        a.keys, a.sets, a.gets, a.deletes, a.mix, a.warmup = 1_000, 1_000, 2_000, 200, 2_000, 50
        a.repeat = a.peer_repeat = 1
    if a.repeat < 1 or a.peer_repeat < 1:
        p.error("--repeat and --peer-repeat must be at least 1")
    if a.deletes > a.keys:
        p.error("--deletes cannot exceed --keys")
    if min(a.threads) < 1:
        p.error("--threads must be at least 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    threads_list = tuple(a.threads)
    fs = suite.peers.fs_type(a.dir)
    usable = len(os.sched_getaffinity(0))
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "dir": a.dir,
        "fs": fs,
        "quick": a.quick,
        "keys": a.keys,
        "key": "12-byte bytes keys b'key-%08d'",
        "value": f"dict {{'id': int, 'payload': bytes}} pickling to {PICKLE_SIZE} bytes "
        f"(protocol 5), {VALUE_POOL} distinct",
        "expire_s": EXPIRE,
        "ops": {
            "sets": a.sets,
            "gets": a.gets,
            "deletes": a.deletes,
            "mix": a.mix,
            "warmup_per_thread": a.warmup,
        },
        "mix": {"get": MIX[0], "set": round(MIX[1] - MIX[0], 3), "delete": round(1 - MIX[1], 3)},
        "threads": list(threads_list),
        "seed": a.seed,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "machine": suite.machine_facts(),
        "checkout": suite.git_state(),
        "other_cpus_busy": round(suite.cpu_busy(1.0) * (os.cpu_count() or 1), 1),
        "stores": {k: v.__dict__ for k, v in STORES.items() if k in a.stores},
    }
    snapshot = tempfile.mkdtemp(prefix="viperdbm-cache-pkg-")
    try:
        # every child imports this copy of the package (spawn passes sys.path on), so an
        # edit or a rebuild of the checkout during the run cannot mix two versions
        meta["package_digest"] = suite.snapshot_package(Path(snapshot))
        sys.path.insert(0, snapshot)
        meta["versions"] = run_in_child(child_versions)
        say(
            f"{a.keys:,} keys, 1 KiB pickled values, expire={EXPIRE:.0f} s, stores in {a.dir} "
            f"({fs}); threads {', '.join(map(str, threads_list))}; cores: os.cpu_count()="
            f"{os.cpu_count()}, usable={usable}; other work uses {meta['other_cpus_busy']} CPUs; "
            f"Python {meta['versions']['python']}"
        )
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        # the repeats of a job are spread over the run (rep by rep), not back to back
        jobs = [
            (rep, s, t)
            for rep in range(max(a.repeat, a.peer_repeat))
            for t in threads_list
            for s in a.stores
            if rep < (a.repeat if s in VIPERDBM_STORES else a.peer_repeat)
        ]
        t_run = time.monotonic()
        for i, (rep, store, threads) in enumerate(jobs, 1):
            say(
                f"[{i}/{len(jobs)}] {store}, {threads} thread{'s' if threads > 1 else ''}, "
                f"run {rep + 1}"
            )
            params = {
                "store": store,
                "threads": threads,
                "dir": a.dir,
                "seed": a.seed,
                "label": f"[{i}/{len(jobs)}]",
                **{k: getattr(a, k) for k in ("keys", "sets", "gets", "deletes", "mix", "warmup")},
            }
            runs.setdefault((store, threads), []).append(run_in_child(run_job, params))
        meta["run_seconds"] = round(time.monotonic() - t_run, 1)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    meta["loadavg_after"] = suite.machine_facts()["loadavg"]
    res: Results = {k: combine(v) for k, v in runs.items()}
    modules = {job["viperdbm_module"] for job in res.values()}
    meta["viperdbm_imported_from"] = sorted(modules)

    problems = [
        f"{store}, {threads} thread{'s' if threads > 1 else ''}: {p}"
        for (store, threads), job in res.items()
        for p in job["problems"]
    ]
    vs = verdicts(res, threads_list)
    lat = latency_table(res, threads_list)
    vt = verdict_table(vs)
    rates = rate_table(res, tuple(a.stores), threads_list)
    overhead = statistics.median(job["timer_overhead_ns"] for job in res.values())
    cores = f"os.cpu_count() = {os.cpu_count()}, usable = {usable}"
    v = meta["versions"]
    header = (
        f"{a.keys:,} keys, values {meta['value']}, expire {EXPIRE:.0f} s on every set; "
        f"stores in {a.dir} ({fs}); cores: {cores}; Python {v['python']} ({v['python_build']}); "
        f"viperdbm {v['viperdbm']} ({meta['checkout']}, package copy sha256 "
        f"{meta['package_digest']}), diskcache {v['diskcache']} on SQLite {v['sqlite']}; "
        f"seed {a.seed}; other work used {meta['other_cpus_busy']} CPUs at the start; load "
        f"average before / after {' '.join(meta['machine']['loadavg'])} / "
        f"{' '.join(meta['loadavg_after'])}; {meta['run_seconds']} s"
        + ("; QUICK smoke run (too few ops to mean much)" if a.quick else "")
    )
    print(header)
    print()
    print(plain_table(vt))
    print()
    print("latency in microseconds per op, p50 / p99; ratio = diskcache / viperdbm")
    print(plain_table(lat), flush=True)
    for p in problems:
        print(f"PROBLEM: {p}")

    durability = ["| store | variant | durability class | how |", "|---|---|---|---|"]
    durability += [
        f"| {k} | `{s.variant}` | {s.durability} | {s.note} |"
        for k, s in STORES.items()
        if k in a.stores
    ]
    details: list[str] = []
    for (store, threads), job in res.items():  # in the order of the first runs
        reps = job["repeats"]
        of = f", median of {reps} runs (p50: each run's in us)" if reps > 1 else ", one run"
        details += [f"### {store}, {threads} thread{'s' if threads > 1 else ''}{of}", ""]
        details += detail_table(job)
        checks = ", ".join(f"{k} {v}" for k, v in job["checks"].items())
        details += ["", f"Checks: {checks}.", ""]
    ops = meta["ops"]
    md = [
        "# viperdbm.cache.Cache against diskcache.Cache (`benchmarks/cache.py`)",
        "",
        header + ".",
        "",
        *(["## Problems", "", *[f"- {p}" for p in problems], ""] if problems else []),
        "## Targets",
        "",
        *vt,
        "",
        "The ratio is diskcache's latency / viperdbm's (> 1: viperdbm is faster), from the "
        "pure set and get phases; p99 ratio shown beside, not judged. "
        f"viperdbm's figures are medians over {a.repeat} runs (fresh processes, spread over "
        f"the run), diskcache's over {a.peer_repeat}: on this shared machine a whole process "
        "can run slow, and viperdbm's phases last tenths of a second where diskcache's last "
        "seconds. Each run's median is in the tables at the end.",
        "",
        "## Latency, microseconds per operation (p50 / p99)",
        "",
        *lat,
        "",
        f"The clock pair around each call costs {overhead:.0f} ns (median), included in "
        "every figure. With 8 threads each thread runs its share of the same number of ops; "
        "the latencies of all threads are gathered. CPython's GIL serializes the Python "
        "parts of both stores; viperdbm's native calls hold the GIL, SQLite releases it while "
        "it works, and a thread waiting for the GIL (switch interval "
        f"{v['gil_switch_interval_s']} s) counts that wait in its op's latency, which is "
        "what the 8-thread p99 measures.",
        "",
        "## Throughput: ops/s of the whole phase (CPU us per op / voluntary context "
        "switches per op)",
        "",
        *rates,
        "",
        "ops/s: the phase's ops (all threads) / its wall-clock time. CPU: the process's user + "
        "system time over the phase (every thread, SQLite's work included) per op. Voluntary "
        "switches (getrusage ru_nvcsw) per op: how often a thread blocked, e.g. on a lock "
        f"held by a thread that lost the GIL. {cores}.",
        "",
        "## Durability classes",
        "",
        *durability,
        "",
        "## Every phase, as diskcache's benchmark prints it",
        "",
        *details,
        "## Method",
        "",
        f"Per store and thread count, a fresh process (spawn) opens a new store in {a.dir} and "
        f"runs: fill (all {a.keys:,} keys once, random order, one thread); warm-up "
        f"({ops['warmup_per_thread']:,} ops per thread, 90 % get / 10 % set, not recorded); "
        f"set ({ops['sets']:,} sets of random existing keys); get ({ops['gets']:,} gets of "
        f"random keys, all present); delete ({ops['deletes']:,} distinct present keys); mix "
        f"({ops['mix']:,} ops, 90 % get / 9 % set / 1 % delete on random keys, as diskcache's "
        "tests/benchmark_core.py). Each call is timed alone with time.perf_counter_ns; "
        "percentiles as diskcache's tests/utils.py (sorted(values)[int(len * p) - 1]). "
        "Calls: `get(key)`, `set(key, value, expire=3600)`, `delete(key)` on both stores, the "
        "cyclic GC on. Keys and the order of operations come from the fixed seed, the same "
        "for every store. Values are dicts, not bytes, because diskcache stores bytes and "
        "str raw: both stores pickle every value here (diskcache also runs "
        "pickletools.optimize on it). viperdbm+limit's volume at the end is in its checks, "
        "far below its 1 GiB bound: nothing was evicted (the item counts after the get and "
        "delete phases are checked in every store).",
        "",
    ]
    a.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if fs == "tmpfs" else f"-{fs}"
    stem = a.out / f"cache-{datetime.date.today().isoformat()}{suffix}"
    doc = {
        "meta": meta,
        "results": [res[k] for k in res],
        "verdicts": [{**vd.__dict__, "verdict": vd.verdict} for vd in vs],
        "problems": problems,
    }
    Path(f"{stem}.json").write_text(json.dumps(doc, indent=1))
    Path(f"{stem}.md").write_text("\n".join(md))
    say(f"wrote {stem}.json and {stem}.md")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
