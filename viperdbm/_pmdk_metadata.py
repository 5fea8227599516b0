"""libpmemobj's own metadata in a pool, checked before libpmemobj reads it.

``pmemobj_open()`` replays the logs of the pool's lanes and walks the heap's chunk headers
trusting the values it finds: a damaged chunk header of size 0 makes the heap walk loop
forever (PMDK 1.12.1, ``heap.c``: ``heap_reclaim_zone_garbage`` advances by the header's
``size_idx``), and a damaged log header sends the log walk through garbage or round a
cycle (``ulog.c``: ``ulog_foreach_entry`` follows ``capacity`` and ``next``). Such a pool
would hang or crash the process instead of failing. This module reads the same structures
from the part files first, bounds-checked, and names the damage so the store can refuse to
open with an error.

Only what viperdbm's pools always look like is accepted; the layout constants are
PMDK 1.12.1's (``obj.h``, ``lane.h``, ``ulog.h``, ``heap_layout.h``):

* the pool descriptor, right after the 4 KiB pool header: ``lanes_offset``, ``nlanes``,
  ``heap_offset`` at 5120/5128/5136 (checksummed: libpmemobj verifies them itself) and the
  persistent ``heap_size`` at 6176;
* each lane is 3072 bytes: three logs (internal redo 192 bytes, external redo 640, undo
  2048), each behind a 64-byte header ``checksum, next, capacity, gen_num, flags,
  unused[3]``. viperdbm never runs transactions, so no log is ever extended: ``next`` is 0,
  ``capacity`` at most the fixed size (libpmemobj sets it to 0 in a log it has used) and
  ``unused`` is zero in every lane of a healthy pool;
* the heap: a 1024-byte header (signature ``MEMORY_HEAP_HDR``, chunk size 256 KiB, 65528
  chunks per zone), then zones of up to 65528 chunks, each behind a 64-byte zone header and
  65528 eight-byte chunk headers ``type:16, flags:16, size_idx:32``. Walking a zone from
  chunk 0 by ``size_idx`` must land exactly on its end, on headers of a known type; a run
  chunk starts with its block size (never 0).

The heap is only checked when no lane holds a redo log waiting to be replayed (a crash in
the middle of an allocation or a free): until libpmemobj replays it, the chunk headers may
be half updated, which is not damage.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

POOL_DESCRIPTOR = 4096
LANES_OFFSET_AT = POOL_DESCRIPTOR + 1024
HEAP_SIZE_AT = POOL_DESCRIPTOR + 2080

LANE_SIZE = 3072
ULOG_HEADER = 64
#: (offset in the lane, capacity) of its internal redo, external redo and undo logs
LANE_LOGS = ((0, 192), (256, 640), (960, 2048))

HEAP_HEADER_SIZE = 1024
HEAP_SIGNATURE = b"MEMORY_HEAP_HDR\x00"
CHUNK_SIZE = 256 << 10
MAX_CHUNK = 65535 - 7
ZONE_HEADER_SIZE = 64
ZONE_METADATA_SIZE = ZONE_HEADER_SIZE + 8 * MAX_CHUNK
ZONE_MAX_SIZE = ZONE_METADATA_SIZE + CHUNK_SIZE * MAX_CHUNK
ZONE_MIN_SIZE = ZONE_METADATA_SIZE + CHUNK_SIZE
ZONE_MAGIC = 0xC3F0A2D2

CHUNK_FOOTER, CHUNK_FREE, CHUNK_USED, CHUNK_RUN, CHUNK_RUN_DATA = 1, 2, 3, 4, 5
CHUNK_FLAGS_VALID = 0x000F
CHUNK_FLAG_COMPACT_HEADER, CHUNK_FLAG_HEADER_NONE = 0x0001, 0x0002
CHUNK_FLAG_ALIGNED, CHUNK_FLAG_FLEX_BITMAP = 0x0004, 0x0008
RUN_CONTENT_SIZE = CHUNK_SIZE - 16


class _Image:
    """The part files mapped read-only, addressed by pool offset as libpmemobj maps them."""

    def __init__(self, parts: list[tuple[str, int]]) -> None:
        self._maps: list[tuple[int, int, mmap.mmap]] = []
        start = 0
        for path, size in parts:
            if size <= 0:
                break
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                mapped = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            self._maps.append((start, size, mapped))
            start += size
        self.size = start

    def close(self) -> None:
        for _, _, mapped in self._maps:
            # a view still alive (in an exception's frame) keeps it mapped until it goes
            with contextlib.suppress(BufferError):
                mapped.close()
        self._maps = []

    def read(self, offset: int, length: int) -> bytes | None:
        """``length`` bytes at pool offset ``offset``; None past the mapped parts."""
        if offset < 0 or length < 0 or offset + length > self.size:
            return None
        out = bytearray()
        for start, size, mapped in self._maps:
            if offset < start + size and offset + length > start:
                lo = max(offset, start) - start
                hi = min(offset + length, start + size) - start
                out += mapped[lo:hi]
        return bytes(out)

    @contextmanager
    def words(self, offset: int, count: int) -> Iterator[memoryview | None]:
        """``count`` u64 words at ``offset`` (8-aligned) inside one part, without a copy."""
        view = None
        for start, size, mapped in self._maps:
            if start <= offset and offset + count * 8 <= start + size and offset % 8 == 0:
                view = memoryview(mapped)[offset - start : offset - start + count * 8].cast("Q")
                break
        try:
            yield view
        finally:
            if view is not None:
                view.release()  # (the mapping cannot close while a view exists)


@contextmanager
def _mapped(parts: list[tuple[str, int]]) -> Iterator[_Image]:
    image = _Image(parts)
    try:
        yield image
    finally:
        image.close()


def heap_max_zone(heap_size: int) -> int:
    """How many zones a heap of this size has (PMDK's ``heap_max_zone``)."""
    zones = 0
    size = heap_size - HEAP_HEADER_SIZE
    while size >= ZONE_MIN_SIZE:
        zones += 1
        size -= min(size, ZONE_MAX_SIZE)
    return zones


@dataclass
class Survey:
    """What :func:`survey` found in libpmemobj's metadata."""

    #: what would make pmemobj_open() loop or crash, or None
    damage: str | None = None
    #: pool offset of every allocated object: one per chunk the heap marks used (a
    #: viperdbm block) and one per allocation its runs' bitmaps record, each of which
    #: pmemobj_first()/pmemobj_next() must list (the root object aside);
    #: None when the heap was not walked (a redo log is waiting to be replayed)
    large_objects: set[int] | None = field(default_factory=set)


def survey(parts: list[tuple[str, int]]) -> Survey:
    """Read libpmemobj's lanes and heap headers from the part files, bounds-checked.

    ``parts`` are the part files in order with the bytes of each that libpmemobj maps.
    Damage that libpmemobj detects itself (a bad pool header or descriptor checksum) is
    left to it: nothing is reported when the descriptor does not make sense.
    """
    out = Survey()
    with _mapped(parts) as image:
        head = image.read(LANES_OFFSET_AT, 24)
        heap_size_raw = image.read(HEAP_SIZE_AT, 8)
        if head is None or heap_size_raw is None:
            return out  # too short to be a pool: libpmemobj says so
        lanes_offset, nlanes, heap_offset = struct.unpack("<QQQ", head)
        if (
            lanes_offset % 8
            or heap_offset % 8
            or lanes_offset < POOL_DESCRIPTOR + 4096
            or not 0 < nlanes <= 1 << 20
            or lanes_offset + nlanes * LANE_SIZE > heap_offset
            or heap_offset + HEAP_HEADER_SIZE + ZONE_MIN_SIZE > image.size
        ):
            return out  # the descriptor's checksum fails: libpmemobj reports it
        with image.words(lanes_offset, nlanes * LANE_SIZE // 8) as lanes:
            if lanes is None:
                out.damage = "the lanes lie past the end of the part files"
                return out
            out.damage = _lane_damage(lanes, lanes_offset, nlanes)
            if out.damage:
                return out
            if _redo_pending(lanes, nlanes):
                out.large_objects = None
                return out
        (heap_size,) = struct.unpack("<Q", heap_size_raw)
        room = image.size - heap_offset
        if heap_size == 0:
            heap_size = room
        elif heap_size > room:
            out.damage = (
                f"the heap is {heap_size} bytes but the part files hold {room} after its "
                "start (a part file is missing or truncated)"
            )
            return out
        large: set[int] = set()
        out.damage = _heap_damage(image, heap_offset, heap_size, large)
        out.large_objects = large
        return out


def _lane_damage(words: memoryview, lanes_offset: int, nlanes: int) -> str | None:
    """Damage in the lanes' log headers or entries; ``words``: the lanes as u64 words."""
    stride = LANE_SIZE // 8
    zeros = bytes(8 * nlanes)
    for log_offset, capacity in LANE_LOGS:
        at = log_offset // 8
        # (name, word of the header, largest value allowed)
        for name, word, most in (
            ("next", at + 1, 0),
            ("capacity", at + 2, capacity),
            ("unused", at + 5, 0),
            ("unused", at + 6, 0),
            ("unused", at + 7, 0),
        ):
            column = words[word::stride]
            fine = column.tobytes() == zeros if most == 0 else max(column) <= most
            values = None if fine else column.tolist()
            column.release()  # (no view may outlive the mapping)
            if values is not None:
                lane = next(i for i, v in enumerate(values) if v > most)
                return (
                    f"libpmemobj's log header of lane {lane} is damaged ({name} is "
                    f"{values[lane]:#x}, at pool offset "
                    f"{lanes_offset + lane * LANE_SIZE + word * 8})"
                )
    return _log_entries_damage(words, lanes_offset, nlanes)


ULOG_VAL_TYPES = (0b000, 0b001, 0b010)  # ULOG_OPERATION_SET, _AND, _OR
ULOG_BUF_TYPES = (0b101, 0b110)  # ULOG_OPERATION_BUF_SET, ULOG_OPERATION_BUF_CPY


def _log_entries_damage(words: memoryview, lanes_offset: int, nlanes: int) -> str | None:
    """Walk the entries of every log with a capacity, as ``ulog_base_nbytes`` does.

    libpmemobj walks a log's entries before it verifies the log's checksum: it advances by
    a size of 0 for an entry of unknown type (an endless loop) and checksums each buffer
    entry over the size the entry claims (a damaged size makes it read far past the log).
    An entry must be of a known type and lie inside its log's capacity."""
    stride = LANE_SIZE // 8
    for log_offset, _ in LANE_LOGS:
        at = log_offset // 8
        capacities = words[at + 2 :: stride].tolist()
        firsts = words[at + ULOG_HEADER // 8 :: stride].tolist()
        for lane in range(nlanes):
            capacity = capacities[lane]
            if not capacity or not firsts[lane]:
                continue  # an unused or applied log: nothing is walked
            data = lane * stride + at + ULOG_HEADER // 8  # word index of the entries
            offset = 0
            while offset + 16 <= capacity:
                entry = words[data + offset // 8]
                if entry == 0:
                    break
                size = 16
                if entry >> 61 not in ULOG_VAL_TYPES + ULOG_BUF_TYPES:
                    size = capacity + 1  # ulog_entry_size() is 0 for it: an endless walk
                elif entry >> 61 in ULOG_BUF_TYPES:
                    if offset + 24 > capacity:
                        size = 24
                    else:
                        size = -(-(24 + words[data + offset // 8 + 2]) // 64) * 64
                if offset + size > capacity:
                    return (
                        f"libpmemobj's log of lane {lane} is damaged (an entry of an unknown "
                        f"type or running past its end, at pool offset "
                        f"{lanes_offset + lane * LANE_SIZE + log_offset + ULOG_HEADER + offset})"
                    )
                offset += size
    return None


def _redo_pending(words: memoryview, nlanes: int) -> bool:
    """Whether a lane's redo log may hold entries to replay (its checksum is set).

    libpmemobj clears a redo log's header (checksum included) once it has applied it, and
    a log never used has a zero checksum. ``words``: the lanes as u64 words."""
    stride = LANE_SIZE // 8
    zeros = bytes(8 * nlanes)
    for log_offset, _ in LANE_LOGS[:2]:  # the internal and the external redo log
        column = words[log_offset // 8 :: stride]
        pending = column.tobytes() != zeros
        column.release()
        if pending:
            return True
    return False


def _heap_damage(
    image: _Image, heap_offset: int, heap_size: int, large_objects: set[int]
) -> str | None:
    header = image.read(heap_offset, HEAP_HEADER_SIZE)
    if header is None:
        return "the heap header lies past the end of the part files"
    chunksize, per_zone = struct.unpack_from("<QQ", header, 40)
    if header[:16] != HEAP_SIGNATURE or chunksize != CHUNK_SIZE or per_zone != MAX_CHUNK:
        return f"libpmemobj's heap header is damaged (at pool offset {heap_offset})"
    zones = heap_max_zone(heap_size)
    for zone in range(zones):
        zone_at = heap_offset + HEAP_HEADER_SIZE + zone * ZONE_MAX_SIZE
        damage = _zone_damage(image, zone_at, zone, zones, heap_size, large_objects)
        if damage:
            return damage
    return None


def _zone_damage(
    image: _Image, zone_at: int, zone: int, zones: int, heap_size: int, large_objects: set[int]
) -> str | None:
    raw = image.read(zone_at, ZONE_HEADER_SIZE)
    if raw is None:
        return None  # past the mapped parts: a zone the heap does not reach yet
    magic, size_idx = struct.unpack_from("<II", raw)
    if magic == 0:
        return None  # never initialized: libpmemobj initializes it
    if zone < zones - 1:
        most = MAX_CHUNK
    else:
        room = heap_size - zone * ZONE_MAX_SIZE - ZONE_METADATA_SIZE - HEAP_HEADER_SIZE
        most = min(MAX_CHUNK, max(0, room) // CHUNK_SIZE)
    where = f"zone {zone} at pool offset {zone_at}"
    if magic != ZONE_MAGIC or not 0 < size_idx <= most:
        return f"libpmemobj's zone header is damaged ({where})"
    table = image.read(zone_at + ZONE_HEADER_SIZE, 8 * size_idx)
    if table is None:
        return f"libpmemobj's chunk headers lie past the end of the part files ({where})"
    chunks_at = zone_at + ZONE_METADATA_SIZE
    i = 0
    while i < size_idx:
        kind, flags, span = struct.unpack_from("<HHI", table, 8 * i)
        bad = (
            kind not in (CHUNK_FREE, CHUNK_USED, CHUNK_RUN)
            or flags & ~CHUNK_FLAGS_VALID
            or span == 0
            or i + span > size_idx
        )
        if not bad and kind == CHUNK_RUN:
            run = image.read(chunks_at + i * CHUNK_SIZE, 8)
            block_size = struct.unpack("<Q", run)[0] if run else 0
            bad = not 0 < block_size <= RUN_CONTENT_SIZE + (span - 1) * CHUNK_SIZE
        if bad:
            return f"libpmemobj's chunk header {i} is damaged ({where})"
        if kind == CHUNK_USED:
            if flags & CHUNK_FLAG_COMPACT_HEADER:
                header = 16
            else:
                header = 0 if flags & CHUNK_FLAG_HEADER_NONE else 64
            large_objects.add(chunks_at + i * CHUNK_SIZE + header)
        elif kind == CHUNK_RUN:
            damage = _run_objects(image, chunks_at + i * CHUNK_SIZE, span, flags, large_objects)
            if damage:
                return f"{damage} (in the run at chunk {i} of {where})"
        i += span
    return None


def _run_objects(image: _Image, run_at: int, span: int, flags: int, found: set[int]) -> str | None:
    """Add the objects allocated in the run at ``run_at`` (PMDK's ``run_iterate_used``).

    Only flexible-bitmap runs with compact headers and no alignment, the only kind
    viperdbm's allocations make, are read; the bitmap's size follows from the unit size
    as in ``memblock_run_bitmap``. An allocation spans as many units as its object header
    says; libpmemobj walks a run by those sizes, so a size of 0 (an endless walk) or one
    that runs past the run or over units the bitmap says are free is damage."""
    if flags & CHUNK_FLAG_ALIGNED or not flags & CHUNK_FLAG_FLEX_BITMAP:
        return None
    if not flags & CHUNK_FLAG_COMPACT_HEADER:
        return None
    raw = image.read(run_at, 8)
    if raw is None:
        return None
    (unit,) = struct.unpack("<Q", raw)
    content_size = RUN_CONTENT_SIZE + (span - 1) * CHUNK_SIZE
    nbits = content_size // unit
    nvalues = -(-nbits // 64)
    nvalues = -(-(nvalues + 2) // 8) * 8 - 2  # the data starts cacheline-aligned
    bitmap_size = nvalues * 8
    nbits = (content_size - bitmap_size) // unit
    nvalues -= (nvalues * 64 - nbits) // 64
    bitmap = image.read(run_at + 16, nvalues * 8)
    if bitmap is None:
        return None
    bits = int.from_bytes(bitmap, "little")
    data_at = run_at + 16 + bitmap_size
    j = 0
    while j < nbits:
        if not bits >> j & 1:
            j += 1
            continue
        obj = data_at + j * unit
        header = image.read(obj, 8)
        size = struct.unpack("<Q", header)[0] & ((1 << 48) - 1) if header else 0
        units = -(-size // unit)
        covered = ((1 << units) - 1) << j
        if units == 0 or j + units > nbits or bits & covered != covered:
            return f"libpmemobj's object header at pool offset {obj} is damaged"
        found.add(obj + 16)
        j += units
    return None
