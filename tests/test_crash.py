"""Durability under SIGKILL: every acknowledged write survives, the store always opens.

A child Python process (this file run as a script) opens a store and performs a seeded
stream of operations, printing each operation's index on stdout *after* the operation
returned. The parent reads those acknowledgements, SIGKILLs the child at a random point,
reopens the store and checks it against a model replayed from the same seed:

* every acknowledged put holds its last acknowledged value, every acknowledged delete is
  gone, and no key that was never written exists;
* the single operation in flight at the kill is either wholly applied or not at all;
* len(), keys(), iteration, ``in`` and get() agree with each other.

Values are computed from (seed, operation index), so the parent can check every byte.
CI uses a fixed seed; VIPERDBM_FRESH_SEEDS=1 draws new ones, VIPERDBM_CRASH_SEED=S replays
one (a failing test prints its seed).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

KEYSPACE = [b"key-%02d" % i for i in range(48)]
NEVER_WRITTEN = [b"key-99", b"", b"other"]
MAX_VALUE = 64 * 1024
STREAM_LENGTH = 100_000  # far more than a round ever acknowledges before its kill


@dataclass(frozen=True)
class Op:
    index: int
    key: bytes
    value: bytes | None  # None: delete


def operation(seed: int, index: int) -> Op:
    """The index-th operation of the stream *seed*: the same in parent and child."""
    rng = random.Random(seed * 1_000_003 + index)
    key = rng.choice(KEYSPACE)
    if rng.random() < 0.2:
        return Op(index, key, None)
    size = rng.choice([0, 1, rng.randrange(2, 512), rng.randrange(512, MAX_VALUE + 1)])
    return Op(index, key, random.Random(f"{seed}/{index}").randbytes(size))


# -- the child ---------------------------------------------------------------------------


def _ack(out: IO[str], line: str) -> None:
    out.write(line + "\n")
    out.flush()


def child_writer(module_name: str, path: str, seed: int, sync_each: bool) -> None:
    module = importlib.import_module(module_name)
    db = module.open(path, "c")
    _ack(sys.stdout, "ready")
    for index in range(STREAM_LENGTH):
        op = operation(seed, index)
        if op.value is None:
            with contextlib.suppress(KeyError):
                del db[op.key]
        else:
            db[op.key] = op.value
        if sync_each:  # dbm.dumb only: it keeps its index in memory until sync()
            db.sync()
        _ack(sys.stdout, str(index))
    db.close()


def child_reopener(module_name: str, path: str, flags: str) -> None:
    module = importlib.import_module(module_name)
    _ack(sys.stdout, "ready")
    for index in range(STREAM_LENGTH):
        db = module.open(path, flags[index % len(flags)])
        len(db)
        db.get(KEYSPACE[0])
        db.close()
        _ack(sys.stdout, str(index))


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        child_writer(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "sync")
    else:
        child_reopener(sys.argv[2], sys.argv[3], sys.argv[4])
    sys.exit(0)


# -- the parent --------------------------------------------------------------------------

import pytest  # noqa: E402  (the child above needs none of this)
from _vdbtools import as_nobody, run_as_nobody, scratch_dir_for_nobody  # noqa: E402
from conftest import Backend, Store  # noqa: E402

ROUNDS = 5
WATCHDOG_SECONDS = 120


@dataclass
class Killed:
    acks: int  # operations acknowledged before the child died
    finished: bool  # the child got to the end by itself (no operation in flight)


def spawn(backend: Backend, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, args[0], backend.name, *args[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=backend.child_env(),
    )


def kill_after(proc: subprocess.Popen[str], acks: int, rng: random.Random, ctx: str) -> Killed:
    """Read acknowledgements; SIGKILL the child after *acks* of them (and a random pause
    of at most 2 ms); then collect the acknowledgements that were already on their way.

    A watchdog kills a child that stops making progress, so a hang fails instead of
    blocking the suite (protection, not a timing assertion)."""
    assert proc.stdout is not None and proc.stderr is not None
    hung = threading.Event()

    def watchdog() -> None:
        hung.set()
        proc.kill()

    timer = threading.Timer(WATCHDOG_SECONDS, watchdog)
    timer.start()
    try:
        ready = proc.stdout.readline()
        seen = 0
        while ready == "ready\n" and seen < acks:
            line = proc.stdout.readline()
            if not line:
                break
            assert line == f"{seen}\n", f"{ctx}: unexpected line {line!r}"
            seen += 1
        time.sleep(rng.random() / 500)
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:
            assert line == f"{seen}\n", f"{ctx}: unexpected line {line!r}"
            seen += 1
        code = proc.wait()
    finally:
        timer.cancel()
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert not hung.is_set(), f"{ctx}: child hung ({seen} acks): {stderr}"
    assert ready == "ready\n", f"{ctx}: child did not start: {ready!r} {stderr}"
    assert code in (0, -signal.SIGKILL), f"{ctx}: child failed ({code}): {stderr}"
    return Killed(seen, finished=code == 0)


def check_agreement(db: Store, ctx: str) -> dict[bytes, bytes]:
    """len/keys/iteration/in/get must tell the same story; return the contents."""
    keys = db.keys()
    assert len(keys) == len(set(keys)) == len(db), ctx
    assert sorted(db) == sorted(keys), ctx
    found = {key: db[key] for key in keys}
    for key in KEYSPACE + NEVER_WRITTEN:
        assert (key in db) == (key in found), f"{ctx}: 'in' disagrees for {key!r}"
        assert db.get(key) == found.get(key), f"{ctx}: get() disagrees for {key!r}"
    return found


def describe(value: bytes | None) -> str:
    return "absent" if value is None else f"{len(value)} bytes {value[:8]!r}..."


def verify(
    db: Store, model: dict[bytes, bytes], in_flight: Op | None, ctx: str
) -> dict[bytes, bytes]:
    """Check the reopened store against *model* (every acknowledged operation applied);
    the in-flight operation may be applied or not. Return what the store holds."""
    found = check_agreement(db, ctx)
    extra = set(found) - set(model) - ({in_flight.key} if in_flight else set())
    assert not extra, f"{ctx}: keys that were never written (or were deleted): {sorted(extra)}"
    for key in set(model) | set(found):
        got = found.get(key)
        old = model.get(key)
        if in_flight is not None and key == in_flight.key:
            assert got in (old, in_flight.value), (
                f"{ctx}: in-flight op {in_flight.index} on {key!r} left {describe(got)}; "
                f"want old {describe(old)} or new {describe(in_flight.value)} (torn?)"
            )
        else:
            assert got == old, f"{ctx}: {key!r} is {describe(got)}, want {describe(old)}"
    return found


#: CI replays this seed so that a run is repeatable; VIPERDBM_FRESH_SEEDS=1 draws new ones
CI_CRASH_SEED = 12


def crash_seed() -> int:
    env = os.environ.get("VIPERDBM_CRASH_SEED")
    if env:
        seed = int(env)
    elif os.environ.get("VIPERDBM_FRESH_SEEDS") == "1":
        seed = random.SystemRandom().randrange(2**32)
    else:
        seed = CI_CRASH_SEED
    # shown with the output of a failing test, whatever fails (an exception too)
    print(f"replay with VIPERDBM_CRASH_SEED={seed}")
    return seed


@pytest.mark.beyond_dumb("dbm.dumb is not crash-safe, even synced after each write", strict=False)
def test_acknowledged_writes_survive_sigkill(backend: Backend, store_path: Path) -> None:
    base_seed = crash_seed()
    rng = random.Random(base_seed)
    model: dict[bytes, bytes] = {}
    sync = "nosync" if backend.is_viperdbm else "sync"
    for round_ in range(ROUNDS):
        seed = base_seed * 100 + round_
        ctx = f"VIPERDBM_CRASH_SEED={base_seed} round {round_}"
        proc = spawn(backend, "writer", str(store_path), str(seed), sync)
        killed = kill_after(proc, rng.randrange(1, 400), rng, ctx)
        for index in range(killed.acks):
            op = operation(seed, index)
            if op.value is None:
                model.pop(op.key, None)
            else:
                model[op.key] = op.value
        in_flight = None if killed.finished else operation(seed, killed.acks)
        with backend.open(store_path, "r") as db:
            model = verify(db, model, in_flight, f"{ctx} after {killed.acks} acks")
    with backend.open(store_path, "w") as db:  # still writable after all that
        db[b"after"] = b"crashes"
        model[b"after"] = b"crashes"
    with backend.open(store_path, "r") as db:
        assert check_agreement(db, "final") == model


def test_kill_while_opening_an_existing_store(backend: Backend, store_path: Path) -> None:
    base_seed = crash_seed()
    rng = random.Random(base_seed)
    model = {key: random.Random(key).randbytes(rng.randrange(0, 5000)) for key in KEYSPACE[::2]}
    with backend.open(store_path, "c") as db:
        for key, value in model.items():
            db[key] = value
    for round_ in range(ROUNDS):
        ctx = f"VIPERDBM_CRASH_SEED={base_seed} reopen round {round_}"
        proc = spawn(backend, "reopen", str(store_path), "wrc")
        kill_after(proc, rng.choice([0, 0, 1, rng.randrange(2, 30)]), rng, ctx)
        with backend.open(store_path, "r") as db:
            assert verify(db, model, None, ctx) == model


def test_kill_while_creating_a_store(backend: Backend, store_path: Path) -> None:
    """Killed inside open(path, 'n') — the first creation or a re-creation — the path
    must still open with 'c', as an empty store (every version of it was empty)."""
    base_seed = crash_seed()
    rng = random.Random(base_seed)
    for round_ in range(ROUNDS):
        ctx = f"VIPERDBM_CRASH_SEED={base_seed} create round {round_}"
        proc = spawn(backend, "reopen", str(store_path), "n")
        kill_after(proc, rng.choice([0, 0, 1, rng.randrange(2, 30)]), rng, ctx)
        with backend.open(store_path, "c") as db:
            assert check_agreement(db, ctx) == {}, ctx


# -- kills at exact system calls (strace -e inject=SYSCALL:signal=KILL) ---------------------

GROW_WRITER = r"""
import sys, viperdbm
db = viperdbm.open(sys.argv[1], "w")
for i in range(40):
    db[b"big%02d" % i] = bytes([i]) * 900_000
    print(i, flush=True)
