"""A damaged or hostile ``readers`` file never crashes or hangs a reader or a writer.

The ``readers`` file (native/shared.c, native/vipercore.h) is shared memory that every reader
of a store maps read-write: any process that can open a store for reading can scribble on it.
The durability contract for it: a reader may then miss records or answer wrongly, or raise a
``viperdbm.error``, but it never crashes (segfault, bus error, abort), hangs or raises anything
else; and the writer never trusts it for the store's contents (it adopts only entries that
match blocks its own recovery found), so a writer opening after any damage has every
acknowledged write, and goes on working.

Every store runs in processes of its own (``_live_child.py serve``): a crash is seen as the
death of a child, never of the test run. The damage is seeded: ``VIPERDBM_READERS_FUZZ_SEED``
replays a run, CI runs a fixed seed, ``VIPERDBM_FRESH_SEEDS=1`` draws a new one, and
``VIPERDBM_READERS_FUZZ_ROUNDS`` runs longer. Every failure names its seed, its round and the
damage done so far.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _live_child import KEYS, make_value
from _vdbtools import (
    Prober,
    as_nobody,
    child_env,
    digest,
    env_seed,
    kill_quietly,
    run_as_nobody,
    run_script,
    scratch_dir_for_nobody,
)
from conftest import FILESYSTEMS
from test_live_readers import Remote, RemoteError, held_open

import viperdbm
from viperdbm import _layout as layout

CI_SEED = 12
CI_ROUNDS = 160

# The file's layout (native/vipercore.h): the header, the reader slots, the block entries.
HEADER_FIELDS = {  # name: (offset, width)
    "magic": (0, 8),
    "version": (8, 4),
    "reader_slots": (12, 4),
    "block_entries": (16, 8),
    "pool_id": (24, 8),
    "commit": (32, 8),
    "max_seq": (40, 8),
    "table_gen": (48, 8),
    "table_used": (56, 8),
    "active_entry": (64, 8),
    "mapped": (72, 8),
    "writer_pid": (80, 8),
    "root_off": (88, 8),
    "seq_floor": (96, 8),
}
HEADER_BYTES = 104
SLOT_SIZE = 64
SLOT_FIELDS = {"pin": (0, 8), "pid": (8, 8), "zero": (16, 8)}
ENTRY_SIZE = 56
ENTRY_FIELDS = {
    "stamp": (0, 8),
    "off": (8, 8),
    "size": (16, 8),
    "birth": (24, 8),
    "end": (32, 8),
    "retired": (40, 8),
    "type": (48, 4),
    "zero": (52, 4),
}
SLOTS_AT = layout._CONSTANTS["READERS_SLOTS_AT"]
BLOCKS_AT = layout._CONSTANTS["READERS_BLOCKS_AT"]
FILE_SIZE = layout._CONSTANTS["READERS_FILE_SIZE"]


def rounds() -> int:
    env = os.environ.get("VIPERDBM_READERS_FUZZ_ROUNDS")
    return int(env) if env else CI_ROUNDS


def is_store_error(name: str) -> bool:
    """Is the exception class a child named one of viperdbm.error's family?"""
    cls = getattr(viperdbm, name, None)
    return isinstance(cls, type) and issubclass(cls, viperdbm.error)


