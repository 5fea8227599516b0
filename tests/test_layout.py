"""The format is defined once, in native/vipercore.h, and everything else agrees with it.

* docs/format.md: every table headed by a structure's name, and the table of constants, is
  parsed and checked row by row (offset, size, name; name and value) against the format the
  core exports (``_vipercore.FORMAT``, through ``viperdbm._layout``), in both directions: a
  row the code lacks and a field the page lacks both fail.
* viperdbm/_layout.py: the root object is packed at the exported offsets.
* A store written before the format was exported (tests/data/format-v2-store.tar.xz, made by
  tests/_format_fixture.py with the viperdbm of commit d7d0076) opens, reads and takes
  writes; and the same workload written now puts the same bytes in every block.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import _format_fixture as fixture
import pytest
from _vdbtools import KIND_PAD, read_pool

import viperdbm
from viperdbm import _layout as layout
from viperdbm import _native
from viperdbm import _vipercore as core

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "format.md"
OLD_STORE = Path(__file__).resolve().parent / "data" / "format-v2-store.tar.xz"

CONSTANTS = layout.FORMAT["constants"]

# "**`VdBlockHeader`**, 64 bytes, defined in `native/vipercore.h`:" and the table after it
_STRUCTURE_HEADING = re.compile(r"^\*\*`(\w+)`\*\*, (\d+) bytes, defined in `([^`]+)`")
_CONSTANTS_HEADING = re.compile(r"^\*\*Constants\*\*, defined in `([^`]+)`")
_FIELD_ROW = re.compile(r"^\| (\d+) \| (\d+) \| `(\w+)` \| .+ \|$")
_CONSTANT_ROW = re.compile(r"^\| `(\w+)` \| (0x[0-9a-f]+|\d+) \| .+ \|$")


@dataclass
class DocTables:
    """The checked tables of docs/format.md: each structure's, and the constants'."""

    structures: dict[str, tuple[int, str, list[str]]] = field(default_factory=dict)
    constants: list[str] = field(default_factory=list)
    constants_source: str = ""


def _table_after(lines: list[str], start: int) -> list[str]:
    """The rows of the table that follows line ``start`` (after blank lines), less its
    header and separator."""
    i = start + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append(lines[i])
        i += 1
    return rows[2:]


def parse_doc(text: str) -> DocTables:
    tables = DocTables()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := _STRUCTURE_HEADING.match(line):
            tables.structures[m[1]] = (int(m[2]), m[3], _table_after(lines, i))
        elif m := _CONSTANTS_HEADING.match(line):
            tables.constants_source = m[1]
            tables.constants = _table_after(lines, i)
    return tables


def mismatches(text: str) -> list[str]:
    """Every way the checked tables of a format page differ from the code (none: agree)."""
    tables = parse_doc(text)
    found = []
    for name in layout.STRUCTURES.keys() - tables.structures.keys():
        found.append(f"{name}: no table")
    for name, (size, source, rows) in tables.structures.items():
        structure = layout.STRUCTURES.get(name)
        if structure is None:
            found.append(f"{name}: a table of a structure the code does not have")
            continue
        if name not in (ROOT / source).read_text():
            found.append(f"{name}: not defined in {source}")
        if size != structure.size:
            found.append(f"{name}: {size} bytes, the code says {structure.size}")
        seen = set()
        for row in rows:
            m = _FIELD_ROW.match(row)
            if m is None:
                found.append(f"{name}: a row that is not 'offset | size | `field` | what': {row}")
                continue
            offset, length, field_name = int(m[1]), int(m[2]), m[3]
            seen.add(field_name)
            if structure.fields.get(field_name) != (offset, length):
                found.append(
                    f"{name}.{field_name}: at {offset}, {length} bytes; the code says "
                    f"{structure.fields.get(field_name, 'no such field')}"
                )
        for missing in structure.fields.keys() - seen:
            found.append(f"{name}.{missing}: no row")
    if not tables.constants or tables.constants_source != "native/vipercore.h":
        found.append("no table of the constants of native/vipercore.h")
    named = set()
    for row in tables.constants:
        m = _CONSTANT_ROW.match(row)
        if m is None:
            found.append(f"constants: a row that is not '`NAME` | value | what': {row}")
            continue
        named.add(m[1])
        if CONSTANTS.get(m[1]) != int(m[2], 0):
            found.append(
                f"{m[1]} = {m[2]}; the code says {CONSTANTS.get(m[1], 'no such constant')}"
            )
    for missing in CONSTANTS.keys() - named:
        found.append(f"{missing}: no row in the constants")
    return found


def test_format_doc_tables_match_the_code() -> None:
    assert mismatches(DOC.read_text()) == []


@pytest.mark.parametrize(
    ("row", "drifted"),
    [
        ("| 32 | 8 | `birth` |", "| 40 | 8 | `birth` |"),
        ("| 4 | 4 | `vlen` |", "| 4 | 4 | `value_length` |"),
        ("| 40 | 8 | `mapped_size` |", "| 40 | 4 | `mapped_size` |"),
        ("| `PAGE_SIZE` | 16384 |", "| `PAGE_SIZE` | 4096 |"),
        ("**`VdRoot`**, 56 bytes", "**`VdRoot`**, 64 bytes"),
        ("| 12 | 4 | `flags` | 0 |\n", ""),
    ],
)
def test_a_drifted_doc_fails(row: str, drifted: str) -> None:
    text = DOC.read_text()
    assert text.count(row) == 1, row
    assert mismatches(text.replace(row, drifted)) != []


def test_format_doc_states_the_constants() -> None:
    doc = DOC.read_text()
    assert f"format version {layout.FORMAT_VERSION}" in doc
    assert f"layout name is `{layout.POOL_LAYOUT}`" in doc
    assert f"| 0 | 8 | `magic` | `{layout.ROOT_MAGIC.decode()}` |" in doc
    assert "| 0 | 16 | `magic` | `VIPERDBM-BLOCKS\\0` |" in doc
    assert layout.BLOCKS_MAGIC == b"VIPERDBM-BLOCKS\0"
    assert "4 MiB" in doc and layout.BLOCK_SIZE == 4 << 20
    assert "1 MiB" in doc and CONSTANTS["INLINE_MAX"] == 1 << 20
    # the birth lies inside the bytes the header's CRC covers
    header = layout.STRUCTURES["VdBlockHeader"]
    assert header.offset("version") <= header.offset("birth") <= header.size - 8


def test_one_numbering_of_object_types() -> None:
    types = [layout.TYPE_STANDARD_BLOCK, layout.TYPE_JUMBO_BLOCK, layout.TYPE_RESERVE]
    assert types == [
        CONSTANTS[f"TYPE_{name}"] for name in ("STANDARD_BLOCK", "JUMBO_BLOCK", "RESERVE")
    ]
    assert len(set(types)) == 3 and 0 not in types  # 0 is "the reserve" in block_types()
    # no second numbering left in the module
    assert not [name for name in vars(core) if "KIND_STANDARD" in name or "INIT_RESERVE" in name]


def test_root_round_trip() -> None:
    root = layout.Root(seq_floor=7, durable_seq=3, created_ns=11)
    data = root.pack()
    assert len(data) == layout.Root.SIZE <= layout.ROOT_OBJECT_SIZE
    assert layout.Root.unpack(data) == root
    floor = data[layout.Root.SEQ_FLOOR_OFFSET : layout.Root.SEQ_FLOOR_OFFSET + 8]
    assert floor == layout.seal(7).to_bytes(8, "little")
    damaged = bytearray(data)
    damaged[layout.Root.SEQ_FLOOR_OFFSET] ^= 0x10
    with pytest.raises(ValueError):
        layout.Root.unpack(bytes(damaged))


def test_the_root_is_packed_at_the_exported_offsets() -> None:
    root = layout.Root(
        format_version=0x01020304,
        flags=0x05060708,
        block_size=0x1112131415161718,
        seq_floor=0x212223242526,
        durable_seq=0x313233343536,
        created_ns=0x4142434445464748,
        directory_generation=0x515253545556,
    )
    data = root.pack()
    fields = layout.STRUCTURES["VdRoot"].fields
    assert layout.STRUCTURES["VdRoot"].size == layout.Root.SIZE
    for name, (offset, size) in fields.items():
        value = getattr(root, name)
        if name in ("seq_floor", "durable_seq", "directory_generation"):
            value = layout.seal(value)
        want = value if isinstance(value, bytes) else value.to_bytes(size, "little")
        assert data[offset : offset + size] == want, name


def test_crc32c_is_castagnoli() -> None:
    # the standard check value of CRC-32C
    assert core.crc32c(b"123456789") == 0xE3069283


def _crc32c_bytewise(data: bytes, crc: int = 0) -> int:
    """CRC-32C one byte at a time, from its definition (reflected polynomial 0x82F63B78)."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ table[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


