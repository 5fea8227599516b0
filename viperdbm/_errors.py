"""Exception classes of viperdbm.

Every failure of the store is a :class:`error`, which subclasses :class:`OSError`
exactly as the standard library's ``dbm`` backends do, so ``except dbm.error`` style
code keeps working.  The subclasses say *what kind* of failure it was and carry a
``hint`` telling the user what to do about it (the style of py-lmdb's errors).
"""

from __future__ import annotations

import errno as _errno

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
        "a store has one writer, or any number of readers"
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
