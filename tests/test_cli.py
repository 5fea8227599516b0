"""The ``viperdbm`` command line, end to end: every subcommand through the console script
(or ``python -m viperdbm``) on real stores in temporary directories."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _vdbtools import as_nobody, run_as_nobody, scratch_dir_for_nobody

import viperdbm

SCRIPT = shutil.which("viperdbm", path=os.path.dirname(sys.executable))
BASE_CMD = [SCRIPT] if SCRIPT else [sys.executable, "-m", "viperdbm"]


def run(
    *args: str | Path, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = dict(os.environ)
    full_env.pop("VIPERDBM_PROGRESS", None)
    full_env.update(env or {})
    return subprocess.run(
        [*BASE_CMD, *map(str, args)],
        input=stdin,
        capture_output=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def ok(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = run(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def assert_user_error(result: subprocess.CompletedProcess[bytes], status: int, *words: str) -> str:
    """One line on stderr, no traceback, the given exit status, and the given words."""
    err = result.stderr.decode()
    assert result.returncode == status, (result.returncode, err)
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("viperdbm"), err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.vdb"
    with viperdbm.open(path, "c") as db:
        db[b"alpha"] = b"1"
        db[b"beta"] = b"2"
        db[b"gamma"] = b"3"
    return path


def arbitrary_records() -> dict[bytes, bytes]:
    records = {bytes([i]): bytes(range(256)) + bytes([i]) for i in range(256)}
    records[b""] = b""
    records[b"empty value"] = b""
    records[b"line\nbreak:colon\r\n"] = b"\n\r\x00:"
    records[bytes(range(256))] = bytes(range(255, -1, -1)) * 4
    records[b"large"] = os.urandom(3 << 20)  # a jumbo record (over 1 MiB)
    records[b"medium"] = os.urandom(300_000)
    return records


# ---------------------------------------------------------------------- basics
def test_version_and_help_through_both_entry_points() -> None:
    assert ok("--version").decode().strip() == f"viperdbm {viperdbm.__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "viperdbm", "--help"], capture_output=True, check=False
    )
    assert result.returncode == 0
    for command in ("stats", "check", "dump", "load", "reorganize", "copy", "bench", "keys"):
        assert command.encode() in result.stdout


def test_set_get_delete_keys(tmp_path: Path) -> None:
    path = tmp_path / "kv.vdb"
    ok("set", path, "user:42", "Ada")  # creates the store
    ok("set", path, "user:7", "Grace")
    assert ok("get", path, "user:42") == b"Ada\n"
    assert ok("keys", path) == b"user:42\nuser:7\n"
    assert json.loads(ok("keys", "--json", path)) == ["user:42", "user:7"]
    ok("delete", path, "user:7")
    assert ok("keys", path) == b"user:42\n"
    assert_user_error(run("get", path, "user:7"), 1, "no key", "user:7")
    assert_user_error(run("delete", path, "user:7"), 1, "no key")


def test_base64_keys_and_values_for_binary_data(tmp_path: Path) -> None:
    path = tmp_path / "bin.vdb"
    key, value = b"\x00\xff\n", bytes(range(256))
    ok("set", "--base64", path, base64.b64encode(key).decode(), base64.b64encode(value).decode())
    out = ok("get", "--base64", path, base64.b64encode(key).decode())
    assert base64.b64decode(out.strip()) == value
    keys = json.loads(ok("keys", "--json", "--base64", path))
    assert [base64.b64decode(k) for k in keys] == [key]
    assert_user_error(run("keys", "--json", path), 1, "--base64")
    assert_user_error(run("get", "--base64", path, "***"), 2, "base64")
    with viperdbm.open(path) as db:
        assert db[key] == value


def test_stats_text_and_json(store: Path) -> None:
    text = ok("stats", store).decode()
    for label in ("records", "live bytes", "dead bytes", "pool size", "index rebuild"):
        assert label in text
    data = json.loads(ok("stats", "--json", store))
    assert data["records"] == 3
    for name in ("live_bytes", "dead_bytes", "pool_bytes", "rebuild_seconds", "index_bytes"):
        assert name in data


# ---------------------------------------------------------------------- dump and load
def test_dump_load_round_trip_of_arbitrary_bytes(tmp_path: Path) -> None:
    records = arbitrary_records()
    src = tmp_path / "src.vdb"
    with viperdbm.open(src, "c") as db:
        db.update(records)
    dump_file = tmp_path / "src.dump"
    n = len(records)
    assert f"dumped {n} records".encode() in ok("dump", src, dump_file)
    lines = dump_file.read_bytes().split(b"\n")
    assert lines[0].startswith(b"viperdbm-dump 1 {")
    assert lines[-2].startswith(b"viperdbm-dump-end %d sha256:" % n)
    assert all(line.isascii() for line in lines)

    out = ok("load", dump_file, tmp_path / "copy.vdb")
    assert f"loaded {n} records".encode() in out
    with viperdbm.open(tmp_path / "copy.vdb") as db:
        assert dict(db.items()) == records

    # the dump of the loaded store equals the first apart from its creation time
    again = ok("dump", tmp_path / "copy.vdb")  # to standard output
    assert again.split(b"\n")[1:] == lines[1:]
    # and a dump read from standard input loads the same records
    ok("load", "-", tmp_path / "stdin.vdb", stdin=again)
    with viperdbm.open(tmp_path / "stdin.vdb") as db:
        assert dict(db.items()) == records


def _dump_lines(tmp_path: Path, store: Path) -> list[bytes]:
    dump_file = tmp_path / "good.dump"
    ok("dump", store, dump_file)
    return dump_file.read_bytes().split(b"\n")[:-1]


@pytest.mark.parametrize(
    ("damage", "line", "words"),
    [
        ("bad-base64", 3, ["line 3", "base64"]),
        ("no-colon", 2, ["line 2", "not a record"]),
        ("changed-record", 5, ["line 5", "checksum"]),
        ("truncated", 5, ["line 5", "truncated"]),
        ("wrong-count", 5, ["line 5", "says 4 records"]),
        ("newer-version", 1, ["line 1", "version 9", "upgrade"]),
        ("not-a-dump", 1, ["line 1", "not a viperdbm dump"]),
        ("after-end", 6, ["line 6", "after the end"]),
    ],
)
def test_load_of_a_damaged_dump_names_the_line(
    tmp_path: Path, store: Path, damage: str, line: int, words: list[str]
) -> None:
    lines = _dump_lines(tmp_path, store)  # header, 3 records, end line
    if damage == "bad-base64":
        lines[2] = b"YmV0YQ==:*not base64*"
    elif damage == "no-colon":
        lines[1] = b"YWxwaGE="
    elif damage == "changed-record":
        lines[3] = base64.b64encode(b"gamma") + b":" + base64.b64encode(b"999")
    elif damage == "truncated":
        lines = lines[:-1]
    elif damage == "wrong-count":
        lines[-1] = lines[-1].replace(b" 3 ", b" 4 ")
    elif damage == "newer-version":
        lines[0] = lines[0].replace(b"viperdbm-dump 1", b"viperdbm-dump 9")
    elif damage == "not-a-dump":
        lines[0] = b"GDBM dump file"
    elif damage == "after-end":
        lines.append(b"YQ==:Yg==")
    bad = tmp_path / "bad.dump"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    target = tmp_path / "target.vdb"
    err = assert_user_error(run("load", bad, target), 1, *words)
    assert str(bad) in err
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_load_refuses_an_existing_destination_unless_replace(tmp_path: Path, store: Path) -> None:
    dump_file = tmp_path / "d.dump"
    ok("dump", store, dump_file)
    other = tmp_path / "other.vdb"
    with viperdbm.open(other, "c") as db:
        db[b"old"] = b"x"
    assert_user_error(run("load", dump_file, other), 1, "exists", "--replace")
    ok("load", "--replace", dump_file, other)
    with viperdbm.open(other) as db:
        assert sorted(db.keys()) == [b"alpha", b"beta", b"gamma"]
    not_a_store = tmp_path / "plain-dir"
    not_a_store.mkdir()
    assert_user_error(run("load", "--replace", dump_file, not_a_store), 1, "not a viperdbm store")


def test_dump_json_summary_and_usage_error(tmp_path: Path, store: Path) -> None:
    data = json.loads(ok("dump", "--json", store, tmp_path / "x.dump"))
    assert data["records"] == 3
    assert_user_error(run("dump", "--json", store), 2, "--json needs OUT")


# ---------------------------------------------------------------------- copy, reorganize
def test_copy(tmp_path: Path, store: Path) -> None:
    dst = tmp_path / "copy.vdb"
    assert b"copied 3 records" in ok("copy", store, dst)
    with viperdbm.open(dst) as db, viperdbm.open(store) as orig:
        assert dict(db.items()) == dict(orig.items())
    assert_user_error(run("copy", store, dst), 1, "exists")
    data = json.loads(ok("copy", "--json", "--replace", store, dst))
    assert data["records"] == 3


def test_reorganize_reclaims_dead_bytes(tmp_path: Path) -> None:
    path = tmp_path / "r.vdb"
    with viperdbm.open(path, "c") as db:
        for i in range(2000):
            db[b"k%d" % i] = b"v" * 200
        for i in range(0, 2000, 2):
            del db[b"k%d" % i]
    data = json.loads(ok("reorganize", "--json", path))
    assert data["before"]["dead_bytes"] > 0
    assert data["after"]["dead_bytes"] < data["before"]["dead_bytes"]
    assert data["after"]["records"] == 1000
    assert b"reorganized" in ok("reorganize", path)


# ---------------------------------------------------------------------- check and salvage
def test_check_of_a_sound_store(store: Path) -> None:
    out = ok("check", store).decode()
    assert "ok" in out and "consistent" in out
    data = json.loads(ok("check", "--json", store))
    assert data["ok"] is True and data["records"] == 3 and data["damage"] == []


def make_damaged_store(path: Path) -> int:
    """A store of 300 records over three blocks with one byte of a record in the middle of
    the first block overwritten; returns how many records survive its recovery."""
    with viperdbm.open(path, "n") as db:
        for i in range(300):
            db[b"k%04d" % i] = (b"value-%04d-" % i) * 3000
    for part in sorted((path / "parts").glob("*.pmem")):
        at = part.read_bytes().find(b"value-0010-")
        if at > 0:
            break
    assert at > 0
    with open(part, "r+b") as f:
        f.seek(at + 100)
        f.write(b"X")
    with viperdbm.open(path) as db:
        assert db._engine is not None and db._engine.damage
        return len(db)


def test_check_finds_a_damaged_record_and_salvage_copies_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "damaged.vdb"
    survivors = make_damaged_store(path)
    assert 0 < survivors < 300
    result = run("check", path)
    assert result.returncode == 1
    assert b"PROBLEMS FOUND" in result.stdout and b"unreadable bytes at offset" in result.stdout
    data = json.loads(run("check", "--json", path).stdout)
    assert data["ok"] is False and len(data["damage"]) == 1 and data["records"] == survivors

    out = tmp_path / "salvaged.vdb"
    result = run("check", path, "--salvage", out)
    assert result.returncode == 1  # the store still has problems; the copy is made anyway
    assert f"salvaged {survivors} records".encode() in result.stdout
    assert ok("check", out)  # the salvaged store is sound
    with viperdbm.open(out) as db, viperdbm.open(path) as orig:
        assert dict(db.items()) == dict(orig.items())


def test_check_of_a_store_whose_pool_header_is_destroyed(tmp_path: Path, store: Path) -> None:
    with open(store / "parts" / "000000.pmem", "r+b") as f:
        f.write(b"X" * 32)  # libpmemobj's pool header
    result = run("check", store)
    assert result.returncode == 1
    assert b"does not open" in result.stdout and b"wrong pool type" in result.stdout
    # the store was closed cleanly, so readers (and salvage) can still map its parts
    out = tmp_path / "out.vdb"
    result = run("check", store, "--salvage", out)
    assert result.returncode == 1 and b"salvaged 3 records" in result.stdout
    with viperdbm.open(out) as db:
        assert sorted(db.keys()) == [b"alpha", b"beta", b"gamma"]
    # without the readers' block list (as after a crash) nothing opens it: said clearly
    (store / "blocks").unlink()
    err = assert_user_error(
        run("check", store, "--salvage", tmp_path / "out2.vdb"), 1, "not supported"
    )
    assert "does not open" in err
    assert not (tmp_path / "out2.vdb").exists()


# ---------------------------------------------------------------------- user errors
def test_user_errors_are_one_line_without_traceback(tmp_path: Path, store: Path) -> None:
    missing = tmp_path / "missing.vdb"
    for args in (
        ("stats", missing),
        ("get", missing, "k"),
        ("keys", missing),
        ("delete", missing, "k"),
        ("dump", missing),
        ("reorganize", missing),
        ("copy", missing, tmp_path / "x.vdb"),
        ("check", missing),
        ("load", tmp_path / "missing.dump", tmp_path / "y.vdb"),
    ):
        assert_user_error(run(*args), 1, "missing")
    plain_file = tmp_path / "file.txt"
    plain_file.write_text("hello")
    assert_user_error(run("stats", plain_file), 1, "not a viperdbm store")
    assert_user_error(run("check", tmp_path), 1, "not a viperdbm store")
    # bad arguments: usage errors, status 2
    assert_user_error(run("frobnicate"), 2, "invalid choice")
    assert_user_error(run("stats"), 2, "required")
    assert_user_error(run("demo", "--records", "zero"), 2, "invalid int")
    assert_user_error(run(), 2, "required")


def test_a_second_writer_is_reported_not_waited_for(store: Path) -> None:
    """Commands that write need the writer's lock: refused at once while a writer holds it;
    the read-only ones work alongside it (issue 12; more in tests/test_live_readers.py)."""
    with viperdbm.open(store, "w") as db:
        db[b"delta"] = b"4"
        for args in (("set", store, "k", "v"), ("delete", store, "alpha"), ("reorganize", store)):
            assert_user_error(run(*args), 1, "in use")
        assert json.loads(ok("stats", "--json", store))["records"] == 4
        assert json.loads(ok("check", "--json", store))["ok"] is True
        assert ok("get", store, "delta") == b"4\n"


def test_output_to_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "many.vdb"
    with viperdbm.open(path, "c") as db:
        for i in range(20000):
            db[b"key-%06d" % i] = b""
    proc = subprocess.Popen(
        [*BASE_CMD, "keys", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    proc.stderr.close()
    assert b"Traceback" not in err


# ---------------------------------------------------------------------- progress
def _run_on_pty(args: list[str]) -> tuple[int, bytes, bytes]:
    """Run with standard error on a pseudo-terminal; return (status, stdout, terminal text)."""
    master, slave = os.openpty()
    env = dict(os.environ)
    env.pop("VIPERDBM_PROGRESS", None)
    proc = subprocess.Popen(
        [*BASE_CMD, *args], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(timeout=60), out, seen


@pytest.fixture
def bigger_store(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "big.vdb"
    with viperdbm.open(path, "c") as db:
        for i in range(5000):
            db[b"k%05d" % i] = b"v" * 50
    yield path


@pytest.mark.parametrize("command", ["dump", "load", "copy", "check", "reorganize"])
def test_progress_bar_on_a_terminal_and_quiet_in_a_pipe(
    tmp_path: Path, bigger_store: Path, command: str
) -> None:
    dump_file = tmp_path / "big.dump"
    args = {
        "dump": ["dump", str(bigger_store), str(dump_file)],
        "load": ["load", str(dump_file), str(tmp_path / "loaded.vdb")],
        "copy": ["copy", str(bigger_store), str(tmp_path / "copied.vdb")],
        "check": ["check", str(bigger_store)],
        "reorganize": ["reorganize", str(bigger_store)],
    }[command]
    if command == "load":
        ok("dump", bigger_store, dump_file)
    status, _, terminal = _run_on_pty(args)
    assert status == 0, terminal
    assert f"{command} ".encode() in terminal and b"\r" in terminal
    if command != "reorganize":
        assert b"100%" in terminal and b"5,000/5,000" in terminal
    # the same command in a pipe: nothing on standard error
    if command in ("load", "copy"):
        shutil.rmtree(args[-1])
    result = run(*args)
    assert result.returncode == 0 and result.stderr == b""


# ---------------------------------------------------------------------- bench and demo
def test_bench_says_when_the_benchmarks_are_missing(tmp_path: Path) -> None:
    assert_user_error(
        run("bench", "--benchmarks", tmp_path), 1, "benchmarks are not here", "checkout"
    )


def test_bench_runs_run_py_quick_unless_full(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "run.py").write_text("import sys, json\nprint(json.dumps(sys.argv[1:]))\n")
    assert json.loads(ok("bench", "--benchmarks", bench)) == ["--quick"]
    assert json.loads(ok("bench", "--full", "--benchmarks", bench)) == ["--full"]
    assert json.loads(ok("bench", "--benchmarks", bench, "--", "--store", "viperdbm")) == [
        "--quick",
        "--store",
        "viperdbm",
    ]


def test_demo(tmp_path: Path) -> None:
    out = ok("demo", "--records", "3000", "--dir", tmp_path).decode()
    assert "0 lost" in out and "demo done" in out
    assert list(tmp_path.iterdir()) == []


def test_verbose_logs_open_timing_but_no_keys(store: Path) -> None:
    result = subprocess.run(
        [*BASE_CMD, "-v", "get", str(store), "alpha"], capture_output=True, check=False
    )
    assert result.returncode == 0
    assert b"viperdbm: opened " in result.stderr
    assert b"alpha" not in result.stderr


# --------------------------------------------------------------------------- permissions
PERMISSION_PROBE = r"""
import json, sys, viperdbm
try:
    viperdbm.open(sys.argv[1], sys.argv[2]).close()
    print(json.dumps(["ok"]))
