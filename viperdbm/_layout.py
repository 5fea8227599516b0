"""The on-media layout of a viperdbm store, in one place (described in docs/format.md).

A store is a directory::

    <store>/pool.set   the libpmemobj poolset (text; rewritten when the store moves)
    <store>/parts/     the pool's part files, owned by libpmemobj
    <store>/lock       viperdbm's own lock file (flock)
    <store>/blocks     the block directory readers use to share the store (written at close)

Inside the pool: a 4 KiB root object (below), and blocks allocated from the pool. A
standard block is a 64-byte block header followed by a log of 4 KiB pages of records; a
jumbo block holds one record too large for a standard block. Records are written and
checked by the native core (native/*.c, constants in native/vipercore.h); the
numbers here must equal the ones the core exports, which tests/test_layout.py checks.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

#: libpmemobj's layout name: checked by pmemobj_open, so a foreign pool is refused at once.
POOL_LAYOUT = "viperdbm"
#: The format of everything inside the pool. Bumped on any incompatible change.
FORMAT_VERSION = 2

SET_FILE = "pool.set"
PARTS_DIR = "parts"
LOCK_FILE = "lock"
BLOCKS_FILE = "blocks"

#: libpmemobj type numbers of the objects viperdbm allocates.
TYPE_STANDARD_BLOCK = 1
TYPE_JUMBO_BLOCK = 2
#: space held back (one block) so that deletes and compaction work on a full disk
TYPE_RESERVE = 3

#: a VPage (records of at most a page never straddle one); four OS pages
PAGE_SIZE = 16384
#: the OS page: part files are mapped in whole pages
OS_PAGE_SIZE = 4096
BLOCK_SIZE = 4 << 20
INLINE_MAX = 1 << 20
BLOCK_MAGIC = 0x4B4C4256
BLOCK_HEADER_SIZE = 64
BLOCK_KIND_STANDARD = 1
BLOCK_KIND_JUMBO = 2
#: offset in the block header of the block's birth: every record in the block has a
#: sequence number at least this (0: a block of a writer before the field, no bound)
BLOCK_BIRTH_OFFSET = 32
RECORD_HEADER_SIZE = 16
RECORD_ALIGN = 4
KIND_PUT = 1
KIND_DEL = 2
KIND_PAD = 3
MAX_KEY = 0xFFFFFFFF - 64
MAX_VALUE = 0xFFFFFFFF - 64

#: libpmemobj's per-object header: requesting BLOCK_SIZE minus this fills whole 256 KiB chunks.
PMEMOBJ_OBJECT_HEADER = 16

#: Default address-space reservation of the poolset (not disk: parts are added as needed).
MIN_RESERVATION = 64 << 30

ROOT_SIZE = 4096
ROOT_MAGIC = b"VIPERDBM"
_ROOT = struct.Struct("<8sIIQQQQQ")


_SEQ_MASK = (1 << 48) - 1


def seal(value: int) -> int:
    """A 48-bit root field as stored: the value, and a 16-bit check of it in the top bits.

    The root's fields are updated in place, each with one 8-byte store, so each carries its
    own check: a damaged field is reported instead of, say, a sequence floor that would
    silently hide every record."""
    if not 0 <= value <= _SEQ_MASK:
        raise ValueError(f"root field out of range: {value}")
    return value | ((zlib.crc32(value.to_bytes(6, "little")) & 0xFFFF) << 48)


def unseal(word: int) -> int:
    """The value of a sealed root field; ValueError if the check does not match."""
    value = word & _SEQ_MASK
    if seal(value) != word:
        raise ValueError("a root field is damaged (its check does not match)")
    return value


@dataclass
class Root:
    """The fields of the root object, at the start of its 4 KiB."""

    format_version: int = FORMAT_VERSION
    flags: int = 0
    block_size: int = BLOCK_SIZE
    #: Records with a smaller sequence number are dead (set by reorganize()).
    seq_floor: int = 0
    #: Every record up to this sequence number was made power-fail durable by sync().
    durable_seq: int = 0
    created_ns: int = 0
    #: Equal to the generation in the ``blocks`` file when that file is current (0: not).
    directory_generation: int = 0
    magic: bytes = ROOT_MAGIC

    def pack(self) -> bytes:
        return _ROOT.pack(
            self.magic,
            self.format_version,
            self.flags,
            self.block_size,
            seal(self.seq_floor),
            seal(self.durable_seq),
            self.created_ns,
            seal(self.directory_generation),
        )

    @classmethod
    def unpack(cls, data: bytes) -> Root:
        magic, version, flags, block_size, floor, durable, created, gen = _ROOT.unpack_from(data)
        if magic != ROOT_MAGIC:  # not ours: the caller reports that, not a damaged field
            return cls(version, flags, block_size, 0, 0, created, 0, magic)
        return cls(
            version, flags, block_size, unseal(floor), unseal(durable), created, unseal(gen), magic
        )

    SIZE = _ROOT.size

    #: Byte offsets of fields that are updated in place (8-byte aligned: one store each,
    #: of the value sealed by :func:`seal`).
    SEQ_FLOOR_OFFSET = 24
    DURABLE_SEQ_OFFSET = 32
    DIRECTORY_GENERATION_OFFSET = 48


def dir_mode(mode: int) -> int:
    """The mode for a directory of a store whose files get ``mode``: x wherever r is set."""
    return mode | ((mode & 0o444) >> 2)


BLOCKS_MAGIC = b"VIPERDBM-BLOCKS\0"
_BLOCKS_HEAD = struct.Struct("<16sIIQQQ")
_BLOCKS_ENTRY = struct.Struct("<QQII")
_CRC = struct.Struct("<I")


@dataclass
class BlockDirectory:
    """The ``blocks`` file: where every block is, so that readers can share a store.

    libpmemobj's pool open is exclusive, so readers map the part files read-only themselves
    and need the list of blocks that the pool's heap would otherwise give. The writer writes
    this file at close and then stores its generation in the root; a reader trusts the file
    only when the two match (a writer that crashed leaves them different).
    """

    generation: int
    root_offset: int
    mapped_size: int
    blocks: list[tuple[int, int, int]]  # (offset, size, kind)

    def pack(self, crc32c: Callable[[bytes], int]) -> bytes:
        head = _BLOCKS_HEAD.pack(
            BLOCKS_MAGIC,
            FORMAT_VERSION,
            len(self.blocks),
            self.generation,
            self.root_offset,
            self.mapped_size,
        )
        body = b"".join(_BLOCKS_ENTRY.pack(off, size, kind, 0) for off, size, kind in self.blocks)
        return head + body + _CRC.pack(crc32c(head + body))

    @classmethod
    def unpack(cls, data: bytes, crc32c: Callable[[bytes], int]) -> BlockDirectory:
        """Parse the file; ValueError if it is damaged or of another format version."""
        if len(data) < _BLOCKS_HEAD.size + _CRC.size:
            raise ValueError("blocks file too short")
        magic, version, count, generation, root_off, mapped = _BLOCKS_HEAD.unpack_from(data)
        if magic != BLOCKS_MAGIC or version != FORMAT_VERSION:
            raise ValueError("not a blocks file of this format version")
        end = _BLOCKS_HEAD.size + count * _BLOCKS_ENTRY.size
        if len(data) != end + _CRC.size:
            raise ValueError("blocks file has the wrong length")
        (crc,) = _CRC.unpack_from(data, end)
        if crc != crc32c(data[:end]):
            raise ValueError("blocks file checksum mismatch")
        blocks = [
            (off, size, kind)
            for off, size, kind, _ in _BLOCKS_ENTRY.iter_unpack(data[_BLOCKS_HEAD.size : end])
        ]
        return cls(generation, root_off, mapped, blocks)
