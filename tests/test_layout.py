"""The on-media constants agree: native/vipercore.h (through the built core),
viperdbm/_layout.py and docs/format.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from viperdbm import _layout as layout
from viperdbm import _vipercore as core

ROOT = Path(__file__).resolve().parent.parent

SHARED = [
    "FORMAT_VERSION",
    "PAGE_SIZE",
    "BLOCK_SIZE",
    "INLINE_MAX",
    "BLOCK_MAGIC",
    "BLOCK_HEADER_SIZE",
    "BLOCK_KIND_STANDARD",
    "BLOCK_KIND_JUMBO",
    "BLOCK_BIRTH_OFFSET",
    "RECORD_HEADER_SIZE",
    "RECORD_ALIGN",
    "KIND_PUT",
    "KIND_DEL",
    "KIND_PAD",
    "MAX_KEY",
    "MAX_VALUE",
]


def test_python_and_c_constants_agree() -> None:
    for name in SHARED:
        assert getattr(layout, name) == getattr(core, name), name


def test_format_doc_states_the_constants() -> None:
    doc = (ROOT / "docs" / "format.md").read_text()
    assert f"format version {layout.FORMAT_VERSION}" in doc
    assert f"`{layout.BLOCK_MAGIC:#x}`" in doc
    assert f"layout name is `{layout.POOL_LAYOUT}`" in doc
    assert "4 MiB" in doc and layout.BLOCK_SIZE == 4 << 20
    assert "1 MiB" in doc and layout.INLINE_MAX == 1 << 20
    # the record header table: CRC at 0, value length at 4, meta at 8
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (CRC-32C|value length)", doc, re.MULTILINE)
    assert ("0", "4", "CRC-32C") in rows and ("4", "4", "value length") in rows
    # the block header table: the birth, inside the bytes the header's CRC covers
    assert f"| {layout.BLOCK_BIRTH_OFFSET} | 8 | birth:" in doc
    assert 8 <= layout.BLOCK_BIRTH_OFFSET <= layout.BLOCK_HEADER_SIZE - 8


def test_root_round_trip() -> None:
    root = layout.Root(seq_floor=7, durable_seq=3, created_ns=11)
    data = root.pack()
    assert len(data) == layout.Root.SIZE <= layout.ROOT_SIZE
    assert layout.Root.unpack(data) == root
    floor = data[layout.Root.SEQ_FLOOR_OFFSET : layout.Root.SEQ_FLOOR_OFFSET + 8]
    assert floor == layout.seal(7).to_bytes(8, "little")
    damaged = bytearray(data)
    damaged[layout.Root.SEQ_FLOOR_OFFSET] ^= 0x10
    with pytest.raises(ValueError):
        layout.Root.unpack(bytes(damaged))


def test_crc32c_is_castagnoli() -> None:
    # the standard check value of CRC-32C
    assert core.crc32c(b"123456789") == 0xE3069283