# --------------------------------------------------------------------------- the damage
class Damage:
    """Seeded damage to a readers file, written with pwrite (coherent with every mapping of
    it, as a hostile process's stores into its own mapping would be)."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.rng = rng
        self.log: list[str] = []

    def close(self) -> None:
        os.close(self.fd)

    def read(self, at: int, width: int) -> int:
        data = os.pread(self.fd, width, at).ljust(width, b"\0")
        return int.from_bytes(data, "little")

    def write(self, at: int, width: int, value: int, what: str) -> None:
        os.pwrite(self.fd, (value % (1 << (8 * width))).to_bytes(width, "little"), at)
        self.log.append(f"{what}={value:#x}")

    def used_entries(self) -> int:
        return min(self.read(*HEADER_FIELDS["table_used"]), 64)

    def hostile_value(self, current: int) -> int:
        """A value chosen to break a bounds check: extremes, near misses, other fields'."""
        rng = self.rng
        entry = BLOCKS_AT + ENTRY_SIZE * rng.randrange(max(1, self.used_entries()))
        choices = [
            0,
            1,
            (1 << 64) - 1,
            1 << 63,
            (1 << 64) - 8,
            rng.getrandbits(64),
            rng.getrandbits(32),
            current + rng.choice([1, 8, 4096, 1 << 20, 1 << 40]),
            max(0, current - rng.choice([1, 8, 4096, 1 << 20])),
            current ^ (1 << rng.randrange(64)),
            self.read(entry + rng.choice([8, 16, 24, 32]), 8),  # another entry's off/size/...
            self.read(*HEADER_FIELDS[rng.choice(list(HEADER_FIELDS)[4:])]),
        ]
        return rng.choice(choices)

    def one(self) -> None:
        rng = self.rng
        kind = rng.choice(
            ["header", "header", "header-bytes", "slot", "entry", "entry", "entry", "copy", "bytes"]
        )
        if kind == "header":
            name = rng.choice(list(HEADER_FIELDS))
            at, width = HEADER_FIELDS[name]
            self.write(at, width, self.hostile_value(self.read(at, width)), name)
        elif kind == "header-bytes":
            at = rng.randrange(HEADER_BYTES)
            data = rng.randbytes(rng.randrange(1, HEADER_BYTES - at + 1))
            os.pwrite(self.fd, data, at)
            self.log.append(f"header[{at}:{at + len(data)}]=random")
        elif kind == "slot":
            slot = rng.choice([0, 1, 2, rng.randrange(layout.READER_SLOTS)])
            name = rng.choice(list(SLOT_FIELDS))
            at, width = SLOT_FIELDS[name]
            at += SLOTS_AT + slot * SLOT_SIZE
            self.write(at, width, self.hostile_value(self.read(at, width)), f"slot{slot}.{name}")
        elif kind == "entry":
            entry = rng.randrange(self.used_entries() + 2)
            name = rng.choice(list(ENTRY_FIELDS))
            at, width = ENTRY_FIELDS[name]
            at += BLOCKS_AT + entry * ENTRY_SIZE
            self.write(at, width, self.hostile_value(self.read(at, width)), f"entry{entry}.{name}")
        elif kind == "copy":  # an entry naming another block, whole or in part
            used = max(1, self.used_entries())
            src, dst = rng.randrange(used), rng.randrange(used + 1)
            start, stop = sorted(rng.sample(range(0, ENTRY_SIZE + 1, 8), 2))
            data = os.pread(self.fd, stop - start, BLOCKS_AT + src * ENTRY_SIZE + start)
            os.pwrite(self.fd, data, BLOCKS_AT + dst * ENTRY_SIZE + start)
            self.log.append(f"entry{dst}[{start}:{stop}]=entry{src}'s")
        else:
            at = rng.randrange(BLOCKS_AT + (self.used_entries() + 2) * ENTRY_SIZE)
            data = rng.randbytes(rng.randrange(1, 200))
            os.pwrite(self.fd, data, at)
            self.log.append(f"bytes[{at}:{at + len(data)}]=random")

    def round(self) -> None:
        """One to three changes, then (mostly) a new commit, so that readers look at them."""
        for _ in range(self.rng.randrange(1, 4)):
            self.one()
        for name, chance in (("table_gen", 0.5), ("commit", 0.8)):
            if self.rng.random() < chance:
                at, width = HEADER_FIELDS[name]
                os.pwrite(self.fd, struct.pack("<Q", (self.read(at, width) + 1) % (1 << 64)), at)


