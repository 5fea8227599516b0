"""Recovery at open: the root object, and Viper's scan of every block into the DRAM index.

The index is volatile: each writable or exclusive open rebuilds it by scanning every block
(:func:`scan`), newest record of each key wins. What the scan finds that is no longer needed
(a block allocated just before a crash, a second reserve, dead blocks) is freed by
:func:`free_leftovers`, once the caller has made everything that remains durable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _layout as layout
from . import _native
from ._errors import CorruptedError, NotAStoreError, VersionMismatchError
from ._pmemobj import Pool

if TYPE_CHECKING:
    from ._space import HeldBlocks

log = logging.getLogger("viperdbm")


@dataclass
class Recovered:
    """What :func:`scan` found besides the index it built."""

    #: the object holding space back for deletes on a full disk, if the pool has one
    reserve_off: int | None
    #: objects to free: allocated but never used, or a second reserve
    unused: list[int]
    #: blocks that hold nothing needed any more
    freeable: list[int]
    #: (block offset, offset of the first unreadable byte) for each damaged block log
    damage: list[tuple[int, int]]


def read_root(pool: Pool, path: str) -> tuple[int, layout.Root]:
    """The root object's offset and fields; a store error if it is not a viperdbm root."""
    if pool.root_size() < layout.ROOT_OBJECT_SIZE:
        raise CorruptedError("the store has no root object", filename=path)
    root_off = pool.root(layout.ROOT_OBJECT_SIZE)
    try:
        root = layout.Root.unpack(pool.read(root_off, layout.Root.SIZE))
    except ValueError as exc:
        raise CorruptedError(f"the store's root object is damaged: {exc}", filename=path) from exc
    if root.magic != layout.ROOT_MAGIC:
        raise NotAStoreError("the pool is not a viperdbm store (bad root magic)", filename=path)
    require_known_version(root, path)
    return root_off, root


def require_known_version(root: layout.Root, path: str) -> None:
    """VersionMismatchError for a root whose format this viperdbm does not read (every
    open checks it: the writer's, and a reader's that maps the parts itself)."""
    if root.format_version not in layout.ROOT_FORMAT_VERSIONS:
        raise VersionMismatchError(
            f"the store has format version {root.format_version}; this viperdbm reads "
            f"versions {' and '.join(map(str, layout.ROOT_FORMAT_VERSIONS))}",
            filename=path,
            hint="open it with the viperdbm version that wrote it and 'dump' it",
        )


def store_root_u64(pool: Pool, root_off: int, offset: int, value: int) -> None:
    """Update one root field in place: one 8-byte store of the sealed value, persisted."""
    pool.write(root_off + offset, layout.seal(value).to_bytes(8, "little"))
    pool.persist(root_off + offset, 8)


def new_core(pool: Pool, path: str) -> tuple[_native.Core, list[tuple[int, int, int]]]:
    """An empty index over the pool's mapping, and the pool's objects to scan into it."""
    objects = pool.objects()
    mapped = pool.mapped_size()
    for off, _, size in objects:
        if off + size > mapped:  # libpmemobj's own object header is damaged
            raise CorruptedError(
                f"the pool lists an object at offset {off} of {size} bytes, past its end",
                filename=path,
            )
    log_bytes = sum(size for _, type_num, size in objects)
    # the reservation bounds every offset: the index's slots give the rest to the key's tag
    hint = min(log_bytes, mapped) // 128
    return _native.Core(pool.base, mapped, hint, pool.reservation), objects


def scan(
    pool: Pool,
    core: _native.Core,
    objects: list[tuple[int, int, int]],
    root: layout.Root,
    *,
    path: str,
    generation_at_open: int,
    writable: bool,
) -> Recovered:
    """Viper's recovery: scan every block, newest record of each key wins."""
    # a failed msync inside libpmemobj makes the core refuse writes too (fast paths)
    pool.on_io_failure = core.set_io_error
    if pool.io_errno:
        core.set_io_error(pool.io_errno)
    core.set_floor(root.seq_floor)
    core.set_durable(root.durable_seq)
    types = block_types(core, objects, path)
    check_against_block_directory(path, generation_at_open, objects, types)
    reserve_off: int | None = None
    unused: list[int] = []
    blocks: list[tuple[int, int, int]] = []
    for off, _, usable in objects:
        type_num = types[off]
        if type_num:
            blocks.append((off, usable, type_num))
        elif reserve_off is None:  # the reserve (it holds no block header)
            reserve_off = off
        else:
            unused.append(off)  # (a second one: a crash while replacing it)
    # every block at once: the core scans them in threads, without the GIL
    for (off, _, _), (status, _records, _damaged_at) in zip(
        blocks, core.scan_blocks(blocks), strict=True
    ):
        if status == 1:
            unused.append(off)  # allocated, then the process died before its first record
        elif status == 2:
            log.warning(
                "%s: the header of the block at offset %d is damaged; its records were "
                "recovered without it",
                path,
                off,
            )
    # damage is read before finish_recovery() zeroes the torn tail of the resumed block
    damage = core.damage()
    for block, at in damage:
        log.warning(
            "%s: the log of the block at offset %d ends in unreadable bytes at offset %d; "
            "records after that point in the block (if any) are lost",
            path,
            block,
            at,
        )
    freeable = core.finish_recovery(writable)
    if core.discarded:
        log.warning(
            "%s: %d records written after the last sync() were not all on disk (the "
            "machine lost power?); the store was rolled back to the last complete prefix "
            "of its writes",
            path,
            core.discarded,
        )
    return Recovered(reserve_off, unused, freeable, damage)


