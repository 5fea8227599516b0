#!/usr/bin/env python3
"""run.py -- viperdbm against its peers: one command, one run, one report.

    python benchmarks/run.py --full                 # the whole matrix (~20 min), tmpfs + ext4
    python benchmarks/run.py --quick --out /tmp/x   # a smoke run of a few seconds
    python benchmarks/run.py --full --fs tmpfs      # only the tmpfs part
    python benchmarks/run.py --report-only          # rebuild RESULTS.md and plots from raw/

Every measurement is made by benchmarks/peers.py (see its docstring for the workloads): one
child process per (store, repeat), the same keys and values for every store (a function of
the seed), each child under the interpreter that can import its store:

  venv   the project's .venv (viperdbm, dict, dbm.dumb and the PyPI peers)
  deb    Debian's /usr/bin/python3.11 with python3-gdbm (dbm.gnu, dbm.ndbm; viperdbm and dict
         again, with PYTHONPATH at this checkout, so that dbm.gnu is compared on the same
         interpreter)
  py313  a Python 3.13 (dbm.sqlite3; dict as the calibration of that interpreter)

This script plans the runs, shows which store and workload is running (on a terminal; it is
silent in a pipe except for errors and the final line), collects the JSON written by
peers.py under <out>/raw/, and writes <out>/RESULTS.md (machine, versions, method, absolute
rates, ratios viperdbm/peer with the issue's targets marked met or not met) and PNG plots.
With --full it also runs benchmarks/profile.py (py-spy and perf profiles of put and get).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "peers.py"
sys.path.insert(0, str(HERE))
import peers  # noqa: E402 -- the harness next to this file

Summary = dict[str, Any]

KEY_SIZE = 16
SEED = 42
RATES = ("insert", "get", "miss", "update", "iterate", "delete")
WORKLOAD_TITLES = {
    "insert": "insert",
    "get": "get (hit)",
    "miss": "get (miss)",
    "update": "update",
    "iterate": "iterate",
    "delete": "delete",
    "close_s": "close",
    "reopen_s": "reopen",
    "bytes_per_record": "space/rec",
    "rss_peak_growth": "peak RSS",
}
LOWER_IS_BETTER = ("close_s", "reopen_s", "bytes_per_record", "rss_peak_growth")
RATIO_COLUMNS = (*RATES, *LOWER_IS_BETTER)
EXT4_DIR = "/tmp/viperdbm-bench"
TMPFS_DIR = "/dev/shm"


# --------------------------------------------------------------------------- the plan


@dataclass
class Interp:
    key: str
    exe: str
    env: dict[str, str] = field(default_factory=dict)
    version: str = ""
    build: str = ""
    modules: dict[str, str] = field(default_factory=dict)  # module -> "ok" or the error

    def has(self, module: str) -> bool:
        return self.modules.get(module) == "ok"


@dataclass
class Job:
    config: str  # tmpfs-100B, ext4-100B, tmpfs-1000B, scaling, probe
    interp: str
    stores: list[str]
    n: int
    value_size: int = 100
    fs: str = "tmpfs"
    repeat: int = 1
    budget: float = 60.0
    n_for: dict[str, int] = field(default_factory=dict)
    probe: bool = False
    file: str = ""  # raw/<file>.json, set when planned

    def label(self) -> str:
        return f"{self.config} [{self.interp}] N={self.n:,}"

    def describe(self) -> str:
        what = "probe" if self.probe else f"N={self.n:,} {self.value_size}B x{self.repeat}"
        return f"{self.config} {self.interp} {what}: {', '.join(self.stores)}"


@dataclass
class Plan:
    mode: str  # quick | full
    headline_n: int
    big_n: int
    scaling_ns: list[int]
    jobs: list[Job]


PROBED_MODULES = (
    "viperdbm",
    "dbm.gnu",
    "dbm.ndbm",
    "dbm.sqlite3",
    "dbm.dumb",
    "semidbm",
    "lmdb",
    "sqlitedict",
    "diskcache",
    "rocksdict",
    "matplotlib",
)

_PROBE_SRC = """
import importlib, json, platform, sys
mods = {}
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
        mods[m] = "ok"
    except Exception as exc:
        mods[m] = type(exc).__name__ + ": " + str(exc)
extra = {}
try:
    import sqlite3
    extra["sqlite"] = sqlite3.sqlite_version
except Exception:
    pass
try:
    import dbm.ndbm
    extra["ndbm_library"] = dbm.ndbm.library
except Exception:
    pass
try:
    import viperdbm
    extra["viperdbm_file"] = viperdbm.__file__
except Exception:
    pass
print(json.dumps({"version": platform.python_version(), "build": " ".join(platform.python_build()),
                  "executable": sys.executable, "modules": mods, "extra": extra}))
