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
import logging
import os
import stat
import threading
import time
import weakref
from dataclasses import dataclass

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
from ._pmemobj import Pool

log = logging.getLogger("viperdbm")

_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()

#: bytes of dead blocks that may wait for the next sync() before freeing forces one (see
#: Engine._free_dead_blocks)
_FREE_AFTER_SYNC_BYTES = 32 << 20


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
        self.rebuild_seconds = 0.0
        self._was_forked = False
        #: how each write is made durable (see the README's durability table)
        self.persist_mode = "read-only"
        #: (block offset, offset of the first unreadable byte) for each damaged block log
        self.damage: list[tuple[int, int]] = []
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
        except ValueError as exc:  # a damaged part: the exclusive open says what is wrong
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

    def _recover(self) -> None:
        """Viper's recovery: scan every block, newest record of each key wins."""
        pool = self._require_pool()
        objects = pool.objects()
        self._check_against_block_directory(objects)
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
        core.set_floor(self._root.seq_floor)
        core.set_durable(self._root.durable_seq)
        unused: list[int] = []
        kinds = {
            layout.TYPE_STANDARD_BLOCK: layout.BLOCK_KIND_STANDARD,
            layout.TYPE_JUMBO_BLOCK: layout.BLOCK_KIND_JUMBO,
        }
        for off, type_num, usable in objects:
            if type_num == layout.TYPE_RESERVE:
                if self._reserve_off is None:
                    self._reserve_off = off
                else:
                    unused.append(off)  # (a second one: a crash while replacing it)
                continue
            kind = kinds.get(type_num)
            if kind is None:
                raise CorruptedError(
                    f"the pool holds an object of unknown type {type_num}", filename=self.path
                )
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
            for off in freeable:
                pool.free(off)
                core.drop_block(off)

    def _check_against_block_directory(self, objects: list[tuple[int, int, int]]) -> None:
        """A block the last close listed must still be in the pool's heap.

        The heap is libpmemobj's: damage to an object's header there would make a block,
        and every record in it, silently disappear from the iteration. While the blocks
        file is current (the last writer closed and nothing wrote since), compare."""
        if not self._root.directory_generation:
            return
        try:
            with open(os.path.join(self.path, layout.BLOCKS_FILE), "rb") as f:
                directory = layout.BlockDirectory.unpack(f.read(), _native.crc32c)
        except (OSError, ValueError):
            return
        if directory.generation != self._root.directory_generation:
            return
        present = {off for off, _, _ in objects}
        missing = [off for off, _, _ in directory.blocks if off not in present]
        if missing:
            raise CorruptedError(
                f"{len(missing)} block(s) that the last close recorded are missing from the "
                f"pool's heap (first at offset {missing[0]})",
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
    def put_slow(self, rc: int, key: bytes | str, value: bytes | str) -> None:
        """Finish a put that the fast path could not do (rc from Core.put)."""
        with self._lock:
            core = self._require_core()
            while True:
                if rc == _native.RC_OK:
                    return
                if rc in (_native.RC_FREEABLE, _native.RC_COMPACT):
                    self._reclaim()
                    return
                if rc == _native.RC_BUSY:
                    pass  # reorganize() finished while we waited for the lock
                elif rc == _native.RC_NEED_BLOCK:
                    self._new_block()
                elif rc == _native.RC_NEED_JUMBO:
                    kb, vb = _as_bytes(key), _as_bytes(value)
                    off, usable = self._alloc(
                        _native.jumbo_size(len(kb), len(vb)), layout.TYPE_JUMBO_BLOCK, zero=False
                    )
                    rc = core.put_jumbo(off, usable, kb, vb)
                    continue
                else:  # pragma: no cover - the core returns only the codes above
                    raise error(f"unexpected return code {rc} from the native core")
                rc = core.put(key, value)

    def delete_slow(self, rc: int, key: bytes | str) -> bool:
        """Finish a delete that the fast path could not do; False if the key is missing."""
        with self._lock:
            core = self._require_core()
            while True:
                if rc == -1:
                    return False
                if rc == _native.RC_OK:
                    return True
                if rc in (_native.RC_FREEABLE, _native.RC_COMPACT):
                    self._reclaim()
                    return True
                if rc == _native.RC_NEED_BLOCK:
                    self._new_block(may_use_reserve=True)
                elif rc == _native.RC_NEED_JUMBO:
                    kb = _as_bytes(key)
                    off, usable = self._alloc(
                        _native.jumbo_size(len(kb), 0), layout.TYPE_JUMBO_BLOCK, zero=False
                    )
                    rc = core.delete_jumbo(off, usable, kb)
                    continue
                rc = core.delete(key)

    def _alloc(self, size: int, type_num: int, *, zero: bool) -> tuple[int, int]:
        pool = self._require_pool()
        off = pool.alloc(size, type_num, zero=zero)
        usable = pool.usable_size(off)
        self._require_core().set_mapped(pool.mapped_size())
        self._tune_growth()
        return off, usable

    def _new_block(self, *, may_use_reserve: bool = False) -> None:
        """Give the core a new active block.

        A writable store keeps one block's worth of space in reserve (an object of type
        TYPE_RESERVE), so that deletes and compaction still work on a full disk: they
        give the reserve back to the allocator and take a block from it. Puts never do,
        so a full disk stops puts first."""
        size = layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER
        try:
            # not zeroed by libpmemobj (which would msync it): the core zeroes the log itself
            off, usable = self._alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
        except StoreFullError:
            # dead blocks may be waiting for a sync to be freed: free them first
            self._sync_locked()
            self._free_dead_blocks()
            try:
                off, usable = self._alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
            except StoreFullError:
                if not may_use_reserve or self._reserve_off is None:
                    raise
                self._require_pool().free(self._reserve_off)
                self._reserve_off = None
                off, usable = self._alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
        if self._require_core().add_block(off, usable) == _native.RC_FREEABLE:
            self._free_dead_blocks()
        if not may_use_reserve:
            self._keep_reserve()

    def _keep_reserve(self) -> None:
        if self._reserve_off is None:
            size = layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER
            with contextlib.suppress(StoreFullError):
                self._reserve_off, _ = self._alloc(size, layout.TYPE_RESERVE, zero=False)

    def _reclaim(self) -> None:
        """Viper's reclamation, inline: free dead blocks, and when dead space passes two thirds
        of the store, copy the live records out of the blocks with the most dead space (at
        least half dead; at most two per call, so no single write waits long) and free those
        blocks once a sync makes that safe."""
        core = self._require_core()
        self._free_dead_blocks()
        for _ in range(2):
            victim = core.compaction_victim()
            if victim is None:
                break
            rc = core.compact_block(victim)
            while rc == _native.RC_NEED_BLOCK:
                self._new_block(may_use_reserve=True)
                rc = core.compact_block(victim)
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
            pool.free(off)  # atomic in libpmemobj; a crash here leaves only a dead block
            core.drop_block(off)

    # ------------------------------------------------------------------ maintenance
    def sync(self) -> None:
        """Make everything written so far power-fail durable (a no-op on tmpfs)."""
        with self._lock:
            self._require_core()
            if self.options.writable:
                self._sync_locked()
                self._free_dead_blocks()  # the ones that waited for this sync

    def _sync_locked(self) -> None:
        # 1. every dirty page of the pool to the disk; 2. the parts directory (growth adds
        # files); 3. only then the watermark that tells recovery all records up to here are
        # complete on disk (one 8-byte store in the root, persisted by libpmemobj).
        pool = self._require_pool()
        core = self._require_core()
        pool.msync(0, pool.mapped_size())
        storedir.fsync_dir(os.path.join(self.path, layout.PARTS_DIR))
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
        """
        self._require_writable()
        with self._lock:
            core = self._require_core()
            pool = self._require_pool()
            floor = core.compact_begin()
            try:
                rc, size = core.compact_step()
                while rc != _native.RC_OK:
                    if rc == _native.RC_NEED_BLOCK:
                        self._new_block()
                        rc, size = core.compact_step()
                    elif rc == _native.RC_NEED_JUMBO:
                        off, usable = self._alloc(size, layout.TYPE_JUMBO_BLOCK, zero=False)
                        rc, size = core.compact_step(off, usable)
                    else:  # pragma: no cover
                        raise error(f"unexpected return code {rc} from the native core")
                # every live record now has a copy newer than floor: make the copies
                # durable before the floor that makes the originals dead
                self._sync_locked()
                self._store_root_u64(layout.Root.SEQ_FLOOR_OFFSET, floor)
                self._root.seq_floor = floor
                core.set_floor(floor)
                for off in core.old_blocks():
                    pool.free(off)
                    core.drop_block(off)
            finally:
                core.compact_end()

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
                if self.options.writable and self.core is not None:
                    self._sync_locked()
                    self._free_dead_blocks()  # all of them: everything is durable now
                    self._write_block_directory()
            finally:
                if self.core is not None:
                    self.core.invalidate()
                self.core = None
                pool, self._pool = self._pool, None
                pool.close()
                self._release_lock()
                _open_engines.discard(self)

    @property
    def closed(self) -> bool:
        return self._pool is None and self._shared_map is None


# ---------------------------------------------------------------------- module helpers
def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)