def free_leftovers(pool: Pool, found: Recovered, held: HeldBlocks) -> None:
    """Free what the scan found unneeded. Freeing removes sequence numbers: the caller has
    made everything left durable first, or a later recovery would see a gap in the
    sequence and stop there. Dead blocks go through ``held``: readers that were reading
    what the last writer left may still read them."""
    for off in found.unused:  # never published to a reader (no valid header)
        pool.free(off)
        _native.crash_point("recovery: unused object freed")
    if found.freeable:
        sizes = {off: size for off, size, _ in held.core.blocks()}
        held.free([(off, sizes[off]) for off in found.freeable])
        _native.crash_point("recovery: dead blocks freed")


def block_types(
    core: _native.Core, objects: list[tuple[int, int, int]], path: str
) -> dict[int, int]:
    """The type each object is read as: a block's own type number, or 0 for the reserve.

    The reserve's constructor zeroes the first bytes of the object, so an object typed
    as the reserve that holds a valid block header with a birth is a block whose type
    number was damaged: it is read as the block its header describes, never freed
    unread. (A header without a birth may be a previous life's in a reserve that an
    older writer allocated without the constructor: the reserve, unless the ``blocks``
    file says otherwise, see :func:`check_against_block_directory`.)"""
    types: dict[int, int] = {}
    for off, type_num, usable in objects:
        if type_num == layout.TYPE_RESERVE:
            header = core.block_header(off, usable)
            types[off] = header[0] if header is not None and header[1] > 0 else 0
            if types[off]:
                log.warning(
                    "%s: the object at offset %d is typed as the reserve but holds a block "
                    "header (a damaged type number); it is read as a block",
                    path,
                    off,
                )
            continue
        if type_num not in (layout.TYPE_STANDARD_BLOCK, layout.TYPE_JUMBO_BLOCK):
            raise CorruptedError(
                f"the pool holds an object of unknown type {type_num}", filename=path
            )
        types[off] = type_num
    return types


def check_against_block_directory(
    path: str,
    generation_at_open: int,
    objects: list[tuple[int, int, int]],
    types: dict[int, int],
) -> None:
    """A block the last close listed must still be in the pool's heap, of the same type.

    The heap is libpmemobj's: damage to an object's header there would make a block,
    and every record in it, silently disappear from the iteration, or turn it into the
    reserve, which a writable open frees. While the blocks file is current (the last
    writer closed and nothing wrote since: ``generation_at_open``, the generation the root
    held when this open read it), compare. ``types``: the type each object is read as (0:
    the reserve, see :func:`block_types`)."""
    if not generation_at_open:
        return
    try:
        with open(os.path.join(path, layout.BLOCKS_FILE), "rb") as f:
            directory = layout.BlockDirectory.unpack(f.read(), _native.crc32c)
    except (OSError, ValueError):
        return
    if directory.generation != generation_at_open:
        return
    present = {off for off, _, _ in objects}
    missing = [off for off, _, _ in directory.blocks if off not in present]
    if missing:
        raise CorruptedError(
            f"{len(missing)} block(s) that the last close recorded are missing from the "
            f"pool's heap (first at offset {missing[0]})",
            filename=path,
        )
    names = {
        0: "the reserve",
        layout.TYPE_STANDARD_BLOCK: "a standard block",
        layout.TYPE_JUMBO_BLOCK: "a jumbo block",
    }
    for off, _, type_num in directory.blocks:
        if types[off] != type_num:
            raise CorruptedError(
                f"the block at offset {off} was {names.get(type_num, f'of type {type_num}')} "
                f"at the last close, but the pool's heap now makes it "
                f"{names.get(types[off], 'something else')} (a damaged object header)",
                filename=path,
            )
