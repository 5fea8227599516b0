"""The dump format (docs/dump-format.md) and the dump/load/copy API, in process."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import viperdbm
from viperdbm._dump import DumpError, read_dump


def make_store(path: Path, records: dict[bytes, bytes]) -> Path:
    with viperdbm.open(path, "n") as db:
        db.update(records)
    return path


def dump_bytes(path: Path) -> bytes:
    buf = io.BytesIO()
    viperdbm.dump(path, buf)
    return buf.getvalue()


def test_the_documented_example(tmp_path: Path) -> None:
    """The example of docs/dump-format.md, byte for byte apart from the header's time."""
    store = make_store(tmp_path / "s.vdb", {b"key": b"value", b"": b""})
    lines = dump_bytes(store).split(b"\n")
    assert lines[0].startswith(b'viperdbm-dump 1 {"created": "')
    meta = json.loads(lines[0].split(b" ", 2)[2])
    assert meta["records"] == 2 and meta["viperdbm"] == viperdbm.__version__
    assert lines[1:3] == [b":", b"a2V5:dmFsdWU="]  # sorted by key: the empty key first
    digest = hashlib.sha256(b":\na2V5:dmFsdWU=\n").hexdigest()
    assert lines[3] == b"viperdbm-dump-end 2 sha256:" + digest.encode()
    assert lines[4] == b""
    doc = (Path(__file__).parent.parent / "docs" / "dump-format.md").read_text()
    assert digest in doc


# CI draws the same examples every run; VIPERDBM_FRESH_SEEDS=1 draws new ones (a failure
# prints the falsifying example and the blob that replays it)
@settings(
    max_examples=200,
    deadline=None,
    derandomize=os.environ.get("VIPERDBM_FRESH_SEEDS") != "1",
    print_blob=True,
)
@given(st.dictionaries(st.binary(max_size=40), st.binary(max_size=300), max_size=30))
def test_the_format_round_trips_any_bytes(records: dict[bytes, bytes]) -> None:
    buf = io.BytesIO()
    assert viperdbm.dump(records, buf) == len(records)
    assert buf.getvalue().isascii()
    assert dict(read_dump(io.BytesIO(buf.getvalue()))) == records


def test_dump_then_load_through_stores_is_the_identity(tmp_path: Path) -> None:
    records = {bytes([i]) * (i % 7): bytes(range(i)) for i in range(256)}
    src = make_store(tmp_path / "src.vdb", records)
    text = dump_bytes(src)
    assert viperdbm.load(io.BytesIO(text), tmp_path / "dst.vdb") == len(records)
    with viperdbm.open(tmp_path / "dst.vdb") as db:
        assert dict(db.items()) == records
    assert dump_bytes(tmp_path / "dst.vdb").split(b"\n")[1:] == text.split(b"\n")[1:]


def test_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.vdb", {b"a": b"1", b"b": b"\r\n"})
    text = dump_bytes(store).replace(b"\n", b"\r\n")
    assert dict(read_dump(io.BytesIO(text))) == {b"a": b"1", b"b": b"\r\n"}


def test_header_metadata_is_returned_and_unknown_fields_ignored() -> None:
    text = b'viperdbm-dump 1 {"records": 1, "future": [1, 2]}\nYQ==:Yg==\n'
    text += b"viperdbm-dump-end 1 sha256:" + hashlib.sha256(b"YQ==:Yg==\n").hexdigest().encode()
    meta: dict[str, object] = {}
    assert list(read_dump(io.BytesIO(text + b"\n"), meta=meta)) == [(b"a", b"b")]
    assert meta == {"records": 1, "future": [1, 2]}
    # a header without metadata is valid too; so is a missing final newline
    bare = b"viperdbm-dump 1\nYQ==:Yg==\n" + text.split(b"\n")[2]
    assert list(read_dump(io.BytesIO(bare))) == [(b"a", b"b")]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (b"", 1, "empty"),
        (b"viperdbm-dump x\n", 1, "no format version"),
        (b"viperdbm-dump 0\n", 1, "version 0"),
        (b"viperdbm-dump 1 [1]\n", 1, "not a JSON object"),
        (b"viperdbm-dump 1 {bad\n", 1, "not JSON"),
        (b"viperdbm-dump 1\nviperdbm-dump-end 0\n", 2, "malformed end line"),
        (b"viperdbm-dump 1\nYQ==:Yg=\n", 2, "base64"),
        (b"viperdbm-dump 1\nYQ==:Yg==\n", 3, "truncated"),
    ],
)
def test_each_damage_names_its_line(text: bytes, line: int, words: str) -> None:
    with pytest.raises(DumpError) as info:
        list(read_dump(io.BytesIO(text), name="x.dump"))
    assert info.value.line == line
    assert words in str(info.value)
    assert str(info.value).startswith(f"x.dump, line {line}: ")
    assert isinstance(info.value, viperdbm.error)


