"""Readers that share a store: the ``blocks`` file, and opening without libpmemobj.

libpmemobj locks a pool exclusively, so readers that share a store map its part files
read-only themselves and find the blocks in the ``blocks`` file that the last writer wrote
at close (:func:`write_block_directory`; the root holds its generation, which a writer zeroes
at open, so a file that is no longer current is never trusted).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from . import _layout as layout
from . import _native
from . import _storedir as storedir
from ._errors import CorruptedError, LockError
from ._pmemobj import Pool

log = logging.getLogger("viperdbm")


@dataclass
class SharedOpen:
    """A store opened shared and read-only: its index over a read-only mapping."""

    core: _native.Core
    root: layout.Root
    #: (base, length) of the read-only mapping of the parts
    mapping: tuple[int, int]
    damage: list[tuple[int, int]]
    rebuild_seconds: float


def open_shared(path: str) -> SharedOpen | None:
    """Open read-only without libpmemobj, sharing the store with other readers.

    None when the ``blocks`` file is missing or not current (the last writer did not
    close: the caller then opens the pool exclusively, which runs the full recovery).
    """
    try:
        with open(os.path.join(path, layout.BLOCKS_FILE), "rb") as f:
            directory = layout.BlockDirectory.unpack(f.read(), _native.crc32c)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("%s: blocks file not usable (%s); opening exclusively", path, exc)
        return None
    try:
        parts = storedir.scan_parts(os.path.join(path, layout.PARTS_DIR)).mapped()
        if sum(size for _, size in parts) != directory.mapped_size:
            return None
        base, total = _native.core.map_parts(parts)
    except (ValueError, CorruptedError) as exc:  # damaged parts: the exclusive open says why
        log.debug("%s: cannot map the parts (%s); opening exclusively", path, exc)
        return None
    except OSError as exc:
        raise storedir.os_error("cannot read the store's parts", exc, path) from exc
    started = time.perf_counter()
    try:
        try:
            root = layout.Root.unpack(
                _native.core.peek(base, total, directory.root_offset, layout.Root.SIZE)
            )
        except (ValueError, CorruptedError):  # damaged: the exclusive open reports it
            _native.core.unmap_parts(base, total)
            return None
        if root.magic != layout.ROOT_MAGIC or root.directory_generation != directory.generation:
            _native.core.unmap_parts(base, total)
            return None
        core = _native.Core(base, total, sum(size for _, size, _ in directory.blocks) // 128)
        core.set_floor(root.seq_floor)
        core.set_durable(root.durable_seq)
        for off, size, type_num in directory.blocks:
            core.scan_block(off, size, type_num)
        damage = core.damage()
        core.finish_recovery(False)
    except (ValueError, CorruptedError) as exc:  # a store problem: the exclusive open says which
        _native.core.unmap_parts(base, total)
        log.debug("%s: cannot share the store (%s); opening exclusively", path, exc)
        return None
    except BaseException:
        _native.core.unmap_parts(base, total)
        raise
    rebuild_seconds = time.perf_counter() - started
    log.debug(
        "opened %s shared, read-only: %d records, index rebuilt in %.1f ms",
        path,
        len(core),
        rebuild_seconds * 1e3,
    )
    return SharedOpen(core, root, (base, total), damage, rebuild_seconds)


def recover_for_readers(
    lock_fd: int | None,
    path: str,
    share: Callable[[], bool],
    recover_and_write_blocks: Callable[[], bool],
) -> bool:
    """The first reader after a writer that did not close: recover, then share.

    Takes the lock (``lock_fd``) exclusively, then ``recover_and_write_blocks``: open the
    pool through libpmemobj (which completes whatever the crashed writer left half done),
    run the recovery scan, write the blocks file for readers and close the pool (True if
    the file was written); then opens the store shared (``share``). The store's records
    are not changed (nothing is freed or erased: that waits for a writer). False if
    another process holds the store or the blocks file cannot be written.
    """
    if lock_fd is None:
        return False
    for attempt in range(50):
        try:
            storedir.flock(lock_fd, exclusive=True, label=path)
            break
        except LockError:
            # another reader is recovering it right now, or shares it already
            time.sleep(0.02 * min(attempt + 1, 5))
            if share():
                return True
    else:
        return False
    try:
        if share():  # recovered by someone else meanwhile
            return True
        written = recover_and_write_blocks()
    finally:
        storedir.flock(lock_fd, exclusive=False, label=path, wait=True)
    return written and share()


def write_block_directory(pool: Pool, core: _native.Core, root_off: int, path: str) -> int:
    """At a writer's close: the ``blocks`` file; its generation (for the root), or 0 if
    the file could not be written.

    A failure does not fail the close (the file only saves readers a recovery: they open
    the store exclusively instead, and nothing is lost), but the disk reported an error,
    which the user hears of as a warning."""
    generation = int.from_bytes(os.urandom(6), "little") | 1
    directory = layout.BlockDirectory(generation, root_off, pool.mapped_size(), core.blocks())
    try:
        mode = os.stat(os.path.join(path, layout.SET_FILE)).st_mode & 0o777
        storedir.replace_file(
            os.path.join(path, layout.BLOCKS_FILE), directory.pack(_native.crc32c), mode
        )
    except OSError as exc:
        # readers will open the store exclusively instead; nothing is lost
        log.warning("%s: cannot write the blocks file (%s)", path, exc)
        warnings.warn(
            f"viperdbm store {path!r}: the disk reported an error while writing its "
            f"'{layout.BLOCKS_FILE}' file at close ({exc}); every write is intact, but "
            "readers will each recover the store at open until a writer closes it again",
            RuntimeWarning,
            stacklevel=2,
        )
        return 0
    return generation