# --------------------------------------------------------------------------- the run
@dataclass
class Fuzz:
    store: Path
    seed: int
    with_writer: bool
    model: dict[bytes, bytes] = field(default_factory=dict)
    round: int = 0
    damage: Damage | None = None
    #: what the readers answered: right, wrong (allowed for a hostile file), an error
    answers: Counter[str] = field(default_factory=Counter)

    def ctx(self) -> str:
        log = self.damage.log[-12:] if self.damage else []
        return (
            f"VIPERDBM_READERS_FUZZ_SEED={self.seed} writer={self.with_writer} round "
            f"{self.round}; last damage: {log}"
        )

    def call(self, remote: Remote, *command: object) -> object:
        """A command in a child: its answer, or None for a viperdbm.error; a crash, a hang
        or any other exception fails the test."""
        try:
            return remote.call(*command)
        except RemoteError as exc:
            assert exc.name != "died", f"{self.ctx()}: {command[0]} killed the child: {exc}"
            assert is_store_error(exc.name), f"{self.ctx()}: {command[0]} raised {exc}"
            self.answers[exc.name] += 1
            return None

    def reader_step(self, reader: Remote, rng: random.Random) -> None:
        what = rng.choice(["get", "get", "contains", "len", "keys"])
        key = rng.choice(list(self.model) or [b"absent"])
        want: object = {
            "get": _b64(self.model[key]) if key in self.model else None,
            "contains": key in self.model,
            "len": len(self.model),
            "keys": sorted(_b64(k) for k in self.model),
        }[what]
        got = (
            self.call(reader, what, _b64(key))
            if what in ("get", "contains")
            else self.call(reader, what)
        )
        if got is not None or want is None:
            self.answers["right" if got == want else "wrong"] += 1

    def writer_step(self, writer: Remote, rng: random.Random) -> None:
        """A write, which must succeed: the writer never depends on the readers file."""
        key = rng.choice(KEYS)
        try:
            if rng.random() < 0.2 and key in self.model:
                writer.delete(key)
                del self.model[key]
            elif self.round % 40 == 39:
                writer.call("reorganize")
            else:
                value = make_value(KEYS.index(key), self.round, rng.choice([40, 3000, 70_000]))
                writer.put(key, value)
                self.model[key] = value
        except RemoteError as exc:
            pytest.fail(f"{self.ctx()}: the writer failed: {exc}")


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def fill(store: Path) -> dict[bytes, bytes]:
    model = {key: make_value(i, 0, 1000 + 977 * i) for i, key in enumerate(KEYS)}
    model[KEYS[5]] = make_value(5, 0, (1 << 20) + 5000)  # a jumbo block too
    with viperdbm.open(store, "c") as db:
        for key, value in model.items():
            db[key] = value
        for i in range(0, len(KEYS), 3):  # dead records, so that writes free blocks
            model[KEYS[i]] = make_value(i, 1, 2000)
            db[KEYS[i]] = model[KEYS[i]]
    return model


def check_store_intact(fuzz: Fuzz) -> None:
    """A writer opening after the damage has every acknowledged write, and works."""
    want = {key: digest(value) for key, value in fuzz.model.items()}
    with Prober(watchdog=120) as prober:
        found = prober.probe(fuzz.store, "w", reopen=True)
    assert found.status == "ok", f"{fuzz.ctx()}: the store no longer opens: {found.summary()}"
    assert not found.agreement, f"{fuzz.ctx()}: {found.agreement}"
    assert found.state == want, (
        f"{fuzz.ctx()}: the store lost or changed acknowledged writes: "
        f"{sorted(k for k in set(want) | set(found.state) if want.get(k) != found.state.get(k))}"
    )
    with held_open(fuzz.store, "w") as writer, held_open(fuzz.store, "r") as reader:
        writer.put(b"after the damage", b"written")
        assert fuzz.call(reader, "get", _b64(b"after the damage")) == _b64(b"written"), fuzz.ctx()
        assert fuzz.call(reader, "len") == len(want) + 1, fuzz.ctx()
        writer.close()
        reader.close()


@pytest.fixture(params=list(FILESYSTEMS))
def fs_store(request: pytest.FixtureRequest) -> Iterator[Path]:
    directory = Path(
        tempfile.mkdtemp(prefix="viperdbm-readers-fuzz-", dir=FILESYSTEMS[request.param])
    )
    yield directory / "store"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("with_writer", [True, False], ids=["beside-a-writer", "no-writer"])
