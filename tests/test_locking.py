"""Locking, processes and threads: who may open a store while someone else has it.

The README's promises: one writer (a second one gets ``LockError`` at once, no hang) and any
number of readers (``'r'``) at the same time, in this process or others (issue 12, live
readers: a reader opens while a writer holds the store and sees its writes, a writer opens
while readers hold it; only flag ``'n'`` is refused while readers are attached), flag ``'u'``
skips viperdbm's own lock file but "libpmemobj still refuses a second process with
LockError", a store opened before ``fork()`` is unusable in the child (``ClosedError``) and
does not corrupt the parent's store, and one store object may be used from several threads.
tests/test_live_readers.py checks what live readers see while the writer writes.

Other processes are real processes (``subprocess``) holding a real store; nothing waits on a
clock: a holder reports ``held`` once the store is open and closes it when told to.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _vdbtools import child_env, value_for

import viperdbm

HOLDER = r"""
import sys, viperdbm
db = viperdbm.open(sys.argv[1], sys.argv[2])
print("held", len(db), flush=True)
sys.stdin.readline()
if sys.argv[2][0] != "r":
    db[b"holder-was-here"] = b"1"
else:
    print("sees", len(db), flush=True)
db.close()
print("closed", flush=True)
"""

CRASHING_WRITER = r"""
import os, signal, sys, viperdbm
db = viperdbm.open(sys.argv[1], "w")
db[b"written-before-the-crash"] = b"x"
os.kill(os.getpid(), signal.SIGKILL)
"""


class Holder:
    """Another process that holds the store open with ``flag`` until released."""

    def __init__(self, path: Path, flag: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), flag],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline()

    @property
    def holds(self) -> bool:
        return self.first_line.startswith("held")

    def error(self) -> str:
        assert self.proc.stderr is not None
        self.proc.wait()
        return self.proc.stderr.read()[-1500:]

    def release(self) -> str:
        """Close the store; a reader first says ``sees <len>`` (what it reads at the end)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        last_words = self.proc.stdout.read()
        code = self.proc.wait()
        assert code == 0, self.error()
        return last_words


@pytest.fixture
def store(store_path: Path) -> Path:
    with viperdbm.open(store_path, "c") as db:
        for i in range(100):
            db[b"k%03d" % i] = value_for("lock", i, i * 37)
    return store_path


def contents(path: Path) -> dict[bytes, bytes]:
    with viperdbm.open(path, "r") as db:
        return {k: db[k] for k in db}


def expected() -> dict[bytes, bytes]:
    return {b"k%03d" % i: value_for("lock", i, i * 37) for i in range(100)}


def assert_refused(path: Path, flag: str) -> None:
    """open(path, flag) fails at once with LockError saying the store is in use."""
    with pytest.raises(viperdbm.LockError) as info:
        viperdbm.open(path, flag).close()
    text = str(info.value)
    assert "in use" in text, text
    assert isinstance(info.value, viperdbm.error) and isinstance(info.value, OSError)


# --------------------------------------------------------------------------- writers
@pytest.mark.parametrize("second", ["w", "c", "n", "wf", "ws"])
def test_a_second_writer_in_the_same_process_is_refused(store: Path, second: str) -> None:
    with viperdbm.open(store, "w") as db:
        assert_refused(store, second)
        db[b"still"] = b"usable"  # the refused open did not disturb the holder
    got = contents(store)
    assert got.pop(b"still") == b"usable" and got == expected()  # 'n' destroyed nothing


@pytest.mark.parametrize("second", ["w", "c", "n", "wu", "ru"])
def test_a_second_writer_or_a_u_reader_in_another_process_is_refused(
    store: Path, second: str
) -> None:
    """'ru' takes libpmemobj's own lock of the pool, which the writer holds: refused still."""
    holder = Holder(store, "w")
    assert holder.holds, holder.error()
    try:
        assert_refused(store, second)
    finally:
        holder.release()
    got = contents(store)
    assert got.pop(b"holder-was-here") == b"1" and got == expected()


def test_a_reader_in_the_same_process_opens_under_the_writer(store: Path) -> None:
    with viperdbm.open(store, "w") as db, viperdbm.open(store, "r") as reader:
        assert {k: reader[k] for k in reader} == expected()
        db[b"written-under-the-reader"] = b"seen"
        del db[b"k000"]
        assert reader[b"written-under-the-reader"] == b"seen" and b"k000" not in reader
        assert len(reader) == 100
    got = contents(store)
    assert got.pop(b"written-under-the-reader") == b"seen"
    assert got == {k: v for k, v in expected().items() if k != b"k000"}


def test_a_reader_in_another_process_opens_under_the_writer(store: Path) -> None:
    holder = Holder(store, "w")
    assert holder.holds, holder.error()
    try:
        with viperdbm.open(store, "r") as reader:
            assert {k: reader[k] for k in reader} == expected()
            holder.release()  # writes holder-was-here, then closes
            assert reader[b"holder-was-here"] == b"1" and len(reader) == 101
    finally:
        if holder.proc.poll() is None:
            holder.release()