"""


def probe_interp(key: str, exe: str | None, env: dict[str, str]) -> Interp | None:
    if not exe or not os.path.exists(exe):
        return None
    try:
        p = subprocess.run(
            [exe, "-c", _PROBE_SRC, *PROBED_MODULES],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
            cwd=str(HERE),
        )
        info = json.loads(p.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    it = Interp(key, exe, env, info["version"], info["build"], info["modules"])
    it.modules.update({f"extra:{k}": str(v) for k, v in info.get("extra", {}).items()})
    return it


def snapshot_package(dest: Path) -> str:
    """Copy the viperdbm package (Python files and the built native core) to dest, so that
    every child of this run imports the same code even if the package is rebuilt or edited
    while the run goes on.  Returns a short digest of what was copied."""
    src = REPO / "viperdbm"
    shutil.copytree(src, dest / "viperdbm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    h = hashlib.sha256()
    for f in sorted((dest / "viperdbm").rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def find_interpreters(args: argparse.Namespace, pkg: str) -> dict[str, Interp]:
    """pkg: the directory that holds the viperdbm package to measure (PYTHONPATH)."""
    out: dict[str, Interp] = {}
    venv = args.python or (
        str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else sys.executable
    )
    it = probe_interp("venv", venv, {"PYTHONPATH": pkg})
    if it is None:
        raise SystemExit(f"run.py: cannot run the project's interpreter {venv}")
    out["venv"] = it
    deb = probe_interp("deb", args.deb_python, {"PYTHONPATH": pkg})
    if deb is not None and (deb.has("dbm.gnu") or deb.has("dbm.ndbm")):
        out["deb"] = deb
    cands = (
        [args.py313]
        if args.py313
        else [
            os.path.expanduser("~/.pyenv/versions/3.13.0/bin/python3"),
            shutil.which("python3.13"),
        ]
    )
    for exe in cands:
        py = probe_interp("py313", exe, {})
        if py is not None and py.has("dbm.sqlite3"):
            out["py313"] = py
            break
    return out


def make_plan(mode: str, fs: str, interps: dict[str, Interp], probes: bool) -> Plan:
    quick = mode == "quick"
    hn = 3_000 if quick else 1_000_000
    bn = 1_000 if quick else 1_000_000
    scaling = [1_000, 3_000, 10_000] if quick else [10_000, 100_000, 1_000_000, 10_000_000]
    b_fast = 2.0 if quick else 60.0
    b_slow = 2.0 if quick else 15.0
    rep = 1 if quick else 3
    tiny = 1_000
    jobs: list[Job] = []
    has_deb, has_313 = "deb" in interps, "py313" in interps
    deb_vip = has_deb and interps["deb"].has("viperdbm")

    def add(**kw: Any) -> None:
        jobs.append(Job(**kw))

    if fs in ("tmpfs", "both"):
        c = "tmpfs-100B"
        add(
            config=c, interp="venv", stores=["viperdbm", "semidbm"], n=hn, repeat=rep, budget=b_fast
        )
        # lmdb: on tmpfs its fsync per commit costs nothing, so lmdb-nosync runs on ext4 only
        add(config=c, interp="venv", stores=["dict", "lmdb", "rocksdict"], n=hn, budget=b_fast)
        add(
            config=c,
            interp="venv",
            stores=["diskcache", "sqlitedict", "dbm.dumb"],
            n=hn,
            budget=b_slow,
            n_for={
                "diskcache": tiny if quick else 100_000,
                "sqlitedict": tiny if quick else 20_000,
                "dbm.dumb": tiny if quick else 100_000,
            },
        )
        if has_deb:
            add(
                config=c,
                interp="deb",
                stores=["viperdbm", "dbm.gnu"] if deb_vip else ["dbm.gnu"],
                n=hn,
                repeat=rep,
                budget=b_fast,
            )
            add(config=c, interp="deb", stores=["dict", "dbm.ndbm"], n=hn, budget=b_fast)
        if has_313:
            add(
                config=c,
                interp="py313",
                stores=["dict", "dbm.sqlite3"],
                n=hn,
                budget=b_slow,
                n_for={"dbm.sqlite3": tiny if quick else 200_000},
            )
        # the same with 1000-byte values
        # (viperdbm, semidbm and dbm.gnu at N; the others, 1 GB of values each, at less)
        c = "tmpfs-1000B"
        add(
            config=c,
            interp="venv",
            stores=["viperdbm", "semidbm"] + ([] if quick else ["dict", "lmdb", "rocksdict"]),
            n=bn,
            value_size=1000,
            budget=b_fast,
            n_for={} if quick else {"lmdb": 200_000, "rocksdict": 200_000},
        )
        if not quick:
            add(
                config=c,
                interp="venv",
                stores=["diskcache", "sqlitedict", "dbm.dumb"],
                n=bn,
                value_size=1000,
                budget=b_slow,
                n_for={"diskcache": 50_000, "sqlitedict": 10_000, "dbm.dumb": 20_000},
            )
        if has_deb:
            add(
                config=c,
                interp="deb",
                stores=(["viperdbm"] if deb_vip else [])
                + ["dbm.gnu"]
                + ([] if quick else ["dbm.ndbm"]),
                n=bn,
                value_size=1000,
                budget=b_fast,
                n_for={} if quick else {"dbm.ndbm": 200_000},
            )
        if has_313 and not quick:
            add(
                config=c,
                interp="py313",
                stores=["dbm.sqlite3"],
                n=bn,
                value_size=1000,
                budget=b_slow,
                n_for={"dbm.sqlite3": 50_000},
            )
        # how cost grows with N: viperdbm to 10M, with dict beside it (the in-process
        # ceiling: how much of the growth any in-memory map pays for caches and TLB);
        # semidbm and dbm.gnu to the headline N
        for n in scaling:
            if n == hn:
                continue
            if n > hn:
                add(
                    config="scaling",
                    interp="venv",
                    stores=["viperdbm"] if quick else ["viperdbm", "dict"],
                    n=n,
                    budget=max(b_fast, 180.0) if not quick else b_fast,
                )
            else:
                add(
                    config="scaling",
                    interp="venv",
                    stores=["viperdbm"] if quick else ["viperdbm", "semidbm", "dict"],
                    n=n,
                    repeat=rep,
                    budget=b_fast,
                )
                if has_deb and not quick:
                    add(
                        config="scaling",
                        interp="deb",
                        stores=["dbm.gnu"],
                        n=n,
                        repeat=rep,
                        budget=b_fast,
                    )
        if probes:
            add(
                config="probe",
                interp="venv",
                probe=True,
                n=0,
                stores=[
                    "viperdbm",
                    "semidbm",
                    "lmdb",
                    "lmdb-nosync",
                    "rocksdict",
                    "diskcache",
                    "sqlitedict",
                    "dbm.dumb",
                ],
            )
            if has_deb:
                add(config="probe", interp="deb", probe=True, n=0, stores=["dbm.gnu", "dbm.ndbm"])
            if has_313:
                add(config="probe", interp="py313", probe=True, n=0, stores=["dbm.sqlite3"])
    if fs in ("ext4", "both"):
        c = "ext4-100B"
        en = tiny if quick else hn
        add(
            config=c,
            interp="venv",
            fs="ext4",
            n=en,
            budget=b_fast,
            stores=["viperdbm", "semidbm"]
            if quick
            else ["viperdbm", "semidbm", "lmdb-nosync", "rocksdict"],
        )
        if not quick:
            add(
                config=c,
                interp="venv",
                fs="ext4",
                n=en,
                budget=b_slow,
                stores=["lmdb", "diskcache", "sqlitedict", "dbm.dumb"],
                n_for={
                    "lmdb": 5_000,
                    "diskcache": 30_000,
                    "sqlitedict": 10_000,
                    "dbm.dumb": 50_000,
                },
            )
        if has_deb:
            add(
                config=c,
                interp="deb",
                fs="ext4",
                n=en,
                budget=b_fast,
                stores=(["viperdbm"] if deb_vip else [])
                + ["dbm.gnu"]
                + ([] if quick else ["dbm.ndbm"]),
            )
        if has_313 and not quick:
            add(
                config=c,
                interp="py313",
                fs="ext4",
                n=en,
                budget=b_slow,
                stores=["dbm.sqlite3"],
                n_for={"dbm.sqlite3": 20_000},
            )
    for i, j in enumerate(jobs):
        j.file = f"{i:02d}-{j.config}-{j.interp}-{j.n}" + ("-probe" if j.probe else "")
    return Plan(mode, hn, bn, scaling, jobs)


# --------------------------------------------------------------------------- running


class Progress:
    """A status line on a terminal; nothing in a pipe (errors are always printed)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self.prefix = ""
        self.shown = False

    def _clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def status(self, text: str) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = f"[{self._clock()}] {self.prefix}{text}"
        self.stream.write("\r\x1b[K" + line[:width])
        self.stream.flush()
        self.shown = True

    def line(self, text: str) -> None:
        if not self.tty:
            return
        self.stream.write(("\r\x1b[K" if self.shown else "") + text + "\n")
        self.stream.flush()
        self.shown = False

    def error(self, text: str) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = False


_STAGE = re.compile(r"^\s*\[(\S+) rep (\d+)\] (.*)$")
_START = re.compile(r"^\[(\d+)/(\d+)\] (\S+) n=([\d,]+)")
_DONE = re.compile(r"^\s+insert=")
_PROBE = re.compile(r"^probe (\S+)")


def fs_dir(fs: str) -> str:
    if fs == "tmpfs":
        return TMPFS_DIR
    os.makedirs(EXT4_DIR, exist_ok=True)
    return EXT4_DIR