def test_a_hostile_readers_file_never_crashes_a_reader_or_a_writer(
    fs_store: Path, with_writer: bool
) -> None:
    seed = env_seed("VIPERDBM_READERS_FUZZ_SEED", CI_SEED)
    print(f"replay with VIPERDBM_READERS_FUZZ_SEED={seed}")  # shown on failure
    rng = random.Random(f"{seed}/{with_writer}")
    fuzz = Fuzz(fs_store, seed, with_writer, fill(fs_store))
    writer = held_open(fs_store, "w") if with_writer else None
    reader = held_open(fs_store, "r")
    fuzz.damage = Damage(fs_store / layout.READERS_FILE, rng)
    opened = [reader, *([writer] if writer else [])]
    try:
        for fuzz.round in range(rounds()):
            fuzz.damage.round()
            if writer is not None and fuzz.round % 50 == 49:
                # kill -9 and a new writer, which adopts the damaged file under the reader
                writer.kill()
                writer = Remote(fs_store, "w")
                opened.append(writer)
                assert not writer.open_error, f"{fuzz.ctx()}: a new writer: {writer.open_error}"
            if writer is not None:
                fuzz.writer_step(writer, rng)
            if not reader.open_error:
                fuzz.reader_step(reader, rng)
            if writer is None and (fuzz.round % 32 == 31 or reader.open_error):
                # a reader opening on the damaged file (beside a live writer a damaged
                # header keeps a new reader waiting for the writer to publish: not here)
                if not reader.open_error:
                    reader.close()  # exits normally (asserted by close)
                reader = Remote(fs_store, "r")
                opened.append(reader)
                assert reader.open_error == "" or is_store_error(reader.open_error), (
                    f"{fuzz.ctx()}: a reader's open raised {reader.open_error}"
                )
        if not reader.open_error:
            reader.close()
        if writer is not None:
            writer.close()
    finally:
        fuzz.damage.close()
        for remote in opened:
            remote.__exit__(None, None, None)  # killed if still running, pipes closed
    print(f"reader answers under damage: {dict(fuzz.answers)}")
    check_store_intact(fuzz)


# --------------------------------------------------------------------------- at rest
def _damage_at_rest(readers_file: Path, how: str) -> None:
    if how == "empty":
        os.truncate(readers_file, 0)
    elif how == "half":
        os.truncate(readers_file, readers_file.stat().st_size // 2)
    elif how == "random":  # a file of the right size holding anything
        data = random.Random(CI_SEED).randbytes(BLOCKS_AT + 64 * ENTRY_SIZE)
        readers_file.write_bytes(data)
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["empty", "half", "random"])
@pytest.mark.parametrize("first", ["r", "w"])
def test_a_truncated_or_overwritten_readers_file_is_made_anew(
    store_path: Path, how: str, first: str
) -> None:
    """Damaged while no process had the store open: a reader and a writer open beside each
    other, in either order, and the reader follows the writer."""
    with viperdbm.open(store_path, "c") as db:
        db[b"before"] = b"the damage"
    readers_file = store_path / layout.READERS_FILE
    assert readers_file.is_file(), "a writer leaves its readers file behind"
    _damage_at_rest(readers_file, how)
    with viperdbm.open(store_path, "r") as db:  # alone, then a writer alone
        assert dict(db.items()) == {b"before": b"the damage"}
    _damage_at_rest(readers_file, how)
    with viperdbm.open(store_path, "w") as db:
        assert dict(db.items()) == {b"before": b"the damage"}
    _damage_at_rest(readers_file, how)
    second = "w" if first == "r" else "r"
    with held_open(store_path, first) as one, held_open(store_path, second) as other:
        writer, reader = (other, one) if first == "r" else (one, other)
        writer.put(b"after", b"the damage")
        assert reader.call("get", _b64(b"after")) == _b64(b"the damage")
        assert reader.length() == 2
        writer.close()
        reader.close()


