"""Live readers (issue 12): readers in other processes follow one writer, linearizably.

The rule (LIVE.md, issue 12 point 1): every reader operation sees every write the writer
acknowledged before the operation began, never a torn value, never a value that was not
written, and never an older state of a key after a newer one (per reader). The writer
killed at any instant loses the readers nothing; a new writer opens under live readers and
they follow it; a reader killed at any instant does not hold space for good.

The cross-process test (:func:`test_readers_follow_a_writer_linearizably`) runs one writer
and three readers (``tests/_live_child.py``) on one store and records the history OUTSIDE
the store: the writer appends an intent line before each write and an ack line after it
returned; each reader notes the size of the ack log before each read and the size of the
intent log after it, and what it saw. :class:`History` and :func:`check_observations` then
check the rule on the logs: a read saw a state of the key at least as new as the last ack
of that key in the ack-log prefix that existed when the read began, a state that was
intended before the read returned, and never older than what the same reader saw before. A
delete is a version of its key too; an absent key (or ``in`` saying True) is matched to the
oldest version it can be, so the check never blames a correct history.

``VIPERDBM_LIVE_ROUNDS=N`` kills the writer N times per file system (CI: a bounded
number); ``VIPERDBM_LIVE_SEED=S`` replays a run (the seed and a replay command are in every
failure message); CI replays a fixed seed, ``VIPERDBM_FRESH_SEEDS=1`` draws a new one. A
summary of each run is written to ``/tmp/viperdbm-live-<fs>-<seed>.json``.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from _live_child import (
    KEY_COUNT,
    KEYS,
    decode_value,
    keys_bitmap,
    log_lines,
    make_value,
    observation_line,
)
from _vdbtools import HERE, child_env, env_seed, list_items_while_collecting, run_script_ok
from test_cli import run as run_cli

import viperdbm

#: CI replays this seed (the kill instants still vary); VIPERDBM_FRESH_SEEDS=1 draws new ones
CI_LIVE_SEED = 1212
CI_WRITER_KILLS = 5
READERS = 3
WATCHDOG = 120.0  # seconds without progress: a child is hung (not a timing assertion)
POLL = 0.005
#: writes the writer may make after the last reader is gone before it must hold nothing
RELEASE_WITHIN_WRITES = 3000
CHILD = str(HERE / "_live_child.py")


def writer_kills() -> int:
    env = os.environ.get("VIPERDBM_LIVE_ROUNDS")
    return int(env) if env else CI_WRITER_KILLS


# --------------------------------------------------------------------------- the checker
@dataclass(frozen=True)
class Intent:
    version: int
    key: int  # -1 for a reorganize
    kind: str  # 'p' put, 'd' delete, 'r' reorganize
    size: int
    end: int  # offset in the intent log right after its line


#: the state of every key before the first write: absent, "version -1", intended at offset 0
INITIAL = -1


@dataclass(frozen=True)
class Observation:
    reader: str
    acks_before: int  # bytes of the ack log when the operation began
    intents_after: int  # bytes of the intent log when it returned
    op: str  # get, item, in, len, keys
    key: int  # -1 for len and keys
    seen: str  # v<version>, present, absent, n<len>, k<hex bitmap>, E<problem>


class History:
    """The writer's intent and ack logs, indexed for the questions the checker asks."""

    def __init__(self, intents: bytes, acks: bytes) -> None:
        self.intents: dict[tuple[int, int], Intent] = {}
        self.by_key: dict[int, list[Intent]] = {k: [] for k in range(KEY_COUNT)}
        for end, fields in log_lines(intents):
            if len(fields) != 4:
                continue
            intent = Intent(int(fields[0]), int(fields[1]), fields[2], int(fields[3]), end)
            if intent.key >= 0:
                self.intents[intent.key, intent.version] = intent
                self.by_key[intent.key].append(intent)
        # per (key, kind): its versions and where their lines end, both ascending (a writer
        # takes versions in the order it logs them), for a bisection per question
        self.kind_versions: dict[tuple[int, str], list[int]] = {}
        self.kind_ends: dict[tuple[int, str], list[int]] = {}
        for key, versions in self.by_key.items():
            versions.sort(key=lambda i: i.version)
            for kind in "pd":
                of_kind = [i for i in versions if i.kind == kind]
                ends = [i.end for i in of_kind]
                assert ends == sorted(ends), f"key {key}: versions out of the intent log's order"
                self.kind_versions[key, kind] = [i.version for i in of_kind]
                self.kind_ends[key, kind] = ends
        # per key: the ack lines' end offsets and the highest version acknowledged up to each
        self.ack_ends: dict[int, list[int]] = {k: [] for k in range(KEY_COUNT)}
        self.ack_highest: dict[int, list[int]] = {k: [] for k in range(KEY_COUNT)}
        self.acks = 0
        self.highest_ack = INITIAL
        for end, fields in log_lines(acks):
            if len(fields) != 2:
                continue
            version, key = int(fields[0]), int(fields[1])
            self.acks += 1
            self.highest_ack = max(self.highest_ack, version)
            if key < 0:
                continue
            highest = self.ack_highest[key]
            self.ack_ends[key].append(end)
            highest.append(max(version, highest[-1] if highest else INITIAL))

    def last_ack(self, key: int, prefix: int) -> int:
        """The newest version of ``key`` acknowledged within the first ``prefix`` bytes of the
        ack log (a line cut by the prefix does not count: it was being written)."""
        n = bisect.bisect_right(self.ack_ends[key], prefix)
        return self.ack_highest[key][n - 1] if n else INITIAL

    def first_candidate(self, key: int, kind: str, lowest: int, intents_prefix: int) -> int | None:
        """The oldest version of ``key`` of ``kind`` ('p' present, 'd' absent), at least
        ``lowest``, intended within the first ``intents_prefix`` bytes of the intent log;
        None if there is none (the initial state counts as an absent version)."""
        if kind == "d" and lowest <= INITIAL:
            return INITIAL
        versions = self.kind_versions[key, kind]
        n = bisect.bisect_left(versions, lowest)
        if n < len(versions) and self.kind_ends[key, kind][n] <= intents_prefix:
            return versions[n]
        return None


