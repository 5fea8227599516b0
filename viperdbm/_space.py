"""Space management of a writable store: blocks, the reserve, freeing and compaction.

Blocks are allocated from libpmemobj's heap (:meth:`Space.alloc`) and handed to the native
core (:meth:`Space.adopt`); a block holding nothing needed any more is freed once that is
safe (:meth:`Space.free_dead_blocks`); Viper's reclamation copies the live records out of
mostly dead blocks (:meth:`Space.reclaim`, by the policy :data:`RECLAIM`);
:meth:`Space.copy_forward` is the body of ``reorganize()``. One block's worth of space is
kept in reserve so that deletes and compaction still work on a full disk
(:meth:`Space.new_block`). What the core needs while it copies is met by the write path's
one dispatcher (:func:`viperdbm._writepath.meet_needs`).

The caller (the engine) holds its lock and defers signals around every call here (see the
engine's slow paths for the two rules that keep the handle consistent).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import _layout as layout
from . import _native
from . import _storedir as storedir
from ._errors import PUT_RESERVE_IN_USE, StoreFullError
from ._pmemobj import PMEMOBJ_PERSIST_ADDRESS, Pool
from ._signals import Deferred
from ._writepath import Write, meet_needs

_T = TypeVar("_T")


@dataclass(frozen=True)
class ReclaimPolicy:
    """Viper's reclamation, inline with the writes: every number of it, and why, here.

    The core gets the thresholds at open (:meth:`hand_to`) and only counts dead bytes and
    checks them cheaply after a write, raising ``reclaim_due``; the pacing is
    :meth:`Space.reclaim`'s and :meth:`Space.free_dead_blocks`'."""

    #: writes between two checks of the dead space by the core (a power of two: the check
    #: walks every block, too much for each write)
    check_every: int = 4096
    #: never compact for less dead space than two blocks
    min_dead: int = 8 << 20
    #: nor before dead space is this fraction of all block space (the store then holds at
    #: most three times its live data): compacting earlier made a workload that deletes half
    #: the keys pay for copying the other half, at every check
    store_dead: tuple[int, int] = (2, 3)
    #: a block is compacted only when at least this fraction of it is dead (copying it
    #: would cost more than it frees); on a full disk this is the only condition
    block_dead: tuple[int, int] = (1, 2)
    #: deletes kept in blocks from which, once they outnumber the live records, the oldest
    #: block is compacted first (native/compaction.c says why: a delete stays while any
    #: older block does); fewer are not worth a pass over the store
    min_tombstones: int = 65536
    #: blocks compacted at most per call of Space.reclaim, so that no single write waits long
    victims_per_call: int = 2
    #: bytes of dead blocks that may wait for the next sync() before freeing forces one (on
    #: an ordinary file a sync costs an msync of every dirty page, too much for each block)
    free_after_sync: int = 32 << 20

    def hand_to(self, core: _native.Core) -> None:
        """Give the core the thresholds it checks (a writable store, at open)."""
        core.set_reclaim_policy(
            self.check_every, self.min_dead, *self.store_dead, *self.block_dead, self.min_tombstones
        )


#: the reclamation policy of every writable store
RECLAIM = ReclaimPolicy()

#: the object types the native block constructor makes (Space.alloc)
_CONSTRUCTED = frozenset({layout.TYPE_STANDARD_BLOCK, layout.TYPE_JUMBO_BLOCK, layout.TYPE_RESERVE})
#: the object types that are blocks (each has an entry in the readers file)
_BLOCKS = frozenset({layout.TYPE_STANDARD_BLOCK, layout.TYPE_JUMBO_BLOCK})


def growth_step(pool: Pool) -> int:
    """The size of the part file the pool grows by next: a sixteenth of the pool keeps the
    unused tail of the last part small (and the part count low)."""
    return max(8 << 20, min(1 << 30, pool.mapped_size() // 16)) & ~((1 << 20) - 1)


def tune_growth(pool: Pool) -> None:
    """libpmemobj adds a part file of :func:`growth_step` bytes when the heap is full."""
    pool.set_heap_granularity(growth_step(pool))


#: a pool smaller than this grows only when an allocation needs it (see Space.grow_ahead):
#: a store of a few records keeps its two parts
GROW_AHEAD_FROM = 32 << 20


class HeldBlocks:
    """Blocks the engine has freed that readers in other processes may still be reading.

    A freed block is retired in the ``readers`` file at once (native/shared.c) and given back
    to libpmemobj once every live reader has caught up past its retirement; with no reader
    attached that is at once. Meanwhile it stays on the media and in the core's registry, so
    that recovery and compaction see it as what it is: still there. Oldest first, never out of
    order: a delete in a block retired later may hide a put in one retired earlier, for
    recovery as for readers.
    """

    def __init__(self, pool: Pool, core: _native.Core) -> None:
        self.pool = pool
        self.core = core
        #: (the commit it was retired at, offset, size), oldest first
        self._held: deque[tuple[int, int, int]] = deque()

    @property
    def held_bytes(self) -> int:
        return sum(size for _, _, size in self._held)

    def free(self, blocks: list[tuple[int, int]]) -> None:
        """Free these blocks, given as (offset, size), together: once readers allow."""
        if not blocks:
            return
        commit = self.core.retire_blocks([off for off, _ in blocks])
        self._held.extend((commit, off, size) for off, size in blocks)
        self.release()

    def release(self) -> None:
        """Give back every held block that no reader can read any more."""
        if not self._held:
            return
        horizon, _ = self.core.readers_horizon(False)
        if horizon is not None and horizon < self._held[0][0]:
            # held back: look whether the readers holding it are still alive (a system
            # call per reader, so only here)
            horizon, _ = self.core.readers_horizon(True)
        held, core, pool = self._held, self.core, self.pool
        while held and (horizon is None or held[0][0] <= horizon):
            _, off, _ = held.popleft()
            # forget, then free: stopped in between (a failed free, or a signal where it is
            # not deferred) the block is only leaked until the next open, never freed while
            # the core or a reader still reads it
            core.drop_block(off)
            pool.free(off)  # atomic in libpmemobj; a crash here leaves only a dead block


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
        held: HeldBlocks,
    ) -> None:
        self.pool = pool
        self.core = core
        #: freed blocks that readers may still read
        self.held = held
        self.path = path
        self._root = root
        self._sync = sync
        #: the object holding space back for deletes on a full disk (see new_block)
        self.reserve_off = reserve_off

    # ------------------------------------------------------------------ allocating
    def alloc(self, size: int, type_num: int, *, zero: bool) -> tuple[int, int]:
        pool = self.pool
        if type_num in _BLOCKS:
            # its entry in the readers file must not land in a hole on a full disk (a store
            # through the mapping would be a SIGBUS): the file system is asked first
            try:
                self.core.readers_room()
            except OSError as exc:
                raise storedir.os_error(
                    "cannot grow the store's readers file", exc, self.path
                ) from exc
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
        self._note_pool_size()
        if type_num in _BLOCKS:
            try:
                self.grow_ahead(off + usable)
            except Exception:  # an I/O error: the block was not handed to the core yet
                pool.free(off)
                raise
        return off, usable

    def _note_pool_size(self) -> None:
        """After a call that may have grown the pool: the core's bound for offsets, its part
        files (flag 's'), and the size of the next growth."""
        pool = self.pool
        self.core.set_mapped(pool.mapped_size())
        if pool.has_part_writers:  # (flag 's') the core writes records into the new part too
            self.core.set_part_files(pool.writable_parts())
        tune_growth(pool)

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
        while the reserve is gone the core refuses them (NEED_RESERVE) until it can be set
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
        self.adopt(off, core.add_block, off, usable)
        if core.reclaim_due:  # the block it replaced is entirely dead
            core.reclaim_due = False
            self.free_dead_blocks()
        if not may_use_reserve:
            self.keep_reserve()

    def grow_ahead(self, block_end: int) -> None:
        """Grow the pool now if the next block will not fit after the one just allocated.

        The put that adds a block pays for its pages: the block's constructor zeroes its
        log, and a first store into a page of a new part is a page fault the file system
        handles page by page. The core faults the space after the last block in ahead of
        need (native/log.c, fault_ahead_start), where libpmemobj puts the next block while
        the pool grows; a part added here lets that space be in a part already. A block
        lands at the end of the heap only if no freed space fitted it, so growing here is
        at most about one block early. Refused growth (a full disk) is no error here: the
        allocation that needs the space reports it, as it did before."""
        pool = self.pool
        mapped = pool.mapped_size()
        ends = [block_end]
        if self.reserve_off is not None:
            ends.append(self.reserve_off + layout.BLOCK_SIZE)
        if mapped < GROW_AHEAD_FROM or mapped - max(ends) >= 2 * layout.BLOCK_SIZE:
            return
        with contextlib.suppress(StoreFullError):
            pool.extend(growth_step(pool))
        _native.crash_point("pool grown ahead")
        self._note_pool_size()

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
            raise PUT_RESERVE_IN_USE(self.path)

    # ------------------------------------------------------------------ giving space back
    def reclaim(self, *, urgent: bool = False) -> None:
        """Viper's reclamation, inline (the policy: RECLAIM): free dead blocks, and when dead
        space passes its threshold, copy the live records out of the blocks with the most dead
        space (a few per call) and free those blocks once a sync makes that safe. Clears the
        core's reclaim_due.

        ``urgent`` (the reserve is gone: the disk is full): sync to free dead blocks at once,
        compact any block dead enough, then try to set the reserve aside again. A compaction
        that finds no space stops; it resumes at a later call."""
        core = self.core
        core.reclaim_due = False
        self.held.release()  # readers may have caught up since
        urgent = urgent or self.reserve_off is None
        free = self.free_dead_now if urgent else self.free_dead_blocks
        free()
        for _ in range(RECLAIM.victims_per_call):
            victim = core.compaction_victim(urgent)
            if victim is None:
                break
            try:
                self._compact(victim)
            except StoreFullError:
                break  # no room to copy into: the block stays as it is, nothing is lost
            free()
        if self.reserve_off is None:
            self.keep_reserve()

    def _compact(self, victim: int) -> None:
        """Copy what is still needed out of the block ``victim`` (it can be freed then)."""
        core = self.core
        write = Write(retry=lambda: core.compact_block(victim), use_reserve=True)
        meet_needs(self, core.compact_block(victim), write)

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
        sync(), so dead blocks wait for the next sync(); once RECLAIM.free_after_sync bytes
        of them wait, this syncs itself.
        """
        core = self.core
        dead = core.freeable()
        if not dead:
            return
        if self._root.durable_seq != core.next_seq - 1:
            if sum(size for _, _, size in dead) < RECLAIM.free_after_sync:
                return
            self._sync()
        self.held.free([(off, size) for off, _, size in dead])

    # ------------------------------------------------------------------ reorganize
    def copy_forward(self, deferred: Deferred, raise_floor: Callable[[int], None]) -> None:
        """The body of reorganize(): copy every live record forward, then free every older
        block. ``raise_floor`` makes the copies durable, then the new sequence floor."""
        core = self.core
        self.free_dead_now()  # room for the copies
        done = False
        try:
            floor = core.compact_begin()
            meet_needs(
                self,
                core.compact_step(),
                Write(
                    retry=core.compact_step,
                    # (no other write runs during reorganize(): they wait, so the need is ours)
                    jumbo_bytes=lambda: core.jumbo_need,
                    into_jumbo=core.compact_step,
                    between=deferred.poll,  # between two whole steps: Ctrl-C stops here
                ),
            )
            # every live record now has a copy newer than floor: make the copies
            # durable before the floor that makes the originals dead
            raise_floor(floor)
            done = True
            sizes = {off: size for off, size, _ in core.blocks()}
            self.held.free([(off, sizes[off]) for off in core.old_blocks()])
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
                self._compact(victim)
                self.free_dead_now()
        finally:
            self.keep_reserve()  # (the copies may have used it)