def test_a_readers_file_replaced_by_a_directory_is_a_clear_error(store_path: Path) -> None:
    """Not a file the store can map: readers and writers say so (a viperdbm.error naming
    it), or open without it; nothing is lost."""
    with viperdbm.open(store_path, "c") as db:
        db[b"k"] = b"v"
    readers_file = store_path / layout.READERS_FILE
    readers_file.unlink()
    readers_file.mkdir()
    for flag in ("r", "w"):
        try:
            with viperdbm.open(store_path, flag) as db:
                assert db[b"k"] == b"v"
        except viperdbm.error as exc:
            assert layout.READERS_FILE in str(exc), f"open({flag!r}): {exc}"
    readers_file.rmdir()
    with viperdbm.open(store_path, "w") as db:
        assert dict(db.items()) == {b"k": b"v"}


_NOBODY_READER = """
import sys, viperdbm
with viperdbm.open(sys.argv[1], "r") as db:
    print(db[b"k"].decode(), flush=True)
    if sys.argv[2:] == ["hold"]:
        sys.stdin.readline()  # held open until the parent says
print("closed", flush=True)
"""


def test_a_readers_file_the_reader_cannot_write(tmp_path: Path) -> None:
    """chmod 0444 and a reader of another user: it opens, holding the store as readers did
    before live readers (a writer then gets LockError), and lets writers in once closed."""
    prefix = as_nobody("open a store as a user who cannot write its readers file")
    with scratch_dir_for_nobody("viperdbm-readers-ro-") as base:
        store = base / "store"
        with viperdbm.open(store, "c", 0o644) as db:
            db[b"k"] = b"v"
        (store / layout.READERS_FILE).chmod(0o444)
        reader = subprocess.Popen(
            [*prefix, sys.executable, "-c", _NOBODY_READER, str(store), "hold"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert reader.stdout is not None and reader.stdin is not None
            assert reader.stdout.readline() == "v\n", reader.communicate(timeout=60)
            with pytest.raises(viperdbm.LockError):
                viperdbm.open(store, "w")
            reader.stdin.write("close\n")
            reader.stdin.flush()
            out, err = reader.communicate(timeout=60)
            assert (reader.returncode, out) == (0, "closed\n"), err
        finally:
            kill_quietly(reader)
            reader.wait()
        with viperdbm.open(store, "w") as db:
            db[b"k2"] = b"v2"
        assert (
            run_as_nobody(sys.executable, "-c", _NOBODY_READER, str(store)).stdout == "v\nclosed\n"
        )


_READER_BESIDE_A_WRITER = """
import sys, viperdbm
try:
    with viperdbm.open(sys.argv[1], "r") as db:
        print("opened", db[b"k"].decode(), flush=True)
except viperdbm.CorruptedError as exc:
    print("CorruptedError", exc, flush=True)
"""


def test_a_header_damaged_beside_a_live_writer_is_a_clear_error(store_path: Path) -> None:
    """The header of the readers file overwritten while a writer has the store open: a
    reader cannot open beside it (the writer publishes nothing it could find), and says so
    within seconds as a CorruptedError, where it waited two minutes for the writer to
    publish. Once the writer has closed, readers open; the next writer makes the file
    anew and readers open beside it again."""
    with viperdbm.open(store_path, "c") as writer:
        writer[b"k"] = b"v"
        with open(store_path / layout.READERS_FILE, "r+b") as f:
            f.write(b"\xa5" * 64)
        out = run_script(_READER_BESIDE_A_WRITER, str(store_path), timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.startswith("CorruptedError") and "readers file" in out.stdout, out
        assert writer[b"k"] == b"v"
    with viperdbm.open(store_path, "r") as db:
        assert db[b"k"] == b"v"
    with viperdbm.open(store_path, "w") as writer, held_open(store_path, "r") as reader:
        writer[b"k2"] = b"v2"
        assert reader.call("get", _b64(b"k2")) == _b64(b"v2")
        reader.close()