def parse_observations(reader: str, data: bytes) -> list[Observation]:
    out = []
    for _, fields in log_lines(data):
        if len(fields) == 5:
            before, after, op, key, seen = fields
            out.append(Observation(reader, int(before), int(after), op, int(key), seen))
    return out


@dataclass
class Checker:
    """Checks the observations of any number of readers against one :class:`History`; each
    reader's observations must come in the order it made them."""

    history: History
    violations: list[str] = field(default_factory=list)
    observations: int = 0
    #: per (reader, key): the oldest version the reader's latest observation can have been
    floors: dict[tuple[str, int], int] = field(default_factory=dict)

    def check(self, observations: Iterable[Observation]) -> list[str]:
        for obs in observations:
            self.observations += 1
            if obs.seen.startswith("E") or obs.seen[1:].startswith("E"):
                self.violation(obs, "the reader read something wrong")
            elif obs.op in ("get", "item", "in"):
                self.check_key(obs, obs.key, obs.seen)
            elif obs.op == "keys":
                bits = int(obs.seen[1:], 16)
                for key in range(KEY_COUNT):
                    self.check_key(obs, key, "present" if bits >> key & 1 else "absent")
            elif obs.op == "len":
                self.check_len(obs, int(obs.seen[1:]))
            else:
                self.violation(obs, "an observation this checker does not know")
        return self.violations

    def violation(self, obs: Observation, what: str, key: int | None = None) -> None:
        key = obs.key if key is None else key
        self.violations.append(
            f"{what}: reader {obs.reader} {obs.op}(key {key}) saw {obs.seen} "
            f"(ack log {obs.acks_before} bytes before, intent log {obs.intents_after} after; "
            f"last ack of the key then: {self.history.last_ack(key, obs.acks_before)})"
            if key >= 0
            else f"{what}: reader {obs.reader} {obs.op} saw {obs.seen}"
        )

    def lowest(self, obs: Observation, key: int) -> int:
        """The oldest version of ``key`` this observation may see: the last one acknowledged
        before it began, and what this reader saw of the key before."""
        floor = self.floors.get((obs.reader, key), INITIAL)
        return max(self.history.last_ack(key, obs.acks_before), floor)

    def check_key(self, obs: Observation, key: int, seen: str) -> None:
        lowest = self.lowest(obs, key)
        if seen.startswith("v"):
            version = int(seen[1:])
            intent = self.history.intents.get((key, version))
            if intent is None or intent.kind != "p" or intent.end > obs.intents_after:
                self.violation(obs, "a value that was never written (or not yet)", key)
            elif version < lowest:
                self.violation(obs, f"an older value than version {lowest}", key)
            else:
                self.floors[obs.reader, key] = version
            return
        kind = {"present": "p", "absent": "d"}.get(seen)
        if kind is None:
            self.violation(obs, "an observation this checker does not know", key)
            return
        oldest = self.history.first_candidate(key, kind, lowest, obs.intents_after)
        if oldest is None:
            state = "present" if kind == "p" else "absent"
            self.violation(obs, f"the key {state} but it was not at or after {lowest}", key)
        else:
            self.floors[obs.reader, key] = oldest

    def check_len(self, obs: Observation, length: int) -> None:
        surely, maybe = 0, 0
        for key in range(KEY_COUNT):
            lowest = self.lowest(obs, key)
            present = self.history.first_candidate(key, "p", lowest, obs.intents_after)
            absent = self.history.first_candidate(key, "d", lowest, obs.intents_after)
            maybe += present is not None
            surely += present is not None and absent is None
        if not surely <= length <= maybe:
            self.violation(obs, f"len() outside [{surely}, {maybe}]")


def snapshot_version(history: History, acks_before: int, found: dict[int, int | None]) -> int:
    """The version ``t`` such that ``found`` (key -> version of its value, None: absent) is
    exactly the store after every intent up to ``t`` and no later one, with ``t`` not older
    than any ack in the first ``acks_before`` bytes of the ack log; -1 if there is none.
    (Every intent counts as applied: for a history without writer kills.)"""
    state: dict[int, int | None] = dict.fromkeys(range(KEY_COUNT))
    wrong = {k for k in range(KEY_COUNT) if found.get(k) != state[k]}
    lowest = max((history.last_ack(k, acks_before) for k in range(KEY_COUNT)), default=INITIAL)
    if lowest <= INITIAL and not wrong:
        return INITIAL
    for intent in sorted(history.intents.values(), key=lambda i: i.version):
        state[intent.key] = intent.version if intent.kind == "p" else None
        if state[intent.key] == found.get(intent.key):
            wrong.discard(intent.key)
        else:
            wrong.add(intent.key)
        if not wrong and intent.version >= lowest:
            return intent.version
    return -1


def versions_in(db: viperdbm.Database) -> tuple[dict[int, int | None], list[str]]:
    """Every key of the test in ``db`` -> the version of its value; and what is wrong."""
    found: dict[int, int | None] = dict.fromkeys(range(KEY_COUNT))
    problems = []
    for raw_key, value in db.items():
        if raw_key not in KEYS:
            if raw_key != STABLE_KEY:
                problems.append(f"a key never written: {raw_key[:40]!r}")
            continue
        key = KEYS.index(raw_key)
        decoded = decode_value(key, value)
        if isinstance(decoded, str):
            problems.append(decoded)
        else:
            found[key] = decoded[0]
    return found, problems


