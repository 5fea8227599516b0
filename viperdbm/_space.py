"""Space management of a writable store: blocks, the reserve, freeing and compaction.

Blocks are allocated from libpmemobj's heap (:meth:`Space.alloc`) and handed to the native
core (:meth:`Space.adopt`); a block holding nothing needed any more is freed once that is
safe (:meth:`Space.free_dead_blocks`); Viper's reclamation copies the live records out of
mostly dead blocks (:meth:`Space.reclaim`); :meth:`Space.copy_forward` is the body of
``reorganize()``. One block's worth of space is kept in reserve so that deletes and
compaction still work on a full disk (:meth:`Space.new_block`).

The caller (the engine) holds its lock and defers signals around every call here (see the
engine's slow paths for the two rules that keep the handle consistent).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
from collections.abc import Callable
from typing import TypeVar

from . import _layout as layout
from . import _native
from ._errors import StoreFullError, error
from ._pmemobj import PMEMOBJ_PERSIST_ADDRESS, Pool
from ._signals import Deferred

_T = TypeVar("_T")

#: bytes of dead blocks that may wait for the next sync() before freeing forces one (see
#: Space.free_dead_blocks)
_FREE_AFTER_SYNC_BYTES = 32 << 20

#: the object types the native block constructor makes (Space.alloc)
_CONSTRUCTED = frozenset({layout.TYPE_STANDARD_BLOCK, layout.TYPE_JUMBO_BLOCK, layout.TYPE_RESERVE})


def tune_growth(pool: Pool) -> None:
    """libpmemobj adds a part file of this size when the heap is full; a sixteenth of the
    pool keeps the unused tail of the last part small (and the part count low)."""
    size = max(8 << 20, min(1 << 30, pool.mapped_size() // 16))
    pool.set_heap_granularity(size & ~((1 << 20) - 1))


class Space:
    """The space of one open writable store.

    ``root`` is the engine's copy of the root's fields (its ``durable_seq`` says whether
    dead blocks may be freed without a sync); ``sync`` makes everything written so far
    durable and moves that watermark (the engine's sync, lock already held)."""

    def __init__(
        self,
        pool: Pool,
        core: _native.Core,
        root: layout.Root,
        *,
        path: str,
        sync: Callable[[], None],
        reserve_off: int | None,
    ) -> None:
        self.pool = pool
        self.core = core
        self.path = path
        self._root = root
        self._sync = sync
        #: the object holding space back for deletes on a full disk (see new_block)
        self.reserve_off = reserve_off

    # ------------------------------------------------------------------ allocating
    def alloc(self, size: int, type_num: int, *, zero: bool) -> tuple[int, int]:
        pool = self.pool
        if type_num not in _CONSTRUCTED:
            off = pool.alloc(size, type_num, zero=zero)
        else:
            # The core's constructor writes the header (with the block's birth, the next
            # sequence number) inside pmemobj_alloc, before the allocation is published: a
            # crash leaves no block, or one whose header is this life's. Whatever the space
            # held before (a freed block's header and records) is never read as a block.
            init = ctypes.create_string_buffer(
                self.core.block_init(type_num, size, PMEMOBJ_PERSIST_ADDRESS, zero)
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
        self.core.set_mapped(pool.mapped_size())
        tune_growth(pool)
        return off, usable

    def adopt(self, off: int, register: Callable[..., _T], *args: int | bytes) -> _T:
        """Hand a block just allocated to the core; free it again if the core refuses it.

        The core raises before it registers a block (bounds, size, memory), never after, so
        a block it raised for is not in its registry and is freed here. Only for an
        Exception: a KeyboardInterrupt here (where signals could not be deferred) may
        arrive after the core registered the block, which must then stay allocated."""
        try:
            return register(*args)
        except Exception:
            self.pool.free(off)
            raise

    def new_block(self, *, may_use_reserve: bool = False) -> None:
        """Give the core a new active block.

        A writable store keeps one block's worth of space in reserve (an object of type
        TYPE_RESERVE), so that deletes and compaction still work on a full disk: they
        give the reserve back to the allocator and take a block from it. Puts never do:
        while the reserve is gone the core refuses them (RC_NO_RESERVE) until it can be set
        aside again, so the block made of it is left to deletes and a full disk stops puts
        first."""
        size = layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER
        core = self.core
        try:
            # not zeroed by libpmemobj (which would msync it): the core zeroes the log itself
            off, usable = self.alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
        except StoreFullError:
            # dead blocks may be waiting for a sync to be freed: free them first
            self.free_dead_now()
            try:
                off, usable = self.alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
            except StoreFullError:
                if not may_use_reserve or self.reserve_off is None:
                    raise
                reserve = self.reserve_off
                self._set_reserve(None)  # forgotten (and puts refused) before it is freed
                self.pool.free(reserve)
                off, usable = self.alloc(size, layout.TYPE_STANDARD_BLOCK, zero=False)
        if self.adopt(off, core.add_block, off, usable) == _native.RC_FREEABLE:
            self.free_dead_blocks()
        if not may_use_reserve:
            self.keep_reserve()

    def full(self, what: str, cause: StoreFullError, *, deletes_work: bool) -> StoreFullError:
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

    # ------------------------------------------------------------------ the reserve
    def _set_reserve(self, off: int | None) -> None:
        # the core refuses puts exactly while there is no reserve
        self.reserve_off = off
        self.core.set_puts_refused(off is None)

    def keep_reserve(self) -> None:
        if self.reserve_off is None:
            size = layout.BLOCK_SIZE - layout.PMEMOBJ_OBJECT_HEADER
            with contextlib.suppress(StoreFullError):
                off, _ = self.alloc(size, layout.TYPE_RESERVE, zero=False)
                self._set_reserve(off)
        # (also right after an open that found no reserve and could not make one)
        self.core.set_puts_refused(self.reserve_off is None)

    def take_back_reserve(self) -> None:
        """A put while the reserve is gone: set it aside again first, or refuse the put."""
        self.reclaim(urgent=True)  # frees what is dead, copies out half-dead blocks
        if self.reserve_off is None:
            raise StoreFullError(
                "the disk is full: the put was not written (the space the store keeps for "
                "deletes is in use by deletes and cannot be set aside again)",
                filename=self.path,
                hint="free disk space and retry; every earlier write is intact, and reads "
                "and deletes still work",
            )

    # ------------------------------------------------------------------ giving space back
    def reclaim(self, *, urgent: bool = False) -> None:
        """Viper's reclamation, inline: free dead blocks, and when dead space passes two thirds
        of the store, copy the live records out of the blocks with the most dead space (at
        least half dead; at most two per call, so no single write waits long) and free those
        blocks once a sync makes that safe.

        ``urgent`` (the reserve is gone: the disk is full): sync to free dead blocks at once,
        compact any block at least half dead, then try to set the reserve aside again. A
        compaction that finds no space stops; it resumes at a later call."""
        core = self.core
        urgent = urgent or self.reserve_off is None
        free = self.free_dead_now if urgent else self.free_dead_blocks
        free()
        for _ in range(2):
            victim = core.compaction_victim(urgent)
            if victim is None:
                break
            rc = core.compact_block(victim)
            while rc == _native.RC_NEED_BLOCK:
                try:
                    self.new_block(may_use_reserve=True)
                except StoreFullError:
                    break  # no room to copy into: the block stays as it is, nothing is lost
                rc = core.compact_block(victim)
            if rc != _native.RC_OK:
                break
            free()
        if self.reserve_off is None:
            self.keep_reserve()

    def free_dead_now(self) -> None:
        """Free every dead block now, syncing first if they wait for that (a full disk)."""
        core = self.core
        if core.freeable():
            if self._root.durable_seq != core.next_seq - 1:
                self._sync()
            self.free_dead_blocks()

    def free_dead_blocks(self) -> None:
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
        core = self.core
        dead = core.freeable()
        if not dead:
            return
        if self._root.durable_seq != core.next_seq - 1:
            if sum(size for _, _, size in dead) < _FREE_AFTER_SYNC_BYTES:
                return
            self._sync()
        pool = self.pool
        for off, _, _ in dead:
            # forget, then free: stopped in between (a failed free, or a signal where it
            # is not deferred) the block is only leaked until the next open, never freed
            # while the core still appends to or reads it
            core.drop_block(off)
            pool.free(off)  # atomic in libpmemobj; a crash here leaves only a dead block

    # ------------------------------------------------------------------ reorganize
    def copy_forward(self, deferred: Deferred, raise_floor: Callable[[int], None]) -> None:
        """The body of reorganize(): copy every live record forward, then free every older
        block. ``raise_floor`` makes the copies durable, then the new sequence floor."""
        core = self.core
        pool = self.pool
        self.free_dead_now()  # room for the copies
        done = False
        try:
            floor = core.compact_begin()
            rc, size = core.compact_step()
            while rc != _native.RC_OK:
                deferred.poll()  # between two whole steps: Ctrl-C stops here
                if rc == _native.RC_NEED_BLOCK:
                    self.new_block()
                    rc, size = core.compact_step()
                elif rc == _native.RC_NEED_JUMBO:
                    off, usable = self.alloc(size, layout.TYPE_JUMBO_BLOCK, zero=False)
                    rc, size = self.adopt(off, core.compact_step, off, usable)
                else:  # pragma: no cover
                    raise error(f"unexpected return code {rc} from the native core")
            # every live record now has a copy newer than floor: make the copies
            # durable before the floor that makes the originals dead
            raise_floor(floor)
            done = True
            for off in core.old_blocks():
                core.drop_block(off)  # (forget, then free: see free_dead_blocks)
                pool.free(off)
        finally:
            core.compact_end(not done)
        self.keep_reserve()

    def make_room(self, deferred: Deferred) -> None:
        """A full disk: free the dead blocks, then copy the live records out of every block
        that is at least half dead, one block at a time, freeing each right after (a sync
        makes that safe). Each block is a whole step: signals are delivered between two."""
        core = self.core
        try:
            self.free_dead_now()
            while True:
                deferred.poll()
                victim = core.compaction_victim(True)
                if victim is None:
                    break
                rc = core.compact_block(victim)
                while rc == _native.RC_NEED_BLOCK:
                    self.new_block(may_use_reserve=True)
                    rc = core.compact_block(victim)
                self.free_dead_now()
        finally:
            self.keep_reserve()  # (the copies may have used it)
