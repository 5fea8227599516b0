"""The write path's slow half: what a write does when the native core could not finish it.

Each write call of the core (``put``, ``delete``, ``put_jumbo``, ``delete_jumbo``,
``add_block``, ``compact_block``, ``compact_step``) answers one
:class:`~viperdbm._native.WriteCode`: ``DONE`` (``MISSING`` for a delete of a missing key),
or exactly one thing it needs before it is called again:

============== ==========================================================================
``NEED_BLOCK``   a new active block (:meth:`Space.new_block`)
``NEED_JUMBO``   a block of its own for a record over the inline limit (:meth:`Space.alloc`)
``NEED_WAIT``    another thread's ``reorganize()`` to end: holding the engine's lock waits
``NEED_RESERVE`` a put while the space kept for deletes is gone: set it aside again first
============== ==========================================================================

:func:`meet_needs` is the one place that meets them, for puts, deletes and compaction alike.
"Done, and space is due to be given back" is no code: a done write raises the core's
``reclaim_due``, and the native fast path then calls the engine's one entry point for the
slow path (``Engine.write_slow``), which ends in :func:`reclaim_if_due`.

The engine calls this module holding its lock, with signals deferred.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from . import _layout as layout
from . import _native
from ._errors import (
    BATCH_DISK_FULL,
    BATCH_NOT_WRITTEN,
    DELETE_DISK_FULL,
    DELETE_NOT_WRITTEN,
    NOT_WRITTEN_BECAUSE,
    PUT_DISK_FULL,
    PUT_NOT_WRITTEN,
    WRITE_IN_OWN_REORGANIZE,
    Message,
    StoreFullError,
    error,
)

if TYPE_CHECKING:
    from ._space import Space

WriteCode = _native.WriteCode
#: the writes of a batch: (key, value, or None to delete), keys unique (Core.put_batch)
Pairs = Sequence[tuple[bytes | str, bytes | str | None]]
_T = TypeVar("_T")

#: the disk's own "no room" errnos: other causes of a StoreFullError keep their own hint
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _no_jumbo() -> int:  # pragma: no cover - only records over the inline limit need one
    raise error("the native core asked for a jumbo block for a write that has none")


@dataclass(frozen=True)
class Write:
    """One write the core could not finish at once, as :func:`meet_needs` retries it."""

    #: the core call again (after a need was met): its write code
    retry: Callable[[], int]
    #: the bytes of the jumbo block the write needs (on NEED_JUMBO)
    jumbo_bytes: Callable[[], int] = _no_jumbo
    #: the core call that writes into that block, given (offset, usable size): its code
    into_jumbo: Callable[[int, int], int] | None = None
    #: deletes and compaction may take the reserve for a block on a full disk; puts never
    use_reserve: bool = False
    #: what a full disk stops, for its StoreFullError (None: the error as raised), and what
    #: the write did not do, for a StoreFullError that is not the disk's
    disk_full: Message[StoreFullError] | None = None
    not_written: str = ""
    #: run before each need is met (reorganize() delivers signals there)
    between: Callable[[], None] | None = None


def meet_needs(space: Space, code: int, write: Write) -> WriteCode:
    """Meet the need ``code`` names, retry the write, and so on until the core answers
    ``DONE`` (or ``MISSING``), which is returned."""
    waited = False
    while code != WriteCode.DONE and code != WriteCode.MISSING:
        if write.between is not None:
            write.between()
        if code == WriteCode.NEED_JUMBO and write.into_jumbo is not None:
            alloc = partial(space.alloc, write.jumbo_bytes(), layout.TYPE_JUMBO_BLOCK, zero=False)
            off, usable = _room(space, write, alloc)
            code = space.adopt(off, write.into_jumbo, off, usable)
            if code == WriteCode.MISSING:  # deleted by another thread meanwhile: not needed
                space.pool.free(off)
            continue
        if code == WriteCode.NEED_BLOCK:
            _room(space, write, partial(space.new_block, may_use_reserve=write.use_reserve))
        elif code == WriteCode.NEED_WAIT:
            waited = _wait_reorganize(waited, space.path)
        elif code == WriteCode.NEED_RESERVE:
            space.take_back_reserve()
        else:  # pragma: no cover - the core answers only the codes above
            raise error(f"unexpected write code {code} from the native core")
        code = write.retry()
    return WriteCode(code)


def _room(space: Space, write: Write, get: Callable[[], _T]) -> _T:
    """Space for the write from ``get``; a full disk as the write's own StoreFullError."""
    try:
        return get()
    except StoreFullError as exc:
        if write.disk_full is None:
            raise
        if exc.errno not in _DISK_ERRNOS and exc.hint:
            # not the disk: the address-space reservation, say, whose hint says what to do
            raise NOT_WRITTEN_BECAUSE(
                space.path, hint=exc.hint, what=write.not_written, cause=exc.message
            ) from exc
        raise write.disk_full(space.path) from exc