# --------------------------------------------------------------------------- checker tests
def intents_log(*lines: str) -> bytes:
    return "".join(f"{line} .\n" for line in lines).encode()


def offset_after(log: bytes, lines: int) -> int:
    """The size of ``log`` after its first ``lines`` lines."""
    pos = 0
    for _ in range(lines):
        pos = log.index(b"\n", pos) + 1
    return pos


# intents: v0 put key 0, v1 put key 1, v2 delete key 0, v3 put key 0, v4 delete key 1
HAND_INTENTS = intents_log("0 0 p 10", "1 1 p 20", "2 0 d 0", "3 0 p 30", "4 1 d 0")
HAND_ACKS = intents_log("0 0", "1 1", "2 0", "3 0", "4 1")
ALL_INTENTS = len(HAND_INTENTS)


def hand_check(*observed: tuple[int, int, str, int, str], reader: str = "r") -> list[str]:
    """Check observations ``(acks acknowledged before, intents made after, op, key, seen)``
    of one reader against the hand-made history above (counts of lines, not bytes)."""
    history = History(HAND_INTENTS, HAND_ACKS)
    return Checker(history).check(
        Observation(
            reader,
            offset_after(HAND_ACKS, acked),
            offset_after(HAND_INTENTS, intended),
            op,
            key,
            seen,
        )
        for acked, intended, op, key, seen in observed
    )


@pytest.mark.parametrize(
    "observed",
    [
        [(0, 0, "get", 0, "absent")],  # nothing written yet
        [(0, 1, "get", 0, "v0")],  # the write in flight may be seen
        [(0, 5, "get", 0, "absent")],  # nothing acked: the initial state is fine
        [(1, 5, "get", 0, "v0"), (1, 5, "get", 0, "absent"), (1, 5, "get", 0, "v3")],
        [(3, 3, "get", 0, "absent"), (3, 5, "item", 0, "absent"), (4, 5, "in", 0, "present")],
        [(2, 2, "in", 1, "present"), (2, 5, "get", 1, "v1"), (5, 5, "in", 1, "absent")],
        [(0, 5, "keys", -1, "k0"), (0, 5, "keys", -1, "k3"), (5, 5, "keys", -1, "k1")],
        [(0, 5, "len", -1, "n0"), (0, 5, "len", -1, "n2"), (5, 5, "len", -1, "n1")],
        [(2, 2, "len", -1, "n2"), (2, 3, "len", -1, "n1")],
        [(3, 5, "in", 0, "absent")],  # the acknowledged delete v2 itself
        [(0, 3, "get", 0, "absent"), (0, 3, "get", 0, "v0")],  # absent was the initial state
        [(0, 5, "get", 0, "v3"), (0, 5, "in", 0, "present"), (4, 5, "keys", -1, "k1")],
    ],
)
def test_checker_accepts_a_correct_history(observed: list[tuple[int, int, str, int, str]]) -> None:
    assert hand_check(*observed) == []


@pytest.mark.parametrize(
    ("observed", "complaint"),
    [
        ([(1, 1, "get", 0, "absent")], "absent but it was not at or after 0"),  # v0 acked
        ([(4, 5, "get", 0, "v0")], "older value than version 3"),  # v3 was acked
        ([(0, 0, "get", 0, "v0")], "never written"),  # v0 not even intended yet
        ([(0, 5, "get", 0, "v1")], "never written"),  # v1 is key 1's
        ([(0, 5, "get", 0, "v2")], "never written"),  # v2 is a delete
        ([(0, 5, "get", 0, "v9")], "never written"),
        ([(0, 5, "get", 0, "v3"), (0, 5, "get", 0, "v0")], "older value"),  # went backwards
        ([(0, 5, "get", 0, "v3"), (0, 5, "in", 0, "absent")], "not at or after 3"),  # too
        ([(0, 5, "in", 0, "absent"), (5, 5, "get", 0, "v0")], "older value"),
        ([(2, 2, "in", 1, "absent")], "absent but it was not at or after 1"),  # v1 acked
        ([(5, 5, "len", -1, "n0")], "len() outside [1, 1]"),
        ([(0, 5, "len", -1, "n3")], "len() outside [0, 2]"),
        ([(5, 5, "keys", -1, "k3")], "present but it was not at or after 4"),  # v4 acked
        ([(0, 5, "get", 0, "Etorn")], "something wrong"),
        ([(0, 5, "keys", -1, "kEforeign")], "something wrong"),
    ],
)
def test_checker_rejects_a_wrong_history(
    observed: list[tuple[int, int, str, int, str]], complaint: str
) -> None:
    problems = hand_check(*observed)
    assert problems and complaint in problems[0], problems


def test_checker_keeps_readers_apart() -> None:
    """One reader's newer observation does not oblige another reader (only acks do)."""
    history = History(HAND_INTENTS, HAND_ACKS)
    checker = Checker(history)
    a = Observation("a", 0, ALL_INTENTS, "get", 0, "v3")
    b = Observation("b", 0, ALL_INTENTS, "get", 0, "v0")
    assert checker.check([a, b]) == []
    assert checker.check([Observation("a", 0, ALL_INTENTS, "get", 0, "v0")]) != []


