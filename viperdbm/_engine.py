"""The engine: one open store, its pool, its DRAM index and its block log.

This is Viper's design on a libpmemobj pool. Records are appended to the pages of the
active block (the native core does the append, the CRC and the index update in one call);
the volatile hash index maps each key to its newest record and is rebuilt at open by
scanning every block (:meth:`Engine._recover`). Updates and deletes are out of place: a new
version or a tombstone with a higher sequence number. Blocks that hold nothing needed any
more are freed as soon as that happens; :meth:`Engine.reorganize` copies every live record
forward and then frees every older block.

Locking inside a process: every native call holds the GIL and is atomic, so the fast paths
(put, get, delete) take no lock. The slow paths that call into libpmemobj (allocating a
block, freeing blocks, sync, close, reorganize) hold ``self._lock``; the native core answers
RC_NEED_BLOCK / RC_BUSY when a fast path needs one of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import _layout as layout
from . import _native
from . import _storedir as storedir
from ._errors import (
    ClosedError,
    CorruptedError,
    LockError,
    NotAStoreError,
    ReadonlyError,
    StoreFullError,
    VersionMismatchError,
    error,
)
from ._pmemobj import IO_ERROR_TEXT, PMEMOBJ_PERSIST_ADDRESS, Pool
from ._signals import Deferred

log = logging.getLogger("viperdbm")
_T = TypeVar("_T")

_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()

#: bytes of dead blocks that may wait for the next sync() before freeing forces one (see
#: Engine._free_dead_blocks)
_FREE_AFTER_SYNC_BYTES = 32 << 20

#: what the native block constructor makes of each object type (Engine._alloc)
_CONSTRUCTED = {
    layout.TYPE_STANDARD_BLOCK: layout.BLOCK_KIND_STANDARD,
    layout.TYPE_JUMBO_BLOCK: layout.BLOCK_KIND_JUMBO,
    layout.TYPE_RESERVE: _native.INIT_RESERVE,
}


def _invalidate_after_fork() -> None:
    # The child shares the parent's mapping: a write from it would corrupt the parent's
    # store, and pmemobj_close() would mark the parent's pool closed. Forget everything.
    for engine in list(_open_engines):
        engine._forked()


os.register_at_fork(after_in_child=_invalidate_after_fork)


@dataclass(frozen=True)
class OpenOptions:
    """What the dbm flag string asks for."""

    writable: bool
    create: bool
    truncate: bool
    sync_each_write: bool  # 's'
    lock: bool  # not 'u'


class Engine:
    """An open store. Not part of the public API: :mod:`viperdbm._dbm` wraps it."""

    def __init__(self, path: str, options: OpenOptions, mode: int) -> None:
        self.path = os.path.abspath(path)
        self.options = options
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._pool: Pool | None = None
        #: (base, length) of a read-only mapping of the parts: a reader sharing the store
        self._shared_map: tuple[int, int] | None = None
        self._root_off = 0
        #: the object holding space back for deletes on a full disk (see _new_block)
        self._reserve_off: int | None = None
        self._reorganizing = False
        self.rebuild_seconds = 0.0
        self._was_forked = False
        #: how each write is made durable (see the README's durability table)
        self.persist_mode = "read-only"
        #: (block offset, offset of the first unreadable byte) for each damaged block log
        self.damage: list[tuple[int, int]] = []
        #: the root's directory generation when the pool was opened (a writer zeroes it)
        self._generation_at_open = 0
        self.core: _native.Core | None = None
        self._open(mode)
        _open_engines.add(self)

    # ------------------------------------------------------------------ opening
    def _open(self, mode: int) -> None:
        opts = self.options
        try:
            st: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except PermissionError:
            raise storedir.permission_denied("cannot look at the store", self.path) from None
        except OSError as exc:
            raise storedir.os_error("cannot look at the store", exc, self.path) from exc
        if st is None and not opts.create:
            raise error(
                "no viperdbm store at this path; use flag 'c' or 'n' to create one",
                filename=self.path,
                errno=2,
            )
        # flag 'n' replaces a plain file, as dbm.gnu and dbm.sqlite3 do; never a directory
        # that is not a store (it may hold anything)
        replace_file = st is not None and opts.truncate and stat.S_ISREG(st.st_mode)
        if st is not None and not replace_file:
            self._check_is_store()
        try:
            if st is None:
                self._create(mode)
            elif opts.truncate:
                self._replace_with_new(mode, replace_file)
            else:
                self._take_lock()
            if opts.writable or not opts.lock:
                self._open_pool()
            elif not self._open_shared() and not self._recover_for_readers():
                self._open_pool()  # cannot share: hold the store alone
        except BaseException:
            self._release_lock()
            raise

    def _check_is_store(self) -> None:
        storedir.check_is_store(self.path)

    def _take_lock(self) -> None:
        self._lock_fd = self._lock_dir(self.path)

    def _lock_dir(self, directory: str) -> int | None:
        """Lock the store in ``directory`` as the options say; the descriptor, if one."""
        if not self.options.lock:
            # 'u': hold no lock. A writer still refuses to start under readers that share
            # the store: they read its pages directly, and a writer reusing freed space
            # under them could hand them torn records.
            if self.options.writable:
                storedir.probe_lock(directory, label=self.path)
            return None
        writable = self.options.writable
        try:
            return storedir.lock(directory, exclusive=writable, label=self.path)
        except LockError:
            raise
        except error:
            if writable:
                raise
            return None  # a read-only store or medium: libpmemobj still locks it

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _build_new_store(self, directory: str, mode: int) -> None:
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
            label=self.path,
        )
        try:
            root_off = pool.root(layout.ROOT_SIZE)
            root = layout.Root(created_ns=time.time_ns())
            pool.write(root_off, root.pack())
            pool.persist(root_off, layout.Root.SIZE)
            # the space that keeps deletes working on a full disk (see Engine._new_block);
            # it fits in the first part, so an empty store stays at 8 MiB
            pool.alloc(
                layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER, layout.TYPE_RESERVE, zero=False
            )
        finally:
            pool.close()
        # the names inside the new store are durable before its own name is published
        storedir.make_durable(directory)

    def _create(self, mode: int) -> None:
        # Build the store beside its final path and rename it into place: a crash during
        # creation leaves no half-made store at the path, only a temporary directory. Its
        # lock is taken before the rename (it moves with the directory), so no other
        # process can open the new store before this one does.
        tmp = storedir.temp_path(self.path, "new")
        try:
            self._build_new_store(tmp, mode)
            self._lock_fd = self._lock_dir(tmp)
            try:
                storedir.publish(tmp, self.path, replace=False)
            except OSError:
                if not os.path.isdir(self.path):
                    raise
                # another process created it first: use theirs
                self._release_lock()
                storedir.discard(tmp)
                self._check_is_store()
                self._take_lock()
                return
            storedir.write_informational_poolset(self.path, mode)  # name the final path
        except OSError as exc:
            self._release_lock()
            storedir.discard(tmp)
            if isinstance(exc, error):
                raise
            raise storedir.os_error("cannot create the store", exc, self.path) from exc

    def _replace_with_new(self, mode: int, replace_file: bool) -> None:
        """Flag 'n' on an existing store (or plain file): swap a new empty store in, in one
        step, while holding the old store's lock and then the new one's."""
        if not replace_file:
            self._take_lock()  # nobody may use the old store while it is replaced
        tmp = storedir.temp_path(self.path, "new")
        new_lock: int | None = None
        try:
            self._build_new_store(tmp, mode)
            new_lock = self._lock_dir(tmp)
            old = storedir.publish(tmp, self.path, replace=True)
        except OSError as exc:
            if new_lock is not None:
                os.close(new_lock)
            storedir.discard(tmp)
            if isinstance(exc, error):
                raise
            raise storedir.os_error("cannot replace the store", exc, self.path) from exc
        self._release_lock()
        self._lock_fd = new_lock
        storedir.remove_old(old)
        try:
            storedir.write_informational_poolset(self.path, mode)  # name the final path
        except OSError as exc:
            raise storedir.os_error("cannot write the store's pool.set", exc, self.path) from exc

    def _open_pool(self) -> None:
        parts_dir = os.path.join(self.path, layout.PARTS_DIR)
        try:
            # the one listing of parts/ this open makes (libpmemobj makes its own)
            parts = storedir.repair_interrupted_growth(storedir.scan_parts(parts_dir), self.path)
        except OSError as exc:
            raise storedir.os_error("cannot read the store's parts", exc, self.path) from exc
        pool = Pool.open_in(
            parts_dir,
            layout.POOL_LAYOUT,
            storedir.reservation_for(parts),
            label=self.path,
            parts=parts,
        )
        self._pool = pool
        try:
            self._read_root()
            if self.options.writable and self._root.directory_generation:
                # the blocks file stops being current with the first write
                self._store_root_u64(layout.Root.DIRECTORY_GENERATION_OFFSET, 0)
                self._root.directory_generation = 0
            started = time.perf_counter()
            self._recover()
            self.rebuild_seconds = time.perf_counter() - started
            self._choose_persist_mode()
            self._tune_growth()
            if self.options.writable:
                self._require_core().set_auto_compact(True)
                self._keep_reserve()
                storedir.point_poolset_at_parts(self.path)  # a moved or copied store
        except BaseException:
            if self.core is not None:
                self.core.invalidate()
            pool.close()
            self._pool = None
            raise
        log.debug(
            "opened %s: %d records, index rebuilt in %.1f ms",
            self.path,
            len(self.core) if self.core is not None else 0,
            self.rebuild_seconds * 1e3,
        )

    def _open_shared(self) -> bool:
        """Open read-only without libpmemobj, sharing the store with other readers.

        libpmemobj locks a pool exclusively, so readers map the part files read-only
        themselves and find the blocks in the ``blocks`` file that the last writer wrote at
        close. False when that file is missing or not current (the last writer did not
        close: the caller then opens the pool exclusively, which runs the full recovery).
        """
        try:
            with open(os.path.join(self.path, layout.BLOCKS_FILE), "rb") as f:
                directory = layout.BlockDirectory.unpack(f.read(), _native.crc32c)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            log.debug("%s: blocks file not usable (%s); opening exclusively", self.path, exc)
            return False
        try:
            parts = storedir.scan_parts(os.path.join(self.path, layout.PARTS_DIR)).mapped()
            if sum(size for _, size in parts) != directory.mapped_size:
                return False
            base, total = _native.core.map_parts(parts)
        except (ValueError, CorruptedError) as exc:  # damaged parts: the exclusive open says why
            log.debug("%s: cannot map the parts (%s); opening exclusively", self.path, exc)
            return False
        except OSError as exc:
            raise storedir.os_error("cannot read the store's parts", exc, self.path) from exc
        started = time.perf_counter()
        try:
            try:
                root = layout.Root.unpack(
                    _native.core.peek(base, total, directory.root_offset, layout.Root.SIZE)
                )
            except ValueError:  # damaged: the exclusive open reports it
                _native.core.unmap_parts(base, total)
                return False
            if root.magic != layout.ROOT_MAGIC or root.directory_generation != directory.generation:
                _native.core.unmap_parts(base, total)
                return False
            self._root = root
            core = _native.Core(base, total, sum(size for _, size, _ in directory.blocks) // 128)
            core.set_floor(root.seq_floor)
            core.set_durable(root.durable_seq)
            for off, size, kind in directory.blocks:
                core.scan_block(off, size, kind)
            self.damage = core.damage()
            core.finish_recovery(False)
        except ValueError as exc:  # a store problem: the exclusive open says which
            _native.core.unmap_parts(base, total)
            log.debug("%s: cannot share the store (%s); opening exclusively", self.path, exc)
            return False
        except BaseException:
            _native.core.unmap_parts(base, total)
            raise
        self.core = core
        self._shared_map = (base, total)
        self.rebuild_seconds = time.perf_counter() - started
        log.debug(
            "opened %s shared, read-only: %d records, index rebuilt in %.1f ms",
            self.path,
            len(core),
            self.rebuild_seconds * 1e3,
        )
        return True

    def _recover_for_readers(self) -> bool:
        """The first reader after a writer that did not close: recover, then share.

        Takes the lock exclusively, opens the pool through libpmemobj (which completes
        whatever the crashed writer left half done), runs the recovery scan, writes the
        blocks file for readers, closes the pool and opens the store shared. The store's
        records are not changed (nothing is freed or erased: that waits for a writer).
        False if another process holds the store or the blocks file cannot be written.
        """
        fd = self._lock_fd
        if fd is None:
            return False
        for attempt in range(50):
            try:
                storedir.flock(fd, exclusive=True, label=self.path)
                break
            except LockError:
                # another reader is recovering it right now, or shares it already
                time.sleep(0.02 * min(attempt + 1, 5))
                if self._open_shared():
                    return True
        else:
            return False
        try:
            if self._open_shared():  # recovered by someone else meanwhile
                return True
            self._open_pool()
            try:
                self._write_block_directory()
                written = self._root.directory_generation != 0
            finally:
                core, self.core = self.core, None
                if core is not None:
                    core.invalidate()
                pool, self._pool = self._pool, None
                if pool is not None:
                    pool.close()
        finally:
            storedir.flock(fd, exclusive=False, label=self.path, wait=True)
        return written and self._open_shared()

    def _write_block_directory(self) -> None:
        """At a writer's close: the ``blocks`` file, then its generation in the root."""
        pool = self._require_pool()
        core = self._require_core()
        generation = int.from_bytes(os.urandom(6), "little") | 1
        directory = layout.BlockDirectory(
            generation, self._root_off, pool.mapped_size(), core.blocks()
        )
        try:
            mode = os.stat(os.path.join(self.path, layout.SET_FILE)).st_mode & 0o777
            storedir.replace_file(
                os.path.join(self.path, layout.BLOCKS_FILE), directory.pack(_native.crc32c), mode
            )
        except OSError as exc:
            # readers will open the store exclusively instead; nothing is lost
            log.warning("%s: cannot write the blocks file (%s)", self.path, exc)
            return
        self._store_root_u64(layout.Root.DIRECTORY_GENERATION_OFFSET, generation)
        self._root.directory_generation = generation

    def _store_root_u64(self, offset: int, value: int) -> None:
        """Update one root field in place: one 8-byte store of the sealed value, persisted."""
        pool = self._require_pool()
        pool.write(self._root_off + offset, layout.seal(value).to_bytes(8, "little"))
        pool.persist(self._root_off + offset, 8)

    def _read_root(self) -> None:
        pool = self._require_pool()
        if pool.root_size() < layout.ROOT_SIZE:
            raise CorruptedError("the store has no root object", filename=self.path)
        self._root_off = pool.root(layout.ROOT_SIZE)
        try:
            root = layout.Root.unpack(pool.read(self._root_off, layout.Root.SIZE))
        except ValueError as exc:
            raise CorruptedError(
                f"the store's root object is damaged: {exc}", filename=self.path
            ) from exc
        if root.magic != layout.ROOT_MAGIC:
            raise NotAStoreError(
                "the pool is not a viperdbm store (bad root magic)", filename=self.path
            )
        if root.format_version != layout.FORMAT_VERSION:
            raise VersionMismatchError(
                f"the store has format version {root.format_version}; this viperdbm reads "
                f"version {layout.FORMAT_VERSION}",
                filename=self.path,
                hint="open it with the viperdbm version that wrote it and 'dump' it",
            )
        self._root = root
        self._generation_at_open = root.directory_generation

    def _recover(self) -> None:
        """Viper's recovery: scan every block, newest record of each key wins."""
        pool = self._require_pool()
        objects = pool.objects()
        mapped = pool.mapped_size()
        for off, _, size in objects:
            if off + size > mapped:  # libpmemobj's own object header is damaged
                raise CorruptedError(
                    f"the pool lists an object at offset {off} of {size} bytes, past its end",
                    filename=self.path,
                )
        log_bytes = sum(size for _, type_num, size in objects)
        core = _native.Core(pool.base, mapped, min(log_bytes, mapped) // 128)
        self.core = core
        # a failed msync inside libpmemobj makes the core refuse writes too (fast paths)
        pool.on_io_failure = core.set_io_error
        if pool.io_errno:
            core.set_io_error(pool.io_errno)
        core.set_floor(self._root.seq_floor)
        core.set_durable(self._root.durable_seq)
        kinds = self._block_kinds(core, objects)
        self._check_against_block_directory(objects, kinds)
        unused: list[int] = []
        for off, _, usable in objects:
            kind = kinds[off]
            if not kind:  # the reserve (it holds no block header)
                if self._reserve_off is None:
                    self._reserve_off = off
                else:
                    unused.append(off)  # (a second one: a crash while replacing it)
                continue
            status, _records, _damaged_at = core.scan_block(off, usable, kind)
            if status == 1:
                unused.append(off)  # allocated, then the process died before its first record
            elif status == 2:
                log.warning(
                    "%s: the header of the block at offset %d is damaged; its records were "
                    "recovered without it",
                    self.path,
                    off,
                )
        # damage is read before finish_recovery() zeroes the torn tail of the resumed block
        self.damage = core.damage()
        for block, at in self.damage:
            log.warning(
                "%s: the log of the block at offset %d ends in unreadable bytes at offset %d; "
                "records after that point in the block (if any) are lost",
                self.path,
                block,
                at,
            )
        freeable = core.finish_recovery(self.options.writable)
        if core.discarded:
            log.warning(
                "%s: %d records written after the last sync() were not all on disk (the "
                "machine lost power?); the store was rolled back to the last complete prefix "
                "of its writes",
                self.path,
                core.discarded,
            )
        if self.options.writable and (core.discarded or freeable or unused):
            # freeing removes sequence numbers: everything left must be durable first, or a
            # later recovery would see a gap in the sequence and stop there
            self._sync_locked()
            for off in unused:
                pool.free(off)
                _native.crash_point("recovery: unused object freed")
            for off in freeable:
                pool.free(off)
                _native.crash_point("recovery: dead block freed, not yet dropped")
                core.drop_block(off)

    def _block_kinds(
        self, core: _native.Core, objects: list[tuple[int, int, int]]
    ) -> dict[int, int]:
        """The block kind of each object (0: the reserve), from its type number.

        The reserve's constructor zeroes the first bytes of the object, so an object typed
        as the reserve that holds a valid block header with a birth is a block whose type
        number was damaged: it is read as the block its header describes, never freed
        unread. (A header without a birth may be a previous life's in a reserve that an
        older writer allocated without the constructor: the reserve, unless the ``blocks``
        file says otherwise, see :meth:`_check_against_block_directory`.)"""
        by_type = {
            layout.TYPE_STANDARD_BLOCK: layout.BLOCK_KIND_STANDARD,
            layout.TYPE_JUMBO_BLOCK: layout.BLOCK_KIND_JUMBO,
        }
        kinds: dict[int, int] = {}
        for off, type_num, usable in objects:
            if type_num == layout.TYPE_RESERVE:
                header = core.block_header(off, usable)
                kinds[off] = header[0] if header is not None and header[1] > 0 else 0
                if kinds[off]:
                    log.warning(
                        "%s: the object at offset %d is typed as the reserve but holds a block "
                        "header (a damaged type number); it is read as a block",
                        self.path,
                        off,
                    )
                continue
            kind = by_type.get(type_num)
            if kind is None:
                raise CorruptedError(
                    f"the pool holds an object of unknown type {type_num}", filename=self.path
                )
            kinds[off] = kind
        return kinds

    def _check_against_block_directory(
        self, objects: list[tuple[int, int, int]], kinds: dict[int, int]
    ) -> None:
        """A block the last close listed must still be in the pool's heap, as the same kind.

        The heap is libpmemobj's: damage to an object's header there would make a block,
        and every record in it, silently disappear from the iteration, or turn it into the
        reserve, which a writable open frees. While the blocks file is current (the last
        writer closed and nothing wrote since: the generation the root held when this open
        read it), compare. ``kinds``: the kind each object is read as (0: the reserve)."""
        if not self._generation_at_open:
            return
        try:
            with open(os.path.join(self.path, layout.BLOCKS_FILE), "rb") as f:
                directory = layout.BlockDirectory.unpack(f.read(), _native.crc32c)
        except (OSError, ValueError):
            return
        if directory.generation != self._generation_at_open:
            return
        present = {off for off, _, _ in objects}
        missing = [off for off, _, _ in directory.blocks if off not in present]
        if missing:
            raise CorruptedError(
                f"{len(missing)} block(s) that the last close recorded are missing from the "
                f"pool's heap (first at offset {missing[0]})",
                filename=self.path,
            )
        names = {
            0: "the reserve",
            layout.BLOCK_KIND_STANDARD: "a standard block",
            layout.BLOCK_KIND_JUMBO: "a jumbo block",
        }
        for off, _, kind in directory.blocks:
            if kinds[off] != kind:
                raise CorruptedError(
                    f"the block at offset {off} was {names.get(kind, f'of kind {kind}')} at the "
                    f"last close, but the pool's heap now makes it "
                    f"{names.get(kinds[off], 'something else')} (a damaged object header)",
                    filename=self.path,
                )

    def _choose_persist_mode(self) -> None:
        core = self._require_core()
        pool = self._require_pool()
        if pool.is_pmem(pool.mapped_size()):
            # real persistent memory (DAX): flush each record as Viper does
            core.set_persist(_native.PERSIST_FUNC, pool.persist_function_address)
            self.persist_mode = "pmem_persist per write"
            if os.environ.get("PMEM_IS_PMEM_FORCE") == "1":
                log.warning(
                    "%s: PMEM_IS_PMEM_FORCE=1 makes libpmem treat this file as persistent "
                    "memory; on an ordinary file that removes the power-fail guarantees "
                    "(writes still survive a crash of the process)",
                    self.path,
                )
        elif self.options.sync_each_write:
            core.set_persist(_native.PERSIST_MSYNC)
            self.persist_mode = "msync per write"
        else:
            core.set_persist(_native.PERSIST_NONE)
            self.persist_mode = "page cache; msync at sync() and close()"

    def _tune_growth(self) -> None:
        # libpmemobj adds a part file of this size when the heap is full; a sixteenth of the
        # pool keeps the unused tail of the last part small (and the part count low).
        pool = self._require_pool()
        if not self.options.writable:
            return
        size = max(8 << 20, min(1 << 30, pool.mapped_size() // 16))
        pool.set_heap_granularity(size & ~((1 << 20) - 1))

    # ------------------------------------------------------------------ helpers
    def _closed_error(self) -> ClosedError:
        if self._was_forked:
            return ClosedError(
                "the store was opened before fork(): this process must open it again",
                filename=self.path,
            )
        return ClosedError("DBM object has already been closed")

    def _require_pool(self) -> Pool:
        if self._pool is None:
            raise self._closed_error()
        return self._pool

    def _require_core(self) -> _native.Core:
        if self.core is None:
            raise self._closed_error()
        return self.core

    def _require_writable(self) -> None:
        if not self.options.writable:
            raise ReadonlyError("the store was opened read-only", filename=self.path)

    def _io_errno(self) -> int:
        """errno of a failed msync of this store (libpmemobj's, sync()'s, or the core's
        under flag 's'), or 0: from then on writes and sync() raise (see Pool.io_errno)."""
        pool, core = self._pool, self.core
        return (pool.io_errno if pool is not None else 0) or (core.io_errno if core else 0)

    def _check_written(self, core: _native.Core) -> None:
        """After a write: if one of its msyncs failed (flag 's'), it is in the store but
        not known to be durable; say so."""
        if core.io_errno:
            raise error(
                "written but not known to be durable: " + IO_ERROR_TEXT,
                filename=self.path,
                errno=core.io_errno,
            )

    def _forked(self) -> None:
        if self.core is not None:
            self.core.invalidate(True)
        self.core = None
        self._was_forked = True
        self._pool = None  # the binding has poisoned the pool itself
        self._shared_map = None  # the child's copy of the mapping goes with the child
        self._lock_fd = None  # the descriptor is the parent's lock: never close it here
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ slow paths
    #
    # Each slow path is a multi-step change (a block allocated and handed to the core, the
    # reserve given back, dead blocks freed and forgotten, records copied out of a block).
    # Two rules keep the handle consistent whatever stops one of them:
    # - asynchronous signals are deferred for the whole change (viperdbm/_signals.py): a
    #   KeyboardInterrupt is raised when the change is complete, never between two of its
    #   steps; reorganize(), which may run long, delivers them between whole steps
    #   (Deferred.poll) and winds down in order when a handler raises;
    # - an exception raised by a step itself (StoreFullError, an I/O error) leaves DRAM and
    #   media agreeing: the bookkeeping changes in the same step as the media (the reserve is
    #   forgotten before it is freed; a block the core refused is freed again; the core
    #   raises before it registers a block, never after).

    def put_slow(self, rc: int, key: bytes | str, value: bytes | str) -> None:
        """Finish a put that the fast path could not do (rc from Core.put)."""
        with self._lock:
            core = self._require_core()
            deferred = Deferred()
            try:
                self._finish_put(core, rc, key, value)
                self._check_written(core)  # a jumbo record's msync (flag 's')
            finally:
                deferred.end()

    def _finish_put(
        self, core: _native.Core, rc: int, key: bytes | str, value: bytes | str
    ) -> None:
        busy = False
        while True:
            if rc == _native.RC_OK:
                return
            if rc in (_native.RC_FREEABLE, _native.RC_COMPACT):
                self._reclaim()  # the put is done: this only gives space back
                return
            if rc == _native.RC_BUSY:
                busy = self._wait_busy(busy)
            elif rc == _native.RC_NO_RESERVE:
                self._take_back_reserve()
            elif rc == _native.RC_NEED_BLOCK:
                try:
                    self._new_block()
                except StoreFullError as exc:
                    raise self._full("the put was not written", exc, deletes_work=True) from exc
            elif rc == _native.RC_NEED_JUMBO:
                kb, vb = _as_bytes(key), _as_bytes(value)
                size = _native.jumbo_size(len(kb), len(vb))
                try:
                    off, usable = self._alloc(size, layout.TYPE_JUMBO_BLOCK, zero=False)
                except StoreFullError as exc:
                    raise self._full("the put was not written", exc, deletes_work=True) from exc
                rc = self._adopt(off, core.put_jumbo, off, usable, kb, vb)
                continue
            else:  # pragma: no cover - the core returns only the codes above
                raise error(f"unexpected return code {rc} from the native core")
            rc = core.put(key, value)

    def delete_slow(self, rc: int, key: bytes | str) -> bool:
        """Finish a delete that the fast path could not do; False if the key is missing."""
        with self._lock:
            core = self._require_core()
            deferred = Deferred()
            try:
                found = self._finish_delete(core, rc, key)
                self._check_written(core)  # a jumbo tombstone's msync (flag 's')
                if found and self._reserve_off is None:
                    # this store is living on the reserve: win space back while deleting
                    self._reclaim(urgent=True)
                return found
            finally:
                deferred.end()

    def _finish_delete(self, core: _native.Core, rc: int, key: bytes | str) -> bool:
        busy = False
        while True:
            if rc == -1:
                return False
            if rc == _native.RC_OK:
                return True
            if rc in (_native.RC_FREEABLE, _native.RC_COMPACT):
                self._reclaim()
                return True
            if rc == _native.RC_BUSY:
                busy = self._wait_busy(busy)
            elif rc == _native.RC_NEED_BLOCK:
                try:
                    self._new_block(may_use_reserve=True)
                except StoreFullError as exc:
                    raise self._full("the delete was not written", exc, deletes_work=False) from exc
            elif rc == _native.RC_NEED_JUMBO:
                kb = _as_bytes(key)
                try:
                    off, usable = self._alloc(
                        _native.jumbo_size(len(kb), 0), layout.TYPE_JUMBO_BLOCK, zero=False
                    )
                except StoreFullError as exc:
                    raise self._full("the delete was not written", exc, deletes_work=False) from exc
                rc = self._adopt(off, core.delete_jumbo, off, usable, kb)
                if rc == -1:  # deleted by another thread meanwhile: the block is not needed
                    self._require_pool().free(off)
                continue
            rc = core.delete(key)

    def _wait_busy(self, busy: bool) -> bool:
        """RC_BUSY: reorganize() ran in another thread; holding the lock, we waited for it.

        A second RC_BUSY under the lock means this very thread is inside reorganize() (a
        signal handler that writes, run between two of its steps): it cannot wait for itself."""
        if busy:
            raise error(
                "the store cannot be written while this thread is reorganizing it (a signal "
                "handler that writes to the store?)",
                filename=self.path,
            )
        return True

    def _adopt(self, off: int, register: Callable[..., _T], *args: int | bytes) -> _T:
        """Hand a block just allocated to the core; free it again if the core refuses it.

        The core raises before it registers a block (bounds, size, memory), never after, so
        a block it raised for is not in its registry and is freed here. Only for an
        Exception: a KeyboardInterrupt here (where signals could not be deferred) may
        arrive after the core registered the block, which must then stay allocated."""
        try:
            return register(*args)
        except Exception:
            self._require_pool().free(off)
            raise

    def _full(self, what: str, cause: StoreFullError, *, deletes_work: bool) -> StoreFullError:
        """A StoreFullError that says what still works now."""
        if cause.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and cause.hint:
            # (not the disk: the address-space reservation, say, whose hint says what to do)
            return StoreFullError(f"{what}: {cause.message}", filename=self.path, hint=cause.hint)
        if deletes_work:
            hint = (
                "free disk space and retry; every earlier write is intact, and reads and "
                "deletes still work (the store keeps space for deletes)"
            )
        else:
            hint = (
                "free disk space outside the store and retry; every earlier write is intact "
                "and reads still work"
            )
        return StoreFullError(f"the disk is full: {what}", filename=self.path, hint=hint)

    def _alloc(self, size: int, type_num: int, *, zero: bool) -> tuple[int, int]:
        pool = self._require_pool()
        kind = _CONSTRUCTED.get(type_num)
        if kind is None:
            off = pool.alloc(size, type_num, zero=zero)
        else:
            # The core's constructor writes the header (with the block's birth, the next
            # sequence number) inside pmemobj_alloc, before the allocation is published: a
            # crash leaves no block, or one whose header is this life's. Whatever the space
            # held before (a freed block's header and records) is never read as a block.
            init = ctypes.create_string_buffer(
                self._require_core().block_init(kind, size, PMEMOBJ_PERSIST_ADDRESS, zero)
            )
            off = pool.alloc(
                size,
                type_num,
                zero=False,
                constructor=_native.BLOCK_CONSTRUCTOR,
                arg=ctypes.addressof(init),
            )
        _native.crash_point("object allocated")
        usable = pool.usable_size(off)
        self._require_core().set_mapped(pool.mapped_size())
        self._tune_growth()
        return off, usable

    def _new_block(self, *, may_use_reserve: bool = False) -> None:
        """Give the core a new active block.

        A writable store keeps one block's worth of space in reserve (an object of type
        TYPE_RESERVE), so that deletes and compaction still work on a full disk: they
        give the reserve back to the allocator and take a block from it. Puts never do:
        while the reserve is gone the core refuses them (RC_NO_RESERVE) until it can be set
        aside again, so the block made of it is left to deletes and a full disk stops puts
        first."""
        size = layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER
        core = self._require_core()
        try:
            # not zeroed by libpmemobj (which would msync it): the core zeroes the log itself
            off, usable = self._alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
        except StoreFullError:
            # dead blocks may be waiting for a sync to be freed: free them first
            self._free_dead_now()
            try:
                off, usable = self._alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
            except StoreFullError:
                if not may_use_reserve or self._reserve_off is None:
                    raise
                reserve = self._reserve_off
                self._set_reserve(None)  # forgotten (and puts refused) before it is freed
                self._require_pool().free(reserve)
                off, usable = self._alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
        if self._adopt(off, core.add_block, off, usable) == _native.RC_FREEABLE:
            self._free_dead_blocks()
        if not may_use_reserve:
            self._keep_reserve()

    def _set_reserve(self, off: int | None) -> None:
        # the core refuses puts exactly while there is no reserve
        self._reserve_off = off
        self._require_core().set_puts_refused(off is None)

    def _keep_reserve(self) -> None:
        if self._reserve_off is None:
            size = layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER
            with contextlib.suppress(StoreFullError):
                off, _ = self._alloc(size, layout.TYPE_RESERVE, zero=False)
                self._set_reserve(off)
        # (also right after an open that found no reserve and could not make one)
        self._require_core().set_puts_refused(self._reserve_off is None)

    def _take_back_reserve(self) -> None:
        """A put while the reserve is gone: set it aside again first, or refuse the put."""
        self._reclaim(urgent=True)  # frees what is dead, copies out half-dead blocks
        if self._reserve_off is None:
            raise StoreFullError(
                "the disk is full: the put was not written (the space the store keeps for "
                "deletes is in use by deletes and cannot be set aside again)",
                filename=self.path,
                hint="free disk space and retry; every earlier write is intact, and reads "
                "and deletes still work",
            )

    def _reclaim(self, *, urgent: bool = False) -> None:
        """Viper's reclamation, inline: free dead blocks, and when dead space passes two thirds
        of the store, copy the live records out of the blocks with the most dead space (at
        least half dead; at most two per call, so no single write waits long) and free those
        blocks once a sync makes that safe.

        ``urgent`` (the reserve is gone: the disk is full): sync to free dead blocks at once,
        compact any block at least half dead, then try to set the reserve aside again. A
        compaction that finds no space stops; it resumes at a later call."""
        core = self._require_core()
        urgent = urgent or self._reserve_off is None
        free = self._free_dead_now if urgent else self._free_dead_blocks
        free()
        for _ in range(2):
            victim = core.compaction_victim(urgent)
            if victim is None:
                break
            rc = core.compact_block(victim)
            while rc == _native.RC_NEED_BLOCK:
                try:
                    self._new_block(may_use_reserve=True)
                except StoreFullError:
                    break  # no room to copy into: the block stays as it is, nothing is lost
                rc = core.compact_block(victim)
            if rc != _native.RC_OK:
                break
            free()
        if self._reserve_off is None:
            self._keep_reserve()

    def _free_dead_now(self) -> None:
        """Free every dead block now, syncing first if they wait for that (a full disk)."""
        core = self._require_core()
        if core.freeable():
            if self._root.durable_seq != core.next_seq - 1:
                self._sync_locked()
            self._free_dead_blocks()

    def _free_dead_blocks(self) -> None:
        """Free the blocks that hold nothing needed any more, once that is safe.

        A block is dead because newer records superseded each of its records. Freeing it
        is safe only when those newer records are durable, or a power cut could keep the
        free (libpmemobj makes it durable at once) and lose the records that justified it;
        and a freed block's sequence numbers must be below the durable watermark, because
        recovery stops at a gap above it (the power-fail rule). Both hold right after a
        sync(), so dead blocks wait for the next sync(); once 32 MiB of them wait, this
        syncs itself (on an ordinary file a sync costs an msync of every dirty page, too
        much to pay for each block).
        """
        core = self._require_core()
        dead = core.freeable()
        if not dead:
            return
        if self._root.durable_seq != core.next_seq - 1:
            if sum(size for _, _, size in dead) < _FREE_AFTER_SYNC_BYTES:
                return
            self._sync_locked()
        pool = self._require_pool()
        for off, _, _ in dead:
            # forget, then free: stopped in between (a failed free, or a signal where it
            # is not deferred) the block is only leaked until the next open, never freed
            # while the core still appends to or reads it
            core.drop_block(off)
            pool.free(off)  # atomic in libpmemobj; a crash here leaves only a dead block

    # ------------------------------------------------------------------ maintenance
    def sync(self) -> None:
        """Make everything written so far power-fail durable (a no-op on tmpfs)."""
        with self._lock:
            self._require_core()
            if self.options.writable:
                deferred = Deferred()
                try:
                    self._sync_locked()
                    self._free_dead_blocks()  # the ones that waited for this sync
                finally:
                    deferred.end()

    def _sync_locked(self) -> None:
        # 1. every dirty page of the pool to the disk; 2. the parts directory (growth adds
        # files); 3. only then the watermark that tells recovery all records up to here are
        # complete on disk (one 8-byte store in the root, persisted by libpmemobj).
        pool = self._require_pool()
        core = self._require_core()
        code = self._io_errno()
        if code:  # the pages an msync failed to write may be gone: a sync cannot vouch
            raise error("sync() refused: " + IO_ERROR_TEXT, filename=self.path, errno=code)
        pool.msync(0, pool.mapped_size())
        try:
            storedir.fsync_dir(os.path.join(self.path, layout.PARTS_DIR))
        except error as exc:
            pool.mark_io_failed(exc.errno or errno.EIO)
            raise
        durable = core.next_seq - 1
        if durable != self._root.durable_seq:
            self._store_root_u64(layout.Root.DURABLE_SEQ_OFFSET, durable)
            self._root.durable_seq = durable
            core.set_durable(durable)

    def reorganize(self) -> None:
        """Copy every live record forward, then free every older block.

        Crash-safe at every instant: the copies are complete before the root's sequence
        floor moves past the old records (one 8-byte store, persisted), and only then are
        the old blocks freed. Before the floor moves, recovery sees the copies as the newest
        versions; after, it ignores every old record, so no delete can come back.

        Interruptible between whole steps (each copies up to a block): a KeyboardInterrupt
        there, or a failure of a step (a full disk), ends it with the handle as it was
        (the records copied so far are simply their newest versions). On a full disk it
        first frees dead space block by block, so that a mostly dead store can be
        reorganized where there is no room for a copy of its live records.
        """
        self._require_writable()
        with self._lock:
            self._require_core()
            if self._reorganizing:
                raise error(
                    "reorganize() is already running in this thread (called from a signal "
                    "handler?)",
                    filename=self.path,
                )
            deferred = Deferred()
            self._reorganizing = True
            try:
                try:
                    self._reorganize(deferred)
                except StoreFullError:
                    # a full disk: win space back block by block, then try once more
                    self._make_room(deferred)
                    self._reorganize(deferred)
            except StoreFullError as exc:
                raise StoreFullError(
                    "the disk is full: reorganize() needs room for a copy of the live records",
                    filename=self.path,
                    hint="free disk space and retry; the store is as it was before: every "
                    "earlier write is intact, and reads, puts and deletes work as before",
                ) from exc
            finally:
                self._reorganizing = False
                deferred.end()

    def _reorganize(self, deferred: Deferred) -> None:
        core = self._require_core()
        pool = self._require_pool()
        self._free_dead_now()  # room for the copies
        done = False
        try:
            floor = core.compact_begin()
            rc, size = core.compact_step()
            while rc != _native.RC_OK:
                deferred.poll()  # between two whole steps: Ctrl-C stops here
                if rc == _native.RC_NEED_BLOCK:
                    self._new_block()
                    rc, size = core.compact_step()
                elif rc == _native.RC_NEED_JUMBO:
                    off, usable = self._alloc(size, layout.TYPE_JUMBO_BLOCK, zero=False)
                    rc, size = self._adopt(off, core.compact_step, off, usable)
                else:  # pragma: no cover
                    raise error(f"unexpected return code {rc} from the native core")
            # every live record now has a copy newer than floor: make the copies
            # durable before the floor that makes the originals dead
            self._sync_locked()
            self._store_root_u64(layout.Root.SEQ_FLOOR_OFFSET, floor)
            self._root.seq_floor = floor
            core.set_floor(floor)
            done = True
            for off in core.old_blocks():
                core.drop_block(off)  # (forget, then free: see _free_dead_blocks)
                pool.free(off)
        finally:
            core.compact_end(not done)
        self._keep_reserve()

    def _make_room(self, deferred: Deferred) -> None:
        """A full disk: free the dead blocks, then copy the live records out of every block
        that is at least half dead, one block at a time, freeing each right after (a sync
        makes that safe). Each block is a whole step: signals are delivered between two."""
        core = self._require_core()
        try:
            self._free_dead_now()
            while True:
                deferred.poll()
                victim = core.compaction_victim(True)
                if victim is None:
                    break
                rc = core.compact_block(victim)
                while rc == _native.RC_NEED_BLOCK:
                    self._new_block(may_use_reserve=True)
                    rc = core.compact_block(victim)
                self._free_dead_now()
        finally:
            self._keep_reserve()  # (the copies may have used it)

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            out: dict[str, int | float] = dict(self._require_core().stats())
            if self._shared_map is not None:
                out["pool_bytes"] = self._shared_map[1]
            else:
                out["pool_bytes"] = self._require_pool().mapped_size()
            out["rebuild_seconds"] = self.rebuild_seconds
            return out

    def close(self) -> None:
        with self._lock:
            # deferred signals: a KeyboardInterrupt cannot leave the store half closed
            deferred = Deferred()
            try:
                if self._shared_map is not None:
                    if self.core is not None:
                        self.core.invalidate()
                    self.core = None
                    base, total = self._shared_map
                    self._shared_map = None
                    _native.core.unmap_parts(base, total)
                    self._release_lock()
                    _open_engines.discard(self)
                    return
                if self._pool is None:
                    return
                try:
                    # after a failed msync the store is only closed: nothing more is written
                    # (the error was raised when it happened)
                    if self.options.writable and self.core is not None and not self._io_errno():
                        self._sync_locked()
                        self._free_dead_blocks()  # all of them: everything is durable now
                        self._write_block_directory()
                finally:
                    if self.core is not None:
                        if self.core.io_errno:
                            # the core's msync failed (flag 's'), already raised: mark the
                            # pool too, so that its close() does not raise it once more
                            self._pool.mark_io_failed(self.core.io_errno)
                        self.core.invalidate()
                    self.core = None
                    pool, self._pool = self._pool, None
                    pool.close()
                    self._release_lock()
                    _open_engines.discard(self)
            finally:
                deferred.end()

    @property
    def closed(self) -> bool:
        return self._pool is None and self._shared_map is None


# ---------------------------------------------------------------------- module helpers
def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)
