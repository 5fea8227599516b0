"""Child process of :class:`tests._vdbtools.Prober`: opens stores that may be damaged.

Reads one JSON request per line on stdin (``{"path", "flag", "reopen"}``), opens the store,
reads every key and value, checks that ``len``/``keys``/iteration/``in``/``get``/
``firstkey``-``nextkey`` agree, closes it, and writes one JSON line: the state (key hex ->
value digest) or the exception. A crash or hang of the store is seen by the parent as the
death or silence of this process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import traceback
from typing import Any

from _vdbtools import walk_keys

NEVER_WRITTEN = [b"never-written", b"\x00never", b"k999999"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_all(db: Any) -> tuple[dict[str, str], list[str]]:
    """(key hex -> value digest, disagreements between the ways of reading the store)."""
    problems: list[str] = []
    keys: list[bytes] = db.keys()
    if len(keys) != len(set(keys)):
        problems.append(f"keys() has duplicates ({len(keys)} vs {len(set(keys))})")
    if len(db) != len(keys):
        problems.append(f"len() is {len(db)} but keys() has {len(keys)}")
    if sorted(db) != sorted(keys):
        problems.append("iteration and keys() disagree")
    state: dict[str, str] = {}
    for key in keys:
        if key not in db:
            problems.append(f"{key[:40]!r} is in keys() but 'in' says no")
        value = db[key]
        if db.get(key) != value:
            problems.append(f"get({key[:40]!r}) differs from [{key[:40]!r}]")
        state[key.hex()] = _digest(value)
    walked = walk_keys(db, len(keys))
    if sorted(walked) != sorted(keys):
        problems.append(f"firstkey/nextkey walked {len(walked)} keys, keys() has {len(keys)}")
    for key in NEVER_WRITTEN:
        if key.hex() not in state and (key in db or db.get(key) is not None):
            problems.append(f"{key!r} is reported present but keys() does not list it")
    return state, problems


def handle(request: dict[str, Any]) -> dict[str, Any]:
    import viperdbm

    collect = _Collect()
    logging.getLogger("viperdbm").addHandler(collect)
    answer: dict[str, Any]
    try:
        with viperdbm.open(request["path"], request["flag"]) as db:
            state, problems = read_all(db)
        answer = {"status": "ok", "state": state, "agreement": problems}
        if request.get("reopen"):
            with viperdbm.open(request["path"], "r") as db:
                again, problems2 = read_all(db)
            answer["state_after_reopen"] = again
            answer["agreement"] = problems + [f"after reopen: {p}" for p in problems2]
    except BaseException as exc:  # report everything, even MemoryError
        answer = {
            "status": "error",
            "exc_type": type(exc).__name__,
            "exc_mro": [c.__name__ for c in type(exc).__mro__],
            "is_error": isinstance(exc, viperdbm.error),
            "message": str(exc),
            "hint": str(getattr(exc, "hint", "") or ""),
            "filename": str(getattr(exc, "filename", "") or ""),
            "traceback": traceback.format_exc()[-3000:],
        }
    finally:
        logging.getLogger("viperdbm").removeHandler(collect)
    answer["warnings"] = collect.messages[:20]
    return answer


def main() -> None:
    logging.getLogger("viperdbm").propagate = False
    for line in sys.stdin:
        if not line.strip():
            continue
        answer = handle(json.loads(line))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