def test_checker_ignores_lines_cut_by_a_kill_or_by_the_prefix() -> None:
    """A line cut by a kill is no ack; a prefix ending inside a line does not count it."""
    acks = HAND_ACKS + b"9 0"  # a cut line
    history = History(HAND_INTENTS + b"7 0 p", acks)
    assert history.acks == 5 and (0, 7) not in history.intents
    inside_the_second_line = offset_after(HAND_ACKS, 1) + 2
    assert history.last_ack(1, inside_the_second_line) == INITIAL
    assert history.last_ack(1, offset_after(HAND_ACKS, 2)) == 1


def test_snapshot_version_finds_the_state_or_none() -> None:
    history = History(HAND_INTENTS, HAND_ACKS)
    none: dict[int, int | None] = {}
    assert snapshot_version(history, 0, none) == INITIAL
    assert snapshot_version(history, 0, {0: 0}) == 0
    assert snapshot_version(history, 0, {0: 0, 1: 1}) == 1
    assert snapshot_version(history, 0, {1: 1}) == 2  # key 0 deleted at v2
    assert snapshot_version(history, 0, {0: 3}) == 4
    assert snapshot_version(history, offset_after(HAND_ACKS, 5), {0: 3}) == 4
    assert snapshot_version(history, offset_after(HAND_ACKS, 5), {0: 0, 1: 1}) == -1  # too old
    assert snapshot_version(history, 0, {0: 3, 1: 1}) == 3
    assert snapshot_version(history, 0, {0: 0, 1: None}) == 0
    assert snapshot_version(history, 0, {1: 1, 0: 3, 2: 0}) == -1  # key 2 never written


def test_values_catch_torn_and_foreign_bytes() -> None:
    value = make_value(5, 1234, 70_000)
    assert decode_value(5, value) == (1234, len(value))
    assert decode_value(6, value) == "the value of key 5 (version 1234) read under key 6"
    torn = value[:40_000] + bytes(30_000)
    assert "torn" in str(decode_value(5, torn)) or "bytes" in str(decode_value(5, torn))
    flipped = bytearray(value)
    flipped[50_000] ^= 1
    assert "torn" in str(decode_value(5, bytes(flipped)))
    assert "bytes" in str(decode_value(5, value[:-1]))
    assert "not a value" in str(decode_value(5, b""))
    assert decode_value(5, make_value(5, 7, 0)) == (7, len(make_value(5, 7, 0)))
    assert len(make_value(1, 2, (1 << 20) + 5000)) == (1 << 20) + 5000


def test_a_reader_log_round_trips() -> None:
    line = observation_line(10, 20, "keys", -1, "k" + keys_bitmap([KEYS[0], KEYS[63]]))
    [obs] = parse_observations("x", (line + "\n").encode())
    assert obs == Observation("x", 10, 20, "keys", -1, "k" + f"{1 | 1 << 63:x}")
    assert keys_bitmap([b"intruder"]).startswith("E")


# --------------------------------------------------------------------------- processes
class AbortedRunError(Exception):
    """The run cannot go on (a child died by itself, hung, or would not start)."""


class Child:
    """A writer or reader child; its first line says it opened the store."""

    def __init__(self, role: str, name: str, args: list[str], log: Path) -> None:
        self.role, self.name, self.log = role, name, log
        self._stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, CHILD, role, *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=child_env(),
        )
        self.killed = False

    def wait_opened(self) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], WATCHDOG)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "opened":
            self.kill()
            raise AbortedRunError(
                f"{self.role} {self.name} did not open the store: {self.stderr()}"
            )

    def stderr(self) -> str:
        self._stderr.flush()
        return self.log.read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def finish(self) -> int:
        """Wait for a child told to stop; its exit status."""
        try:
            code = self.proc.wait(timeout=WATCHDOG)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AbortedRunError(
                f"{self.role} {self.name} did not stop: {self.stderr()}"
            ) from None
        self._close()
        return code

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


