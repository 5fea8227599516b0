"""The on-media layout of a viperdbm store (described in docs/format.md).

A store is a directory::

    <store>/pool.set   the libpmemobj poolset (text; rewritten when the store moves)
    <store>/parts/     the pool's part files, owned by libpmemobj
    <store>/lock       viperdbm's own lock file (flock)
    <store>/blocks     the block directory readers use to share the store (written at close)

Inside the pool: the root object (:class:`Root`), and blocks allocated from the pool. A
standard block is a block header followed by a log of VPages of records; a jumbo block holds
one record too large for a standard block. The format is defined once, as C structures and
constants, in native/vipercore.h; the core exports it as :data:`FORMAT`, and every number
this module shares with the core is taken from there. Python keeps only what the core never
touches: the store directory's names, the ``blocks`` file, libpmemobj's layout name and
object header, the poolset's reservation, and the sealing of the root's fields.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from . import _native

#: libpmemobj's layout name: checked by pmemobj_open, so a foreign pool is refused at once.
POOL_LAYOUT = "viperdbm"

SET_FILE = "pool.set"
PARTS_DIR = "parts"
LOCK_FILE = "lock"
BLOCKS_FILE = "blocks"
#: what the writer publishes to readers (native/vipercore.h, VdReadersHeader)
READERS_FILE = "readers"

#: The format as the native core defines it (native/vipercore.h): its structures, constants
#: and the root's magic.
FORMAT = _native.FORMAT
_CONSTANTS = FORMAT["constants"]
#: The format of everything inside the pool. Bumped on any incompatible change.
FORMAT_VERSION = _CONSTANTS["FORMAT_VERSION"]
#: The root's format version once the store holds a batch (block headers and the blocks
#: file keep FORMAT_VERSION): a viperdbm that reads only FORMAT_VERSION refuses the store.
BATCH_FORMAT_VERSION = _CONSTANTS["BATCH_FORMAT_VERSION"]
#: the root format versions this viperdbm reads
ROOT_FORMAT_VERSIONS = (FORMAT_VERSION, BATCH_FORMAT_VERSION)
#: The type numbers of the objects viperdbm allocates; a block's header carries its type
#: number again, as the block's kind.
TYPE_STANDARD_BLOCK = _CONSTANTS["TYPE_STANDARD_BLOCK"]
TYPE_JUMBO_BLOCK = _CONSTANTS["TYPE_JUMBO_BLOCK"]
#: space held back (one block) so that deletes and compaction work on a full disk
TYPE_RESERVE = _CONSTANTS["TYPE_RESERVE"]
BLOCK_SIZE = _CONSTANTS["BLOCK_SIZE"]
#: the size asked of pmemobj_root (the root's fields fill the start of it)
ROOT_OBJECT_SIZE = _CONSTANTS["ROOT_OBJECT_SIZE"]
ROOT_MAGIC = FORMAT["root_magic"]
#: readers that may have a store open at once (the ``readers`` file's slots)
READER_SLOTS = _CONSTANTS["READER_SLOTS"]

#: a block header's size: a jumbo block is this, then its one record
BLOCK_HEADER_SIZE = FORMAT["structures"]["VdBlockHeader"]["size"]
#: the header of the ``readers`` file, at its start
READERS_HEADER_SIZE = FORMAT["structures"]["VdReadersHeader"]["size"]

#: libpmemobj's per-object header: requesting BLOCK_SIZE minus this fills whole 256 KiB chunks.
PMEMOBJ_OBJECT_HEADER = 16

#: Default address-space reservation of the poolset (not disk: parts are added as needed).
MIN_RESERVATION = 64 << 30

_INTEGER_CODES = {4: "I", 8: "Q"}


@dataclass(frozen=True)
class Structure:
    """A structure of the format: its size, and each field's (offset, size) in bytes."""

    size: int
    fields: dict[str, tuple[int, int]]

    def offset(self, field: str) -> int:
        return self.fields[field][0]

    def packing(self, *, byte_fields: Collection[str] = ()) -> tuple[struct.Struct, list[str]]:
        """A little-endian ``struct.Struct`` of the structure, and its fields' names in the
        order it packs them: the fields named in ``byte_fields`` are bytes, the others
        unsigned integers (of 4 or 8 bytes)."""
        fmt, at, order = "<", 0, []
        for name, (offset, size) in sorted(self.fields.items(), key=lambda field: field[1][0]):
            fmt += f"{offset - at}x" if offset > at else ""
            fmt += f"{size}s" if name in byte_fields else _INTEGER_CODES[size]
            at = offset + size
            order.append(name)
        packing = struct.Struct(fmt + (f"{self.size - at}x" if self.size > at else ""))
        if packing.size != self.size:
            raise ImportError(f"a structure of the format does not add up: {self}")
        return packing, order