def peers_cmd(job: Job, interp: Interp, json_path: Path, stores: Sequence[str]) -> list[str]:
    cmd = [interp.exe, str(PEERS)]
    for s in stores:
        cmd += ["--store", s]
    cmd += ["--dir", fs_dir(job.fs), "--json", str(json_path)]
    if job.probe:
        return [*cmd, "--probe", "--key-size", str(KEY_SIZE), "--value-size", "100"]
    cmd += [
        "--n",
        str(job.n),
        "--key-size",
        str(KEY_SIZE),
        "--value-size",
        str(job.value_size),
        "--seed",
        str(SEED),
        "--repeat",
        str(job.repeat),
        "--budget",
        str(job.budget),
        "--label",
        job.label(),
    ]
    for k, v in job.n_for.items():
        if k in stores:
            cmd += ["--n-for", f"{k}={v}"]
    return cmd


def run_peers(
    cmd: list[str], env: dict[str, str], log: TextIO, progress: Progress, md_path: Path
) -> int:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    with open(md_path, "w") as md:
        proc = subprocess.Popen(
            cmd,
            stdout=md,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            cwd=str(HERE),
        )
        assert proc.stderr is not None
        store = ""
        for line in proc.stderr:
            log.write(line)
            log.flush()
            text = line.rstrip("\n")
            m = _START.match(text)
            if m:
                store = f"{m.group(3)} rep {m.group(1)}/{m.group(2)} n={m.group(4)}"
                progress.status(f"{store}: starting")
                continue
            m = _STAGE.match(text)
            if m:
                progress.status(f"{store or m.group(1)}: {m.group(3)}")
                continue
            m = _PROBE.match(text)
            if m:
                progress.status(f"durability probe of {m.group(1)}")
                continue
            if _DONE.match(text):
                progress.line(f"  {store:40s} {text.strip()}")
            elif "ERROR" in text or "Traceback" in text:
                progress.error(f"  {text.strip()}")
            elif text.startswith("    ") and "ops/s" in text:
                progress.status(f"{store}: {text.strip()}")
        return proc.wait()


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        parts = [int(x) for x in _read("/proc/stat").split("\n", 1)[0].split()[1:]]
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return sum(parts), idle

    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def wait_idle(limit: float, progress: Progress, log: TextIO) -> None:
    """Wait up to `limit` seconds for the machine to have a core free (others use < 1 CPU)."""
    if limit <= 0:
        return
    cores = os.cpu_count() or 1
    t0 = time.monotonic()
    while True:
        busy = cpu_busy() * cores
        if busy < max(1.0, cores - 1.0) or time.monotonic() - t0 > limit:
            log.write(f"(other work used {busy:.1f} of {cores} CPUs when this job started)\n")
            return
        progress.status(f"waiting for a quiet machine: {busy:.1f} of {cores} CPUs busy")
        time.sleep(4.0)


def run_job(job: Job, interp: Interp, raw: Path, log: TextIO, progress: Progress) -> None:
    json_path = raw / f"{job.file}.json"
    cmd = peers_cmd(job, interp, json_path, job.stores)
    rc = run_peers(cmd, interp.env, log, progress, raw / f"{job.file}.md")
    if rc != 0 or not json_path.exists():
        progress.error(f"run.py: peers.py exited {rc} for {job.describe()} (see run.log)")
        return
    if job.probe:
        return
    # a child that crashed (e.g. the package was rebuilt under it) is run once more
    doc = json.loads(json_path.read_text())
    bad = [
        s["name"] for s in doc.get("summary", []) if not s.get("skipped") and not s.get("repeats")
    ]
    if not bad:
        return
    progress.error(f"run.py: {', '.join(bad)} failed in {job.describe()}; running it again")
    retry_path = raw / f"{job.file}-retry.json"
    rc = run_peers(
        peers_cmd(job, interp, retry_path, bad),
        interp.env,
        log,
        progress,
        raw / f"{job.file}-retry.md",
    )
    if rc == 0 and retry_path.exists():
        again = json.loads(retry_path.read_text())
        keep = [s for s in doc["summary"] if s["name"] not in bad]
        doc["summary"] = keep + again.get("summary", [])
        doc["runs"] = doc.get("runs", []) + again.get("runs", [])
        json_path.write_text(json.dumps(doc, indent=1))


# --------------------------------------------------------------------------- machine facts


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=30, cwd=str(REPO)
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def dpkg_version(pkg: str) -> str:
    return _cmd(["dpkg-query", "-W", "-f=${Version}", pkg]) or "not installed"


def mount_of(path: str) -> dict[str, str]:
    path = os.path.realpath(path)
    best: dict[str, str] = {"mount": "?", "type": "?", "source": "?"}
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1]
        inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best["mount"] if best["mount"] != "?" else ""):
            best = {
                "mount": mnt,
                "type": parts[2],
                "source": parts[0],
                "options": parts[3] if len(parts) > 3 else "",
            }
    with contextlib.suppress(OSError):
        st = os.statvfs(path)
        best["size"] = f"{st.f_blocks * st.f_frsize / 2**30:.0f} GiB"
    return best