class LiveRun:
    """One writer and READERS readers on one store, the history in ``logdir``."""

    def __init__(self, store: Path, logdir: Path, seed: int, fs: str) -> None:
        self.store, self.logdir, self.seed, self.fs = store, logdir, seed, fs
        self.writer: Child | None = None
        self.readers: dict[int, Child] = {}
        self.incarnations = 0
        self.violations: list[str] = []
        self.kills = {"writer": 0, "reader": 0}
        self.reader_names: list[str] = []
        self._acks_seen = 0
        self._acks_read = 0
        for name in ("intents", "acks", "writer-stats"):
            (logdir / name).touch()

    # ---- children ------------------------------------------------------------------
    def start_writer(self) -> None:
        name = f"w{self.kills['writer']}"
        self.writer = Child(
            "writer",
            name,
            [str(self.store), str(self.logdir), str(self.seed)],
            self.logdir / f"stderr-{name}",
        )
        self.writer.wait_opened()

    def start_reader(self, slot: int) -> None:
        name = f"{slot}-{self.incarnations}"
        self.incarnations += 1
        self.reader_names.append(name)
        child = Child(
            "reader",
            name,
            [str(self.store), str(self.logdir), str(self.seed), name],
            self.logdir / f"stderr-reader-{name}",
        )
        self.readers[slot] = child
        child.wait_opened()

    def children(self) -> list[Child]:
        return ([self.writer] if self.writer else []) + list(self.readers.values())

    def check_children(self) -> None:
        for child in self.children():
            code = child.proc.poll()
            if code is not None and not child.killed:
                raise AbortedRunError(
                    f"{child.role} {child.name} died by itself (status {code}): {child.stderr()}"
                )

    def kill_all(self) -> None:
        for child in self.children():
            if child.proc.poll() is None:
                child.kill()

    # ---- progress ------------------------------------------------------------------
    def acks(self) -> int:
        """Lines in the ack log (read incrementally)."""
        with (self.logdir / "acks").open("rb") as f:
            f.seek(self._acks_read)
            chunk = f.read()
        self._acks_read += len(chunk)
        self._acks_seen += chunk.count(b"\n")
        return self._acks_seen

    def wait_for_acks(self, more: int) -> None:
        target = self.acks() + more
        last, last_change = self.acks(), time.monotonic()
        while (now := self.acks()) < target:
            self.check_children()
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > WATCHDOG:
                raise AbortedRunError(f"the writer made no progress for {WATCHDOG} s")
            time.sleep(POLL)

    def wait_until_nothing_is_held(self) -> None:
        """The readers are gone: the writer's stats must say so, and hold no space, within
        RELEASE_WITHIN_WRITES writes."""
        stats_log = self.logdir / "writer-stats"
        start = stats_log.stat().st_size
        deadline = self.acks() + RELEASE_WITHIN_WRITES
        last: list[str] = []
        while self.acks() < deadline:
            for _, fields in log_lines(stats_log.read_bytes()[start:]):
                last = fields
                if fields[1:] == ["0", "0"]:
                    return
            self.wait_for_acks(8)
        self.violations.append(
            f"after every reader was gone, {RELEASE_WITHIN_WRITES} writes later the writer "
            f"still says (version readers held_bytes): {last}"
        )

    def check_reader_counts(self) -> None:
        """The writer's ``stats()['readers']`` counts live readers: never more than run at
        once (a killed one is waited for before its successor starts), and all of them for
        most of the run."""
        counts = [
            int(fields[1])
            for _, fields in log_lines((self.logdir / "writer-stats").read_bytes())
            if len(fields) == 3
        ]
        if any(c > READERS or c < 0 for c in counts) or READERS not in counts:
            self.violations.append(
                f"stats()['readers'] is not the number of live readers (0 to {READERS}): "
                f"{sorted(set(counts))}"
            )

    # ---- the check -----------------------------------------------------------------
    def final_observation(self) -> list[Observation]:
        """Every key read by a new reader after the writer closed."""
        acks = (self.logdir / "acks").stat().st_size
        intents = (self.logdir / "intents").stat().st_size
        out = []
        with viperdbm.open(self.store, "r") as db:
            found, problems = versions_in(db)
            self.violations += [f"final reader: {p}" for p in problems]
            for key, version in found.items():
                out.append(Observation("final", acks, intents, "get", key, seen(version)))
            out.append(Observation("final", acks, intents, "len", -1, f"n{len(db)}"))
        with viperdbm.open(self.store, "w") as db:
            stats = db.stats()
            if stats.get("readers") != 0 or stats.get("held_bytes") != 0:
                self.violations.append(f"a writer alone: readers/held_bytes in {stats}")
        return out

    def check_history(self, final: list[Observation]) -> Checker:
        history = History(
            (self.logdir / "intents").read_bytes(), (self.logdir / "acks").read_bytes()
        )
        checker = Checker(history)
        for name in self.reader_names:
            path = self.logdir / f"reader-{name}"
            if path.exists():
                checker.check(parse_observations(name, path.read_bytes()))
        checker.check(final)
        return checker


def run_live(store: Path, logdir: Path, fs: str, seed: int, kills: int) -> None:
    rng = random.Random(seed)
    with viperdbm.open(store, "c"):
        pass
    live = LiveRun(store, logdir, seed, fs)
    checker: Checker | None = None
    aborted = ""
    try:
        live.start_writer()
        for slot in range(READERS):
            live.start_reader(slot)
        while live.kills["writer"] < kills:
            live.wait_for_acks(rng.randint(10, 300))
            assert live.writer is not None
            if rng.random() < 0.5:  # a reader dies mid-read and another takes its place
                slot = rng.randrange(READERS)
                live.readers[slot].kill()
                live.kills["reader"] += 1
                live.start_reader(slot)
            else:  # the writer dies mid-write; a new one opens under the live readers
                live.writer.kill()
                live.kills["writer"] += 1
                live.start_writer()
        live.wait_for_acks(50)
        for slot in range(READERS - 1):  # stale readers: killed, or closed
            live.readers[slot].kill()
        (logdir / "stop-readers").touch()
        last = live.readers[READERS - 1]
        if last.finish() != 0:
            live.violations.append(f"reader {last.name} failed to close: {last.stderr()}")
        last.killed = True  # it is gone on purpose
        live.wait_until_nothing_is_held()
        live.check_reader_counts()
        assert live.writer is not None
        (logdir / "stop-writer").touch()
        if live.writer.finish() != 0:
            live.violations.append(f"the writer failed to close: {live.writer.stderr()}")
        live.writer.killed = True
        checker = live.check_history(live.final_observation())
    except AbortedRunError as exc:
        aborted = str(exc)
    finally:
        live.kill_all()
    violations = live.violations + ([f"run aborted: {aborted}"] if aborted else [])
    if checker is not None:
        violations += checker.violations
    summary = {
        "seed": seed,
        "fs": fs,
        "kills": live.kills,
        "observations": checker.observations if checker else 0,
        "acknowledged": checker.history.acks if checker else live.acks(),
        "violations": len(violations),
        "first_violations": violations[:50],
    }
    out = Path(f"/tmp/viperdbm-live-{fs}-{seed}.json")
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "first_violations"}))
    replay = (
        f"VIPERDBM_LIVE_SEED={seed} VIPERDBM_LIVE_ROUNDS={kills} .venv/bin/python -m pytest "
        f"-p no:xdist tests/test_live_readers.py -k 'linearizably and {fs}'"
    )
    assert not violations, (
        f"seed {seed}, {fs}: {len(violations)} violations (summary in {out}; logs in "
        f"{logdir}); replay: {replay}\n" + "\n".join(violations[:25])
    )