#: The structures the native core defines (native/vipercore.h), by their C names.
CORE_STRUCTURES = {
    name: Structure(desc["size"], dict(desc["fields"]))
    for name, desc in FORMAT["structures"].items()
}
#: The ``blocks`` file's, which only Python reads and writes: this header, then one entry per
#: block, then a CRC-32C of everything before it.
BLOCKS_FILE_HEADER = Structure(
    48,
    {
        "magic": (0, 16),
        "format_version": (16, 4),
        "count": (20, 4),
        "generation": (24, 8),
        "root_offset": (32, 8),
        "mapped_size": (40, 8),
    },
)
BLOCKS_FILE_ENTRY = Structure(
    24, {"offset": (0, 8), "size": (8, 8), "type": (16, 4), "zero": (20, 4)}
)
#: Every structure of the format, by name (docs/format.md names each of its tables so).
STRUCTURES = {
    **CORE_STRUCTURES,
    "BlocksFileHeader": BLOCKS_FILE_HEADER,
    "BlocksFileEntry": BLOCKS_FILE_ENTRY,
}

_ROOT_STRUCTURE = CORE_STRUCTURES["VdRoot"]
_ROOT, _ROOT_ORDER = _ROOT_STRUCTURE.packing(byte_fields={"magic"})
#: the root's fields that are stored sealed (:func:`seal`)
_SEALED = ("seq_floor", "durable_seq", "directory_generation")
_SEQ_MASK = (1 << _CONSTANTS["SEQ_BITS"]) - 1


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

    #: FORMAT_VERSION, or BATCH_FORMAT_VERSION once a batch was written
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
        values: dict[str, Any] = dict(self.__dict__)
        for name in _SEALED:
            values[name] = seal(values[name])
        return _ROOT.pack(*(values[name] for name in _ROOT_ORDER))

    @classmethod
    def unpack(cls, data: bytes) -> Root:
        values: dict[str, Any] = dict(zip(_ROOT_ORDER, _ROOT.unpack_from(data), strict=True))
        for name in _SEALED:
            # not ours: the caller reports that, not a damaged field
            values[name] = unseal(values[name]) if values["magic"] == ROOT_MAGIC else 0
        return cls(**values)

    SIZE = _ROOT.size

    #: Byte offsets of fields that are updated in place (8-byte aligned: one store each,
    #: of the value sealed by :func:`seal`).
    SEQ_FLOOR_OFFSET = _ROOT_STRUCTURE.offset("seq_floor")
    #: (4 bytes, aligned: set to BATCH_FORMAT_VERSION by one store before the first batch)
    FORMAT_VERSION_OFFSET = _ROOT_STRUCTURE.offset("format_version")
    DURABLE_SEQ_OFFSET = _ROOT_STRUCTURE.offset("durable_seq")
    DIRECTORY_GENERATION_OFFSET = _ROOT_STRUCTURE.offset("directory_generation")


def dir_mode(mode: int) -> int:
    """The mode for a directory of a store whose files get ``mode``: x wherever r is set."""
    return mode | ((mode & 0o444) >> 2)


BLOCKS_MAGIC = b"VIPERDBM-BLOCKS\0"
_BLOCKS_HEAD, _ = BLOCKS_FILE_HEADER.packing(byte_fields={"magic"})
_BLOCKS_ENTRY, _ = BLOCKS_FILE_ENTRY.packing()
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
    blocks: list[tuple[int, int, int]]  # (offset, size, type number)

    def pack(self, crc32c: Callable[[bytes], int]) -> bytes:
        head = _BLOCKS_HEAD.pack(
            BLOCKS_MAGIC,
            FORMAT_VERSION,
            len(self.blocks),
            self.generation,
            self.root_offset,
            self.mapped_size,
        )
        body = b"".join(_BLOCKS_ENTRY.pack(off, size, type_, 0) for off, size, type_ in self.blocks)
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
            (off, size, type_)
            for off, size, type_, _ in _BLOCKS_ENTRY.iter_unpack(data[_BLOCKS_HEAD.size : end])
        ]
        return cls(generation, root_off, mapped, blocks)