def test_a_failed_load_leaves_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.vdb", {b"k%d" % i: b"v" for i in range(100)})
    text = dump_bytes(store)
    damaged = text.replace(base64.b64encode(b"k50"), base64.b64encode(b"k5X"))
    with pytest.raises(DumpError, match="checksum"):
        viperdbm.load(io.BytesIO(damaged), tmp_path / "new.vdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.vdb"]


def test_dump_to_a_path_is_atomic_and_of_an_open_store(tmp_path: Path) -> None:
    with viperdbm.open(tmp_path / "s.vdb", "c") as db:
        db[b"x"] = b"y"
        assert viperdbm.dump(db, tmp_path / "out.dump") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dump", "s.vdb"]
    with open(tmp_path / "out.dump", "rb") as f:
        assert list(read_dump(f)) == [(b"x", b"y")]


def test_a_failed_dump_names_the_users_path_and_leaves_nothing_beside(tmp_path: Path) -> None:
    """The dump is written beside its path under a hidden name: a failure (here the rename
    onto a directory) names the path the user gave, never the temporary file."""
    store = make_store(tmp_path / "s.vdb", {b"x": b"y"})
    (tmp_path / "out.dump").mkdir()
    with pytest.raises(viperdbm.error) as info:
        viperdbm.dump(store, tmp_path / "out.dump")
    assert str(tmp_path / "out.dump") in str(info.value)
    assert ".tmp" not in str(info.value) and "dump-" not in str(info.value), str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dump", "s.vdb"]


def test_copy_holds_only_live_records(tmp_path: Path) -> None:
    with viperdbm.open(tmp_path / "s.vdb", "c") as db:
        for i in range(3000):
            db[b"k%d" % i] = os.urandom(100)
        for i in range(0, 3000, 3):
            del db[b"k%d" % i]
        expected = dict(db.items())
    assert viperdbm.copy(tmp_path / "s.vdb", tmp_path / "c.vdb") == 2000
    with viperdbm.open(tmp_path / "c.vdb") as db:
        assert dict(db.items()) == expected
        assert db.stats()["dead_bytes"] == 0


def test_replace_needs_the_destination_unlocked(tmp_path: Path) -> None:
    make_store(tmp_path / "a.vdb", {b"a": b"1"})
    make_store(tmp_path / "b.vdb", {b"b": b"2"})
    with viperdbm.open(tmp_path / "b.vdb", "r"), pytest.raises(viperdbm.LockError):
        viperdbm.copy(tmp_path / "a.vdb", tmp_path / "b.vdb", replace=True)
    viperdbm.copy(tmp_path / "a.vdb", tmp_path / "b.vdb", replace=True)
    with viperdbm.open(tmp_path / "b.vdb") as db:
        assert db.keys() == [b"a"]


@pytest.mark.parametrize("replace", [False, True])
def test_a_loaded_or_copied_store_names_its_own_path_and_leaves_nothing_beside(
    tmp_path: Path, replace: bool
) -> None:
    """pool.set names the parts directory for PMDK's tools: the store's own, not the one of
    the temporary directory it was built in; and nothing hidden is left beside it."""
    src = make_store(tmp_path / "src.vdb", {b"a": b"1"})
    if replace:
        make_store(tmp_path / "dst.vdb", {b"old": b"0"})
    viperdbm.copy(src, tmp_path / "dst.vdb", replace=replace)
    viperdbm.load(io.BytesIO(dump_bytes(src)), tmp_path / "l.vdb")
    for name in ("dst.vdb", "l.vdb"):
        text = (tmp_path / name / "pool.set").read_text()
        assert str(tmp_path / name / "parts") in text, text
        with viperdbm.open(tmp_path / name) as db:
            assert dict(db.items()) == {b"a": b"1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.vdb", "l.vdb", "src.vdb"]


def test_replace_refuses_what_is_not_a_store_and_leaves_it(tmp_path: Path) -> None:
    src = make_store(tmp_path / "src.vdb", {b"a": b"1"})
    (tmp_path / "file").write_text("mine")
    (tmp_path / "dir").mkdir()
    for target in (tmp_path / "file", tmp_path / "dir"):
        with pytest.raises(viperdbm.NotAStoreError) as info:
            viperdbm.copy(src, target, replace=True)
        assert "remove it yourself" in str(info.value)
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "src.vdb"]