def test_readers_follow_a_writer_linearizably(
    store_dir: Path, request: pytest.FixtureRequest
) -> None:
    """One writer, three readers, SIGKILLs of both; the rule checked on the logs."""
    fs = request.node.callspec.params["store_dir"]
    logdir = Path(tempfile.mkdtemp(prefix=f"viperdbm-live-logs-{fs}-"))
    run_live(
        store_dir / "store",
        logdir,
        fs,
        env_seed("VIPERDBM_LIVE_SEED", CI_LIVE_SEED),
        writer_kills(),
    )
    shutil.rmtree(logdir, ignore_errors=True)  # kept when the run failed


# --------------------------------------------------------------------------- a remote store
class RemoteError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class Remote:
    """A store held open by another process (``_live_child.py serve``), driven by calls."""

    def __init__(self, store: Path, flag: str, timeout: float | None = None) -> None:
        args = [sys.executable, CHILD, "serve", str(store), flag]
        self.proc = subprocess.Popen(
            [*args, *([] if timeout is None else [str(timeout)])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.open_error = ""
        try:
            self._answer()
        except RemoteError as exc:
            self.open_error = exc.name
            self.proc.wait()

    def _answer(self) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], WATCHDOG)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.kill()
            assert self.proc.stderr is not None
            raise RemoteError("died", self.proc.stderr.read()[-2000:])
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RemoteError(answer["error"], answer["message"])
        return answer["ok"]

    def call(self, *command: object) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def put(self, key: bytes, value: bytes) -> None:
        self.call("put", base64.b64encode(key).decode(), base64.b64encode(value).decode())

    def delete(self, key: bytes) -> None:
        self.call("delete", base64.b64encode(key).decode())

    def length(self) -> int:
        return cast(int, self.call("len"))

    def stats(self) -> dict[str, int | float]:
        return cast(dict[str, int | float], self.call("stats"))

    def close(self) -> None:
        self.call("close")
        assert self.proc.wait(timeout=WATCHDOG) == 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def held_open(store: Path, flag: str, timeout: float | None = None) -> Remote:
    remote = Remote(store, flag, timeout)
    assert not remote.open_error, f"open({flag!r}) in another process: {remote.open_error}"
    return remote


def open_with_timeout(store: Path, flag: str, timeout: float) -> viperdbm.Database:
    """``viperdbm.open(store, flag, timeout=...)`` (LIVE.md's new keyword)."""
    opener = cast(Callable[..., viperdbm.Database], viperdbm.open)
    return opener(store, flag, timeout=timeout)


@pytest.fixture
def empty_store(store_path: Path) -> Path:
    with viperdbm.open(store_path, "c"):
        pass
    return store_path


def snapshot(db: viperdbm.Database) -> dict[bytes, bytes]:
    return dict(db.items())


# --------------------------------------------------------------------------- focused tests
def test_a_reader_opened_before_the_first_write_sees_later_writes(empty_store: Path) -> None:
    with viperdbm.open(empty_store, "r") as db, held_open(empty_store, "w") as writer:
        assert len(db) == 0 and db.get(b"a") is None and db.keys() == []
        writer.put(b"a", b"1")
        assert db.get(b"a") == b"1" and db[b"a"] == b"1" and b"a" in db
        assert len(db) == 1 and db.keys() == [b"a"] and db.firstkey() == b"a"
        model = {b"a": b"1"}
        for i in range(200):
            model[b"k%03d" % i] = make_value(i % KEY_COUNT, i, i * 97)
            writer.put(b"k%03d" % i, model[b"k%03d" % i])
        assert snapshot(db) == model and len(db) == 201
        assert sorted(db) == sorted(model) and sorted(db.values()) == sorted(model.values())


def test_a_reader_sees_a_jumbo_put_an_overwrite_and_a_delete(empty_store: Path) -> None:
    with held_open(empty_store, "w") as writer, viperdbm.open(empty_store, "r") as db:
        jumbo = make_value(0, 1, (1 << 20) + 300_000)
        writer.put(KEYS[0], jumbo)
        assert db[KEYS[0]] == jumbo
        smaller = make_value(0, 2, 40_000)
        writer.put(KEYS[0], smaller)
        assert db.get(KEYS[0]) == smaller
        writer.put(KEYS[1], make_value(1, 3, (1 << 20) + 1))
        writer.delete(KEYS[0])
        assert KEYS[0] not in db and db.get(KEYS[0]) is None and db.keys() == [KEYS[1]]
        with pytest.raises(KeyError):
            db[KEYS[0]]
        writer.delete(KEYS[1])
        assert len(db) == 0 and db.keys() == []


def test_a_reader_follows_writers_across_close_kill_and_reopen(empty_store: Path) -> None:
    with held_open(empty_store, "w") as first, viperdbm.open(empty_store, "r") as db:
        first.put(b"a", b"from the first writer")
        first.close()
        assert db[b"a"] == b"from the first writer"
        with held_open(empty_store, "w") as second:
            second.put(b"b", b"from the second writer")
            second.delete(b"a")
            jumbo = make_value(2, 1, (1 << 20) + 10)
            second.put(b"c", jumbo)
            assert snapshot(db) == {b"b": b"from the second writer", b"c": jumbo}
            second.kill()  # every write above was acknowledged: the reader keeps them
        assert db[b"c"] == jumbo and b"a" not in db
        assert sorted(db.keys()) == [b"b", b"c"]
        with held_open(empty_store, "w") as third:  # recovers under the live reader
            assert third.length() == 2
            third.put(b"d", b"from the third writer")
            third.put(b"b", b"overwritten by the third")
            assert snapshot(db) == {
                b"b": b"overwritten by the third",
                b"c": jumbo,
                b"d": b"from the third writer",
            }
            third.close()
    with viperdbm.open(empty_store, "r") as again:
        assert sorted(again.keys()) == [b"b", b"c", b"d"]


