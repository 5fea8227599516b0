"""Readers that share a store, alongside its writer: the ``readers`` and ``blocks`` files.

libpmemobj locks a pool exclusively, so readers map its part files read-only themselves.
Where the blocks are, and how far each block's log is written, comes from one of two files:

- ``readers`` (native/shared.c, which owns its format): while a writer has the store open
  it publishes every write there, and each reader catches up with it before each operation.
  A reader holds a slot there for as long as it is open (:class:`ReaderSlot`), whatever it
  opened from: the writer frees no block while a reader may still read it.
- ``blocks``: written by the last writer at close (:func:`write_block_directory`; the root
  holds its generation, which a writer zeroes at open, so a file that is no longer current
  is never trusted), for readers of a store no writer has open.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import _layout as layout
from . import _native
from . import _storedir as storedir
from ._errors import READERS_ATTACHED, CorruptedError, LockError
from ._pmemobj import Pool
from ._recovery import require_known_version
from ._signals import start_quiet

log = logging.getLogger("viperdbm")

#: address space a reader reserves beyond its pool's mapping at least (PoolMapping)
RESERVE_AHEAD = 1 << 30


@dataclass
class SharedOpen:
    """A store opened shared and read-only: its index over a read-only mapping."""

    core: _native.Core
    root: layout.Root
    #: (base, length) of the read-only mapping of the parts
    mapping: tuple[int, int]
    damage: list[tuple[int, int]]
    rebuild_seconds: float


class ReaderSlot:
    """This reader's slot in the ``readers`` file: taken before the reader reads anything,
    held (an open-file-description lock the kernel drops if the process dies) until close."""

    def __init__(self, fd: int, slot: int) -> None:
        self.fd = fd
        self.slot = slot

    @classmethod
    def take(cls, path: str) -> ReaderSlot | None:
        """A slot in the store at ``path``; None if this user cannot write the ``readers``
        file (a read-only store or medium, or one on a full disk that has no such file or
        slot yet: the reader then keeps writers out instead).

        Raises :class:`StoreSwappedError` when the store's writer is swapping another
        store in at ``path`` (reorganize(), flag 'n'), or has just done so: the caller
        opens ``path`` again. A slot taken is in the store that stays at ``path`` for as
        long as it is held (the writer swaps only when no reader holds one)."""
        try:
            mode = _readers_file_mode(path)
            fd = os.open(
                os.path.join(path, layout.READERS_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode
            )
        except (PermissionError, FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.ENOSPC):
                return None
            raise storedir.os_error("cannot open the store's readers file", exc, path) from exc
        try:
            slot = _claim(fd, path)
        except OSError as exc:
            os.close(fd)
            # (ENOSPC: the file of an older version, its slots' page never written, on a
            # full disk: this version's writers allocate every slot's page)
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOSPC):
                return None
            raise storedir.os_error("cannot take a reader's slot", exc, path) from exc
        except BaseException:
            os.close(fd)
            raise
        if slot == _ALL_TAKEN:
            os.close(fd)
            raise LockError(
                f"{layout.READER_SLOTS} readers have the store open already; close one first",
                filename=path,
            )
        if slot == _BARRED:
            os.close(fd)
            raise StoreSwappedError(path)
        taken = cls(fd, slot)
        if not _is_current(fd, path):
            taken.release()  # a slot in a store swapped out of the path: open the path again
            raise StoreSwappedError(path)
        return taken

    def release(self) -> None:
        """Give the slot back (the writer then stops holding space for this reader)."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            _native.core.readers_release(fd, self.slot)
        except OSError:
            # the slot keeps this process's id, but closing fd drops its lock: a slot
            # whose lock nobody holds is free, as a killed reader's is (readers_horizon)
            pass
        finally:
            os.close(fd)


#: readers_claim's answers other than a slot
_ALL_TAKEN, _BARRED = -1, -2


class StoreSwappedError(Exception):
    """The store's writer is swapping another store in at the path (reorganize(), flag
    'n'), or has swapped one in since the reader opened the path: open it again."""