except Exception as exc:
    print(json.dumps([type(exc).__name__, getattr(exc, "errno", None), str(exc)]))
"""


@pytest.mark.parametrize("case", ["store-dir-0700", "files-0600"])
def test_permission_denied_says_so(case: str) -> None:
    """Not "not a viperdbm store" with a hint to replace it: EACCES, in the user's terms."""
    nobody = as_nobody("run the probe as another user")
    with scratch_dir_for_nobody("viperdbm-perm-") as base:
        store = base / "s.vdb"
        with viperdbm.open(store, "c", 0o644) as db:
            db[b"k"] = b"v"
        if case == "store-dir-0700":
            store.chmod(0o700)
        else:
            for f in [store / "lock", store / "pool.set", *(store / "parts").iterdir()]:
                f.chmod(0o600)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        # 'w' first: it gave errno None (a bare error) where 'r' gave EACCES
        for flag in ("w", "r"):
            proc = run_as_nobody(sys.executable, "-c", PERMISSION_PROBE, str(store), flag)
            assert proc.returncode == 0, proc.stderr
            result = json.loads(proc.stdout)
            assert result[0] not in ("ok", "NotAStoreError", "PermissionError"), (flag, result)
            assert result[1] == 13, (flag, result)  # EACCES, never None
            assert "ermission denied" in result[2] and "flag 'n'" not in result[2], (flag, result)
            assert "/proc/self/fd" not in result[2], result
        cli = subprocess.run(
            [*nobody, *BASE_CMD, "keys", str(store)], capture_output=True, env=env, timeout=120
        )
        assert cli.returncode != 0
        assert_user_error(cli, cli.returncode, "ermission denied")


def test_a_moved_store_is_checked_by_pmemobj_after_its_next_writable_open(
    store: Path, tmp_path: Path
) -> None:
    """check says the next open points pool.set at the store's own parts/: it must."""
    moved = tmp_path / "moved.vdb"
    store.rename(moved)
    assert str(moved / "parts") not in (moved / "pool.set").read_text()
    with viperdbm.open(moved, "w") as db:
        assert db[b"alpha"] == b"1"
    assert str(moved / "parts") in (moved / "pool.set").read_text()
    report = json.loads(ok("check", "--json", moved))
    assert "not run" not in json.dumps(report), report