def test_a_killed_reader_does_not_hold_space(empty_store: Path) -> None:
    with viperdbm.open(empty_store, "w") as db, contextlib.ExitStack() as stack:
        for i in range(40):
            db[KEYS[i]] = make_value(i, 0, 200_000)
        readers = [stack.enter_context(held_open(empty_store, "r")) for _ in range(2)]
        assert [r.length() for r in readers] == [40, 40]  # both caught up
        stats = db.stats()
        assert stats["readers"] == 2 and stats["held_bytes"] == 0, stats
        for r in readers:  # (an idle reader would be caught up within half a second)
            r.call("snapshot")
        for i in range(40):  # the readers hold their snapshots while blocks are freed
            db[KEYS[i]] = make_value(i, 1, 150_000)
        db.reorganize()
        assert db.stats()["held_bytes"] > 0, "freed blocks were not held for idle readers"
        for r in readers:
            r.kill()
        for version in range(2, 200):  # the writer finds them gone and lets go
            stats = db.stats()
            if stats["readers"] == 0 and stats["held_bytes"] == 0:
                break
            db[KEYS[version % 40]] = make_value(version % 40, version, 100_000)
        assert stats["readers"] == 0 and stats["held_bytes"] == 0, stats


def test_a_reader_maps_the_writers_new_parts_after_its_old_ones(empty_store: Path) -> None:
    """Pool growth under a reader: each growth maps only the new parts, in the space the
    reader reserved (mapping the whole pool again would fault every page in again)."""
    with viperdbm.open(empty_store, "w") as db, viperdbm.open(empty_store, "r") as reader:
        engine = reader._engine
        assert engine is not None and engine._mapping is not None
        mapping = engine._mapping
        base, first = mapping.base, mapping.length
        values = {}
        for i in range(120):  # about 72 MiB: the pool grows part by part
            values[b"k%03d" % i] = make_value(i % KEY_COUNT, i, 600_000)
            db[b"k%03d" % i] = values[b"k%03d" % i]
            assert reader[b"k%03d" % i] == values[b"k%03d" % i]
        assert mapping.length > first, "the writer's pool did not grow under the reader"
        assert mapping.base == base, "the pool was mapped anew within the reserved space"
        assert dict(reader.items()) == values
        assert reader.stats()["pool_bytes"] == mapping.length <= mapping.reserved