def _claim(fd: int, path: str) -> int:
    """A slot (or _ALL_TAKEN, _BARRED). A bar counts only while its process lives and
    someone holds the lock of the store at ``path`` (a writer swapping holds it): one left
    by a writer that died, or bytes of a damaged file, are no bar. (A reader that then
    takes a slot in a store swapped out of the path finds so next: the caller checks.)"""
    slot = _native.core.readers_claim(fd)
    if slot == _BARRED:
        barred_by = _native.core.readers_barred_by(fd)
        if barred_by and not (_process_exists(barred_by) and writer_is_live(path)):
            slot = _native.core.readers_claim(fd, barred_by)
    return slot


def _is_current(fd: int, path: str) -> bool:
    """Is the readers file open as ``fd`` the one of the store at ``path`` now?"""
    return storedir.is_open_as(os.path.join(path, layout.READERS_FILE), fd)


@contextlib.contextmanager
def new_readers_barred(path: str) -> Iterator[None]:
    """While the caller, holding the lock of the store at ``path``, swaps another store in
    at ``path``: no reader takes a slot in this one (it would be left reading a store no
    longer at the path). Raises READERS_ATTACHED if a reader holds a slot already. If the
    block raises before the swap, the bar is lifted; after it, it stays (the old store is
    removed, and a reader that opened it meanwhile opens the path again)."""
    fd: int | None
    try:
        fd = os.open(os.path.join(path, layout.READERS_FILE), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = open_for_writer(path)  # (a reader may be about to make it)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise storedir.os_error("cannot open the store's readers file", exc, path) from exc
        fd = None  # no reader can take a slot either: they keep writers out instead
    if fd is None:
        yield
        return
    try:
        try:
            barred = _native.core.readers_bar(fd)
        except OSError as exc:
            raise storedir.os_error("cannot write the store's readers file", exc, path) from exc
        if not barred:
            raise READERS_ATTACHED(path)
        try:
            yield
        except BaseException:
            if _is_current(fd, path):
                with contextlib.suppress(OSError):  # (what the block raised says more)
                    _native.core.readers_unbar(fd)
            raise
    finally:
        os.close(fd)


def _readers_file_mode(path: str) -> int:
    return os.stat(os.path.join(path, layout.SET_FILE)).st_mode & 0o777


def open_for_writer(path: str) -> int | None:
    """The writer's descriptor of the readers file (made if missing, with the store's
    mode); None if the store's directory is not writable for it (no reader can follow then,
    and readers keep the writer out instead, as before live readers)."""
    try:
        fd = os.open(
            os.path.join(path, layout.READERS_FILE),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            _readers_file_mode(path),
        )
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR):
            log.warning("%s: cannot write the readers file (%s); readers cannot follow", path, exc)
            return None
        raise storedir.os_error("cannot open the store's readers file", exc, path) from exc
    return fd


def _probe_file(path: str, name: str, probe: Callable[[int], bool]) -> bool:
    """``probe`` of a read-only descriptor of the store's file ``name``; False if missing."""
    try:
        fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return probe(fd)
    finally:
        os.close(fd)  # (drops a lock the probe took)


def readers_attached(path: str) -> bool:
    """Does a live reader hold a slot in the store at ``path``?"""
    return _probe_file(path, layout.READERS_FILE, _native.core.readers_live)


def _process_exists(pid: int) -> bool:
    if not 0 < pid < 1 << 31:  # (from a damaged file: no process's id)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _lock_is_taken(fd: int, label: str) -> bool:
    try:
        storedir.flock(fd, exclusive=False, label=label)
        return False
    except LockError:
        return True


def writer_is_live(path: str) -> bool:
    """Does a writer hold the store now? (a test of its lock, which readers never take)"""
    return _probe_file(path, layout.LOCK_FILE, lambda fd: _lock_is_taken(fd, path))


