"""Exception classes of viperdbm.

Every failure of the store is a :class:`error`, which subclasses :class:`OSError`
exactly as the standard library's ``dbm`` backends do, so ``except dbm.error`` style
code keeps working.  The subclasses say *what kind* of failure it was and carry a
``hint`` telling the user what to do about it (the style of py-lmdb's errors).
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

__all__ = [
    "ClosedError",
    "CorruptedError",
    "LockError",
    "NotAStoreError",
    "ReadonlyError",
    "StoreFullError",
    "VersionMismatchError",
    "error",
]


class error(OSError):  # noqa: N801, N818 - the dbm modules all name their exception ``error``
    """Base class of every viperdbm failure (an :class:`OSError`, as in ``dbm``).

    ``errno`` and ``filename`` are set when they are known; ``hint`` is a sentence
    telling the user what to do, or ``""``.
    """

    default_errno: int | None = None
    default_hint: str = ""

    def __init__(
        self,
        message: str,
        *,
        filename: str | None = None,
        errno: int | None = None,
        hint: str | None = None,
    ) -> None:
        code = errno if errno is not None else self.default_errno
        if code is not None and filename is not None:
            super().__init__(code, message, filename)
        elif code is not None:
            super().__init__(code, message)
        else:
            super().__init__(message)
            self.filename = filename
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        text = self.message
        if self.filename is not None:
            text = f"{text}: {self.filename!r}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return text


class ClosedError(error):
    """An operation on a store that has been closed (or was opened before a fork)."""

    default_errno = _errno.EBADF


class LockError(error):
    """Another process (or another open handle) holds the store."""

    default_errno = _errno.EAGAIN
    default_hint = (
        "close the other handle or wait for the other process to finish; "
        "a store has one writer at a time (readers may read beside it)"
    )


class ReadonlyError(error):
    """A write on a store opened with flag 'r'."""

    default_errno = _errno.EROFS
    default_hint = "open the store with flag 'w' or 'c' to write"


class NotAStoreError(error):
    """The path exists but is not a viperdbm store."""

    default_errno = _errno.EINVAL
    # not "use flag 'n'": on a damaged store that would discard what it holds
    default_hint = "check the path"


class VersionMismatchError(error):
    """The store was written in an on-media format this version cannot read."""

    default_errno = _errno.EPROTO


class CorruptedError(error):
    """The store's files are damaged (truncated, overwritten or torn)."""

    default_errno = _errno.EIO
    default_hint = "run 'viperdbm check PATH --salvage OUT' to copy every intact record"


class StoreFullError(error):
    """The disk (or the store's address-space reservation) has no room for the write."""

    default_errno = _errno.ENOSPC
    default_hint = (
        "free disk space and retry; every earlier write is intact and the store "
        "can still be read and deleted from"
    )


# ---------------------------------------------------------------------------------------
# The messages of the write path, in one table (as py-lmdb keeps its errors): each text is
# written once, built from the pieces just below. A message says what was not done; its
# hint says what still works and what to do.

_E = TypeVar("_E", bound=error)


@dataclass(frozen=True)
class Message(Generic[_E]):
    """One row: the error's class, its text (a ``str.format`` template over the fields the
    caller passes) and its hint (``None``: the class's own)."""

    cls: type[_E]
    text: str
    hint: str | None = None

    def __call__(
        self,
        path: str | None,
        *,
        errno: int | None = None,
        hint: str | None = None,
        **fields: object,
    ) -> _E:
        """The error about the store at ``path``; ``hint`` replaces the row's (a cause's)."""
        return self.cls(
            self.text.format(**fields),
            filename=path,
            errno=errno,
            hint=self.hint if hint is None else hint,
        )


#: what a put or a delete that failed did not do
PUT_NOT_WRITTEN: Final = "the put was not written"
DELETE_NOT_WRITTEN: Final = "the delete was not written"
BATCH_NOT_WRITTEN: Final = "the batch was not written (none of its writes)"
_DISK_FULL = "the disk is full: "
_FREE_AND_RETRY = "free disk space and retry; every earlier write is intact"

#: what a failed msync means for the user (see Pool.io_errno; native/module.c says the same)
IO_ERROR_TEXT: Final = (
    "the disk reported an I/O error while writing the store; nothing written since the last "
    "successful sync() is known to be durable; close the store, check the disk, and reopen"
)