def test_an_idle_reader_lets_go_of_freed_space(empty_store: Path) -> None:
    with viperdbm.open(empty_store, "w") as db, held_open(empty_store, "r") as reader:
        for i in range(40):
            db[KEYS[i]] = make_value(i, 0, 200_000)
        assert reader.length() == 40
        reader.call("snapshot")  # held: what the writer frees now stays allocated
        for i in range(40):
            db[KEYS[i]] = make_value(i, 1, 150_000)
        db.reorganize()
        held = db.stats()["held_bytes"]
        assert held > 0, "freed blocks were not held for a reader's snapshot"
        reader.call("end_snapshot")  # from now on the reader does nothing at all
        deadline = time.monotonic() + 30
        while db.stats()["held_bytes"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = db.stats()
        assert stats["held_bytes"] == 0 and stats["readers"] == 1, (held, stats)
        assert reader.length() == 40  # and it still reads the writer's latest state


_CATCH_UP_INSIDE_ITEMS = (
    r"""
import gc, sys, viperdbm
path = sys.argv[1]
writer = viperdbm.open(path, "w")
reader = viperdbm.open(path, "r")
for i in range(1000):
    writer[b"base%04d" % i] = b"v" * 50
assert len(reader) == 1000
calls = []

class Finalizer:
    # A user's finalizer that writes and reads the store: the reader catches up in it,
    # in the middle of items(), whose tuples may start a collection.
    def __init__(self):
        self.me = self  # a cycle: only a collection frees it
    def __del__(self):
        if not calls:
            for i in range(100_000):  # enough for the reader's index to grow
                writer[b"more%06d" % i] = b"w" * 20
        calls.append(reader.get(b"more000000"))
"""
    + list_items_while_collecting("reader")
    + r"""
assert calls, "no finalizer ran"
assert all(v == b"v" * 50 for k, v in items if k.startswith(b"base")), "a torn item"
assert len({k for k, _ in items}) == len(items), "a key twice"
assert len(items) in (1000, 101000), len(items)
assert len(reader) == 101000 and reader[b"more099999"] == b"w" * 20
print("ok", len(items), len(calls))
"""
)


def test_a_reader_caught_up_from_a_finalizer_inside_items_stays_whole(
    empty_store: Path,
) -> None:
    """items() makes tuples, which may start a collection whose finalizers run Python code:
    a finalizer (or, meanwhile, another thread: the idle catch-up) that makes the reader
    catch up must not change the index the list is made from."""
    run_script_ok(_CATCH_UP_INSIDE_ITEMS, str(empty_store), timeout=WATCHDOG)


def test_readers_are_counted_and_a_closed_reader_lets_go(empty_store: Path) -> None:
    with viperdbm.open(empty_store, "w") as db:
        db[b"k"] = b"v"
        assert db.stats()["readers"] == 0
        with viperdbm.open(empty_store, "r") as inside, held_open(empty_store, "r") as outside:
            assert inside[b"k"] == b"v" and outside.length() == 1
            assert db.stats()["readers"] == 2
            outside.close()
            assert db.stats()["readers"] == 1
        assert db.stats()["readers"] == 0


def test_two_writers_still_exclude_each_other_at_once(empty_store: Path) -> None:
    with held_open(empty_store, "w") as writer:
        writer.put(b"k", b"v")
        for flag in ("w", "c", "n"):
            with pytest.raises(viperdbm.LockError):
                viperdbm.open(empty_store, flag)
        second = Remote(empty_store, "w")
        with second:
            assert second.open_error == "LockError"
        with viperdbm.open(empty_store, "r") as db:  # a reader is still welcome
            assert db[b"k"] == b"v"
        writer.put(b"k2", b"the first writer is unharmed")
        writer.close()
    with viperdbm.open(empty_store, "r") as db:
        assert snapshot(db) == {b"k": b"v", b"k2": b"the first writer is unharmed"}


def test_open_with_a_timeout_waits_for_the_writer_to_close(empty_store: Path) -> None:
    with held_open(empty_store, "w") as holder:
        holder.call("close_after", 0.5)
        with open_with_timeout(empty_store, "w", 2.0) as db:
            assert db[b"closed-by-the-holder"] == b"1"
            db[b"the waiting writer"] = b"got in"
        assert holder.proc.wait(timeout=WATCHDOG) == 0


def test_open_with_a_timeout_gives_up_with_lock_error(empty_store: Path) -> None:
    with held_open(empty_store, "w") as holder:
        started = time.monotonic()
        with pytest.raises(viperdbm.LockError):
            open_with_timeout(empty_store, "w", 2.0)
        # a lower bound only (it cannot fail by slowness): the open did wait
        assert time.monotonic() - started >= 1.9
        holder.put(b"still", b"the holder's")


def test_flag_n_is_refused_while_a_reader_is_attached(empty_store: Path) -> None:
    with viperdbm.open(empty_store, "w") as db:
        for i in range(50):
            db[KEYS[i]] = make_value(i, 0, 3000)
    with held_open(empty_store, "r") as reader:
        assert reader.length() == 50
        with pytest.raises(viperdbm.LockError):
            viperdbm.open(empty_store, "n")
        assert reader.length() == 50
        reader.close()
    with viperdbm.open(empty_store, "r") as db:
        assert snapshot(db) == {KEYS[i]: make_value(i, 0, 3000) for i in range(50)}
    with viperdbm.open(empty_store, "n") as db:  # no reader: it is a new store again
        assert len(db) == 0


# --------------------------------------------------------------------------- the CLI
STABLE_KEY = b"stable"


@contextlib.contextmanager
def a_writer_writing(store: Path, logdir: Path) -> Iterator[Child]:
    """The writer of the linearizability test, writing until the block ends."""
    for name in ("intents", "acks", "writer-stats"):
        (logdir / name).touch()
    writer = Child("writer", "cli", [str(store), str(logdir), "7"], logdir / "stderr-writer")
    try:
        writer.wait_opened()
        yield writer
    finally:
        (logdir / "stop-writer").touch()
        code = writer.finish()
        assert code == 0, writer.stderr()


def acked(logdir: Path) -> int:
    return (logdir / "acks").stat().st_size


def test_read_only_commands_alongside_a_writer(store_path: Path, tmp_path: Path) -> None:
    with viperdbm.open(store_path, "c") as db:
        db[STABLE_KEY] = b"fixed"
    logdir = tmp_path / "logs"
    logdir.mkdir()
    with a_writer_writing(store_path, logdir) as writer:
        while acked(logdir) < 2000:  # some writes first (and the writer keeps going)
            assert writer.proc.poll() is None, writer.stderr()
            time.sleep(POLL)

        def ok(*args: str | Path) -> bytes:
            result = run_cli(*args)
            assert result.returncode == 0, (args, result.stderr.decode())
            return result.stdout

        assert "records" in json.loads(ok("stats", "--json", store_path))
        assert ok("get", store_path, STABLE_KEY.decode()) == b"fixed\n"
        keys = json.loads(ok("keys", "--json", store_path))
        assert STABLE_KEY.decode() in keys and set(keys) <= {k.decode() for k in KEYS} | {"stable"}
        report = json.loads(ok("check", "--json", store_path))
        assert report["ok"] is True and report["damage"] == [], report
        before_copy = acked(logdir)
        ok("copy", store_path, tmp_path / "copy.vdb")
        before_dump = acked(logdir)
        ok("dump", store_path, tmp_path / "store.dump")
        ok("load", tmp_path / "store.dump", tmp_path / "loaded.vdb")
        assert writer.proc.poll() is None, "the writer stopped while the commands ran"
    history = History((logdir / "intents").read_bytes(), (logdir / "acks").read_bytes())
    with viperdbm.open(tmp_path / "copy.vdb", "r") as db:
        assert db[STABLE_KEY] == b"fixed"
        found, problems = versions_in(db)
    assert problems == []
    assert snapshot_version(history, before_copy, found) != -1, (
        "the copy is no state the writer went through after what it acknowledged first"
    )
    with viperdbm.open(tmp_path / "loaded.vdb", "r") as db:
        assert db[STABLE_KEY] == b"fixed"
        found, problems = versions_in(db)
    assert problems == []
    intents_at_the_end = (logdir / "intents").stat().st_size
    dumped = [  # the dump: each key at least as new as its last ack before the dump began
        Observation("dump", before_dump, intents_at_the_end, "get", key, seen(version))
        for key, version in found.items()
    ]
    assert Checker(history).check(dumped) == []


def seen(version: int | None) -> str:
    return "absent" if version is None else f"v{version}"