def finish_put(space: Space, code: int, key: bytes | str, value: bytes | str) -> None:
    """Finish a put that answered ``code`` (Core.put), then give space back if due."""
    core = space.core
    meet_needs(
        space,
        code,
        Write(
            retry=lambda: core.put(key, value),
            # from the record, not core.jumbo_need: a write of another thread (the fast path
            # takes no lock) may have set that since
            jumbo_bytes=lambda: _native.jumbo_size(len(_as_bytes(key)), len(_as_bytes(value))),
            into_jumbo=lambda off, usable: core.put_jumbo(off, usable, key, value),
            disk_full=PUT_DISK_FULL,
            not_written=PUT_NOT_WRITTEN,
        ),
    )
    reclaim_if_due(space)


def finish_delete(space: Space, code: int, key: bytes | str, expected: bytes | None = None) -> bool:
    """Finish a delete that answered ``code`` (Core.delete), then give space back if due;
    False if the key is missing (or, with ``expected``, holds another value: each retry
    compares again, in the same core call as the delete)."""
    core = space.core
    done = meet_needs(
        space,
        code,
        Write(
            retry=lambda: core.delete(key, expected),
            jumbo_bytes=lambda: _native.jumbo_size(len(_as_bytes(key)), 0),
            into_jumbo=lambda off, usable: core.delete_jumbo(off, usable, key, expected),
            use_reserve=True,
            disk_full=DELETE_DISK_FULL,
            not_written=DELETE_NOT_WRITTEN,
        ),
    )
    if done == WriteCode.MISSING:
        return False
    reclaim_if_due(space)
    return True


def finish_batch(space: Space, code: int, pairs: Pairs) -> None:
    """Finish a batch that answered ``code`` (Core.put_batch), then give space back if due.
    The core writes all of it in one call or nothing, so every retry starts afresh."""
    core = space.core
    puts = any(value is not None for _, value in pairs)
    meet_needs(
        space,
        code,
        Write(
            retry=lambda: core.put_batch(pairs),
            # from the pairs, not core.jumbo_need (see finish_put); deletes of missing keys
            # counted too: an upper bound
            jumbo_bytes=lambda: _native.batch_jumbo_size(pairs),
            into_jumbo=lambda off, usable: core.put_batch(pairs, off, usable),
            use_reserve=not puts,  # deletes alone may, as a single delete may
            disk_full=BATCH_DISK_FULL,
            not_written=BATCH_NOT_WRITTEN,
        ),
    )
    reclaim_if_due(space)


def reclaim_if_due(space: Space) -> None:
    """A done write raised the core's reclaim_due: give space back (Space.reclaim)."""
    if space.core.reclaim_due:
        space.reclaim()


def _wait_reorganize(waited: bool, path: str) -> bool:
    """NEED_WAIT: reorganize() ran in another thread; holding the lock, we waited for it.

    A second NEED_WAIT under the lock means this very thread is inside reorganize() (a
    signal handler that writes, run between two of its steps): it cannot wait for itself."""
    if waited:
        raise WRITE_IN_OWN_REORGANIZE(path)
    return True


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)