class PoolMapping:
    """A reader's read-only mapping of the part files; it grows when the writer's pool does.

    Address space is reserved ahead (twice the pool, at least a GiB more), so that a growth
    maps only the writer's new parts after the others: the pages of the old ones stay
    mapped (mapping the whole pool again would fault every page in again, at every growth
    of the writer's pool). Past the reservation, the pool is mapped anew, elsewhere."""

    def __init__(self, path: str, needed: int) -> None:
        self.path = path
        self._growing = threading.Lock()
        self.base = self.length = self.reserved = 0
        if needed:
            self.base, self.length, self.reserved = self._map_all(needed)

    @classmethod
    def adopt(cls, path: str, base: int, length: int) -> PoolMapping:
        """A mapping made already (by :func:`open_shared`), with no room reserved."""
        mapping = cls(path, 0)
        mapping.base, mapping.length, mapping.reserved = base, length, length
        return mapping

    def _parts(self, needed: int) -> list[tuple[str, int]]:
        """The first parts of the pool, enough for ``needed`` bytes."""
        parts = storedir.scan_parts(os.path.join(self.path, layout.PARTS_DIR)).mapped()
        taken, total = [], 0
        for part in parts:
            if total >= needed:
                break  # a part that a growth is still making: not in use yet
            taken.append(part)
            total += part[1]
        if total < needed:
            raise CorruptedError(
                f"the store's parts hold {total} bytes but its writer uses {needed}; "
                "run 'viperdbm check' on it",
                filename=self.path,
            )
        return taken

    @contextlib.contextmanager
    def _reading_parts(self) -> Iterator[None]:
        """An OSError of listing or mapping the parts, in the user's terms."""
        try:
            yield
        except CorruptedError:
            raise
        except OSError as exc:
            raise storedir.os_error("cannot read the store's parts", exc, self.path) from exc

    def _map_all(self, needed: int) -> tuple[int, int, int]:
        """(base, length, reserved) of a new mapping of at least ``needed`` bytes."""
        with self._reading_parts():
            taken = self._parts(needed)
            total = sum(size for _, size in taken)
            reserve = max(2 * total, total + RESERVE_AHEAD)
            base, length = _native.core.map_parts(taken, reserve)
            return base, length, reserve

    def _map_more(self, needed: int) -> int | None:
        """Map the parts after those mapped already, in the reserved space; their new
        length, or None if they do not fit there."""
        with self._reading_parts():
            mapped, new = 0, []
            for part in self._parts(needed):
                if mapped < self.length:
                    mapped += part[1]  # the pool grows at its end: these are mapped
                else:
                    new.append(part)
            if mapped != self.length or self.length + sum(s for _, s in new) > self.reserved:
                return None
            return _native.core.map_parts_at(self.base, self.length, self.reserved, new)

    def grow(self, core: _native.Core, needed: int) -> None:
        """Map at least ``needed`` bytes and hand them to ``core`` (it calls this itself
        when the writer publishes a larger pool, between two of its operations). Two threads
        may catch one reader up (the idle catch-up and the user's): one grows at a time, and
        the second finds the mapping large enough."""
        with self._growing:
            if self.length >= needed:
                return
            length = self._map_more(needed) if self.length else None
            if length is not None:
                core.set_base(self.base, length)  # the same base, more of it
                self.length = length
                return
            base, length, reserved = self._map_all(needed)
            try:
                core.set_base(base, length)
            except BaseException:
                _native.core.unmap_parts(base, reserved)
                raise
            old = (self.base, self.reserved)
            self.base, self.length, self.reserved = base, length, reserved
            if old[1]:
                _native.core.unmap_parts(*old)

    def unmap(self) -> None:
        if self.reserved:
            base, reserved = self.base, self.reserved
            self.length = self.reserved = 0
            _native.core.unmap_parts(base, reserved)


def published_before(slot: ReaderSlot) -> tuple[int, int]:
    """The readers file's (commit, table generation) now, before a reader scans the store
    without a writer: it then follows only what later writers publish."""
    header = _native.core.readers_header(slot.fd)
    return (0, 0) if header is None else (header[4], header[5])


#: seconds between two catch-ups of an idle reader (IdleCatchUp)
IDLE_CATCH_UP_SECONDS = 0.5


