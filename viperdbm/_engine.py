"""The engine: one open store, its pool, its DRAM index and its block log.

This is Viper's design on a libpmemobj pool. Records are appended to the pages of the
active block (the native core does the append, the CRC and the index update in one call);
the volatile hash index maps each key to its newest record and is rebuilt at open by
scanning every block (:mod:`viperdbm._recovery`). Updates and deletes are out of place: a
new version or a tombstone with a higher sequence number. Blocks that hold nothing needed
any more are freed as soon as that happens (:mod:`viperdbm._space`); :meth:`Engine.reorganize`
copies every live record forward and then frees every older block.

:class:`Engine` holds the state of one open handle (its options, lock, pool, index, root)
and composes the modules that own each concern: making a new store (:mod:`._opening`),
recovery (:mod:`._recovery`), readers that share a store (:mod:`._readers`), space
management (:mod:`._space`) and the slow write paths (:mod:`._writepath`). It keeps
sync, reorganize and close, and the one entry point the native core calls by name
(``write_slow``).

Locking inside a process: every native call holds the GIL and is atomic, so the fast paths
(put, get, delete) take no lock. The slow paths that call into libpmemobj (allocating a
block, freeing blocks, sync, close, reorganize) hold ``self._lock``; the native core answers
a need (NEED_BLOCK, NEED_WAIT, ...) when a fast path needs one of them.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from . import _layout as layout
from . import _native, _space
from . import _opening as opening
from . import _readers as readers
from . import _recovery as recovery
from . import _storedir as storedir
from . import _writepath as writepath
from ._errors import (
    NOT_DURABLE,
    READERS_HEADER_DAMAGED,
    REORGANIZE_DISK_FULL,
    REORGANIZE_REENTERED,
    STORE_BEING_REPLACED,
    SYNC_REFUSED,
    WRITER_NOT_PUBLISHING,
    ClosedError,
    LockError,
    ReadonlyError,
    StoreFullError,
    error,
)
from ._pmemobj import Pool
from ._signals import Deferred
from ._space import HeldBlocks, Space, tune_growth

log = logging.getLogger("viperdbm")

_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _invalidate_after_fork() -> None:
    # The child shares the parent's mapping: a write from it would corrupt the parent's
    # store, and pmemobj_close() would mark the parent's pool closed. Forget everything.
    for engine in list(_open_engines):
        engine._forked()


os.register_at_fork(after_in_child=_invalidate_after_fork)


#: seconds a reader waits for a writer that is making the store's first readers file (it
#: recovers the store first, which at 100M records takes tens of seconds)
WAIT_FOR_FIRST_PUBLISH = 120.0
#: seconds a reader beside a live writer takes a damaged readers header for one being made
#: (a writer makes it in one go, its magic last) before it says so
READERS_HEADER_GRACE = 1.0
#: seconds a reader opens the path again while its writer swaps another store in there
#: (each swap bars new readers for one rename and one fsync; then the path holds the new one)
WAIT_FOR_SWAP = 60.0


@dataclass(frozen=True)
class OpenOptions:
    """What the dbm flag string asks for."""

    writable: bool
    create: bool
    truncate: bool
    sync_each_write: bool  # 's'
    lock: bool  # not 'u'
    #: seconds a writer waits for the store's writer lock (0: LockError at once)
    timeout: float = 0.0


#: records copied by reorganize() between two chances for a Ctrl-C to stop it
_COPY_STEP = 4096


def _copy_records(core: _native.Core, build: Engine, deferred: Deferred) -> None:
    """Every live record of ``core`` into the store ``build`` (in the index's order)."""
    target = build.require_core()
    key = core.firstkey()
    n = 0
    while key is not None:
        value = core.getitem(key)
        code = target.put(key, value)
        if code:  # a new block, a jumbo block: the slow path, as the dbm face takes it
            build.write_slow(code, key, value)
            target = build.require_core()
        n += 1
        if n % _COPY_STEP == 0:
            deferred.poll()
        key = core.nextkey(key)


def _abandon_build(build: Engine | None, built: str) -> None:
    """A new pool that will not be swapped in: closed, then removed."""
    try:
        if build is not None:
            build.close()
    except error as exc:
        log.debug("%s: closing an abandoned rebuild: %s", built, exc)
    finally:
        storedir.discard(built)


@dataclass
class _Handles:
    """What a handle holds of a store it opened through libpmemobj, taken from it to be
    closed (:meth:`Engine._let_go`): at close, after a failed open, and the old store's
    after reorganize() swapped a new one in (opened before this is closed)."""

    pool: Pool | None
    core: _native.Core | None
    readers_fd: int | None
    lock_fd: int | None

    def close(self) -> None:
        """In this order: the core (which also tells its readers file that no writer has
        it open), the readers file, the pool, and last the lock (no other writer opens the
        pool before libpmemobj has let go of it). If the pool's close raises (an I/O
        error), the lock is let go of all the same."""
        try:
            if self.core is not None:
                self.core.invalidate()
            if self.readers_fd is not None:
                os.close(self.readers_fd)
            if self.pool is not None:
                self.pool.close()
        finally:
            if self.lock_fd is not None:
                os.close(self.lock_fd)


class Engine:
    """An open store. Not part of the public API: :mod:`viperdbm._dbm` wraps it."""

    def __init__(self, path: str, options: OpenOptions, mode: int) -> None:
        self.path = os.path.abspath(path)
        self.options = options
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._pool: Pool | None = None
        #: a reader's read-only mapping of the parts (a reader does not open the pool)
        self._mapping: readers.PoolMapping | None = None
        #: a reader's slot in the readers file (None: a reader that keeps writers out)
        self._reader_slot: readers.ReaderSlot | None = None
        #: the writer's descriptor of the readers file, which it publishes into
        self._readers_fd: int | None = None
        self._root_off = 0
        self._root = layout.Root()
        #: space management of a writable store, while its pool is open
        self._space: Space | None = None
        #: the blocks a writer freed that readers may still read
        self._held: HeldBlocks | None = None
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
            if opts.writable and self._lock_fd is not None:
                opening.remove_leftovers(self.path)  # a reorganize() that was killed midway
            if opts.writable or not opts.lock:
                self._open_pool()
            else:
                self._open_reader()
        except BaseException:
            self._release_reader_slot()
            self._release_lock()
            raise

    def _check_is_store(self) -> None:
        storedir.check_is_store(self.path)

    def _take_lock(self) -> None:
        if not self.options.writable and self.options.lock:
            # a reader holds a slot in the readers file instead: writers may come and go
            self._reader_slot = self._take_reader_slot()
            if self._reader_slot is not None:
                return
        self._lock_fd = self._lock_dir(self.path)

    def _take_reader_slot(self) -> readers.ReaderSlot | None:
        """A slot in the store at the path, once no writer is swapping another one in."""
        deadline = time.monotonic() + WAIT_FOR_SWAP
        pause = 0.001
        while True:
            try:
                return readers.ReaderSlot.take(self.path)
            except readers.StoreSwappedError:
                if time.monotonic() > deadline:
                    raise STORE_BEING_REPLACED(self.path) from None
                time.sleep(pause)
                pause = min(2 * pause, 0.05)

    def _lock_dir(self, directory: str) -> int | None:
        """Lock the store in ``directory`` as the options say; the descriptor, if one."""
        if not self.options.lock:
            # 'u': hold no lock. A writer still refuses to start under readers that keep
            # writers out (those that cannot take a slot in the readers file).
            if self.options.writable:
                storedir.probe_lock(directory, label=self.path)
            return None
        writable = self.options.writable
        try:
            return storedir.lock(
                directory,
                exclusive=writable,
                label=self.path,
                timeout=self.options.timeout if writable else 0.0,
            )
        except LockError:
            raise
        except error:
            if writable:
                raise
            return None  # a read-only store or medium: libpmemobj still locks it

    def _release_reader_slot(self) -> None:
        slot, self._reader_slot = self._reader_slot, None
        if slot is not None:
            slot.release()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _create(self, mode: int) -> None:
        self._lock_fd = opening.create(self.path, mode, self._lock_dir)

    def _replace_with_new(self, mode: int, replace_file: bool) -> None:
        """Flag 'n' on an existing store (or plain file): swap a new empty store in, in one
        step, while holding the old store's lock and then the new one's."""
        if replace_file:
            new_lock, old = opening.swap_in_new(self.path, mode, self._lock_dir)
        else:
            self._take_lock()  # nobody may use the old store while it is replaced
            with readers.new_readers_barred(self.path):
                new_lock, old = opening.swap_in_new(self.path, mode, self._lock_dir)
        self._release_lock()
        self._lock_fd = new_lock
        opening.finish_replace(self.path, old, mode)

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
            reserve_off = self._recover()
            self.rebuild_seconds = time.perf_counter() - started
            self._choose_persist_mode()
            if self.options.writable:
                tune_growth(pool)
                core = self.require_core()
                _space.RECLAIM.hand_to(core)  # (read at each open: a test may set its own)
                self._space = Space(
                    pool,
                    core,
                    self._root,
                    path=self.path,
                    sync=self._sync_locked,
                    reserve_off=reserve_off,
                    held=self._require_held(),
                )
                self._space.keep_reserve()
                storedir.point_poolset_at_parts(self.path)  # a moved or copied store
        except BaseException:
            self._let_go(lock=False).close()  # (the caller releases the lock)
            raise
        log.debug(
            "opened %s: %d records, index rebuilt in %.1f ms",
            self.path,
            len(self.core) if self.core is not None else 0,
            self.rebuild_seconds * 1e3,
        )

    def _open_reader(self) -> None:
        """Open read-only beside the writer, if there is one, and follow it from then on.

        With a writer: from what it publishes in the readers file. Without one: from the
        blocks file its last writer wrote at close, or (after a writer that did not close)
        by recovering the store first. A reader that cannot take a slot in the readers file
        keeps writers out for as long as it is open, as before live readers."""
        slot = self._reader_slot
        if slot is None:
            if not self._open_shared() and not self._recover_for_readers():
                self._open_pool()  # cannot share: hold the store alone
            return
        deadline = time.monotonic() + WAIT_FOR_FIRST_PUBLISH
        damaged_since: float | None = None
        while True:
            since = readers.published_before(slot)
            if readers.writer_is_live(self.path):
                opened = readers.open_live(self.path, slot)
                if opened is not None:
                    shared, self._mapping = opened
                    self._adopt_shared(shared)
                    return
                # the writer has not published yet (it recovers the store first): wait,
                # unless the file holds no header at all
                if not readers.header_damaged(slot):
                    damaged_since = None
                elif damaged_since is None:
                    damaged_since = time.monotonic()
                elif time.monotonic() - damaged_since > READERS_HEADER_GRACE:
                    raise READERS_HEADER_DAMAGED(self.path)
            elif self._open_shared() or self._recover_for_readers():
                readers.follow_writer(self.require_core(), slot, self._require_mapping(), since)
                return
            elif not readers.writer_is_live(self.path):
                # the blocks file cannot be written: hold the store alone (writers wait)
                self._release_reader_slot()
                self._open_pool()
                return
            # a writer opened the store meanwhile: open beside it
            if time.monotonic() > deadline:
                raise WRITER_NOT_PUBLISHING(self.path)
            time.sleep(0.02)

    def _require_mapping(self) -> readers.PoolMapping:
        if self._mapping is None:
            raise self.closed_error()
        return self._mapping

    def _adopt_shared(self, shared: readers.SharedOpen) -> None:
        self._root = shared.root
        self.damage = shared.damage
        self.core = shared.core
        self.rebuild_seconds = shared.rebuild_seconds

    def _open_shared(self) -> bool:
        """Open read-only without libpmemobj, sharing the store with other readers (see
        :func:`viperdbm._readers.open_shared`); False if the caller must open it alone."""
        shared = readers.open_shared(self.path)
        if shared is None:
            return False
        self._adopt_shared(shared)
        self._mapping = readers.PoolMapping.adopt(self.path, *shared.mapping)
        return True

    def _recover_for_readers(self) -> bool:
        """The first reader after a writer that did not close: recover, then share (see
        :func:`viperdbm._readers.recover_for_readers`)."""
        if self._reader_slot is None:
            return readers.recover_for_readers(
                self._lock_fd, self.path, self._open_shared, self._recover_and_write_blocks
            )
        # a reader with a slot holds no lock: take the writer's lock for the recovery
        try:
            fd = storedir.lock(self.path, exclusive=False, label=self.path)
        except LockError:
            return False  # a writer holds it: the caller opens beside it
        try:
            return readers.recover_for_readers(
                fd, self.path, self._open_shared, self._recover_and_write_blocks
            )
        finally:
            os.close(fd)

    def _recover_and_write_blocks(self) -> bool:
        """Open the pool (recovering it), write the blocks file, close the pool again;
        True if the file was written."""
        self._open_pool()
        try:
            self._write_block_directory()
            written = self._root.directory_generation != 0
        finally:
            self._let_go(lock=False).close()  # (the lock is the caller's)
        return written

    def _write_block_directory(self) -> None:
        """At a writer's close: the ``blocks`` file, then its generation in the root."""
        generation = readers.write_block_directory(
            self._require_pool(), self.require_core(), self._root_off, self.path
        )
        if not generation:
            return
        self._store_root_u64(layout.Root.DIRECTORY_GENERATION_OFFSET, generation)
        self._root.directory_generation = generation

    def _store_root_u64(self, offset: int, value: int) -> None:
        """Update one root field in place: one 8-byte store of the sealed value, persisted."""
        recovery.store_root_u64(self._require_pool(), self._root_off, offset, value)

    def _read_root(self) -> None:
        self._root_off, self._root = recovery.read_root(self._require_pool(), self.path)
        self._generation_at_open = self._root.directory_generation

    def _recover(self) -> int | None:
        """Viper's recovery (see :mod:`viperdbm._recovery`); the reserve's offset, if any."""
        pool = self._require_pool()
        core, objects = recovery.new_core(pool, self.path)
        self.core = core
        found = recovery.scan(
            pool,
            core,
            objects,
            self._root,
            path=self.path,
            generation_at_open=self._generation_at_open,
            writable=self.options.writable,
        )
        self.damage = found.damage
        if self.options.writable:
            # publish to readers from here on (before anything is freed: they may be
            # reading what the last writer left)
            self._attach_readers_file(core)
            self._held = HeldBlocks(pool, core)
        if self.options.writable and (core.discarded or found.freeable or found.unused):
            # freeing removes sequence numbers: everything left must be durable first, or a
            # later recovery would see a gap in the sequence and stop there
            self._sync_locked()
            recovery.free_leftovers(pool, found, self._require_held())
        return found.reserve_off

    def _attach_readers_file(self, core: _native.Core) -> None:
        """The writer publishes every write in the readers file (see native/shared.c)."""
        self._readers_fd = readers.open_for_writer(self.path)
        if self._readers_fd is None:
            return
        try:
            core.attach_writer(self._readers_fd, self._root.created_ns, self._root_off)
        except OSError as exc:  # (its pages are allocated first: a full disk says so here)
            self._close_readers_file()
            raise storedir.os_error(
                "cannot prepare the store's readers file", exc, self.path
            ) from exc
        except BaseException:
            self._close_readers_file()
            raise

    def _close_readers_file(self) -> None:
        fd, self._readers_fd = self._readers_fd, None
        if fd is not None:
            os.close(fd)

    def _let_go(self, *, lock: bool) -> _Handles:
        """Take the pool, the core and the readers file from this handle (and its lock, if
        ``lock``), to be closed: the handle holds none of them afterwards."""
        handles = _Handles(self._pool, self.core, self._readers_fd, self._lock_fd if lock else None)
        self._pool, self.core, self._readers_fd = None, None, None
        self._space, self._held = None, None
        if lock:
            self._lock_fd = None
        return handles

    def _require_held(self) -> HeldBlocks:
        if self._held is None:
            raise self.closed_error()
        return self._held

    def _choose_persist_mode(self) -> None:
        core = self.require_core()
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
            # each record written into its part file, then msynced (native/log.c says why)
            core.set_part_files(pool.writable_parts())
            self.persist_mode = "msync per write"
        else:
            core.set_persist(_native.PERSIST_NONE)
            self.persist_mode = "page cache; msync at sync() and close()"

    # ------------------------------------------------------------------ helpers
    def closed_error(self) -> ClosedError:
        """The error for a use of this handle after close (or after fork())."""
        if self._was_forked:
            return ClosedError(
                "the store was opened before fork(): this process must open it again",
                filename=self.path,
            )
        return ClosedError("DBM object has already been closed")

    def _require_pool(self) -> Pool:
        if self._pool is None:
            raise self.closed_error()
        return self._pool

    def require_core(self) -> _native.Core:
        """The index of the open store; ClosedError once it is closed."""
        if self.core is None:
            raise self.closed_error()
        return self.core

    def _require_space(self) -> Space:
        if self._space is None:
            if self.core is not None and not self.options.writable:
                raise ReadonlyError("the store was opened read-only", filename=self.path)
            raise self.closed_error()
        return self._space

    @property
    def _reserve_off(self) -> int | None:
        """The object holding space back for deletes on a full disk (see Space.new_block)."""
        return self._space.reserve_off if self._space is not None else None

    def _alloc(self, size: int, type_num: int, *, zero: bool) -> tuple[int, int]:
        """Allocate an object (a block is made by the core's constructor): its offset and
        usable size (see Space.alloc)."""
        return self._require_space().alloc(size, type_num, zero=zero)

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
            raise NOT_DURABLE(self.path, errno=core.io_errno)

    def _forked(self) -> None:
        if self.core is not None:
            self.core.invalidate(True)
        self.core = None
        self._was_forked = True
        self._pool = None  # the binding has poisoned the pool itself
        self._space = None
        self._held = None
        self._mapping = None  # the child's copy of the mapping goes with the child
        self._reader_slot = None  # the parent's slot: never give it back from here
        self._readers_fd = None
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

    def delete_if(self, key: bytes, expected: bytes) -> bool:
        """Delete ``key`` only while it holds ``expected``; False if it does not (or is
        missing). The compare and the delete are one core call, so a put of the key by
        another thread comes before both or after both."""
        with self._lock:
            code = self.require_core().delete(key, expected)
            return self.write_slow(code, key, None, expected)

    def write_slow(
        self,
        code: int,
        key: bytes | str,
        value: bytes | str | None,
        expected: bytes | None = None,
    ) -> bool:
        """The native core's one entry point for the slow path (native/map_type.c): a put
        (``value`` None: a delete, ``expected`` its condition) whose core call answered
        ``code``, a need, or that was done and raised the core's ``reclaim_due``. Meets the
        need and retries the write, then gives space back if that is due (see
        :mod:`viperdbm._writepath`); False for a delete of a missing key."""
        with self._lock:
            core = self.require_core()
            space = self._require_space()
            deferred = Deferred()
            try:
                if value is not None:
                    writepath.finish_put(space, code, key, value)
                    self._check_written(core)  # a jumbo record's msync (flag 's')
                    return True
                found = writepath.finish_delete(space, code, key, expected)
                self._check_written(core)  # a jumbo tombstone's msync (flag 's')
                if found and space.reserve_off is None:
                    # this store is living on the reserve: win space back while deleting
                    space.reclaim(urgent=True)
                return found
            finally:
                deferred.end()

    def write_batch(self, pairs: writepath.Pairs) -> None:
        """Write ``pairs`` (key, value; None deletes; keys unique) as one batch: after a
        crash at any instant the store holds all of them or none, and readers in other
        processes see them together. Under flag 's' one persist makes the batch durable."""
        with self._lock:
            core = self.require_core()
            self._require_writable()
            space = self._require_space()
            deferred = Deferred()
            try:
                if self._root.format_version != layout.BATCH_FORMAT_VERSION:
                    self._mark_batches()
                writepath.finish_batch(space, core.put_batch(pairs), pairs)
                self._check_written(core)
            finally:
                deferred.end()

    def _mark_batches(self) -> None:
        """Before the first batch: the root says so (BATCH_FORMAT_VERSION), so that a
        viperdbm that does not know batches refuses the store instead of reading one as
        damage. One aligned 4-byte store, persisted."""
        pool = self._require_pool()
        at = self._root_off + layout.Root.FORMAT_VERSION_OFFSET
        pool.write(at, layout.BATCH_FORMAT_VERSION.to_bytes(4, "little"))
        pool.persist(at, 4)
        self._root.format_version = layout.BATCH_FORMAT_VERSION

    # ------------------------------------------------------------------ maintenance
    def sync(self) -> None:
        """Make everything written so far power-fail durable (a no-op on tmpfs)."""
        with self._lock:
            self.require_core()
            if self.options.writable:
                deferred = Deferred()
                try:
                    self._sync_locked()
                    space = self._require_space()
                    space.free_dead_blocks()  # the ones that waited for this
                    space.held.release()  # and what readers have let go of since
                finally:
                    deferred.end()

    def _sync_locked(self) -> None:
        # 1. every dirty page of the pool to the disk; 2. the parts directory (growth adds
        # files); 3. only then the watermark that tells recovery all records up to here are
        # complete on disk (one 8-byte store in the root, persisted by libpmemobj).
        pool = self._require_pool()
        core = self.require_core()
        code = self._io_errno()
        if code:  # the pages an msync failed to write may be gone: a sync cannot vouch
            raise SYNC_REFUSED(self.path, errno=code)
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

    def reorganize(self, on_new_core: Callable[[_native.Core], None] | None = None) -> None:
        """Give the space of dead records back: where it can, by building a new pool with
        the live records only and swapping it in (:meth:`_rebuild`, the store then takes
        no more disk than its records need, as gdbm's reorganize() does), else in place
        (:meth:`_reorganize_in_place`). ``on_new_core`` is told the new core, under the
        store's lock, before the old one is closed (the dbm face's fast paths use it)."""
        self._require_writable()
        with self._lock:
            self._require_space()
            if self._reorganizing:
                raise REORGANIZE_REENTERED(self.path)
            try:
                # (set inside the try: a KeyboardInterrupt right after it must not leave it
                # set, or every later reorganize() would say it is already running)
                self._reorganizing = True
                rebuilt = self._rebuild(on_new_core)
            finally:
                self._reorganizing = False
            if not rebuilt:
                self._reorganize_in_place()

    def _rebuild(self, on_new_core: Callable[[_native.Core], None] | None) -> bool:
        """reorganize() into a new pool: every live record copied into a new store built
        beside this one (its lock held), made durable, then swapped in with one
        ``renameat2(RENAME_EXCHANGE)`` as flag 'n' swaps an empty one in; the old store is
        removed. A crash at any instant leaves the old or the new store at the path, each
        with every acknowledged write, and at most a hidden leftover that the next writer
        removes (:func:`viperdbm._opening.remove_leftovers`).

        False, with nothing changed, where it cannot: readers are attached (they map the
        old pool, and would be left reading it), the store is opened without a lock
        (flag 'u': there is no lock to hand over), the disk has no room for the copy, or
        the file system cannot swap two directories. Writes of other threads wait meanwhile
        (the core answers them NEED_WAIT); a Ctrl-C during the copy stops it, with the store
        as it was.
        """
        if not self.options.lock or readers.readers_attached(self.path):
            return False
        core = self.require_core()
        mode = stat.S_IMODE(os.stat(os.path.join(self.path, layout.SET_FILE)).st_mode)
        built = opening.rebuild_path(self.path)
        opening.remove_leftovers(self.path)  # (one whose removal failed earlier)
        deferred = Deferred()
        core.compact_begin()  # other threads' writes wait for the store's lock from here
        try:
            build = self._build_copy(core, built, mode, deferred)
            if build is None:
                return False
            new_dir = os.stat(built).st_ino
            failed: OSError | None = None
            try:
                # a reader that joined during the copy keeps the old store (it would be
                # left reading it); one that joins from here on opens the path again
                with readers.new_readers_barred(self.path):
                    old: str | None = storedir.publish(built, self.path, replace=True)
            except OSError as exc:
                if os.stat(self.path).st_ino != new_dir:  # not swapped: nothing changed
                    log.info("%s: reorganize() in place: %s", self.path, exc)
                    _abandon_build(build, built)
                    return False
                # swapped, but the directory's fsync failed: go on with the new store, keep
                # the old one (the next writer removes it) and say so
                failed, old = exc, None
            # The new store is at the path (its lock, moved with it, held by `build`), the
            # old one at `built`. This handle takes the new one: opened before the old is
            # closed, so that the fast paths of other threads always have an open core.
            new_lock, build._lock_fd = build._lock_fd, None
            build.path = self.path  # (its close writes the block directory: the new store's)
            build.close()
            swapped_out = self._let_go(lock=True)
            self._lock_fd = new_lock
            try:
                self._open_pool()
            except BaseException:
                # (the new store is complete at the path; this handle is closed)
                swapped_out.close()
                self._release_lock()
                _open_engines.discard(self)
                raise
            if on_new_core is not None:
                on_new_core(self.require_core())
            swapped_out.close()
            opening.finish_replace(self.path, old, mode)
            if failed is not None:
                raise storedir.os_error(
                    "reorganize(): cannot make the new store durable", failed, self.path
                )
            return True
        finally:
            if core.is_open:
                core.compact_end(True)
            deferred.end()

    def _build_copy(
        self, core: _native.Core, built: str, mode: int, deferred: Deferred
    ) -> Engine | None:
        """The new store of :meth:`_rebuild` at ``built``, every live record of ``core`` in
        it, durable, open (its lock held); None, with nothing left behind, where it cannot
        be made: no room for the copy, no right to make a directory beside the store, an I/O
        error in the copy."""
        build: Engine | None = None
        try:
            opening.build_new_store(built, mode, self.path)
            options = dataclasses.replace(
                self.options, create=False, truncate=False, sync_each_write=False
            )
            build = Engine(built, options, mode)
            _copy_records(core, build, deferred)
            build.sync()
            deferred.poll()  # the last point at which a Ctrl-C leaves the old store
            return build
        except OSError as exc:
            log.info("%s: reorganize() in place: %s", self.path, exc)
            _abandon_build(build, built)
            return None
        except BaseException:
            _abandon_build(build, built)
            raise

    def _reorganize_in_place(self) -> None:
        """Copy every live record forward, then free every older block.

        Crash-safe at every instant: the copies are complete before the root's sequence
        floor moves past the old records (one 8-byte store, persisted), and only then are
        the old blocks freed. Before the floor moves, recovery sees the copies as the newest
        versions; after, it ignores every old record, so no delete can come back.

        Interruptible between whole steps (each copies up to a block): a KeyboardInterrupt
        there, or a failure of a step (a full disk), ends it with the handle as it was
        (the records copied so far are simply their newest versions). On a full disk it
        first frees dead space block by block, so that a mostly dead store can be
        reorganized where there is no room for a copy of its live records. The pool keeps
        its size: freed blocks are reused, not given back to the file system.
        """
        space = self._require_space()
        deferred = Deferred()
        self._reorganizing = True
        try:
            try:
                space.copy_forward(deferred, self._raise_floor)
            except StoreFullError:
                # a full disk: win space back block by block, then try once more
                space.make_room(deferred)
                space.copy_forward(deferred, self._raise_floor)
        except StoreFullError as exc:
            raise REORGANIZE_DISK_FULL(self.path) from exc
        finally:
            self._reorganizing = False
            deferred.end()

    def _raise_floor(self, floor: int) -> None:
        """reorganize(): every live record has a copy newer than ``floor``. Make the copies
        durable, then the floor that makes the originals dead."""
        core = self.require_core()
        self._sync_locked()
        self._store_root_u64(layout.Root.SEQ_FLOOR_OFFSET, floor)
        self._root.seq_floor = floor
        core.set_floor(floor)

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            core = self.require_core()
            out: dict[str, int | float] = dict(core.stats())
            if self._mapping is not None:
                out["pool_bytes"] = self._mapping.length
            else:
                out["pool_bytes"] = self._require_pool().mapped_size()
            out["rebuild_seconds"] = self.rebuild_seconds
            if self._held is not None:
                self._held.release()
                out["readers"] = core.readers_horizon(True)[1]
                out["held_bytes"] = self._held.held_bytes
            return out

    def close(self) -> None:
        with self._lock:
            # deferred signals: a KeyboardInterrupt cannot leave the store half closed
            deferred = Deferred()
            try:
                if self._mapping is not None:
                    if self.core is not None:
                        self.core.invalidate()
                    self.core = None
                    mapping, self._mapping = self._mapping, None
                    mapping.unmap()
                    self._release_reader_slot()
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
                        # all of them: everything is durable now
                        space = self._require_space()
                        space.free_dead_blocks()
                        space.held.release()  # (those readers still hold stay allocated)
                        self._write_block_directory()
                finally:
                    if self.core is not None and self.core.io_errno:
                        # the core's msync failed (flag 's'), already raised: mark the pool
                        # too, so that its close() does not raise it once more
                        self._pool.mark_io_failed(self.core.io_errno)
                    _open_engines.discard(self)
                    self._let_go(lock=True).close()
            finally:
                deferred.end()

    @property
    def closed(self) -> bool:
        return self._pool is None and self._mapping is None