"""


@pytest.mark.parametrize("growth", [0, 1, 2])
def test_readers_open_after_a_growth_killed_before_its_fallocate(
    tmp_path: Path, growth: int
) -> None:
    """A writer killed between creating a new part file and allocating its space leaves an
    empty last part. A reader ('r', and the CLI) must open the store anyway; it was a bare
    ValueError from map_parts, and the 1-in-12 failure of the SIGKILL test on tmpfs. The
    kill is at the fallocate of the pool's first, second or third growth."""
    from _strace import growth_fallocates, inject
    from _vdbtools import child_env

    import viperdbm

    def make(store: Path) -> None:
        with viperdbm.open(store, "c") as db:
            db[b"small"] = b"1"
        with viperdbm.open(store, "w") as db:  # closed: the blocks file for readers is current
            db[b"small"] = b"2"

    make(tmp_path / "count.vdb")
    calls = growth_fallocates(
        [sys.executable, "-c", GROW_WRITER, str(tmp_path / "count.vdb")],
        str(tmp_path / "count.trace"),
        child_env(),
    )
    assert len(calls) > growth, f"the writer grew the pool {len(calls)} times"
    store = tmp_path / "s.vdb"
    make(store)
    proc = subprocess.run(
        [
            *inject(f"fallocate:signal=KILL:when={calls[growth]}"),
            sys.executable,
            "-c",
            GROW_WRITER,
            str(store),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    acked = [int(line) for line in proc.stdout.split()]
    parts = sorted((store / "parts").iterdir())
    assert parts[-1].stat().st_size == 0, "the kill did not leave an empty part"
    want = {b"small": b"2"} | {b"big%02d" % i: bytes([i]) * 900_000 for i in acked}
    with viperdbm.open(store, "r") as db:
        got = {k: db[k] for k in db}
    assert {k: got.get(k) for k in want} == want
    assert set(got) <= set(want) | {b"big%02d" % (max(acked, default=-1) + 1)}
    cli = subprocess.run(
        [sys.executable, "-m", "viperdbm", "get", str(store), "small"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert cli.returncode == 0 and "Traceback" not in cli.stderr, cli.stderr
    with viperdbm.open(store, "w") as db:  # a writer removes the empty part
        assert db[b"small"] == b"2"
    assert all(p.stat().st_size > 0 for p in (store / "parts").iterdir())


REPLACER = r"""
import io, sys, viperdbm
path, how = sys.argv[1], sys.argv[2]
if how == "n":
    with viperdbm.open(path, "n") as db:
        db[b"new"] = b"1"
else:
    dump = io.BytesIO()
    viperdbm.dump({b"new": b"1"}, dump)
    dump.seek(0)
    viperdbm.load(dump, path, replace=True)
print("done", flush=True)
"""


@pytest.mark.parametrize("how", ["n", "load"])
def test_a_replace_killed_at_any_rename_leaves_a_store_at_the_path(
    tmp_path: Path, how: str
) -> None:
    """Flag 'n' and load --replace swap the new store in: killed at each rename-like call
    (strace -e inject=SYSCALL:signal=KILL:when=N), the path holds the old store or the new
    one, never nothing (two renames left a window with the old data hidden)."""
    from _strace import inject
    from _vdbtools import child_env

    import viperdbm

    store = tmp_path / "s.vdb"
    old = {b"old": b"0"}
    outcomes: set[str] = set()
    for syscall in ("rename", "renameat2"):
        for when in range(1, 7):
            ctx = f"{how}: killed at {syscall} #{when}"
            with viperdbm.open(store, "n") as db:
                db.update(old)
            proc = subprocess.run(
                [
                    *inject(f"{syscall}:signal=KILL:when={when}"),
                    sys.executable,
                    "-c",
                    REPLACER,
                    str(store),
                    how,
                ],
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=120,
            )
            finished = proc.stdout.strip() == "done"
            assert finished or proc.returncode in (-signal.SIGKILL, 137), (ctx, proc.stderr)
            with viperdbm.open(store, "r") as db:
                got = {k: db[k] for k in db}
            # the new store of flag 'n' is empty until the put that follows the open
            assert got in (old, {b"new": b"1"}) or (how == "n" and got == {}), f"{ctx}: {got}"
            if finished:
                assert got == {b"new": b"1"}, ctx
            outcomes.add("new" if got != old else "old")
    assert outcomes == {"old", "new"}, "no kill landed inside the swap"


def test_flag_n_replaces_a_plain_file(tmp_path: Path) -> None:
    """As dbm.gnu and dbm.sqlite3 do (CPython's
    test_anydbm_creation_n_file_exists_with_invalid_contents)."""
    import viperdbm

    path = tmp_path / "f"
    path.write_bytes(b"not a store")
    with viperdbm.open(path, "n") as db:
        assert len(db) == 0
        db[b"k"] = b"v"
    with viperdbm.open(path, "r") as db:
        assert dict(db.items()) == {b"k": b"v"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"], "leftovers beside the store"


def test_flag_n_refuses_a_directory_that_is_not_a_store_without_suggesting_n(
    tmp_path: Path,
) -> None:
    import viperdbm

    path = tmp_path / "d"
    path.mkdir()
    (path / "precious").write_text("keep me")
    for flag in ("n", "c", "w"):
        with pytest.raises(viperdbm.NotAStoreError) as info:
            viperdbm.open(path, flag)
        assert "flag 'n' to replace" not in str(info.value), str(info.value)
    assert (path / "precious").read_text() == "keep me"


def test_a_missing_part_is_reported_with_the_store_path(tmp_path: Path) -> None:
    """The pool is opened through /proc/self/fd/N; messages name the store instead."""
    import viperdbm

    store = tmp_path / "s.vdb"
    with viperdbm.open(store, "c") as db:
        for i in range(12):
            db[b"k%d" % i] = bytes(900_000)
    parts = sorted((store / "parts").iterdir())
    assert len(parts) >= 3
    parts[1].unlink()  # a part lost in the middle
    for flag in ("w", "r"):
        with pytest.raises(viperdbm.error) as info:
            viperdbm.open(store, flag).close()
        assert "/proc/self/fd" not in str(info.value), str(info.value)
        assert str(store) in str(info.value), str(info.value)


REFUSED_SWAP = r"""
import json, sys, viperdbm
try:
    viperdbm.open(sys.argv[1], "n").close()
    print(json.dumps(["ok"]))
except viperdbm.error as exc:
    print(json.dumps([type(exc).__name__, exc.errno, str(exc)]))
"""


def test_a_file_system_that_cannot_swap_leaves_the_old_store(tmp_path: Path) -> None:
    """renameat2(RENAME_EXCHANGE) refused (EINVAL, as on file systems without it, injected
    by strace): a clear error, the old store in place and whole, nothing left beside it."""
    from _strace import inject
    from _vdbtools import child_env

    import viperdbm

    store = tmp_path / "s.vdb"
    with viperdbm.open(store, "c") as db:
        db[b"old"] = b"0"
    proc = subprocess.run(
        [*inject("renameat2:error=EINVAL"), sys.executable, "-c", REFUSED_SWAP, str(store)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    _, code, message = json.loads(proc.stdout)
    assert code == errno.EINVAL and "old store was left in place" in message, message
    with viperdbm.open(store, "r") as db:
        assert dict(db.items()) == {b"old": b"0"}
    assert [p.name for p in tmp_path.iterdir()] == ["s.vdb"]


def test_a_growth_killed_before_its_chmod_leaves_a_store_its_owner_opens() -> None:
    """libpmemobj creates a new part with no permissions and chmods it last: a writer
    killed in between left a part that only root could open. The owner's next open must
    work (the store and the processes belong to an ordinary user here)."""
    from _strace import inject

    nobody = as_nobody("run the store as an ordinary user")
    with scratch_dir_for_nobody("viperdbm-chmod-", 0o777) as base:
        store = base / "s.vdb"
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        make = "import sys, viperdbm\nwith viperdbm.open(sys.argv[1], 'c') as db: db[b'a'] = b'1'"
        subprocess.run([*nobody, sys.executable, "-c", make, str(store)], env=env, check=True)
        writer = [*nobody, sys.executable, "-c", GROW_WRITER, str(store)]
        proc = subprocess.run(
            [*inject("chmod:signal=KILL:when=1"), *writer],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        acked = [int(line) for line in proc.stdout.split()]
        modes = [stat.S_IMODE(p.stat().st_mode) for p in sorted((store / "parts").iterdir())]
        assert 0 in modes, f"the kill did not land before libpmemobj's chmod: {modes}"
        check = (
            "import sys, viperdbm\n"
            "with viperdbm.open(sys.argv[1], sys.argv[2]) as db: print(len(db), db[b'a'])"
        )
        for flag in ("w", "r"):
            opened = run_as_nobody(sys.executable, "-c", check, str(store), flag)
            assert opened.returncode == 0, (flag, opened.stderr[-2000:])
            assert opened.stdout.split()[0] in (str(len(acked) + 1), str(len(acked) + 2))