class IdleCatchUp:
    """Catches every open reader of this process up with its writer twice a second, from one
    daemon thread: a reader that does nothing then holds at most what its writer freed in the
    last half second (a reader catches up at each of its operations anyway). A catch-up runs
    under the GIL as every operation of the core does; where it calls back into Python (to
    map more of a grown pool), the core starts it again afterwards."""

    def __init__(self) -> None:
        self._cores: weakref.WeakSet[_native.Core] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._guard = threading.Lock()

    def add(self, core: _native.Core) -> None:
        with self._guard:
            self._cores.add(core)
            if self._thread is None or self._pid != os.getpid():  # (none after a fork)
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="viperdbm-readers", daemon=True
                )
                start_quiet(self._thread)

    def _run(self) -> None:
        while True:
            time.sleep(IDLE_CATCH_UP_SECONDS)
            for core in list(self._cores):
                if not core.is_open:
                    self._cores.discard(core)
                    continue
                try:
                    core.catch_up()
                except Exception as exc:  # the reader's next operation raises it
                    log.debug("idle catch-up: %s", exc)


#: the one idle catch-up of this process
idle_catch_up = IdleCatchUp()


def follow_writer(
    core: _native.Core,
    slot: ReaderSlot,
    mapping: PoolMapping,
    since: tuple[int, int] = (0, 0),
) -> None:
    """From now on ``core`` catches up with the store's writer before each operation (with
    everything published in the readers file, or only since ``since``)."""
    core.attach_reader(slot.fd, slot.slot, lambda needed: mapping.grow(core, needed), *since)
    idle_catch_up.add(core)


def header_damaged(slot: ReaderSlot) -> bool:
    """Does the readers file hold something other than a header, or the zeros of a file no
    writer has made yet? (A writer makes the header in one go, its magic last.)"""
    if _native.core.readers_header(slot.fd) is not None:
        return False
    return any(os.pread(slot.fd, layout.READERS_HEADER_SIZE, 0))


def open_live(path: str, slot: ReaderSlot) -> tuple[SharedOpen, PoolMapping] | None:
    """Open read-only alongside a live writer, from what it publishes in the ``readers``
    file; None when that holds nothing yet (its writer is still recovering the store)."""
    header = _native.core.readers_header(slot.fd)
    if header is None:
        return None
    pool_id, root_off, mapped, writer_pid, _commit, _gen = header
    if writer_pid and not _process_exists(writer_pid):
        # a writer that did not close left this: after a power cut it may name records the
        # store lost. Wait for the live writer to publish what its recovery found.
        return None
    mapping = PoolMapping(path, mapped)
    started = time.perf_counter()
    try:
        try:
            root = layout.Root.unpack(
                _native.core.peek(mapping.base, mapping.length, root_off, layout.Root.SIZE)
            )
        except (ValueError, CorruptedError):
            root = None
        if root is None or root.magic != layout.ROOT_MAGIC or root.created_ns != pool_id:
            mapping.unmap()
            return None  # not this pool's (a copied directory?): the caller opens otherwise
        require_known_version(root, path)
        # offsets bounded as the writer's are (a pool that outgrows that: set_base widens)
        core = _native.Core(
            mapping.base, mapping.length, 0, storedir.reservation_for_size(mapping.length)
        )
        follow_writer(core, slot, mapping)
    except BaseException:
        mapping.unmap()
        raise
    rebuild_seconds = time.perf_counter() - started
    log.debug(
        "opened %s read-only beside its writer: %d records, index built in %.1f ms",
        path,
        len(core),
        rebuild_seconds * 1e3,
    )
    return SharedOpen(core, root, (mapping.base, mapping.length), [], rebuild_seconds), mapping


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
        require_known_version(root, path)
        core = _native.Core(
            base,
            total,
            sum(size for _, size, _ in directory.blocks) // 128,
            storedir.reservation_for_size(total),
        )
        core.set_floor(root.seq_floor)
        core.set_durable(root.durable_seq)
        core.scan_blocks(directory.blocks)
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