def test_a_refused_open_leaves_no_lock_behind(store: Path) -> None:
    holder = Holder(store, "w")
    assert holder.holds, holder.error()
    for _ in range(3):
        assert_refused(store, "w")
    holder.release()
    with viperdbm.open(store, "w") as db:  # nothing left locked by the refused attempts
        db[b"after"] = b"ok"
    second = Holder(store, "w")
    assert second.holds, second.error()
    second.release()


# --------------------------------------------------------------------------- readers
def test_readers_in_two_processes_share_the_store(store: Path) -> None:
    first = Holder(store, "r")
    assert first.holds, first.error()
    second = Holder(store, "r")
    try:
        assert second.holds, f"a second reader was refused: {second.error()}"
        assert contents(store) == expected()  # and a third, in this process
    finally:
        first.release()
        if second.holds:
            second.release()


def test_readers_in_one_process_share_the_store(store: Path) -> None:
    with viperdbm.open(store, "r") as a, viperdbm.open(store, "r") as b:
        assert {k: a[k] for k in a} == {k: b[k] for k in b} == expected()


def test_readers_share_the_store_after_a_writer_was_killed(store: Path) -> None:
    """After a crashed writer (no blocks file written at close) readers must still share."""
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(store)], env=child_env(), capture_output=True
    )
    assert proc.returncode == -9, proc.stderr
    first = Holder(store, "r")
    assert first.holds, first.error()
    second = Holder(store, "r")
    try:
        assert second.holds, f"a second reader was refused: {second.error()}"
    finally:
        first.release()
        if second.holds:
            second.release()
    want = expected() | {b"written-before-the-crash": b"x"}
    assert contents(store) == want


@pytest.mark.parametrize("writer", ["w", "c", "wu"])
def test_a_writer_opens_while_readers_hold_the_store(store: Path, writer: str) -> None:
    """'wu' too: it takes no viperdbm lock, but publishes to the readers as any writer."""
    readers = [Holder(store, "r"), Holder(store, "r")]
    try:
        assert all(r.holds for r in readers), [r.error() for r in readers if not r.holds]
        with viperdbm.open(store, writer) as db:
            db[b"written-under-readers"] = b"1"
        # each reader sees the write when it last reads, before it closes
        assert [r.release().splitlines()[0] for r in readers] == ["sees 101", "sees 101"]
    finally:
        for r in readers:
            if r.proc.poll() is None:
                r.release()
    got = contents(store)
    assert got.pop(b"written-under-readers") == b"1" and got == expected()


def test_n_is_refused_while_readers_hold_the_store(store: Path) -> None:
    """'n' would replace the store the readers keep reading: it refuses, destroying nothing."""
    writer = "n"
    readers = [Holder(store, "r"), Holder(store, "r")]
    try:
        assert all(r.holds for r in readers), [r.error() for r in readers if not r.holds]
        with pytest.raises(viperdbm.LockError):
            viperdbm.open(store, writer).close()
    finally:
        for r in readers:
            if r.holds:
                r.release()
    assert contents(store) == expected()


def test_a_writer_opens_while_a_reader_in_this_process_holds_the_store(store: Path) -> None:
    with viperdbm.open(store, "r") as reader:
        with viperdbm.open(store, "w") as db:
            db[b"k001"] = b"overwritten"
            assert reader[b"k001"] == b"overwritten"
        assert len(reader) == 100 and reader[b"k001"] == b"overwritten"


# --------------------------------------------------------------------------- flag 'u'
def test_flag_u_writer_and_a_normal_writer_exclude_each_other(store: Path) -> None:
    """README: 'u' skips viperdbm's lock file; libpmemobj still refuses a second process."""
    holder = Holder(store, "wu")
    assert holder.holds, holder.error()
    try:
        assert_refused(store, "w")
        assert_refused(store, "wu")
    finally:
        holder.release()
    holder = Holder(store, "w")
    assert holder.holds, holder.error()
    try:
        assert_refused(store, "wu")
    finally:
        holder.release()


def test_flag_u_works_alone_and_writes_durably(store: Path) -> None:
    with viperdbm.open(store, "wu") as db:
        db[b"u"] = b"flag"
    with viperdbm.open(store, "ru") as db:
        assert db[b"u"] == b"flag" and len(db) == 101