@pytest.mark.parametrize(
    "size",
    [0, 7, 255, 767, 768, 769, 1040, 2 * 768 + 5, 24_575, 24_576, 24_577, 2 * 24_576 + 768 + 13],
)
def test_crc32c_of_every_length_around_its_lanes(size: int) -> None:
    """Long buffers are checksummed in three lanes at once (native/crc32c.c), 768 and
    24,576 bytes at a time: every length on either side of those joins gives the CRC of
    the definition, from 0 and from a running CRC."""
    data = bytes((i * 131 + size) % 251 for i in range(size))
    assert core.crc32c(data) == _crc32c_bytewise(data)
    assert core.crc32c(data, 0x1234_5678) == _crc32c_bytewise(data, 0x1234_5678)


# --------------------------------------------------------------------------- compatibility
def _extract_old_store(into: Path) -> Path:
    with tarfile.open(OLD_STORE) as tar:
        tar.extractall(into, filter="data")
    return into / fixture.STORE_NAME


def _pool_bytes(store: Path) -> bytes:
    parts = sorted((store / layout.PARTS_DIR).glob("*.pmem"))
    return b"".join(part.read_bytes() for part in parts)


def _field(pool: bytes, at: int, structure: str, name: str) -> int:
    """A field of a format structure at pool offset ``at``, as an integer."""
    offset, size = layout.STRUCTURES[structure].fields[name]
    return int.from_bytes(pool[at + offset : at + offset + size], "little")


