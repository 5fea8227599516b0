"""The child of tests/test_torture.py: a seeded random stream of operations on one store.

The stream is a pure function of ``(seed, index)`` (:func:`operation`), and so is every value
written (:func:`_vdbtools.value_for`), so the parent, which reads this process's report
lines, knows exactly what was asked, what was acknowledged and which operation was in flight
when it sent SIGKILL.

Report lines (stdout, one ``write`` each, flushed):

* ``IMPORTED`` right before ``open()``, ``OPENED`` once the store is open; then
  ``K <key digest> <value digest>`` for every key, ``P <problem>`` for every disagreement
  between len/keys/iteration/in/get/firstkey-nextkey, and ``READY <len>``;
* ``B <i> <kind>`` before operation *i*, ``A <i> <result> <len after>`` after it returned
  (a ``reopen`` reports the whole store again, ``K`` ... ``READY``, before its ``A``; a
  ``P`` line before the ``A`` when the engine's block counters disagree with its index);
* ``DONE`` after the stream and ``close()``.

Usage: ``_torture_child.py PATH SEED LENGTH [MODE]``; MODE ``mixed`` (default), ``grow``
(only puts of about 1 MiB to new keys: the pool must grow) or ``churn`` (keys that come and
go beside a base that stays, under a reclamation policy that rewrites old blocks for them).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any

from _vdbtools import digest, value_for, walk_keys

SMALL_KEYS = [b"k%03d" % i for i in range(120)]
#: the empty key, binary keys, a key with the long (u32) length field, a key over 1 MiB
#: (its puts and deletes need a jumbo block even with an empty value)
SPECIAL_KEYS = [b"", b"\x00", b"\xff\x00\xfe", b"long-" + b"L" * 5000]
HUGE_KEY = b"huge-" + b"H" * (1 << 20) + b"!"
BIG_KEYS = [b"big%02d" % i for i in range(32)]
ALL_KEYS = SMALL_KEYS + SPECIAL_KEYS + [HUGE_KEY] + BIG_KEYS
NEVER_WRITTEN = [b"never-written", b"k999", b"big99"]
KEY_BY_DIGEST = {digest(k): k for k in ALL_KEYS + NEVER_WRITTEN}

INLINE_MAX = 1 << 20
KINDS = ("put", "delete", "get", "sync", "reopen", "reorganize")


@dataclass(frozen=True)
class Op:
    index: int
    kind: str
    key: bytes = b""
    size: int = 0  # of the value, for a put


def grow_key(seed: int, index: int) -> bytes:
    return b"grow-%d-%06d" % (seed, index)


def _near_inline_max(rng: random.Random, key: bytes) -> int:
    """A value size that puts the record right around the 1 MiB inline limit."""
    header = 20 if len(key) > 4094 else 16
    return max(0, INLINE_MAX - header - len(key) + rng.randint(-6, 6))


def _size(rng: random.Random, key: bytes) -> int:
    r = rng.random()
    if r < 0.06:
        return 0
    if r < 0.40:
        return rng.randint(1, 64)
    if r < 0.70:
        return rng.randint(65, 4096)
    if r < 0.90:
        return rng.randint(4097, 65536)
    if r < 0.975:
        return rng.randint(65537, INLINE_MAX - 64)
    return _near_inline_max(rng, key)


def _key(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.85:
        return rng.choice(SMALL_KEYS)
    if r < 0.95:
        return rng.choice(SPECIAL_KEYS)
    if r < 0.965:
        return HUGE_KEY
    return rng.choice(BIG_KEYS)


def operation(seed: int, index: int, mode: str = "mixed") -> Op:
    """Operation ``index`` of stream ``seed``: the same in the parent and the child."""
    rng = random.Random(f"op/{seed}/{mode}/{index}")
    if mode == "grow":
        return Op(index, "put", grow_key(seed, index), rng.randint(900_000, 1_100_000))
    if mode == "churn":
        return _churn(rng, index)
    burst = random.Random(f"phase/{seed}/{index // 32}").random() < 0.2
    if burst:  # many ~1 MiB values: new 4 MiB blocks, jumbo blocks, pool growth
        key = rng.choice(BIG_KEYS)
        if rng.random() < 0.1:
            return Op(index, "delete", key)
        if rng.random() < 0.2:
            return Op(index, "put", key, _near_inline_max(rng, key))
        return Op(index, "put", key, rng.randint(900_000, 1_150_000))
    r = rng.random()
    if r < 0.55:
        key = _key(rng)
        size = _size(rng, key)
        if key == HUGE_KEY:
            size = min(size, 4096)
        return Op(index, "put", key, size)
    if r < 0.72:
        return Op(index, "delete", _key(rng))
    if r < 0.88:
        return Op(index, "get", _key(rng))
    if r < 0.92:
        return Op(index, "sync")
    if r < 0.96:
        return Op(index, "reopen")
    if r < 0.985:
        return Op(index, "reorganize")
    return Op(index, "get", rng.choice(NEVER_WRITTEN))


#: churn mode: the first keys are a base written once per stream, the others come and go
CHURN_BASE = SMALL_KEYS[:60]
CHURN_KEYS = SMALL_KEYS[60:]


def _churn(rng: random.Random, index: int) -> Op:
    """Keys that come and go beside a base that stays: deletes pile up until compaction
    rewrites the oldest blocks (a policy the child sets low, see CHURN_MIN_TOMBSTONES)."""
    if index < len(CHURN_BASE):
        return Op(index, "put", CHURN_BASE[index], rng.randint(20_000, 40_000))
    r = rng.random()
    if r < 0.45:
        return Op(index, "put", rng.choice(CHURN_KEYS), rng.randint(20_000, 40_000))
    if r < 0.9:
        return Op(index, "delete", rng.choice(CHURN_KEYS))
    if r < 0.95:
        return Op(index, "sync")
    if r < 0.97:
        return Op(index, "reopen")
    return Op(index, "get", rng.choice(CHURN_BASE))


#: churn mode's reclamation: a check every 64 writes and the oldest block rewritten from 16
#: deletes on, so that a short stream compacts for deletes many times
CHURN_CHECK_EVERY = 64
CHURN_MIN_TOMBSTONES = 16


# --------------------------------------------------------------------------- the child
def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _dump(db: Any) -> None:
    keys: list[bytes] = db.keys()
    problems: list[str] = []
    if len(keys) != len(set(keys)) or len(keys) != len(db):
        problems.append(f"len {len(db)} keys {len(keys)} distinct {len(set(keys))}")
    if sorted(db) != sorted(keys):
        problems.append("iteration differs from keys()")
    walked = walk_keys(db, len(keys))
    if sorted(walked) != sorted(keys):
        problems.append(f"firstkey/nextkey walked {len(walked)} of {len(keys)} keys")
    for key in keys:
        value = db[key]
        if key not in db or db.get(key) != value:
            problems.append(f"'in'/get disagree for key {digest(key)}")
        _out(f"K {digest(key)} {digest(value)}")
    for key in NEVER_WRITTEN:
        if key not in keys and (key in db or db.get(key) is not None):
            problems.append(f"never-written {key!r} reported present")
    for problem in problems:
        _out(f"P {problem}")
    _out(f"READY {len(db)}")


def _audit(db: Any) -> list[str]:
    """The engine's block counters checked against its index (see Core.audit)."""
    problems: list[str] = db._engine.core.audit()
    return problems