# --------------------------------------------------------------------------- fork
FORKER = r"""
import os, sys, viperdbm
store, flag, ending = sys.argv[1], sys.argv[2], sys.argv[3]
db = viperdbm.open(store, flag)
ops = [
    ("get", lambda: db[b"k001"]),
    ("put", lambda: db.__setitem__(b"from-child", b"x")),
    ("delete", lambda: db.__delitem__(b"k002")),
    ("len", lambda: len(db)),
    ("keys", lambda: db.keys()),
    ("sync", lambda: db.sync()),
]
pid = os.fork()
if pid == 0:
    for name, op in ops:
        try:
            op()
            print(f"{name}: no error", flush=True)
        except viperdbm.ClosedError as exc:
            print(f"{name}: ClosedError {'fork' in str(exc)}", flush=True)
        except BaseException as exc:
            print(f"{name}: {type(exc).__name__} {exc}", flush=True)
    try:
        viperdbm.open(store, "w").close()
        print("reopen: opened while the parent holds it", flush=True)
    except viperdbm.LockError:
        print("reopen: LockError", flush=True)
    except BaseException as exc:
        print(f"reopen: {type(exc).__name__} {exc}", flush=True)
    if ending == "close then exit":
        try:
            db.close()
        except BaseException as exc:
            print(f"close: {type(exc).__name__} {exc}", flush=True)
    if ending == "os._exit":
        os._exit(0)
    sys.exit(0)  # a normal exit: finalizers run, the db object is collected in the child
_, status = os.waitpid(pid, 0)
print(f"child status {status}", flush=True)
print("parent get: ok" if db.get(b"k001") is not None else "parent get: missing", flush=True)
if flag == "w":
    db[b"parent-after-fork"] = b"y"
db.close()
print("parent closed", flush=True)
"""


@pytest.mark.parametrize("flag", ["w", "r"])
@pytest.mark.parametrize("ending", ["os._exit", "close then exit", "exit without close"])
def test_a_store_opened_before_fork_is_unusable_in_the_child(
    store: Path, flag: str, ending: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FORKER, str(store), flag, ending],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    report = proc.stdout.splitlines()
    assert proc.returncode == 0, (report, proc.stderr[-2000:])
    for name in ("get", "put", "delete", "len", "keys", "sync"):
        line = next(line for line in report if line.startswith(f"{name}:"))
        readonly_write = flag == "r" and name in ("put", "delete")
        assert line.startswith(f"{name}: ClosedError") or (
            readonly_write and line.startswith(f"{name}: ReadonlyError")
        ), (name, report)
    # and the error is clear: it says the store was opened before fork(), not "closed"
    unclear = [line for line in report if line.endswith("ClosedError False")]
    assert not unclear, f"ClosedError messages that do not mention fork(): {unclear}"
    assert not any(line.startswith("close:") for line in report), report
    assert "child status 0" in report, report
    if flag == "w":  # the parent still holds the store: a second writer is refused
        assert "reopen: LockError" in report, report
    else:  # the parent is a reader: a writer may open under it (issue 12)
        assert "reopen: opened while the parent holds it" in report, report
    assert "parent get: ok" in report and "parent closed" in report, report
    got = contents(store)
    if flag == "w":
        assert got.pop(b"parent-after-fork") == b"y"
    assert got == expected(), "the child changed the parent's store"


# --------------------------------------------------------------------------- threads
def test_one_store_object_from_many_threads(store_path: Path) -> None:
    """Writers on disjoint keys (small, page-crossing and jumbo values), deleters, readers
    checking every value they see, and a thread calling sync() and reorganize(); then every
    key is checked after a reopen."""
    db = viperdbm.open(store_path, "c")
    writers, rounds = 4, 60
    errors: list[str] = []
    final: list[dict[bytes, bytes | None]] = [{} for _ in range(writers)]
    done = threading.Event()

    def value(t: int, i: int, r: int) -> bytes:
        size = [0, 17, 3000, 70_000, 1_100_000][(t + i + r) % 5] if i % 7 == 0 else (i * 31) % 900
        return value_for(f"thread{t}", i * 1000 + r, size)

    def writer(t: int) -> None:
        rng = random.Random(t)
        try:
            for r in range(rounds):
                for i in range(20):
                    key = b"t%d-%02d" % (t, i)
                    if rng.random() < 0.2 and final[t].get(key) is not None:
                        del db[key]
                        final[t][key] = None
                    else:
                        db[key] = value(t, i, r)
                        final[t][key] = value(t, i, r)
        except BaseException as exc:
            errors.append(f"writer {t}: {exc!r}")

    def reader() -> None:
        rng = random.Random(99)
        try:
            while not done.is_set():
                t, i = rng.randrange(writers), rng.randrange(20)
                got = db.get(b"t%d-%02d" % (t, i))
                if got is not None and got not in {value(t, i, r) for r in range(rounds)}:
                    errors.append(f"reader saw a value never written to t{t}-{i}")
                keys = db.keys()
                if len(keys) != len(set(keys)):
                    errors.append("keys() has duplicates")
        except BaseException as exc:
            errors.append(f"reader: {exc!r}")

    def maintenance() -> None:
        try:
            for n in range(6):
                db.sync()
                if n % 2:
                    db.reorganize()
        except BaseException as exc:
            errors.append(f"maintenance: {exc!r}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(writers)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    threads.append(threading.Thread(target=maintenance))
    for th in threads:
        th.start()
    for th in threads[:writers]:
        th.join()
    threads[-1].join()
    done.set()
    for th in threads:
        th.join()
    db.close()
    assert not errors, errors[:10]
    want = {k: v for f in final for k, v in f.items() if v is not None}
    assert contents(store_path) == want


@pytest.fixture
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh path on tmpfs (locking does not depend on the file system)."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="viperdbm-lock-", dir="/dev/shm"))
    yield directory / "store"
    shutil.rmtree(directory, ignore_errors=True)
