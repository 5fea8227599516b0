#!/usr/bin/env python3
# mypy: disable-error-code="import-untyped, import-not-found"
"""peers.py -- measure the key-value stores a Python user would pick instead of viperdbm.

The project's copy of the team's harness (benchmarks/run.py drives it).  Additions to the
shared version: each child logs the workload it starts (`[store rep R] <workload>` on
stderr, which run.py turns into a progress line); adapters may report their own counters
(`Adapter.extra_metrics`; viperdbm's `stats()` gives the size of its DRAM index and its
rebuild time); each run records its CPU time next to its wall time (`cpu_s`, `wall_s`),
so that a run that had to share the CPU shows; ruff and mypy clean.

One harness, one adapter per store, the same data and the same workloads for all,
one child process per (store, repeat) so that memory, threads and crashes stay isolated.
Plain Python 3.10+ and the standard library; each peer package is used only if it imports.

Usage
-----
  python3 peers.py --list                              # adapters, availability, durability
  python3 peers.py --store all --n 1000000 --key-size 16 --value-size 100 \\
          --repeat 3 --json shm-1m.json                # files go under /dev/shm by default
  python3 peers.py --store lmdb --store rocksdict --dir /tmp --json ext4.json
  python3 peers.py --store all --n-for dbm.dumb=200000 --budget 30 ...  # cut N for slow stores
  python3 peers.py --store all --probe --json probe.json   # crash (kill -9) + fsync probes
  python3 peers.py --report shm-1m.json ext4.json > tables.md   # merge JSON into markdown

Children run under the interpreter that runs this script (sys.executable).  Stores that it
cannot import are reported as skipped with the reason, so run the script again under another
interpreter for them: dbm.gnu / dbm.ndbm need a Python built with _gdbm / _dbm (on Debian:
/usr/bin/python3.11 plus `apt-get install python3-gdbm`), dbm.sqlite3 needs Python 3.13+.
`viperdbm` is measured as soon as `import viperdbm` works (through viperdbm.open(path, 'c')
and the mapping protocol only); until then it is skipped.  Every record says which
interpreter produced it.

Workloads (rates in ops/s; time.perf_counter; the cyclic GC stays on, as in real use)
  insert   N fresh keys in random order, followed by the store's sync/commit, which is
           included in the time (batched variants would otherwise look free)
  get      N existing keys, another random order
  miss     N keys that are not in the store
  update   N existing keys get new values of the same size, random order, then sync
  iterate  every (key, value) through the store's idiomatic iterator
  close    close() of the store holding N records (seconds)
  reopen   open() of that store + one get (seconds): index rebuild / recovery at open
  delete   N/2 keys, random order, then sync
  space    allocated bytes (st_blocks*512, all files in the store directory) after
           insert+sync, per record, and amplification = bytes / (N * (key+value size))
  rss      peak RSS growth of the child over the whole run: VmHWM (reset through
           /proc/self/clear_refs just before open) minus VmRSS at that moment.  Files on
           tmpfs that a store mmaps count here, because their pages are the child's memory.
Each workload is bounded by --budget seconds (default 60).  A store that cannot insert N
records in time carries on with the records it did insert (flag `n<N`); any other workload
that runs out of time reports the rate over the operations done (flag `partial:`).
Results are checked: a sample of keys is read back after insert, update, reopen and delete,
and iterate must see every live record; a mismatch is flagged, never hidden.

Durability classes are read from each library's defaults (see each adapter's `note`) and can
be checked with --probe: a child inserts 1,500 records and kills itself with SIGKILL without
sync/close, another child reopens and counts the survivors; and, when `strace` is on PATH,
the fsync-family system calls made during 1,500 puts are counted per put.

Adding an adapter is one small class: subclass Adapter (or MappingAdapter for anything with
the dbm mapping protocol), give it a unique `name`, `store`, `variant`, `durability` and
`note`, list the modules it `requires`, and implement open(create); put/get/delete/items/
sync/close have dbm-style defaults in MappingAdapter.  get() returns None for a missing key.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

RESULT_MARK = "@@PEERS-RESULT@@ "
PROBE_PUTS = 1500
METRICS = ("insert", "get", "miss", "update", "iterate", "delete")
DASH = "\u2013"  # an en dash: "no value" in the tables

# --------------------------------------------------------------------------- adapters

ADAPTERS: dict[str, type[Adapter]] = {}


class Adapter:
    """One store behind a uniform interface.  Subclasses set the class attributes and
    implement open(); put/get/delete may be bound to the store's own methods in open()
    so that the timed loops call the library directly, as a user would."""

    name = ""  # CLI name, unique
    store = ""  # library / module as a user knows it
    variant = "default"
    durability = ""  # short class, e.g. "fsync per op"
    note = ""  # where the class comes from (library defaults)
    persistent = True
    requires: tuple[str, ...] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            ADAPTERS[cls.name] = cls

    def __init__(self, directory: str) -> None:
        self.dir = directory

    # -- class-level facts
    @classmethod
    def unavailable(cls) -> str | None:
        """None if usable in this interpreter, else why not."""
        for mod in cls.requires:
            try:
                importlib.import_module(mod)
            except Exception as exc:  # ImportError, or a broken install
                return f"{type(exc).__name__}: {exc}"
        return None

    @classmethod
    def lib_version(cls) -> str:
        for mod in cls.requires:
            m = sys.modules.get(mod) or importlib.import_module(mod)
            for attr in ("__version__", "version", "VERSION"):
                v = getattr(m, attr, None)
                if callable(v):
                    try:
                        v = v()
                    except Exception:
                        v = None
                if v:
                    return str(v)
            if not mod.startswith("dbm."):  # a package without __version__ (rocksdict)
                try:
                    return importlib.metadata.version(mod)
                except importlib.metadata.PackageNotFoundError:
                    pass
        return "stdlib " + platform.python_version()

    def describe_variant(self) -> str:
        return self.variant

    # -- the data path
    def convert_key(self, k: bytes) -> Any:
        """Applied to every key once, untimed, before the workloads (e.g. shelve wants str)."""
        return k

    def open(self, create: bool) -> None:
        raise NotImplementedError

    def put(self, k: Any, v: bytes) -> None:
        raise NotImplementedError

    def get(self, k: Any) -> Any:
        """The value, or None when the key is missing."""
        raise NotImplementedError

    def delete(self, k: Any) -> None:
        raise NotImplementedError

    def items(self) -> Iterable[tuple[Any, Any]]:
        raise NotImplementedError

    def sync(self) -> None:
        """Make acknowledged writes as durable as the store can (dbm's sync())."""

    def close(self) -> None:
        raise NotImplementedError

    def reopen(self) -> None:
        self.close()
        self.open(create=False)

    def extra_metrics(self, stage: str) -> dict[str, float]:
        """Store-specific counters, recorded after `insert` and after `reopen` (stage);
        merged into the run's metrics as given (flat names, numbers only)."""
        return {}


class MappingAdapter(Adapter):
    """Anything with the dbm mapping protocol: db[k] = v, db[k], del db[k], close()."""

    filename = "db"

    def path(self) -> str:
        return os.path.join(self.dir, self.filename)

    def open_db(self, create: bool) -> Any:
        raise NotImplementedError

    def open(self, create: bool) -> None:
        self.db = db = self.open_db(create)
        self.put = db.__setitem__  # type: ignore[method-assign]
        self.delete = db.__delitem__  # type: ignore[method-assign]
        getitem = db.__getitem__

        def get(k: Any) -> Any:
            try:
                return getitem(k)
            except KeyError:
                return None

        self.get = get  # type: ignore[method-assign]

    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.db.items()  # type: ignore[no-any-return]

    def sync(self) -> None:
        s = getattr(self.db, "sync", None)
        if s is not None:
            s()

    def close(self) -> None:
        self.db.close()
        self.db = None


class DictAdapter(Adapter):
    name = store = "dict"
    durability = "in-memory only"
    note = "a plain dict: the in-memory upper limit for the same Python loop"
    persistent = False

    def open(self, create: bool) -> None:
        self.d: dict[bytes, bytes] = {}
        self.put = self.d.__setitem__  # type: ignore[assignment, method-assign]
        self.get = self.d.get  # type: ignore[assignment, method-assign]
        self.delete = self.d.__delitem__  # type: ignore[assignment, method-assign]

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return self.d.items()

    def close(self) -> None:
        pass


class DbmDumbAdapter(MappingAdapter):
    name = store = "dbm.dumb"
    requires = ("dbm.dumb",)
    durability = "survives process crash (page cache), no fsync"
    note = (
        "each put is open()/write()/close() of .dat plus an appended .dir line; "
        "never fsyncs; an update that moves a value is indexed only at sync()/close(); "
        "every delete rewrites the whole .dir file; values padded to 512-byte blocks"
    )

    def open_db(self, create: bool) -> Any:
        import dbm.dumb

        return dbm.dumb.open(self.path(), "c" if create else "w")


class DbmGnuAdapter(MappingAdapter):
    name = store = "dbm.gnu"
    requires = ("dbm.gnu",)
    flags = "c"
    durability = "survives process crash (page cache), no fsync"
    note = (
        "gdbm (1.23 here) writes every changed bucket, the directory and the header back "
        "to the (mmap-ed) file at the end of each store, so a killed process loses "
        "nothing (probe: 1500/1500), but without the 's' flag it never fsyncs; "
        "sync() = gdbm_sync, which does"
    )

    def open_db(self, create: bool) -> Any:
        import dbm.gnu

        return dbm.gnu.open(self.path(), (self.flags if create else self.flags.replace("c", "w")))

    def open(self, create: bool) -> None:
        super().open(create)
        self.get = self.db.get  # type: ignore[method-assign]  # gdbm has a native get()

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        db = self.db
        k = db.firstkey()
        while k is not None:
            yield k, db[k]
            k = db.nextkey(k)


class DbmGnuSyncAdapter(DbmGnuAdapter):
    name = "dbm.gnu-sync"
    variant = "flag 's'"
    flags = "cs"
    durability = "fsync only when the file grows, not per op"
    note = (
        "GDBM_SYNC does not sync every store: gdbm syncs (msync/fsync) only when the "
        "header or directory changed, i.e. when the file grows or buckets split "
        "(probe: 0.028 sync calls per put); an in-place bucket write is not synced"
    )


class DbmNdbmAdapter(MappingAdapter):
    name = store = "dbm.ndbm"
    requires = ("dbm.ndbm",)
    durability = "not crash-safe until close()"
    note = (
        "ndbm interface of whatever library _dbm links (Berkeley DB 5.3 on Debian): "
        "writes sit in the library's cache; Python exposes no sync()"
    )

    def open_db(self, create: bool) -> Any:
        import dbm.ndbm

        return dbm.ndbm.open(self.path(), "c" if create else "w")

    def describe_variant(self) -> str:
        import dbm.ndbm

        return getattr(dbm.ndbm, "library", "ndbm")

    def open(self, create: bool) -> None:
        super().open(create)
        self.get = self.db.get  # type: ignore[method-assign]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        db = self.db
        for k in db.keys():  # noqa: SIM118 -- these dbm objects are not iterable
            yield k, db[k]


class DbmSqlite3Adapter(MappingAdapter):
    name = store = "dbm.sqlite3"
    requires = ("dbm.sqlite3",)
    filename = "db.sqlite3"
    durability = "fsync per op"
    note = (
        "Python 3.13 dbm.sqlite3: autocommit (one transaction per statement), WAL, "
        "SQLite's default synchronous=FULL, so every commit syncs the WAL"
    )

    def open_db(self, create: bool) -> Any:
        import dbm.sqlite3

        return dbm.sqlite3.open(self.path(), "c" if create else "w")


def _default_dbm_name() -> str:
    import dbm

    for name in getattr(dbm, "_names", ["dbm.gnu", "dbm.ndbm", "dbm.dumb"]):
        try:
            importlib.import_module(name)
            return str(name)
        except ImportError:
            continue
    return "?"


class ShelveAdapter(MappingAdapter):
    name = store = "shelve"
    requires = ("shelve",)
    filename = "shelf"
    durability = "that of the default dbm (see variant)"
    note = (
        "shelve.open(path, 'c') over dbm's default backend; keys are str (the bytes "
        "decoded as Latin-1, untimed), values pickled"
    )

    def describe_variant(self) -> str:
        return "over " + _default_dbm_name()

    def convert_key(self, k: bytes) -> Any:
        return k.decode("latin-1")

    def open_db(self, create: bool) -> Any:
        import shelve

        return shelve.open(self.path(), "c" if create else "w")


class SemidbmAdapter(MappingAdapter):
    name = store = "semidbm"
    requires = ("semidbm",)
    durability = "survives process crash (page cache), no fsync"
    note = (
        "append-only data file written with unbuffered os.write() per op; fsync only "
        "in sync()/close(); the whole index is rebuilt by scanning the file at open"
    )

    def open_db(self, create: bool) -> Any:
        import semidbm

        return semidbm.open(self.path(), "c" if create else "w")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        db = self.db
        for k in db.keys():  # noqa: SIM118 -- these dbm objects are not iterable
            yield k, db[k]


class LmdbAdapter(Adapter):
    name = store = "lmdb"
    requires = ("lmdb",)
    variant = "txn per op"
    sync_commits = True
    durability = "fsync per op"
    note = (
        "py-lmdb defaults sync=True, metasync=True: every write transaction commit "
        "fdatasyncs; one write transaction per put/delete, one read transaction per get"
    )
    MAP_SIZE = 1 << 34

    def open(self, create: bool) -> None:
        import lmdb

        self.env = lmdb.open(
            self.dir, map_size=self.MAP_SIZE, sync=self.sync_commits, create=create
        )

    def put(self, k: bytes, v: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(k, v)

    def get(self, k: bytes) -> Any:
        with self.env.begin() as txn:
            return txn.get(k)

    def delete(self, k: bytes) -> None:
        with self.env.begin(write=True) as txn:
            if not txn.delete(k):
                raise KeyError(k)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        with self.env.begin() as txn:
            yield from txn.cursor()

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()


class LmdbNosyncAdapter(LmdbAdapter):
    name = "lmdb-nosync"
    variant = "txn per op, sync=False"
    sync_commits = False
    durability = "survives process crash (page cache), no fsync"
    note = (
        "sync=False: commits reach the page cache, never fsynced (LMDB: a system crash "
        "may undo the last transactions); sync() here calls env.sync(force=True)"
    )


class LmdbBatchAdapter(LmdbAdapter):
    name = "lmdb-batch"
    variant = "1,000 ops per txn"
    BATCH = 1000
    durability = "fsync per 1,000 ops"
    note = (
        "sync=True, but a write transaction is committed every 1,000 puts/deletes "
        "(and at sync/close): up to 999 returned puts are lost on a crash; gets read "
        "through the open write transaction"
    )

    def open(self, create: bool) -> None:
        super().open(create)
        self.txn = self.env.begin(write=True)
        self.pending = 0

    def _commit(self) -> None:
        self.txn.commit()
        self.txn = self.env.begin(write=True)
        self.pending = 0

    def put(self, k: bytes, v: bytes) -> None:
        self.txn.put(k, v)
        self.pending += 1
        if self.pending >= self.BATCH:
            self._commit()

    def get(self, k: bytes) -> Any:
        return self.txn.get(k)

    def delete(self, k: bytes) -> None:
        if not self.txn.delete(k):
            raise KeyError(k)
        self.pending += 1
        if self.pending >= self.BATCH:
            self._commit()

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from self.txn.cursor()

    def sync(self) -> None:
        self._commit()

    def close(self) -> None:
        self.txn.commit()
        self.env.close()


class SqlitedictAdapter(MappingAdapter):
    name = store = "sqlitedict"
    requires = ("sqlitedict",)
    filename = "db.sqlite"
    variant = "autocommit=True"
    autocommit = True
    durability = "survives process crash (page cache), no fsync"
    note = (
        "SqliteDict runs SQLite in a worker thread with journal_mode=DELETE and "
        "PRAGMA synchronous=OFF (always): with autocommit=True each put waits for its "
        "commit, which never fsyncs (power loss can corrupt the file); values stored "
        "as raw bytes (encode/decode = identity) instead of the default pickle"
    )

    def open_db(self, create: bool) -> Any:
        from sqlitedict import SqliteDict

        ident = lambda x: x  # noqa: E731 -- store bytes as BLOB, no pickling
        return SqliteDict(
            self.path(), flag="c", autocommit=self.autocommit, encode=ident, decode=ident
        )

    def sync(self) -> None:
        self.db.commit(blocking=True)


class SqlitedictBatchAdapter(SqlitedictAdapter):
    name = "sqlitedict-batch"
    variant = "commit every 1,000 ops"
    autocommit = False
    BATCH = 1000
    durability = "process crash loses up to 999 ops, no fsync"
    note = (
        "autocommit=False: puts are queued to the worker thread, commit(blocking=True) "
        "every 1,000 writes and at sync/close; synchronous=OFF so never fsynced"
    )

    def open(self, create: bool) -> None:
        super().open(create)
        setitem, delitem, commit = self.db.__setitem__, self.db.__delitem__, self.db.commit
        state = [0]
        batch = self.BATCH

        def put(k: Any, v: bytes) -> None:
            setitem(k, v)
            state[0] += 1
            if state[0] >= batch:
                commit(blocking=True)
                state[0] = 0

        def delete(k: Any) -> None:
            delitem(k)
            state[0] += 1
            if state[0] >= batch:
                commit(blocking=True)
                state[0] = 0

        self.put, self.delete = put, delete  # type: ignore[method-assign]


class DiskcacheAdapter(MappingAdapter):
    name = store = "diskcache"
    requires = ("diskcache",)
    variant = "Cache defaults"
    durability = "survives process crash (page cache), fsync at WAL checkpoints only"
    note = (
        "diskcache.Cache: SQLite in WAL mode with synchronous=NORMAL, one transaction "
        "per set/delete; commits are not fsynced (a power loss may roll back the last "
        "ones), values under 32 KiB stored inline; size_limit 1 GiB with eviction "
        "(count is verified)"
    )

    def open_db(self, create: bool) -> Any:
        import diskcache

        return diskcache.Cache(self.dir)

    def open(self, create: bool) -> None:
        super().open(create)
        self.get = self.db.get  # type: ignore[method-assign]

    def items(self) -> Iterator[tuple[Any, Any]]:
        db = self.db
        for k in db:
            yield k, db[k]

    def sync(self) -> None:
        pass  # every set is its own committed transaction


class RocksdictAdapter(MappingAdapter):
    name = store = "rocksdict"
    requires = ("rocksdict",)
    variant = "raw_mode, default WriteOptions"
    durability = "survives process crash (page cache), no fsync"
    note = (
        "RocksDB via rocksdict.Rdict(Options(raw_mode=True)): every put is appended to "
        "the WAL with write() but not fsynced (WriteOptions.sync=False); sync() here is "
        "flush_wal(sync=True)"
    )
    write_sync = False
    disable_wal = False

    def open_db(self, create: bool) -> Any:
        from rocksdict import Options, Rdict, WriteOptions

        db = Rdict(self.dir, Options(raw_mode=True))
        if self.write_sync or self.disable_wal:
            wo = WriteOptions()
            wo.sync = self.write_sync
            wo.disable_wal = self.disable_wal  # type: ignore[method-assign, assignment]
            db.set_write_options(wo)
        return db

    def open(self, create: bool) -> None:
        super().open(create)
        self.get = self.db.get  # type: ignore[method-assign]

    def sync(self) -> None:
        if self.disable_wal:
            self.db.flush(True)
        else:
            self.db.flush_wal(True)


class RocksdictSyncAdapter(RocksdictAdapter):
    name = "rocksdict-sync"
    variant = "WriteOptions.sync=True"
    write_sync = True
    durability = "fsync per op"
    note = "WriteOptions.sync=True: every put/delete syncs the WAL before returning"


class RocksdictNowalAdapter(RocksdictAdapter):
    name = "rocksdict-nowal"
    variant = "WriteOptions.disable_wal=True"
    disable_wal = True
    durability = "process crash loses unflushed memtable"
    note = (
        "no write-ahead log: writes live in the memtable until a flush; sync() here is "
        "flush(wait=True) to SST files"
    )


class ViperdbmAdapter(MappingAdapter):
    name = store = "viperdbm"
    requires = ("viperdbm",)
    durability = "as documented: survives process crash per op; power-fail at sync()/close()"
    note = (
        "viperdbm.open(path, 'c') and the mapping protocol only; class as promised by "
        "the project, check it with --probe"
    )

    def open_db(self, create: bool) -> Any:
        import viperdbm

        return viperdbm.open(self.path(), "c" if create else "w")

    def open(self, create: bool) -> None:
        super().open(create)
        self.get = self.db.get  # type: ignore[method-assign]

    def extra_metrics(self, stage: str) -> dict[str, float]:
        st = self.db.stats()
        records = st.get("records") or 0
        if stage == "insert":
            out = {
                k: float(st[k])
                for k in ("index_bytes", "index_slots", "records", "live_bytes", "pool_bytes")
                if k in st
            }
            if records and "index_bytes" in st:
                out["index_bytes_per_key"] = st["index_bytes"] / records
            return out
        if stage == "reopen" and "rebuild_seconds" in st:
            return {"rebuild_s": float(st["rebuild_seconds"])}
        return {}


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def dir_usage(path: str) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of every file under path."""
    alloc = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


def fs_type(path: str) -> str:
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt, typ = parts[1], parts[2]
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, typ
    except OSError:
        pass
    return kind


def default_dir() -> str:
    for cand in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(cand) and os.access(cand, os.W_OK):
            return cand
    return tempfile.gettempdir()


def interpreter() -> dict[str, str]:
    return {
        "executable": sys.executable,
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "build": " ".join(platform.python_build()),
    }


def randbytes(rng: random.Random, n: int) -> bytes:
    """rng.randbytes(n) for any n: random.randbytes() overflows past 256 MiB.  Chunks are a
    multiple of 4 bytes, so the bytes are those one call would give (same data as before)."""
    if n <= 1 << 26:
        return rng.randbytes(n)
    return b"".join(rng.randbytes(min(1 << 26, n - i)) for i in range(0, n, 1 << 26))


def make_data(n: int, key_size: int, value_size: int, seed: int) -> dict[str, list[Any]]:
    """Deterministic for (n, sizes, seed): the same data for every store."""
    if 256**key_size < 4 * n:
        raise SystemExit(f"--key-size {key_size} cannot hold {2 * n} distinct keys")
    rng = random.Random(seed)
    want = 2 * n  # present + missing
    uniq: dict[bytes, None] = {}
    while len(uniq) < want:
        k = want - len(uniq)
        blob = randbytes(rng, k * key_size)
        uniq.update(dict.fromkeys(blob[i : i + key_size] for i in range(0, k * key_size, key_size)))
    allkeys = list(uniq)
    del uniq
    keys, missing = allkeys[:n], allkeys[n:want]
    del allkeys
    blob = randbytes(rng, n * value_size)
    vals = [blob[i : i + value_size] for i in range(0, n * value_size, value_size)]
    del blob
    return {"keys": keys, "missing": missing, "vals": vals}


def run_chunked(
    total: int, budget: float, body: Callable[[int, int], int | None], label: str
) -> tuple[int, float, int]:
    """Run body(start, stop) over [0, total) in growing chunks until done or out of budget.
    Returns (ops done, seconds, sum of what body returned)."""
    done = acc = 0
    chunk = 64
    t0 = time.perf_counter()
    next_report = t0 + 10.0
    while done < total:
        stop = min(total, done + chunk)
        c0 = time.perf_counter()
        r = body(done, stop)
        c1 = time.perf_counter()
        if r:
            acc += r
        done = stop
        if c1 - t0 > budget:
            break
        if c1 - c0 < 0.05 and chunk < 65536:
            chunk *= 2
        if c1 > next_report:
            log(f"    {label}: {done:,}/{total:,} ({done / (c1 - t0):,.0f} ops/s)")
            next_report = c1 + 10.0
    return done, time.perf_counter() - t0, acc


# --------------------------------------------------------------------------- child: one run


def bench_one(spec: dict[str, Any]) -> dict[str, Any]:
    cls = ADAPTERS[spec["store"]]
    rec: dict[str, Any] = {
        "kind": "run",
        "name": cls.name,
        "store": cls.store,
        "label": spec.get("label"),
        "n_requested": spec["n"],
        "key_size": spec["key_size"],
        "value_size": spec["value_size"],
        "seed": spec["seed"],
        "repeat": spec["rep"],
        "budget_s": spec["budget"],
        "interpreter": interpreter(),
        "durability": cls.durability,
        "note": cls.note,
        "flags": [],
    }
    why = cls.unavailable()
    if why:
        rec["skipped"] = why
        return rec
    rec["lib_version"] = cls.lib_version()
    budget = float(spec["budget"])
    n, ks, vs = spec["n"], spec["key_size"], spec["value_size"]
    workdir = tempfile.mkdtemp(prefix=f"peers-{cls.name}-", dir=spec["dir"])
    rec["fs"] = fs_type(workdir)
    rec["dir"] = spec["dir"]
    flags: list[str] = rec["flags"]
    m: dict[str, Any] = {}
    rec["metrics"] = m
    try:
        t_gen = time.perf_counter()
        data = make_data(n, ks, vs, spec["seed"])
        store_dir = os.path.join(workdir, "store")
        os.mkdir(store_dir)
        a = cls(store_dir)
        rec["variant"] = a.describe_variant()
        keys, missing = data["keys"], data["missing"]
        if type(a).convert_key is not Adapter.convert_key:
            keys = [a.convert_key(k) for k in keys]
            missing = [a.convert_key(k) for k in missing]
        vals = data["vals"]
        rng = random.Random(spec["seed"] + 1)
        log(
            f"  [{cls.name} rep {spec['rep']}] data ready in {time.perf_counter() - t_gen:.1f}s "
            f"(n={n:,}, {ks}B/{vs}B, {rec['fs']})"
        )
        gc.collect()
        gc.freeze()
        rss0 = rss_bytes()
        hwm_ok = reset_hwm()
        if not hwm_ok:
            flags.append("rss: VmHWM not resettable, peak includes data generation")
        t_all = time.perf_counter()
        c_all = time.process_time()

        a.open(create=True)
        put, get = a.put, a.get
        tag = f"  [{cls.name} rep {spec['rep']}]"

        # ---- insert
        log(f"{tag} insert")

        def ins(s: int, e: int) -> None:
            for k, v in zip(keys[s:e], vals[s:e], strict=True):
                put(k, v)

        done, secs, _ = run_chunked(n, budget, ins, f"{cls.name} insert")
        t = time.perf_counter()
        a.sync()
        sync_s = time.perf_counter() - t
        m["insert_loop_s"], m["insert_sync_s"] = secs, sync_s
        m["insert"] = done / (secs + sync_s)
        if done < n:
            flags.append(f"n<N: insert budget hit, measured on {done:,} records")
        n_eff = done
        m["n_effective"] = n_eff
        keys, vals, missing = keys[:n_eff], vals[:n_eff], missing[:n_eff]
        idx = list(range(n_eff))
        sample = rng.sample(idx, min(200, n_eff))

        def verify(stage: str, expect: Callable[[int], Any]) -> None:
            bad = 0
            for i in sample:
                got = a.get(keys[i])
                if got != expect(i):
                    bad += 1
            if bad:
                flags.append(f"VERIFY FAILED after {stage}: {bad}/{len(sample)} sampled keys wrong")

        verify("insert", lambda i: vals[i])
        m.update(a.extra_metrics("insert"))
        if a.persistent:
            alloc, apparent = dir_usage(store_dir)
            m["bytes_after_insert"], m["apparent_after_insert"] = alloc, apparent
            m["bytes_per_record"] = alloc / n_eff if n_eff else None
            m["space_amp"] = alloc / (n_eff * (ks + vs)) if n_eff else None

        # ---- get existing, random order
        log(f"{tag} get")
        gorder = keys[:]
        rng.shuffle(gorder)

        def getb(s: int, e: int) -> int:
            miss = 0
            for k in gorder[s:e]:
                if get(k) is None:
                    miss += 1
            return miss

        done, secs, misses = run_chunked(n_eff, budget, getb, f"{cls.name} get")
        m["get"] = done / secs if secs else None
        if done < n_eff:
            flags.append(f"partial: get {done:,}/{n_eff:,}")
        if misses:
            flags.append(f"VERIFY FAILED: get found {misses} existing keys missing")
        gorder = []  # free it (the closure above holds the name)

        # ---- get missing
        log(f"{tag} miss")

        def missb(s: int, e: int) -> int:
            hits = 0
            for k in missing[s:e]:
                if get(k) is not None:
                    hits += 1
            return hits

        done, secs, hits = run_chunked(n_eff, budget, missb, f"{cls.name} miss")
        m["miss"] = done / secs if secs else None
        if done < n_eff:
            flags.append(f"partial: miss {done:,}/{n_eff:,}")
        if hits:
            flags.append(f"VERIFY FAILED: {hits} missing keys were found")

        # ---- update: key i gets value (i+1) mod n, same size
        log(f"{tag} update")
        uperm = idx[:]
        rng.shuffle(uperm)
        ukeys = [keys[i] for i in uperm]
        uvals = [vals[(i + 1) % n_eff] for i in uperm]

        def updb(s: int, e: int) -> None:
            for k, v in zip(ukeys[s:e], uvals[s:e], strict=True):
                put(k, v)

        done, secs, _ = run_chunked(n_eff, budget, updb, f"{cls.name} update")
        t = time.perf_counter()
        a.sync()
        sync_s = time.perf_counter() - t
        m["update"] = done / (secs + sync_s)
        m["update_sync_s"] = sync_s
        if done < n_eff:
            flags.append(f"partial: update {done:,}/{n_eff:,}")
            updated = set(uperm[:done])
        else:
            updated = None
        ukeys, uvals = [], []  # free them (the closure above holds the names)

        def expect_now(i: int) -> Any:
            return vals[(i + 1) % n_eff] if (updated is None or i in updated) else vals[i]

        verify("update", expect_now)

        # ---- iterate
        log(f"{tag} iterate")
        count = 0
        t0 = time.perf_counter()
        partial = False
        for _k, _v in a.items():
            count += 1
            if not count & 4095 and time.perf_counter() - t0 > budget:
                partial = True
                break
        secs = time.perf_counter() - t0
        m["iterate"] = count / secs if secs else None
        if partial:
            flags.append(f"partial: iterate {count:,}/{n_eff:,}")
        elif count != n_eff:
            flags.append(f"VERIFY FAILED: iterate saw {count:,} records, expected {n_eff:,}")

        # ---- close + reopen (index rebuild at open)
        if a.persistent:
            log(f"{tag} close+reopen")
            t = time.perf_counter()
            a.close()
            m["close_s"] = time.perf_counter() - t
            alloc, apparent = dir_usage(store_dir)
            m["bytes_after_update_closed"] = alloc
            t = time.perf_counter()
            a.open(create=False)
            first = a.get(keys[0])
            m["reopen_s"] = time.perf_counter() - t
            put, get = a.put, a.get
            if first is None:
                flags.append("VERIFY FAILED: first key missing after reopen")
            verify("reopen", expect_now)
            m.update(a.extra_metrics("reopen"))

        # ---- delete n/2
        log(f"{tag} delete")
        dperm = idx[:]
        rng.shuffle(dperm)
        dperm = dperm[: n_eff // 2]
        dkeys = [keys[i] for i in dperm]
        delete = a.delete

        def delb(s: int, e: int) -> None:
            for k in dkeys[s:e]:
                delete(k)

        done, secs, _ = run_chunked(len(dkeys), budget, delb, f"{cls.name} delete")
        t = time.perf_counter()
        a.sync()
        sync_s = time.perf_counter() - t
        m["delete"] = done / (secs + sync_s) if done else None
        if done < len(dkeys):
            flags.append(f"partial: delete {done:,}/{len(dkeys):,}")
        gone = set(dperm[:done])
        bad = sum(1 for i in dperm[: min(done, 100)] if a.get(keys[i]) is not None)
        bad += sum(1 for i in sample if i not in gone and a.get(keys[i]) != expect_now(i))
        if bad:
            flags.append(f"VERIFY FAILED after delete: {bad} sampled keys wrong")

        hwm = hwm_bytes()
        m["rss_peak_growth"] = (hwm - rss0) if (hwm is not None and hwm_ok) else None
        m["rss_end_growth"] = rss_bytes() - rss0
        a.close()
        m["wall_s"] = time.perf_counter() - t_all
        # CPU time of all threads of the child over the same span: wall_s much larger than
        # cpu_s means the child waited, for a CPU (a busy machine) or for I/O (fsync)
        m["cpu_s"] = time.process_time() - c_all
    except Exception as exc:  # report, don't hide
        import traceback

        rec["error"] = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
    finally:
        if not spec.get("keep"):
            shutil.rmtree(workdir, ignore_errors=True)
    return rec


# --------------------------------------------------------------------------- child: probes


def probe_child(spec: dict[str, Any]) -> dict[str, Any]:
    """mode 'crash': K puts then SIGKILL self.  mode 'verify': reopen, count survivors.
    mode 'puts': K puts between two access() markers (run under strace)."""
    cls = ADAPTERS[spec["store"]]
    a = cls(spec["store_dir"])
    data = make_data(spec["k"], spec["key_size"], spec["value_size"], spec["seed"])
    keys = [a.convert_key(k) for k in data["keys"]]
    vals = data["vals"]
    mode = spec["mode"]
    if mode in ("crash", "puts"):
        a.open(create=True)
        put = a.put
        if mode == "puts":
            os.access("/peers-marker-begin", os.F_OK)
        for k, v in zip(keys, vals, strict=True):
            put(k, v)
        if mode == "puts":
            os.access("/peers-marker-end", os.F_OK)
            a.close()
            return {"ok": True}
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    a.open(create=False)
    ok = sum(1 for k, v in zip(keys, vals, strict=True) if a.get(k) == v)
    a.close()
    return {"survived": ok}


SYNC_CALLS = re.compile(r"\b(fsync|fdatasync|sync_file_range|syncfs|msync)\(")


def run_probe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cls = ADAPTERS[name]
    rec: dict[str, Any] = {
        "kind": "probe",
        "name": name,
        "store": cls.store,
        "durability": cls.durability,
        "interpreter": interpreter(),
        "k": PROBE_PUTS,
        "flags": [],
    }
    why = cls.unavailable()
    if why:
        rec["skipped"] = why
        return rec
    if not cls.persistent:
        rec["crash"] = "n/a (in-memory)"
        return rec
    base = {
        "store": name,
        "k": PROBE_PUTS,
        "key_size": args.key_size,
        "value_size": args.value_size,
        "seed": args.seed,
    }
    work = tempfile.mkdtemp(prefix=f"peers-probe-{name}-", dir=args.dir)
    rec["fs"] = fs_type(work)
    try:
        sd = os.path.join(work, "crash")
        os.mkdir(sd)
        p = _spawn(["--_probe", json.dumps({**base, "mode": "crash", "store_dir": sd})], 300)
        rec["crash_child_rc"] = p.returncode
        p = _spawn(["--_probe", json.dumps({**base, "mode": "verify", "store_dir": sd})], 300)
        res = _result(p)
        if res is None:
            last = p.stderr.strip().splitlines()[-1:]
            rec["crash"] = f"reopen failed (rc={p.returncode}): {last}"
        else:
            rec["crash_survived"] = res["survived"]
            rec["crash"] = f"{res['survived']}/{PROBE_PUTS}"
        strace = shutil.which("strace")
        if strace:
            sd2 = os.path.join(work, "puts")
            os.mkdir(sd2)
            trace = os.path.join(work, "strace.txt")
            cmd = [
                strace,
                "-f",
                "-qq",
                "-o",
                trace,
                "-e",
                "trace=fsync,fdatasync,sync_file_range,syncfs,msync,access,faccessat,faccessat2",
                sys.executable,
                os.path.abspath(__file__),
                "--_probe",
                json.dumps({**base, "mode": "puts", "store_dir": sd2}),
            ]
            subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            inside, calls = False, 0
            with open(trace) as f:
                for line in f:
                    if "peers-marker-begin" in line:
                        inside = True
                    elif "peers-marker-end" in line:
                        inside = False
                    elif inside and SYNC_CALLS.search(line):
                        if "msync(" in line and "MS_SYNC" not in line:
                            continue
                        calls += 1
            rec["sync_calls_per_put"] = calls / PROBE_PUTS
        else:
            rec["sync_calls_per_put"] = None
            rec["flags"].append("strace not found: fsync count not measured")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec


# --------------------------------------------------------------------------- parent


def _spawn(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out, err = exc.stdout or "", exc.stderr or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        return subprocess.CompletedProcess(cmd, -9, out, err + "\nTIMEOUT")


def _result(p: subprocess.CompletedProcess[str]) -> dict[str, Any] | None:
    out = p.stdout if isinstance(p.stdout, str) else (p.stdout or b"").decode()
    for line in out.splitlines():
        if line.startswith(RESULT_MARK):
            rec: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return rec
    return None


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # stderr: progress, live
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return {
            "kind": "run",
            "name": spec["store"],
            "repeat": spec["rep"],
            "label": spec.get("label"),
            "error": f"child timed out after {timeout:.0f}s",
            "flags": [],
        }
    for line in out.splitlines():
        if line.startswith(RESULT_MARK):
            rec: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return rec
    return {
        "kind": "run",
        "name": spec["store"],
        "repeat": spec["rep"],
        "label": spec.get("label"),
        "error": f"child exited {proc.returncode} without a result",
        "flags": [],
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats per (label, store)."""
    groups: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("kind") == "run":
            groups.setdefault((r.get("label"), r["name"]), []).append(r)
    out = []
    for (_label, _name), rs in groups.items():
        ok = [r for r in rs if "metrics" in r and not r.get("error")]
        base = dict(ok[0] if ok else rs[0])
        base.pop("repeat", None)
        base["kind"] = "summary"
        base["repeats"] = len(ok)
        if ok:
            keys = set().union(*(r["metrics"] for r in ok))
            med = {}
            for k in sorted(keys):
                xs = [r["metrics"][k] for r in ok if r["metrics"].get(k) is not None]
                med[k] = statistics.median(xs) if xs else None
            base["metrics"] = med
        flags: list[str] = []
        for r in rs:
            for f in r.get("flags", []):
                if f not in flags:
                    flags.append(f)
            if r.get("error") and r["error"] not in flags:
                flags.append("error: " + r["error"])
        base["flags"] = flags
        out.append(base)
    return out


# --------------------------------------------------------------------------- report


def fmt_rate(x: Any) -> str:
    if x is None:
        return DASH
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def fmt_s(x: Any) -> str:
    if x is None:
        return DASH
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def render_markdown(records: list[dict[str, Any]]) -> str:
    runs = [r for r in records if r.get("kind") == "run"]
    summaries = [r for r in records if r.get("kind") == "summary"] or summarize(runs)
    probes = [r for r in records if r.get("kind") == "probe"]
    lines: list[str] = []
    by_label: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        by_label.setdefault(s.get("label") or "?", []).append(s)
    interps: dict[str, str] = {}
    for label, ss in by_label.items():
        lines += [
            f"### {label}",
            "",
            "| store | variant | durability class | py | N | insert | get | miss | update "
            "| iterate | delete | close | reopen | B/rec | amp | RSS MB | flags |",
            "|" + "---|" * 17,
        ]
        ss.sort(key=lambda s: -(s.get("metrics") or {}).get("insert", 0) if s.get("metrics") else 0)
        for s in ss:
            ip = s.get("interpreter", {})
            tag = ip.get("version", "?")
            interps[tag + " " + ip.get("executable", "")] = ip.get("build", "")
            if s.get("skipped"):
                continue
            m = s.get("metrics") or {}
            rss = m.get("rss_peak_growth")
            bpr, amp = m.get("bytes_per_record"), m.get("space_amp")
            flags = "; ".join(s.get("flags", []))
            if s.get("repeats", 1) > 1:
                flags = f"median of {s['repeats']}" + ("; " + flags if flags else "")
            lines.append(
                f"| {s['name']} | {s.get('variant', '')} | {s.get('durability', '')} | {tag} "
                f"| {m.get('n_effective', 0):,} | {fmt_rate(m.get('insert'))} "
                f"| {fmt_rate(m.get('get'))} | {fmt_rate(m.get('miss'))} "
                f"| {fmt_rate(m.get('update'))} | {fmt_rate(m.get('iterate'))} "
                f"| {fmt_rate(m.get('delete'))} | {fmt_s(m.get('close_s'))} "
                f"| {fmt_s(m.get('reopen_s'))} "
                f"| {f'{bpr:.0f}' if bpr else DASH} | {f'{amp:.2f}' if amp else DASH} "
                f"| {f'{rss / 2**20:.0f}' if rss is not None else DASH} | {flags} |"
            )
        skipped = [s for s in ss if s.get("skipped")]
        if skipped:
            lines.append("")
            lines.append(
                "Skipped here: " + "; ".join(f"{s['name']} ({s['skipped']})" for s in skipped)
            )
        lines.append("")
    if probes:
        lines += [
            "### durability probes",
            "",
            "| store | durability class | py | fs "
            f"| survivors of kill -9 after {PROBE_PUTS} puts "
            "| fsync-family calls per put | flags |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in probes:
            if p.get("skipped"):
                continue
            sc = p.get("sync_calls_per_put")
            lines.append(
                f"| {p['name']} | {p['durability']} | {p['interpreter']['version']} "
                f"| {p.get('fs', '')} | {p.get('crash', '')} "
                f"| {DASH if sc is None else f'{sc:.3f}'} "
                f"| {'; '.join(p.get('flags', []))} |"
            )
        lines.append("")
    if interps:
        lines.append("Interpreters: " + "; ".join(f"{k} ({v})" for k, v in interps.items()))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the key-value stores a Python user would pick instead of viperdbm "
        "(see the module docstring for details).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--store",
        action="append",
        metavar="NAME",
        help="adapter name (repeatable) or 'all'; see --list",
    )
    p.add_argument("--n", type=int, default=100_000, help="records")
    p.add_argument(
        "--n-for",
        action="append",
        default=[],
        metavar="NAME=N",
        help="cut N for one store (repeatable), e.g. dbm.dumb=200000",
    )
    p.add_argument("--key-size", type=int, default=16, help="bytes per key")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value")
    p.add_argument(
        "--dir", default=None, help="where store files go (default: /dev/shm, else the temp dir)"
    )
    p.add_argument("--seed", type=int, default=42, help="data and order are a function of it")
    p.add_argument("--repeat", type=int, default=1, help="runs per store; medians reported")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per workload")
    p.add_argument("--json", metavar="OUT", help="write all runs and medians as JSON")
    p.add_argument(
        "--label", help="name of this configuration in reports (default: N, sizes and file system)"
    )
    p.add_argument("--keep", action="store_true", help="keep store files")
    p.add_argument("--list", action="store_true", help="list adapters and exit")
    p.add_argument(
        "--probe",
        action="store_true",
        help="durability probes instead of workloads: kill -9 survivors, fsyncs per put",
    )
    p.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="print markdown tables for JSON files written by --json, and exit",
    )
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args._child:
        rec = bench_one(json.loads(args._child))
        print(RESULT_MARK + json.dumps(rec), flush=True)
        return 0
    if args._probe:
        print(RESULT_MARK + json.dumps(probe_child(json.loads(args._probe))), flush=True)
        return 0
    if args.report:
        recs: list[dict[str, Any]] = []
        for path in args.report:
            with open(path) as f:
                rdoc = json.load(f)
            recs += rdoc.get("summary", []) + rdoc.get("probes", [])
        sys.stdout.write(render_markdown(recs))
        return 0
    if args.list:
        print(f"interpreter: {sys.executable} ({platform.python_version()})")
        for name, cls in ADAPTERS.items():
            why = cls.unavailable()
            state = "ok" if why is None else f"SKIP ({why})"
            print(f"  {name:18s} {state:34.34s} {cls.durability}")
        return 0

    names = args.store or ["all"]
    stores = list(ADAPTERS) if "all" in names else names
    unknown = [s for s in stores if s not in ADAPTERS]
    if unknown:
        print(f"unknown store(s): {', '.join(unknown)}; try --list", file=sys.stderr)
        return 2
    args.dir = os.path.abspath(args.dir or default_dir())
    os.makedirs(args.dir, exist_ok=True)
    n_for = {}
    for item in args.n_for:
        k, _, v = item.partition("=")
        n_for[k] = int(v)

    doc: dict[str, Any] = {
        "argv": sys.argv,
        "interpreter": interpreter(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if args.probe:
        probes = []
        for name in stores:
            log(f"probe {name}")
            probes.append(run_probe(name, args))
        doc["probes"] = probes
        text = render_markdown(probes)
    else:
        label = args.label or (
            f"N={args.n:,} key={args.key_size}B value={args.value_size}B "
            f"on {fs_type(args.dir)} ({args.dir})"
        )
        runs = []
        for rep in range(args.repeat):
            for name in stores:
                why = ADAPTERS[name].unavailable()
                if why and rep > 0:
                    continue
                n = n_for.get(name, args.n)
                spec = {
                    "store": name,
                    "n": n,
                    "key_size": args.key_size,
                    "value_size": args.value_size,
                    "seed": args.seed,
                    "rep": rep,
                    "budget": args.budget,
                    "dir": args.dir,
                    "keep": args.keep,
                    "label": label,
                }
                log(
                    f"[{rep + 1}/{args.repeat}] {name} n={n:,}"
                    + (f"  (skip: {why})" if why else "")
                )
                rec = run_child(spec, timeout=args.budget * 12 + 300)
                runs.append(rec)
                if rec.get("error"):
                    log(f"  ERROR {rec['error']}")
                elif not rec.get("skipped"):
                    mm = rec.get("metrics", {})
                    log(
                        "  "
                        + "  ".join(f"{k}={fmt_rate(mm.get(k))}" for k in METRICS)
                        + f"  reopen={fmt_s(mm.get('reopen_s'))}"
                        + (f"  flags={rec['flags']}" if rec.get("flags") else "")
                    )
        doc["runs"] = runs
        doc["summary"] = summarize(runs)
        text = render_markdown(doc["summary"])
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