#: no room for a put: deletes still work, on the space the store keeps for them
PUT_DISK_FULL: Final = Message(
    StoreFullError,
    _DISK_FULL + PUT_NOT_WRITTEN,
    _FREE_AND_RETRY + ", and reads and deletes still work (the store keeps space for deletes)",
)
#: no room for a put while deletes use the space kept for them
PUT_RESERVE_IN_USE: Final = Message(
    StoreFullError,
    _DISK_FULL + PUT_NOT_WRITTEN + " (the space the store keeps for deletes is in use by "
    "deletes and cannot be set aside again)",
    _FREE_AND_RETRY + ", and reads and deletes still work",
)
#: no room for a batch
BATCH_DISK_FULL: Final = Message(
    StoreFullError,
    _DISK_FULL + BATCH_NOT_WRITTEN,
    _FREE_AND_RETRY + ", and reads and single deletes still work",
)
#: no room for a delete, even in the space kept for deletes
DELETE_DISK_FULL: Final = Message(
    StoreFullError,
    _DISK_FULL + DELETE_NOT_WRITTEN,
    "free disk space outside the store and retry; every earlier write is intact and reads "
    "still work",
)
#: no room for a write for another reason than the disk (``cause``; its hint is passed)
NOT_WRITTEN_BECAUSE: Final = Message(StoreFullError, "{what}: {cause}")
#: no room for reorganize()'s copy of the live records
REORGANIZE_DISK_FULL: Final = Message(
    StoreFullError,
    _DISK_FULL + "reorganize() needs room for a copy of the live records",
    "free disk space and retry; the store is as it was before: every earlier write is "
    "intact, and reads, puts and deletes work as before",
)
#: the pool cannot add a part file any more (``what`` failed; ``reason`` is libpmemobj's)
GROWTH_STOPPED: Final = Message(
    StoreFullError,
    "{what}: the store could not grow ({reason})",
    "free disk space, then close and reopen the store to let it grow again; everything "
    "written so far is intact",
)
#: the pool reached the reservation of its poolset file
RESERVATION_REACHED: Final = Message(
    StoreFullError,
    "{what}: {detail}",
    "the store reached the reservation of its .set file; raise the reservation and reopen "
    "the store",
)
#: a write from a signal handler that runs inside this thread's reorganize()
WRITE_IN_OWN_REORGANIZE: Final = Message(
    error,
    "the store cannot be written while this thread is reorganizing it (a signal handler that "
    "writes to the store?)",
)
#: reorganize() called again inside itself
REORGANIZE_REENTERED: Final = Message(
    error,
    "reorganize() is already running in this thread (called from a signal handler?)",
)
#: a write whose msync failed (flag 's'): in the store, not known to be durable
NOT_DURABLE: Final = Message(error, "written but not known to be durable: " + IO_ERROR_TEXT)
#: sync() after an msync failed
SYNC_REFUSED: Final = Message(error, "sync() refused: " + IO_ERROR_TEXT)
#: any write after an msync failed
WRITES_REFUSED: Final = Message(error, "the store refuses writes: " + IO_ERROR_TEXT)
#: an msync of the store failed
IO_FAILED: Final = Message(error, IO_ERROR_TEXT)

# The messages of live readers (viperdbm/_readers.py).

#: flag 'n' (or a replacing load or copy) while readers read the store
READERS_ATTACHED: Final = Message(
    LockError,
    "the store is in use by readers; it cannot be replaced while they read it",
    "close the readers (or let them exit) and retry; the store is unchanged",
)
#: a reader that kept finding the store at its path swapped out (reorganize(), flag 'n')
STORE_BEING_REPLACED: Final = Message(
    LockError,
    "the store's writer is replacing it with a new one (reorganize(), or flag 'n') and "
    "has not finished",
    "retry once the writer's reorganize() or open has returned",
)
#: a reader that found a writer still making the store's first readers file
WRITER_NOT_PUBLISHING: Final = Message(
    LockError,
    "the store's writer has not finished opening it",
    "retry once the writer's open has returned (it recovers the store first)",
)
#: a reader beside a live writer that found the header of the readers file damaged
READERS_HEADER_DAMAGED: Final = Message(
    CorruptedError,
    "the header of the store's readers file is damaged, so readers cannot open the store "
    "beside its writer",
    "if the writer is still opening the store, retry once its open has returned; otherwise "
    "readers can open the store once the writer has closed it (the next writer makes the file "
    "anew); the store's records are not affected",
)