def main(path: str, seed: int, length: int, mode: str) -> None:
    import viperdbm

    if mode == "churn":
        import dataclasses

        from viperdbm import _space

        _space.RECLAIM = dataclasses.replace(
            _space.RECLAIM, check_every=CHURN_CHECK_EVERY, min_tombstones=CHURN_MIN_TOMBSTONES
        )
    _out("IMPORTED")
    db = viperdbm.open(path, "c")
    _out("OPENED")
    _dump(db)
    for problem in _audit(db):
        _out(f"P after open: {problem}")
    for index in range(length):
        op = operation(seed, index, mode)
        value = value_for(seed, index, op.size) if op.kind == "put" else b""
        _out(f"B {index} {op.kind}")
        result = "ok"
        if op.kind == "put":
            db[op.key] = value
        elif op.kind == "delete":
            try:
                del db[op.key]
            except KeyError:
                result = "missing"
        elif op.kind == "get":
            found = db.get(op.key)
            result = "none" if found is None else digest(found)
        elif op.kind == "sync":
            db.sync()
        elif op.kind == "reopen":
            db.close()
            db = viperdbm.open(path, "w")
            _dump(db)  # what the reopened store holds, checked by the parent
        elif op.kind == "reorganize":
            db.reorganize()
        # the engine's block counters must agree with its index after every operation: a
        # block that counts fewer live records than it holds would be freed with them
        for problem in _audit(db):
            _out(f"P after op {index} ({op.kind}): {problem}")
        _out(f"A {index} {result} {len(db)}")
    db.close()
    _out("DONE")


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4] if len(sys.argv) > 4 else "mixed",
    )
