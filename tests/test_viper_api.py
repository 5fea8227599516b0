"""viperdbm.Viper: Viper's own interface (create/open, get_client, put/get/remove)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import viperdbm
from viperdbm import Viper


def test_the_readme_example_line_by_line(tmp_path: Path) -> None:
    initial_size = 1073741824  # 1 GiB
    viper_db = Viper.create(str(tmp_path / "viper"), initial_size, key_type=int, value_type=int)

    # To modify records in Viper, you need to use a Viper Client.
    v_client = viper_db.get_client()

    for key in range(10):
        value = key + 10
        v_client.put(key, value)

    lines = []
    for key in range(10):
        found = v_client.get(key)
        lines.append(f"Record: {key} --> {found}")
    assert lines[3] == "Record: 3 --> 13"
    assert v_client.get(10) is None
    viper_db.close()


def test_put_get_remove_results(tmp_path: Path) -> None:
    with Viper.create(tmp_path / "v") as viper_db:
        client = viper_db.get_client()
        assert client.put(b"k", b"1") is True
        assert client.put(b"k", b"2") is False
        assert client.get(b"k") == b"2"
        assert client.remove(b"k") is True
        assert client.remove(b"k") is False
        assert client.get(b"k") is None
        assert len(viper_db) == 0


def test_types_are_encoded_like_viper_does(tmp_path: Path) -> None:
    path = tmp_path / "v"
    with Viper.create(path, 0, key_type=str, value_type=int) as viper_db:
        viper_db.get_client().put("answer", 42)
        with pytest.raises(ValueError, match="2\\*\\*64"):
            viper_db.get_client().put("neg", -1)
    # an ordinary store underneath: uint64 values are 8 little-endian bytes
    with viperdbm.open(path) as db:
        assert db[b"answer"] == (42).to_bytes(8, "little")
    with Viper.open(path, key_type=str, value_type=int) as viper_db:
        assert viper_db.get_read_only_client().get("answer") == 42
    with Viper.open(path) as raw:
        assert raw.get_client().get(b"answer") == b"*" + b"\0" * 7


def test_create_replaces_and_open_needs_a_store(tmp_path: Path) -> None:
    path = tmp_path / "v"
    with Viper.create(path) as viper_db:
        viper_db.get_client().put(b"old", b"x")
    with Viper.create(path) as viper_db:
        assert viper_db.get_client().get(b"old") is None
    with pytest.raises(viperdbm.error):
        Viper.open(tmp_path / "missing")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="initial_size"):
            Viper.create(tmp_path / "bad", bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key_type"):
        Viper.create(tmp_path / "bad", key_type=float, value_type=bytes)  # type: ignore[type-var]
    assert not (tmp_path / "bad").exists()


def test_a_closed_viper_refuses_clients(tmp_path: Path) -> None:
    viper_db = Viper.create(tmp_path / "v")
    client = viper_db.get_client()
    viper_db.close()
    viper_db.close()
    with pytest.raises(viperdbm.ClosedError):
        client.get(b"k")
    with pytest.raises(viperdbm.ClosedError):
        viper_db.get_client().put(b"k", b"v")


def test_one_client_per_thread(tmp_path: Path) -> None:
    threads, per_thread = 4, 2000
    errors: list[BaseException] = []
    with Viper.create(tmp_path / "v", key_type=int, value_type=int) as viper_db:

        def work(t: int) -> None:
            try:
                client = viper_db.get_client()
                for i in range(per_thread):
                    key = t * per_thread + i
                    assert client.put(key, key * 2)
                    assert client.get(key) == key * 2
                for i in range(0, per_thread, 2):
                    assert client.remove(t * per_thread + i)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert len(viper_db) == threads * per_thread // 2
    with Viper.open(tmp_path / "v", key_type=int, value_type=int) as viper_db:
        reader = viper_db.get_read_only_client()
        assert reader.get(1) == 2 and reader.get(0) is None
        assert not hasattr(reader, "put")