def _directory(store: Path) -> layout.BlockDirectory:
    data = (store / layout.BLOCKS_FILE).read_bytes()
    return layout.BlockDirectory.unpack(data, _native.crc32c)


def test_a_store_written_before_opens_and_takes_writes(tmp_path: Path) -> None:
    store = _extract_old_store(tmp_path)
    expected = fixture.expected()
    with viperdbm.open(str(store), "r") as db:
        assert {key: db[key] for key in db} == expected
    with viperdbm.open(str(store), "w") as db:
        assert len(db) == len(expected)
        db[b"new"] = b"after the format was exported"
        del db[fixture.LONG_KEY]
        db[b"jumbo"] = fixture.JUMBO_VALUE[::-1]
        db.reorganize()
    expected[b"new"] = b"after the format was exported"
    del expected[fixture.LONG_KEY]
    expected[b"jumbo"] = fixture.JUMBO_VALUE[::-1]
    with viperdbm.open(str(store), "r") as db:
        assert {key: db[key] for key in db} == expected
    assert viperdbm.check(str(store)).ok


def test_the_same_workload_writes_the_same_bytes(tmp_path: Path) -> None:
    old = _extract_old_store(tmp_path / "old")
    new = tmp_path / "new" / fixture.STORE_NAME
    new.parent.mkdir()
    fixture.make(new)
    old_dir, new_dir = _directory(old), _directory(new)
    assert new_dir.blocks == old_dir.blocks
    assert (new_dir.root_offset, new_dir.mapped_size) == (old_dir.root_offset, old_dir.mapped_size)
    old_pool, new_pool = _pool_bytes(old), _pool_bytes(new)
    header = layout.STRUCTURES["VdBlockHeader"]
    log_start_at, log_start_size = header.fields["log_start"]
    # (sealed: a 48-bit value under a 16-bit check, docs/format.md)
    floor = _field(old_pool, old_dir.root_offset, "VdRoot", "seq_floor") & ((1 << 48) - 1)
    rewritten = []
    for off, size, _ in old_dir.blocks:
        # the log: from where the header says it starts (the bytes between are unused, and
        # hold whatever the space held before) to the end of the block
        at = off + log_start_at
        log = off + int.from_bytes(old_pool[at : at + log_start_size], "little")
        if (new_pool[off : off + header.size], new_pool[log : off + size]) != (
            old_pool[off : off + header.size],
            old_pool[log : off + size],
        ):
            rewritten.append(off)
    if rewritten:
        # reorganize() copies the live records in the order of the index's walk, which is
        # no part of the format (the index is volatile, and was redesigned since): the
        # blocks it wrote hold the same records, numbered from the same sequence numbers,
        # and their headers differ at most in the CRC and the birth
        for off in rewritten:
            for name in header.fields:
                old_field = _field(old_pool, off, "VdBlockHeader", name)
                if name not in ("crc", "birth"):
                    assert _field(new_pool, off, "VdBlockHeader", name) == old_field, (off, name)
                else:
                    assert name == "crc" or old_field >= floor, (off, "written before the floor")
        old_recs, new_recs = (
            [
                r
                for r in read_pool(store, tmp_path / f"image-{n}").records()
                if r.block in rewritten and r.kind != KIND_PAD
            ]
            for n, store in enumerate((old, new))
        )
        assert old_recs and all(r.seq >= floor for r in old_recs + new_recs), floor
        assert sorted((r.kind, r.key, r.value_digest) for r in new_recs) == sorted(
            (r.kind, r.key, r.value_digest) for r in old_recs
        )
        assert sorted(r.seq for r in new_recs) == sorted(r.seq for r in old_recs)
    # the root: the same but for the creation time and the blocks file's generation
    fields = layout.STRUCTURES["VdRoot"].fields
    for name, (offset, length) in fields.items():
        if name in ("created_ns", "directory_generation"):
            continue
        at = old_dir.root_offset + offset
        assert new_pool[at : at + length] == old_pool[at : at + length], name
