"""Making a new store: built complete beside its final path, then renamed into place.

A crash during creation (flag ``'c'`` on a missing path) or replacement (flag ``'n'``)
leaves no half-made store at the path, only a temporary directory. The new store's lock is
taken before the rename (it moves with the directory), so no other process can open it
before this one does. ``lock_dir`` locks the store in a directory as the open's flags say
and returns the descriptor that holds the lock, if any.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from . import _layout as layout
from . import _storedir as storedir
from ._errors import error
from ._pmemobj import Pool

LockDir = Callable[[str], "int | None"]


def rebuild_path(path: str) -> str:
    """Where reorganize() builds the new store of ``path``, and where the old one is after
    the swap until it is removed. One fixed name: only the writer holding the store's lock
    makes it, so the next one finds a leftover with one look (:func:`remove_leftovers`)."""
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{base}.viperdbm-reorganize")


def build_new_store(directory: str, mode: int, label: str) -> None:
    """Create a complete, empty, durable store in ``directory`` (which must not exist)."""
    os.mkdir(directory, layout.dir_mode(mode))
    parts = os.path.join(directory, layout.PARTS_DIR)
    os.mkdir(parts, layout.dir_mode(mode))
    fd = os.open(os.path.join(directory, layout.LOCK_FILE), os.O_RDWR | os.O_CREAT, mode)
    os.close(fd)
    storedir.write_informational_poolset(directory, mode)
    pool = Pool.create_in(
        parts,
        layout.POOL_LAYOUT,
        mode & ~storedir.umask(),
        layout.MIN_RESERVATION,
        label=label,
    )
    try:
        root_off = pool.root(layout.ROOT_OBJECT_SIZE)
        root = layout.Root(created_ns=time.time_ns())
        pool.write(root_off, root.pack())
        pool.persist(root_off, layout.Root.SIZE)
        # the space that keeps deletes working on a full disk (see Space.new_block); it
        # fits in the first part, so an empty store stays at 8 MiB
        pool.alloc(
            layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER, layout.TYPE_RESERVE, zero=False
        )
    finally:
        pool.close()
    # the names inside the new store are durable before its own name is published
    storedir.make_durable(directory)


def create(path: str, mode: int, lock_dir: LockDir) -> int | None:
    """Create the store at ``path``, locked; the lock's descriptor. If another process
    created it first, theirs is used (checked, then locked)."""
    tmp = storedir.temp_path(path, "new")
    lock_fd: int | None = None
    try:
        build_new_store(tmp, mode, path)
        lock_fd = lock_dir(tmp)
        try:
            storedir.publish(tmp, path, replace=False)
        except OSError:
            if not os.path.isdir(path):
                raise
            # another process created it first: use theirs
            _release(lock_fd)
            lock_fd = None
            storedir.discard(tmp)
            storedir.check_is_store(path)
            return lock_dir(path)
        storedir.write_informational_poolset(path, mode)  # name the final path
    except OSError as exc:
        _abandon(tmp, lock_fd)
        if isinstance(exc, error):
            raise
        raise storedir.os_error("cannot create the store", exc, path) from exc
    except BaseException:
        _release(lock_fd)
        raise
    return lock_fd


def swap_in_new(path: str, mode: int, lock_dir: LockDir) -> tuple[int | None, str | None]:
    """Flag 'n' on an existing store (or plain file), which the caller holds locked: swap
    a new empty store in, in one step, holding its lock too. The new lock's descriptor,
    and where the old store now is (for :func:`finish_replace`, after the caller has
    dropped the old lock)."""
    tmp = storedir.temp_path(path, "new")
    new_lock: int | None = None
    try:
        build_new_store(tmp, mode, path)
        new_lock = lock_dir(tmp)
        old = storedir.publish(tmp, path, replace=True)
    except OSError as exc:
        _abandon(tmp, new_lock)
        if isinstance(exc, error):
            raise
        raise storedir.os_error("cannot replace the store", exc, path) from exc
    return new_lock, old


def finish_replace(path: str, old: str | None, mode: int) -> None:
    """Remove the replaced store and name the final path in the new one's pool.set."""
    storedir.remove_old(old)
    try:
        storedir.write_informational_poolset(path, mode)  # name the final path
    except OSError as exc:
        raise storedir.os_error("cannot write the store's pool.set", exc, path) from exc


def _abandon(tmp: str, lock_fd: int | None) -> None:
    """A new store that failed before it was published: drop its lock, then remove it."""
    _release(lock_fd)
    storedir.discard(tmp)


def _release(lock_fd: int | None) -> None:
    if lock_fd is not None:
        os.close(lock_fd)  # closing the descriptor drops the flock


def remove_leftovers(path: str) -> None:
    """Remove what a reorganize() killed midway left beside the store at ``path``: the new
    store before it was swapped in, or the old one after. The caller holds the store's
    lock, so no one else is building one."""
    leftover = rebuild_path(path)
    if os.path.lexists(leftover):
        storedir.discard(leftover)
