"""Crash points enumerated: the workload is killed at every internal step, one at a time.

Random-instant kills (tests/test_crash.py, tests/test_torture.py) almost never land in the
short windows between two stores into the mapping that must be ordered (a block header and
the block's first record, a record's body and its CRC, ...). The native core marks each such
step with a crash point (native/core.h ``crash_point``; Python steps call
``_vipercore.crash_point``): ``VIPERDBM_CRASH_LOG=path`` lists them, ``VIPERDBM_CRASH_AT=N``
sends SIGKILL to the process at the N-th.

A deterministic workload (this file run as a script) is run once with the log, to count its
points; then, from a copy of the same empty store each time, it is killed at point N for
every N (``VIPERDBM_CRASHPOINTS_ALL=1``, or when there are few) or, in CI, at every point of
a rare kind plus an even spread of the rest. After each kill the store must open with
``'w'`` and then ``'r'`` (in a child: :class:`_vdbtools.Prober`), and each key must hold
its last acknowledged value, or the one of the operation in flight; no deleted key returns.
The child acknowledges each operation by appending its index to a file (``os.write`` after
the operation returned: the file outlives the process, no fsync needed for a kill).

The workload reproduces the way a deleted key came back (issue 10): a key's value over
1 MiB is overwritten and deleted, ``sync()`` frees both jumbo blocks, compaction drops the
key's tombstone, and a later jumbo put is allocated in the freed space.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass

#: a jumbo value (over the 1 MiB inline limit)
JUMBO = 1_200_000
#: values that fill 4 MiB blocks quickly, so that few operations reach compaction
FILL = 200_000
HUGE_KEY = b"huge-" + b"H" * (1 << 20)


@dataclass(frozen=True)
class Op:
    kind: str  # put, delete, sync, reorganize, reopen
    key: bytes = b""
    size: int = 0


def workload() -> list[Op]:
    """The operations, the same in the parent and the child."""
    ops = [Op("put", b"small%d" % i, 100 + 37 * i) for i in range(6)]
    # the jumbo key: put, overwrite, delete; sync() frees both of its jumbo blocks
    ops += [Op("put", b"K", JUMBO), Op("put", b"K", JUMBO + 50_000), Op("delete", b"K")]
    ops.append(Op("sync"))
    # overwrite a few keys until compaction copies out and frees the block holding K's
    # tombstone (the records in it are all superseded: the tombstone is dropped)
    ops += [Op("put", b"fill%d" % (i % 4), FILL + i) for i in range(64)]
    ops.append(Op("sync"))  # frees the compacted blocks
    # a jumbo put into the freed space, then its overwrite and delete
    ops += [Op("put", b"L%d" % i, JUMBO + 50_000 * (i % 2)) for i in range(4)]
    ops += [Op("put", b"L0", JUMBO + 4), Op("delete", b"L1")]
    ops += [Op("put", b"small%d" % i, 5000 + i) for i in range(3)]
    # reorganize() in place (size 1: a reader is attached), then into a new pool
    ops += [Op("delete", b"small4"), Op("sync"), Op("reorganize", size=1)]
    ops += [Op("put", b"small5", 77), Op("reorganize")]
    # a key over 1 MiB: its delete record needs a jumbo block of its own (delete_jumbo)
    ops += [Op("put", HUGE_KEY, 10), Op("delete", HUGE_KEY)]
    ops += [Op("reopen"), Op("put", b"small0", 7), Op("put", b"M", JUMBO + 8), Op("reopen")]
    ops += [Op("delete", b"M"), Op("put", b"after", 3)]
    return ops


def value(index: int, size: int) -> bytes:
    from _vdbtools import value_for

    return value_for("crashpoints", index, size)


def child(path: str, acks: str) -> None:
    import viperdbm

    fd = os.open(acks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    db = viperdbm.open(path, "w")
    for index, op in enumerate(workload()):
        if op.kind == "put":
            db[op.key] = value(index, op.size)
        elif op.kind == "delete":
            del db[op.key]
        elif op.kind == "sync":
            db.sync()
        elif op.kind == "reorganize" and op.size:
            with viperdbm.open(path, "r"):
                db.reorganize()
        elif op.kind == "reorganize":
            db.reorganize()
        elif op.kind == "reopen":
            db.close()
            db = viperdbm.open(path, "w")
        os.write(fd, b"%d\n" % index)
    db.close()
    os.write(fd, b"done\n")


def reopen_child(path: str) -> None:
    """A writable open, which runs the recovery of a killed writer, and a close."""
    import viperdbm

    viperdbm.open(path, "w").close()


if __name__ == "__main__":
    if sys.argv[1] == "--reopen":
        reopen_child(sys.argv[2])
    else:
        child(sys.argv[1], sys.argv[2])
    sys.exit(0)


# -- the parent --------------------------------------------------------------------------

import shutil  # noqa: E402  (the child above needs none of this)
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from _vdbtools import Prober, child_env, copy_store, digest  # noqa: E402

import viperdbm  # noqa: E402

#: every point when there are at most this many; else a spread of about this many
CI_POINTS = 120
#: points whose name occurs at most this often in the workload are all taken, however many
RARE = 20
#: in CI, the recovery after a kill is itself killed at each of its points after every
#: this-many-th kill; after all of them with VIPERDBM_CRASHPOINTS_ALL=1
CI_NESTED_EVERY = 4
WATCHDOG_SECONDS = 120


def run_child(store: Path, acks: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    """The workload (acknowledging in ``acks``), or with ``acks`` None a writable reopen."""
    full = child_env()
    for name in ("VIPERDBM_CRASH_AT", "VIPERDBM_CRASH_LOG"):
        full.pop(name, None)
    full.update(env)
    args = [str(store), str(acks)] if acks is not None else ["--reopen", str(store)]
    return subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=WATCHDOG_SECONDS,
    )


def model_after(acked: int) -> dict[bytes, str]:
    """Key -> value digest once the first ``acked`` operations were applied."""
    model: dict[bytes, str] = {}
    for index, op in enumerate(workload()[:acked]):
        if op.kind == "put":
            model[op.key] = digest(value(index, op.size))
        elif op.kind == "delete":
            model.pop(op.key, None)
    return model


def acknowledged(acks: Path) -> int:
    """How many operations returned before the kill."""
    lines = acks.read_text().split() if acks.exists() else []
    numbers = [int(line) for line in lines if line != "done"]
    assert numbers == list(range(len(numbers))), f"acknowledgements out of order: {lines}"
    return len(numbers)


def everything() -> bool:
    return os.environ.get("VIPERDBM_CRASHPOINTS_ALL") == "1"


def choose(names: list[str]) -> list[int]:
    """The points to kill at (1-based): all of them, or every point of a rare kind plus an
    even spread of the rest (deterministic)."""
    total = len(names)
    if everything() or total <= CI_POINTS:
        return list(range(1, total + 1))
    counts = Counter(names)
    chosen = {n for n, name in enumerate(names, 1) if counts[name] <= RARE}
    step = max(1, total // max(1, CI_POINTS - len(chosen)))
    chosen.update(range(1, total + 1, step))
    chosen.add(total)
    return sorted(chosen)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="viperdbm-crashpoints-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def check_after_kill(prober: Prober, store: Path, ctx: str, acked: int) -> list[str]:
    """Open the killed store with 'w', then 'r': each key must hold its last acknowledged
    value or the one of the operation in flight."""
    ops = workload()
    model = model_after(acked)
    new = model_after(acked + 1) if acked < len(ops) else model
    ctx = f"{ctx} after {acked} acknowledged operations"
    res = prober.probe(store, "w", reopen=True)
    if res.status != "ok":
        return [f"{ctx}: the store does not open with 'w': {res.summary()}"]
    problems = [f"{ctx}: {p}" for p in res.agreement]
    for state, flag in ((res.state, "w"), (res.state_after_reopen, "then r")):
        assert state is not None
        for key in sorted(set(state) | set(model) | set(new)):
            got = state.get(key)
            if got != model.get(key) and got != new.get(key):
                problems.append(
                    f"{ctx} ({flag}): {key[:12]!r} holds {got and got[:12]}, acknowledged "
                    f"{model.get(key, 'absent')[:12]}"
                    + (f" (in flight: {new.get(key, 'absent')[:12]})" if new != model else "")
                )
    return problems


def kill_the_recovery(
    prober: Prober, killed: Path, scratch: Path, ctx: str, acked: int
) -> tuple[int, list[str]]:
    """The writable open of a killed store is itself killed at each of its crash points
    (erasing records a power cut cut off, zeroing a torn tail, freeing dead blocks...); the
    store must still hold what was acknowledged. Returns (points, problems)."""
    copy_store(killed, scratch)
    log = scratch.parent / "recovery-points"
    log.unlink(missing_ok=True)
    done = run_child(scratch, None, VIPERDBM_CRASH_LOG=str(log))
    if done.returncode != 0:
        return 0, [f"{ctx}: the writable reopen failed: {done.stderr[-500:]}"]
    names = log.read_text().splitlines() if log.exists() else []
    problems: list[str] = []
    for point, line in enumerate(names, 1):
        copy_store(killed, scratch)
        again = run_child(scratch, None, VIPERDBM_CRASH_AT=str(point))
        where = f"{ctx}, then its recovery at point {line!r}"
        if again.returncode != -signal.SIGKILL:
            problems.append(f"{where}: not killed there (exit {again.returncode})")
            continue
        problems += check_after_kill(prober, scratch, where, acked)
    return len(names), problems


def test_a_kill_at_any_crash_point_loses_nothing_acknowledged(workdir: Path) -> None:
    empty = workdir / "empty"
    viperdbm.open(empty, "c").close()
    store, acks, log = workdir / "store", workdir / "acks", workdir / "points"
    killed_copy, scratch = workdir / "killed", workdir / "scratch"
    copy_store(empty, store)
    done = run_child(store, acks, VIPERDBM_CRASH_LOG=str(log))
    assert done.returncode == 0, done.stderr
    assert acks.read_text().endswith("done\n")
    lines = log.read_text().splitlines()
    names = [line.split(" ", 1)[1] for line in lines]
    assert [int(line.split(" ", 1)[0]) for line in lines] == list(range(1, len(names) + 1))
    counts = Counter(names)
    for needed in (
        "jumbo block header written",
        "compact_block: index updated",
        "compact_step: index updated",
        "delete_jumbo: index updated",
    ):
        assert counts[needed], f"the workload never reaches {needed!r}: {dict(counts)}"
    points = choose(names)
    problems: list[str] = []
    nested = nested_kills = 0
    with Prober(watchdog=WATCHDOG_SECONDS) as prober:
        for n, point in enumerate(points):
            copy_store(empty, store)
            acks.unlink(missing_ok=True)
            killed = run_child(store, acks, VIPERDBM_CRASH_AT=str(point))
            name = names[point - 1]
            ctx = f"killed at point {point} ({name!r})"
            if killed.returncode != -signal.SIGKILL:
                problems.append(
                    f"{ctx}: the child was not killed there (exit {killed.returncode}; the "
                    f"workload's points are not deterministic?): {killed.stderr[-500:]}"
                )
                continue
            acked = acknowledged(acks)
            if everything() or n % CI_NESTED_EVERY == 0:
                copy_store(store, killed_copy)
                found, more = kill_the_recovery(prober, killed_copy, scratch, ctx, acked)
                nested += 1
                nested_kills += found
                problems += more
            problems += check_after_kill(prober, store, ctx, acked)
    print(
        f"{len(names)} crash points in the workload, {len(points)} kills; the recovery "
        f"after {nested} of them killed at each of its points: {nested_kills} kills"
    )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])