def machine_facts() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor() or "?",
    )
    flags = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    mem = next(
        (ln for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")),
        "MemTotal: 0 kB",
    )
    os_name = next(
        (
            ln.split("=", 1)[1].strip('"')
            for ln in _read("/etc/os-release").splitlines()
            if ln.startswith("PRETTY_NAME")
        ),
        "?",
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "virtualized": " hypervisor" in flags,
        "ram_gib": int(mem.split()[1]) / 2**20,
        "kernel": platform.release(),
        "os": os_name,
        "loadavg": _read("/proc/loadavg").split()[:3],
    }


def git_state() -> str:
    git = _cmd(["git", "rev-parse", "--short", "HEAD"]) or "?"
    dirty = _cmd(["git", "status", "--porcelain", "--", "viperdbm", "native", "setup.py"])
    return f"git {git}{' + uncommitted changes' if dirty else ''}"


def versions(interps: dict[str, Interp], digest: str) -> dict[str, Any]:
    it = interps["venv"]
    p = subprocess.run(
        [it.exe, "-c", "import viperdbm; print(viperdbm.__version__)"],
        capture_output=True,
        text=True,
        env={**os.environ, **it.env},
        cwd=str(HERE),
    )
    vip = p.stdout.strip()
    return {
        "viperdbm": f"{vip or '?'} ({git_state()} when the run started; every child imported "
        f"a copy of the package taken then, sha256 {digest} of its files)",
        "libpmemobj": dpkg_version("libpmemobj1"),
        "libgdbm": dpkg_version("libgdbm6"),
        "libdb (Berkeley DB, behind dbm.ndbm)": dpkg_version("libdb5.3"),
        "python3-gdbm": dpkg_version("python3-gdbm"),
    }


# --------------------------------------------------------------------------- collecting


@dataclass
class Results:
    plan: Plan
    interps: dict[str, Interp]
    summaries: list[Summary]
    probes: list[dict[str, Any]]
    meta: dict[str, Any]

    def find(self, config: str, interp: str, store: str, n: int | None = None) -> Summary | None:
        for s in self.summaries:
            if (
                s["config"] == config
                and s["interp"] == interp
                and s["name"] == store
                and (n is None or s["n_req"] == n)
                and s.get("metrics")
            ):
                return s
        return None

    def config_rows(self, config: str) -> list[Summary]:
        return [s for s in self.summaries if s["config"] == config]


def load_results(out: Path) -> Results:
    meta = json.loads((out / "raw" / "plan.json").read_text())
    plan = Plan(
        meta["plan"]["mode"],
        meta["plan"]["headline_n"],
        meta["plan"]["big_n"],
        meta["plan"]["scaling_ns"],
        [Job(**j) for j in meta["plan"]["jobs"]],
    )
    interps = {k: Interp(**v) for k, v in meta["interps"].items()}
    summaries: list[Summary] = []
    probes: list[dict[str, Any]] = []
    for job in plan.jobs:
        path = out / "raw" / f"{job.file}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        if job.probe:
            for p in doc.get("probes", []):
                p["interp"] = job.interp
                probes.append(p)
            continue
        for s in doc.get("summary", []):
            s["config"], s["interp"] = job.config, job.interp
            s["n_req"] = job.n
            s["value_size"] = job.value_size
            s["fs_req"] = job.fs
            s["budget"] = job.budget
            summaries.append(s)
    return Results(plan, interps, summaries, probes, meta)


# --------------------------------------------------------------------------- report


def metric(s: Summary | None, key: str) -> float | None:
    if not s:
        return None
    v = (s.get("metrics") or {}).get(key)
    return float(v) if isinstance(v, int | float) else None


def ratio(key: str, vip: Summary | None, peer: Summary | None) -> float | None:
    a, b = metric(vip, key), metric(peer, key)
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b if key in RATES else b / a


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return peers.DASH
    if x >= 100:
        return f"{x:.0f}x"
    if x >= 10:
        return f"{x:.1f}x"
    return f"{x:.2f}x"


def fmt_metric(key: str, v: float | None) -> str:
    if v is None:
        return peers.DASH
    if key in RATES:
        return peers.fmt_rate(v)
    if key.endswith("_s"):
        return peers.fmt_s(v)
    if key == "rss_peak_growth":
        return f"{v / 2**20:.0f} MB"
    return f"{v:.0f}"


def cpu_share(s: Summary) -> float | None:
    cpu, wall = metric(s, "cpu_s"), metric(s, "wall_s")
    return cpu / wall if cpu is not None and wall else None


def fmt_share(s: Summary) -> str:
    x = cpu_share(s)
    return peers.DASH if x is None else f"{x:.2f}"


def fmt_n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


def reference(res: Results, config: str, peer: Summary) -> tuple[Summary | None, str]:
    """The viperdbm run a peer is compared with: the same interpreter when there is one."""
    same = res.find(config, peer["interp"], "viperdbm")
    if same is not None:
        return same, peer["interp"]
    return res.find(config, "venv", "viperdbm"), "venv"


CONFIG_TITLES = {
    "tmpfs-100B": "16-byte keys, 100-byte values, tmpfs (/dev/shm)",
    "tmpfs-1000B": "16-byte keys, 1000-byte values, tmpfs (/dev/shm)",
    "ext4-100B": "16-byte keys, 100-byte values, ext4 (" + EXT4_DIR + ")",
}


def store_label(s: Summary) -> str:
    return str(s["name"]) + (f" ({s['interp']})" if s["name"] in ("viperdbm", "dict") else "")


def sort_rows(rows: Iterable[Summary]) -> list[Summary]:
    def key(s: Summary) -> tuple[int, float]:
        first = 0 if s["name"] == "viperdbm" else 1 if s["name"] == "dict" else 2
        return first, -(metric(s, "insert") or 0)

    return sorted(rows, key=key)


@dataclass
class Verdict:
    config: str
    target: str
    value: float | None
    shown: str
    ok: bool | None
    how: str = ""


def check_targets(res: Results) -> list[Verdict]:
    out: list[Verdict] = []

    def mark(
        config: str,
        text: str,
        v: float | None,
        thr: float,
        ge: bool,
        shown: str = "",
        how: str = "",
    ) -> None:
        ok = None if v is None else (v >= thr if ge else v <= thr)
        out.append(Verdict(config, text, v, shown or fmt_ratio(v), ok, how))

    for config in ("tmpfs-100B", "tmpfs-1000B", "ext4-100B"):
        vip = res.find(config, "venv", "viperdbm")
        if vip is None:
            continue
        semi = res.find(config, "venv", "semidbm")
        gnu = res.find(config, "deb", "dbm.gnu")
        vg, where = reference(res, config, gnu) if gnu else (None, "")

        def gnote(
            key: str,
            vip: Summary = vip,
            vg: Summary | None = vg,
            gnu: Summary | None = gnu,
            where: str = where,
        ) -> str:
            if gnu is None:
                return "dbm.gnu not measured"
            if where == "venv":
                return "viperdbm on the venv (no viperdbm run on Debian's Python)"
            return (
                f"both on Debian's Python ({fmt_metric(key, metric(vg, key))} vs "
                f"{fmt_metric(key, metric(gnu, key))} ops/s); viperdbm on the venv: "
                f"{fmt_ratio(ratio(key, vip, gnu))}"
            )

        mark(
            config,
            "insert >= 3x semidbm",
            ratio("insert", vip, semi),
            3,
            True,
            how=rate_pair("insert", vip, semi),
        )
        mark(config, "insert >= 6x dbm.gnu", ratio("insert", vg, gnu), 6, True, how=gnote("insert"))
        mark(config, "get >= 1.2x dbm.gnu", ratio("get", vg, gnu), 1.2, True, how=gnote("get"))
        mark(
            config, "get (miss) >= 1x dbm.gnu", ratio("miss", vg, gnu), 1.0, True, how=gnote("miss")
        )
        mark(
            config,
            "update >= 2x semidbm",
            ratio("update", vip, semi),
            2,
            True,
            how=rate_pair("update", vip, semi),
        )
        mark(
            config,
            "delete >= 2x semidbm",
            ratio("delete", vip, semi),
            2,
            True,
            how=rate_pair("delete", vip, semi),
        )
        mark(
            config,
            f"reopen of {fmt_n(vip['n_req'])} >= 10x faster than semidbm",
            ratio("reopen_s", vip, semi),
            10,
            True,
            how=f"{fmt_metric('reopen_s', metric(semi, 'reopen_s'))} vs "
            f"{fmt_metric('reopen_s', metric(vip, 'reopen_s'))}",
        )
        amp = metric(vip, "space_amp")
        mark(
            config,
            "space <= 1.3x raw key+value bytes",
            amp,
            1.3,
            False,
            shown=f"{amp:.2f}x" if amp else peers.DASH,
            how=f"{metric(vip, 'bytes_per_record') or 0:.0f} B/record for "
            f"{KEY_SIZE + vip['value_size']} B of key+value (allocated blocks after insert)",
        )
        ib = metric(vip, "index_bytes_per_key")
        mark(
            config,
            "DRAM index <= 40 B/key",
            ib,
            40,
            False,
            shown=f"{ib:.1f} B/key" if ib is not None else peers.DASH,
            how="stats()['index_bytes'] / stats()['records'] after insert",
        )
    # scaling (tmpfs, 100-byte values, viperdbm on the venv)
    pts = scaling_points(res, "viperdbm", "venv")
    dict_pts = dict(scaling_points(res, "dict", "venv"))
    if len(pts) >= 2:
        lo, hi = pts[0], pts[-1]
        for w in ("insert", "get", "miss", "update", "delete"):
            ns = [1e9 / r for _n, s in pts if (r := metric(s, w))]
            if len(ns) < 2:
                continue
            spread = max(ns) / min(ns)
            how = " / ".join(f"{x:.0f}" for x in ns) + " ns"
            dns = [1e9 / r for n, _s in pts if (r := metric(dict_pts.get(n), w))]
            if len(dns) == len(ns):
                how += (
                    f"; dict at the same N: {' / '.join(f'{x:.0f}' for x in dns)} ns "
                    f"({max(dns) / min(dns):.2f}x)"
                )
            mark(
                "scaling",
                f"{WORKLOAD_TITLES[w]}: per-op cost flat from {fmt_n(lo[0])} to "
                f"{fmt_n(hi[0])} (max/min ns per op <= 1.5)",
                spread,
                1.5,
                False,
                shown=f"{spread:.2f}x",
                how=how,
            )
        rp = [
            (n, v)
            for n, s in pts
            if n >= min(100_000, hi[0]) and (v := metric(s, "reopen_s")) is not None
        ]
        if len(rp) >= 2:
            b = loglog_slope([float(n) for n, _ in rp], [v for _, v in rp])
            mark(
                "scaling",
                f"reopen linear in N (exponent b of reopen ~ N^b over "
                f"{fmt_n(rp[0][0])}..{fmt_n(rp[-1][0])} <= 1.1)",
                b,
                1.1,
                False,
                shown=f"b = {b:.2f}",
                how=" / ".join(fmt_metric("reopen_s", v) for _, v in rp),
            )
    return out


def rate_pair(key: str, a: Summary | None, b: Summary | None) -> str:
    return f"{fmt_metric(key, metric(a, key))} vs {fmt_metric(key, metric(b, key))} ops/s"


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else 0.0


def scaling_points(res: Results, store: str, interp: str) -> list[tuple[int, Summary]]:
    pts: dict[int, Summary] = {}
    for s in res.summaries:
        if (
            s["name"] == store
            and s["interp"] == interp
            and s.get("metrics")
            and s["config"] in ("scaling", "tmpfs-100B")
        ):
            n = int(s["metrics"].get("n_effective") or s["n_req"])
            if n == s["n_req"]:
                pts[n] = s
    return sorted(pts.items())


def render(res: Results, out: Path, plots: list[str], profile_text: list[str]) -> str:
    meta, plan = res.meta, res.plan
    md: list[str] = []
    started, finished = meta.get("started", "?"), meta.get("finished", "?")
    md += [
        "# viperdbm benchmark results",
        "",
        f"Run `{meta.get('command', '?')}` ({plan.mode} run), {started} to {finished} "
        f"({meta.get('wall_s', 0) / 60:.1f} min). Produced by `benchmarks/run.py`, which "
        "drives `benchmarks/peers.py`; raw JSON of every run is in `raw/`.",
        "",
    ]
    if plan.mode == "quick":
        md += ["**This is a smoke run (`--quick`): tiny N, numbers mean nothing.**", ""]
    verdicts = check_targets(res)
    # ---- targets first
    md += [
        "## Targets of the issue",
        "",
        "Ratios are viperdbm / peer for rates and peer / viperdbm for times, bytes and "
        "memory, so **> 1 means viperdbm is better** everywhere. dbm.gnu is compared with "
        "viperdbm run under the same interpreter (Debian's /usr/bin/python3.11), semidbm "
        "with viperdbm under the project's venv.",
        "",
        "| setting | target | measured | met? | detail |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        ok = "n/a" if v.ok is None else ("**met**" if v.ok else "**not met**")
        md.append(f"| {v.config} | {v.target} | {v.shown} | {ok} | {v.how} |")
    n_ok = sum(1 for v in verdicts if v.ok)
    n_all = sum(1 for v in verdicts if v.ok is not None)
    md += ["", f"{n_ok} of {n_all} targets met.", ""]
    # ---- ratio tables
    for config in ("tmpfs-100B", "tmpfs-1000B", "ext4-100B"):
        rows = sort_rows(res.config_rows(config))
        vip = res.find(config, "venv", "viperdbm")
        if not rows or vip is None:
            continue
        md += [
            f"## {config}: {CONFIG_TITLES[config]}",
            "",
            f"N = {fmt_n(vip['n_req'])} unless the N column says otherwise (slow peers "
            "get a smaller N so that the run stays short; a rate is per operation, so it "
            "stays comparable, reopen time and memory do not).",
            "",
            "### Ratios viperdbm / peer (> 1: viperdbm better)",
            "",
            "| peer | durability class | py | N | "
            + " | ".join(WORKLOAD_TITLES[k] for k in RATIO_COLUMNS)
            + " |",
            "|---|---|---|---|" + "---|" * len(RATIO_COLUMNS),
        ]
        for s in rows:
            if s["name"] == "viperdbm" or not s.get("metrics"):
                continue
            ref, _ = reference(res, config, s)
            cells = [fmt_ratio(ratio(k, ref, s)) for k in RATIO_COLUMNS]
            n_eff = int(s["metrics"].get("n_effective", 0))
            md.append(
                f"| {s['name']} | {s.get('durability', '')} | {s['interp']} "
                f"| {fmt_n(n_eff)} | " + " | ".join(cells) + " |"
            )
        md += [
            "",
            "### Absolute numbers",
            "",
            "| store | durability class | py | N | insert | get | miss | update | iterate "
            "| delete | close | reopen | B/rec | space amp | peak RSS | index B/key "
            "| CPU/wall | flags |",
            "|" + "---|" * 18,
        ]
        for s in rows:
            if s.get("skipped") or not s.get("metrics"):
                continue
            m = s["metrics"]
            flags = list(s.get("flags", []))
            if s.get("repeats", 1) > 1:
                flags.insert(0, f"median of {s['repeats']}")
            ib, amp = m.get("index_bytes_per_key"), m.get("space_amp")
            md.append(
                f"| {s['name']} | {s.get('durability', '')} | {s['interp']} "
                f"| {fmt_n(int(m.get('n_effective', 0)))} | "
                + " | ".join(fmt_metric(k, m.get(k)) for k in RATES)
                + " | "
                + f"{fmt_metric('close_s', m.get('close_s'))} "
                + f"| {fmt_metric('reopen_s', m.get('reopen_s'))} "
                + f"| {fmt_metric('bytes_per_record', m.get('bytes_per_record'))} "
                + f"| {f'{amp:.2f}' if amp else peers.DASH} "
                + f"| {fmt_metric('rss_peak_growth', m.get('rss_peak_growth'))} "
                + f"| {f'{ib:.1f}' if ib is not None else peers.DASH} "
                + f"| {fmt_share(s)} "
                + f"| {'; '.join(flags)} |"
            )
        md += [
            "",
            "CPU/wall: CPU time of the child (all its threads) over its wall time, "
            "from open to the end. About 1 for a store that works in the calling thread "
            "and had a core to itself; well below 1: the child waited, for a CPU (the "
            "machine was busy) or for I/O (fsync on ext4); above 1: background threads.",
        ]
        skipped = sorted(
            {f"{s['name']} on {s['interp']} ({s['skipped']})" for s in rows if s.get("skipped")}
        )
        if skipped:
            md += ["", "Skipped: " + "; ".join(skipped)]
        md += ["", f"![throughput {config}](throughput-{config}.png)", ""]
    # ---- scaling
    pts = scaling_points(res, "viperdbm", "venv")
    if pts:
        md += [
            "## How viperdbm's cost grows with N (tmpfs, 100-byte values)",
            "",
            "Nanoseconds per operation (1e9 / rate); reopen = open + one get of a store "
            "holding N records (the index is rebuilt by scanning the log); rebuild = the "
            "store's own `stats()['rebuild_seconds']`.",
            "",
            "| N | insert | get | miss | update | iterate | delete | reopen | reopen/record "
            "| rebuild | peak RSS | index B/key | B/rec |",
            "|" + "---|" * 13,
        ]
        for n, s in pts:
            m = s["metrics"]
            ns = [f"{1e9 / m[k]:.0f} ns" if m.get(k) else peers.DASH for k in RATES]
            ro = m.get("reopen_s")
            rb = m.get("rebuild_s")
            ib = m.get("index_bytes_per_key")
            md.append(
                f"| {fmt_n(n)} | "
                + " | ".join(ns)
                + f" | {fmt_metric('reopen_s', ro)} "
                + f"| {f'{ro / n * 1e9:.0f} ns' if ro else peers.DASH} "
                + f"| {fmt_metric('reopen_s', rb)} "
                + f"| {fmt_metric('rss_peak_growth', m.get('rss_peak_growth'))} "
                + f"| {f'{ib:.1f}' if ib is not None else peers.DASH} "
                + f"| {fmt_metric('bytes_per_record', m.get('bytes_per_record'))} |"
            )
        others = []
        for store, interp in (("semidbm", "venv"), ("dbm.gnu", "deb")):
            opts = scaling_points(res, store, interp)
            if opts:
                others.append(
                    f"{store}: "
                    + ", ".join(
                        f"{fmt_n(n)} {fmt_metric('reopen_s', metric(s, 'reopen_s'))}"
                        for n, s in opts
                    )
                )
        if others:
            md += ["", "Reopen time of the peers for comparison: " + "; ".join(others) + "."]
        md += [
            "",
            "![ns per op](scaling-per-op.png)",
            "",
            "![reopen](scaling-reopen.png)",
            "",
            "![memory](scaling-memory.png)",
            "",
        ]
    # ---- profile
    for i, text in enumerate(profile_text):
        md += [
            "## Where the time of a put and a get goes (profile)" if i == 0 else "### On ext4",
            "",
            text.strip(),
            "",
        ]
    # ---- durability
    md += [
        "## Durability classes",
        "",
        "What each store promises with the settings used here (from each library's "
        "defaults; see `peers.py`, and the probe below).",
        "",
        "| store | variant | durability class | where the class comes from |",
        "|---|---|---|---|",
    ]
    seen: set[str] = set()
    for s in sort_rows(res.summaries):
        if s["name"] in seen:
            continue
        seen.add(s["name"])
        cls = peers.ADAPTERS.get(s["name"])
        if cls is None:
            continue
        md.append(
            f"| {s['name']} | {s.get('variant') or cls.variant} | {cls.durability} | {cls.note} |"
        )
    if res.probes:
        md += [
            "",
            "Probe: a child makes 1,500 puts and kills itself with SIGKILL (no sync, "
            "no close); another reopens and counts the survivors. `strace` counts the "
            "fsync-family calls during 1,500 puts. Run on tmpfs.",
            "",
            "| store | py | survivors of kill -9 | fsync-family calls per put | flags |",
            "|---|---|---|---|---|",
        ]
        for p in res.probes:
            if p.get("skipped"):
                continue
            sc = p.get("sync_calls_per_put")
            md.append(
                f"| {p['name']} | {p['interp']} | {p.get('crash', '')} "
                f"| {peers.DASH if sc is None else f'{sc:.3f}'} "
                f"| {'; '.join(p.get('flags', []))} |"
            )
    # ---- machine and versions
    mach = meta.get("machine", {})
    md += [
        "",
        "## Machine",
        "",
        f"- CPU: {mach.get('cpu')}, {mach.get('cores')} cores"
        + (" (virtual machine)" if mach.get("virtualized") else ""),
        f"- RAM: {mach.get('ram_gib', 0):.1f} GiB; OS: {mach.get('os')}; "
        f"kernel {mach.get('kernel')}",
        f"- load average before / after the run: {' '.join(mach.get('loadavg', []))} / "
        f"{' '.join(meta.get('loadavg_after', []))} (other work on the machine during the "
        "run shows up as noise; medians of 3 repeats for the headline stores)",
    ]
    for fs, mnt in meta.get("filesystems", {}).items():
        md.append(
            f"- {fs}: `{mnt.get('mount')}` is {mnt.get('type')} on {mnt.get('source')} "
            f"({mnt.get('size', '?')}, {mnt.get('options', '')})"
        )
    md += ["", "## Versions", ""]
    for k, v in meta.get("versions", {}).items():
        md.append(f"- {k}: {v}")
    if meta.get("git_after"):
        md.append(f"- the checkout when the run ended: {meta['git_after']}")
    for it in res.interps.values():
        extra = {k[6:]: v for k, v in it.modules.items() if k.startswith("extra:")}
        md.append(
            f"- Python `{it.key}`: {it.version} at `{it.exe}` ({it.build})"
            + (f"; sqlite {extra['sqlite']}" if "sqlite" in extra else "")
            + (f"; ndbm = {extra['ndbm_library']}" if "ndbm_library" in extra else "")
        )
    libs: dict[str, set[str]] = {}
    for s in res.summaries:
        if s.get("lib_version") and s["name"] != "dict":
            libs.setdefault(s["name"], set()).add(f"{s['lib_version']} ({s['interp']})")
    for name in sorted(libs):
        md.append(f"- {name}: {', '.join(sorted(libs[name]))}")
    # ---- method
    reps = max(
        (j.repeat for j in plan.jobs if "viperdbm" in j.stores and j.config == "tmpfs-100B"),
        default=1,
    )
    md += [
        "",
        "## Method",
        "",
        "- Each (store, repeat) runs in a fresh child process of `benchmarks/peers.py`, "
        f"with the same data for every store: {KEY_SIZE}-byte random keys, random values "
        f"of the stated size, seed {SEED}.",
        "- Workloads, in this order: insert N fresh keys in random order, then the store's "
        "sync (included); get of N present keys in another random order; get of N absent "
        "keys; update of N keys with new same-size values, then sync; iterate over all "
        "(key, value); close; reopen (open + one get: the index rebuild); delete N/2 keys, "
        "then sync. Rates are operations per second of the whole loop (Python "
        "`for` loop calling the store's own method, GC on). Space = allocated blocks of the "
        "store's files after insert, per record; peak RSS = growth of the child's VmHWM "
        "from open to the end (on tmpfs, pages of files a store maps count as its memory).",
        f"- Headline stores (viperdbm, semidbm, dbm.gnu) are the median of {reps} "
        "repeat(s) (every store of a job runs once before any runs again); the others "
        "one run.",
        "- dbm.gnu and dbm.ndbm need Debian's Python (the project's Python has no _gdbm); "
        "viperdbm is measured under that interpreter too, and dbm.gnu/dbm.ndbm are "
        "compared with it. dbm.sqlite3 needs Python 3.13; it is compared with viperdbm on "
        "the venv (compare the `dict` rows of each interpreter for the difference between "
        "interpreters).",
        "- Each workload has a time budget; a store that runs out carries on with what it "
        "did (flags `n<N`, `partial:`). Slow stores get a smaller N:",
    ]
    cuts: dict[str, set[str]] = {}
    top = max((j.budget for j in plan.jobs if not j.probe), default=60.0)
    for j in plan.jobs:
        for k, cut in j.n_for.items():
            cuts.setdefault(k, set()).add(f"N={fmt_n(cut)} in {j.config}")
        if j.budget < top and not j.probe:
            for st in j.stores:
                cuts.setdefault(st, set()).add(f"budget {j.budget:.0f} s in {j.config}")
    for k in sorted(cuts):
        md.append(f"  - {k}: {', '.join(sorted(cuts[k]))}")
    md.append(f"  - every other store: N as stated, budget {top:.0f} s per workload")
    md += [
        f"- viperdbm alone runs at {fmt_n(max(plan.scaling_ns))} (the scaling series).",
        "- The machine was shared with other work (compiles, tests), so single numbers can "
        "move by 10-20 % from run to run; ratios from the same run are the robust part.",
        "",
    ]
    if plots:
        md += ["Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
    return "\n".join(md)


# --------------------------------------------------------------------------- plots

COLORS = {
    "semidbm": "#1f77b4",
    "dbm.gnu": "#2ca02c",
    "dbm.ndbm": "#98df8a",
    "lmdb": "#9467bd",
    "lmdb-nosync": "#c5b0d5",
    "rocksdict": "#ff7f0e",
    "diskcache": "#8c564b",
    "sqlitedict": "#e377c2",
    "dbm.dumb": "#bcbd22",
    "dbm.sqlite3": "#17becf",
    "shelve": "#dbdb8d",
}


def store_color(s: Summary) -> str:
    if s["name"] == "viperdbm":
        return "#d62728" if s["interp"] == "venv" else "#ff9896"
    if s["name"] == "dict":
        return {"venv": "#7f7f7f", "deb": "#a5a5a5", "py313": "#cccccc"}.get(s["interp"], "#7f7f7f")
    return COLORS.get(s["name"], "#393b79")


def make_plots(res: Results, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "run.py: matplotlib is not installed; no plots (pip install matplotlib)",
            file=sys.stderr,
        )
        return []
    made: list[str] = []
    for config in ("tmpfs-100B", "tmpfs-1000B", "ext4-100B"):
        rows = [s for s in sort_rows(res.config_rows(config)) if s.get("metrics")]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(14, 6))
        width = 0.85 / len(rows)
        for i, s in enumerate(rows):
            vals = [metric(s, k) or 0.0 for k in RATES]
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(RATES))]
            n_eff = int(s["metrics"].get("n_effective", 0))
            lab = f"{store_label(s)}" + (f" N={fmt_n(n_eff)}" if n_eff != s["n_req"] else "")
            ax.bar(
                xs,
                vals,
                width,
                label=lab,
                color=store_color(s),
                edgecolor="black" if s["name"] == "viperdbm" else None,
                linewidth=0.6,
            )
        ax.set_xticks(range(len(RATES)), [WORKLOAD_TITLES[k] for k in RATES])
        ax.set_yscale("log")
        ax.set_ylabel("operations per second (log)")
        ax.set_title(
            f"Throughput by workload: {CONFIG_TITLES[config]}, N={fmt_n(rows[0]['n_req'])}"
        )
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        name = f"throughput-{config}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)
    pts = scaling_points(res, "viperdbm", "venv")
    if len(pts) >= 2:
        ns = [n for n, _ in pts]
        fig, ax = plt.subplots(figsize=(8, 5))
        dict_at = dict(scaling_points(res, "dict", "venv"))
        for i, w in enumerate(RATES):
            color = f"C{i}"
            ys = [1e9 / r if (r := metric(s, w)) else float("nan") for _, s in pts]
            ax.plot(ns, ys, marker="o", color=color, label=WORKLOAD_TITLES[w])
            dys = [1e9 / r if (r := metric(dict_at.get(n), w)) else float("nan") for n in ns]
            if any(not math.isnan(y) for y in dys):
                ax.plot(ns, dys, ls=":", marker=".", color=color, label=f"dict {w}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("records N")
        ax.set_ylabel("ns per operation (log)")
        ax.set_title("cost per operation against N: viperdbm (solid), dict (dotted); tmpfs, 100 B")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "scaling-per-op.png", dpi=110)
        plt.close(fig)
        made.append("scaling-per-op.png")

        series = [
            ("viperdbm", "venv", "#d62728"),
            ("semidbm", "venv", "#1f77b4"),
            ("dbm.gnu", "deb", "#2ca02c"),
        ]
        fig, ax = plt.subplots(figsize=(8, 5))
        for store, interp, color in series:
            sp = [
                (n, v)
                for n, s in scaling_points(res, store, interp)
                if (v := metric(s, "reopen_s"))
            ]
            if sp:
                ax.plot(
                    [n for n, _ in sp],
                    [v for _, v in sp],
                    marker="o",
                    color=color,
                    label=f"{store} reopen",
                )
            if store == "viperdbm":
                rb = [
                    (n, v)
                    for n, s in scaling_points(res, store, interp)
                    if (v := metric(s, "rebuild_s"))
                ]
                if rb:
                    ax.plot(
                        [n for n, _ in rb],
                        [v for _, v in rb],
                        ls=":",
                        marker=".",
                        color=color,
                        label="viperdbm index rebuild (stats)",
                    )
                if sp:
                    n1, v1 = sp[-1]
                    ax.plot(
                        [ns[0], ns[-1]],
                        [v1 * ns[0] / n1, v1 * ns[-1] / n1],
                        ls="--",
                        color="gray",
                        lw=0.8,
                        label="linear in N (through the last point)",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("records N")
        ax.set_ylabel("seconds (log)")
        ax.set_title("Reopen time (open + first get) against N, tmpfs, 100-byte values")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "scaling-reopen.png", dpi=110)
        plt.close(fig)
        made.append("scaling-reopen.png")

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
        for store, interp, color in series:
            sp = [
                (n, v / 2**20)
                for n, s in scaling_points(res, store, interp)
                if (v := metric(s, "rss_peak_growth"))
            ]
            if sp:
                a1.plot(
                    [n for n, _ in sp],
                    [v for _, v in sp],
                    marker="o",
                    color=color,
                    label=f"{store} peak RSS growth",
                )
        raw = [(n, n * (KEY_SIZE + 100) / 2**20) for n in ns]
        a1.plot(
            [n for n, _ in raw],
            [v for _, v in raw],
            ls="--",
            color="gray",
            label="raw key+value bytes",
        )
        ib = [(n, v / 2**20) for n, s in pts if (v := metric(s, "index_bytes"))]
        if ib:
            a1.plot(
                [n for n, _ in ib],
                [v for _, v in ib],
                ls=":",
                marker=".",
                color="#d62728",
                label="viperdbm DRAM index (stats)",
            )
        a1.set_xscale("log")
        a1.set_yscale("log")
        a1.set_xlabel("records N")
        a1.set_ylabel("MiB (log)")
        a1.set_title("Memory against N (on tmpfs a mapped store file counts as RSS)")
        a1.grid(which="both", alpha=0.3)
        a1.legend(fontsize=8)
        for key, lab, ls in (
            ("index_bytes_per_key", "DRAM index bytes per key", "-"),
            ("bytes_per_record", "store bytes per record", "--"),
        ):
            sp2 = [(n, v) for n, s in pts if (v := metric(s, key)) is not None]
            if sp2:
                a2.plot(
                    [n for n, _ in sp2],
                    [v for _, v in sp2],
                    marker="o",
                    ls=ls,
                    color="#d62728",
                    label=f"viperdbm {lab}",
                )
        a2.axhline(40, color="gray", ls=":", lw=0.8, label="target: index 40 B/key")
        a2.axhline(
            1.3 * (KEY_SIZE + 100),
            color="gray",
            ls="-.",
            lw=0.8,
            label="target: 1.3 x raw bytes per record",
        )
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("records N")
        a2.set_ylabel("bytes (log)")
        a2.set_title("viperdbm bytes per key against N")
        a2.grid(which="both", alpha=0.3)
        a2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "scaling-memory.png", dpi=110)
        plt.close(fig)
        made.append("scaling-memory.png")
    return made


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark viperdbm against its peers and write RESULTS.md and plots."
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    g.add_argument("--full", action="store_true", help="the whole matrix (the default)")
    p.add_argument(
        "--fs",
        choices=("tmpfs", "ext4", "both"),
        help="file systems (default: both with --full, tmpfs with --quick)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="results directory (default: benchmarks/results, "
        "or benchmarks/out/quick with --quick)",
    )
    p.add_argument(
        "--python", help="interpreter of viperdbm and the PyPI peers (default: the project's .venv)"
    )
    p.add_argument(
        "--deb-python",
        default="/usr/bin/python3.11",
        help="a Python with _gdbm/_dbm for dbm.gnu and dbm.ndbm",
    )
    p.add_argument(
        "--py313",
        help="a Python 3.13 for dbm.sqlite3 (default: "
        "~/.pyenv/versions/3.13.0/bin/python3 or python3.13 on PATH)",
    )
    p.add_argument("--no-probe", action="store_true", help="skip the durability probes")
    p.add_argument(
        "--no-profile", action="store_true", help="skip benchmarks/profile.py (run by --full)"
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each job, wait up to this long until other processes use "
        "less than one CPU (for a shared machine)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild RESULTS.md and the plots from <out>/raw and exit",
    )
    return p.parse_args(argv)


def reexec_in_venv(argv: list[str] | None) -> None:
    """Run under the project's venv (which has matplotlib, from the bench extra) when started
    by another Python that lacks it."""
    venv_py = REPO / ".venv" / "bin" / "python"
    if (
        argv is None
        and importlib.util.find_spec("matplotlib") is None
        and venv_py.exists()
        and Path(sys.prefix).resolve() != (REPO / ".venv").resolve()
        and not os.environ.get("VIPERDBM_BENCH_REEXEC")
    ):
        os.environ["VIPERDBM_BENCH_REEXEC"] = "1"
        os.execv(str(venv_py), [str(venv_py), str(Path(__file__).resolve()), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    reexec_in_venv(argv)
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    out: Path = args.out or (HERE / "out" / "quick" if args.quick else HERE / "results")
    out = out.resolve()
    args.command = " ".join(
        ["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
    )
    progress = Progress(sys.stderr)
    if args.report_only:
        return report(out, progress)
    fs = args.fs or ("both" if mode == "full" else "tmpfs")
    if args.dry_run:
        interps = find_interpreters(args, str(REPO))
        plan = make_plan(mode, fs, interps, probes=mode == "full" and not args.no_probe)
        for k, it in interps.items():
            print(f"{k}: {it.exe} ({it.version})")
        for j in plan.jobs:
            print(j.describe())
        return 0
    pkg = Path(tempfile.mkdtemp(prefix="viperdbm-bench-pkg-"))
    try:
        return run_all(args, mode, fs, out, pkg, progress)
    finally:
        shutil.rmtree(pkg, ignore_errors=True)


def run_all(
    args: argparse.Namespace, mode: str, fs: str, out: Path, pkg: Path, progress: Progress
) -> int:
    raw = out / "raw"
    digest = snapshot_package(pkg)
    interps = find_interpreters(args, str(pkg))
    where = interps["venv"].modules.get("extra:viperdbm_file", "")
    if not where.startswith(str(pkg)):
        raise SystemExit(
            f"run.py: the children would import viperdbm from {where or '?'}, "
            f"not from the copy in {pkg}"
        )
    plan = make_plan(mode, fs, interps, probes=mode == "full" and not args.no_probe)
    raw.mkdir(parents=True, exist_ok=True)
    for old in raw.glob("*"):
        old.unlink()
    t0 = time.time()
    meta: dict[str, Any] = {
        "command": args.command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_facts(),
        "versions": versions(interps, digest),
        "filesystems": {
            fsn: mount_of(fs_dir(fsn)) for fsn in ("tmpfs", "ext4") if fs in (fsn, "both")
        },
        "interps": {k: asdict(v) for k, v in interps.items()},
        "plan": asdict(plan),
    }
    missing = [k for k in ("deb", "py313") if k not in interps]
    if missing:
        progress.error(
            f"run.py: no interpreter for {', '.join(missing)}: "
            + "; ".join(
                {
                    "deb": "dbm.gnu/dbm.ndbm skipped (apt-get install python3-gdbm)",
                    "py313": "dbm.sqlite3 skipped (no Python 3.13)",
                }[k]
                for k in missing
            )
        )
    (raw / "plan.json").write_text(json.dumps(meta, indent=1))
    with open(out / "run.log", "w") as log:
        for i, job in enumerate(plan.jobs, 1):
            progress.prefix = f"{i}/{len(plan.jobs)} {job.config} [{job.interp}] "
            progress.line(f"[{i}/{len(plan.jobs)}] {job.describe()}")
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {job.describe()}\n")
            wait_idle(args.wait_idle, progress, log)
            run_job(job, interps[job.interp], raw, log, progress)
    progress.prefix = ""
    with contextlib.suppress(OSError):
        os.rmdir(EXT4_DIR)  # peers.py removed what it made inside
    if mode == "full" and not args.no_profile:
        for fsn in ("tmpfs", "ext4"):
            if fs not in (fsn, "both"):
                continue
            progress.status(f"profiling put and get on {fsn} (benchmarks/profile.py)")
            plog_path = raw / f"profile-run-{fsn}.log"
            with open(plog_path, "w") as plog:
                rc = subprocess.run(
                    [
                        interps["venv"].exe,
                        str(HERE / "profile.py"),
                        "--out",
                        str(out),
                        "--dir",
                        fs_dir(fsn),
                    ],
                    stdout=plog,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **interps["venv"].env},
                ).returncode
            if rc:
                progress.error(f"run.py: profile.py exited {rc} (see {plog_path})")
        with contextlib.suppress(OSError):
            os.rmdir(EXT4_DIR)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["wall_s"] = time.time() - t0
    meta["loadavg_after"] = _read("/proc/loadavg").split()[:3]
    meta["git_after"] = git_state()
    (raw / "plan.json").write_text(json.dumps(meta, indent=1))
    return report(out, progress)


def report(out: Path, progress: Progress) -> int:
    res = load_results(out)
    progress.status("writing plots and RESULTS.md")
    plots = make_plots(res, out)
    profs = [
        p.read_text()
        for p in (out / "profile-summary.md", out / "profile-summary-ext4.md")
        if p.exists()
    ]
    text = render(res, out, plots, profs)
    (out / "RESULTS.md").write_text(text)
    progress.line("")
    verdicts = check_targets(res)
    n_ok = sum(1 for v in verdicts if v.ok)
    n_all = sum(1 for v in verdicts if v.ok is not None)
    print(f"run.py: wrote {out / 'RESULTS.md'} ({n_ok}/{n_all} targets met, {len(plots)} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
