#!/usr/bin/env python3
"""profile.py -- where the time of a viperdbm put and get goes.

    python benchmarks/profile.py                       # N = 1M, 100-byte values, tmpfs
    python benchmarks/profile.py --n 200000 --out /tmp/prof

A child process inserts N records with the loop of benchmarks/peers.py (`put(k, v)` with
put = db.__setitem__, 16-byte random keys in random order), then gets all of them in another
random order (`get(k)` with get = db.get).  Each loop is its own function (phase_put,
phase_get), so that the samples of each can be told apart.  The child runs three times:

1. bare, to measure ns per put and per get without any profiler attached;
2. under py-spy (`py-spy record --native --format raw`): Python and C frames together, so a
   sample says which line of the loop, which function of the native core (native/),
   or which CPython/libc routine it was in;
3. under perf (`perf record` of cpu-clock, once per phase, enabled only while that loop
   runs via --control fifo): flat self time by symbol, including the kernel (page faults
   of the store's mapping), which py-spy cannot see.

Writes <out>/profile-put.txt and <out>/profile-get.txt (the breakdowns), and
<out>/profile-summary.md (a short summary that run.py puts into RESULTS.md); the collapsed
py-spy stacks go to <out>/raw/profile-pyspy.txt (feed them to flamegraph.pl or
speedscope).  With --dir on another file system than tmpfs the names get its type as a
suffix (profile-put-ext4.txt, ...).  Percentages are of the samples taken inside the loop;
ns = share x the bare ns per operation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402 -- the harness next to this file: the same data as the benchmark

MARK = "@@PROFILE@@ "
SEED = 42


# --------------------------------------------------------------------------- child


def phase_put(put: Callable[[bytes, bytes], None], keys: list[bytes], vals: list[bytes]) -> None:
    for k, v in zip(keys, vals, strict=True):
        put(k, v)


def phase_get(get: Callable[[bytes], bytes | None], order: list[bytes]) -> int:
    miss = 0
    for k in order:
        if get(k) is None:
            miss += 1
    return miss


@contextlib.contextmanager
def perf_window(ctl: str | None, ack: str | None, on: bool) -> Iterator[None]:
    """Enable perf's sampling (perf record -D -1 --control fifo:ctl,ack) around a block."""
    if not (ctl and ack and on):
        yield
        return
    cfd, afd = os.open(ctl, os.O_WRONLY), os.open(ack, os.O_RDONLY)
    try:
        os.write(cfd, b"enable\n")
        os.read(afd, 16)
        yield
        os.write(cfd, b"disable\n")
        os.read(afd, 16)
    finally:
        os.close(cfd)
        os.close(afd)


def workload(a: argparse.Namespace) -> dict[str, Any]:
    import viperdbm

    data = peers.make_data(a.n, 16, a.value_size, SEED)
    keys, vals = data["keys"], data["vals"]
    order = keys[:]
    random.Random(SEED + 1).shuffle(order)
    work = tempfile.mkdtemp(prefix="viperdbm-profile-", dir=a.dir)
    try:
        db = viperdbm.open(os.path.join(work, "db"), "c")
        t0 = time.perf_counter()
        with perf_window(a.perf_ctl, a.perf_ack, a.perf_phase == "put"):
            phase_put(db.__setitem__, keys, vals)
        t1 = time.perf_counter()
        db.sync()
        t2 = time.perf_counter()
        with perf_window(a.perf_ctl, a.perf_ack, a.perf_phase == "get"):
            miss = phase_get(db.get, order)
        t3 = time.perf_counter()
        stats = db.stats()
        db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "n": a.n,
        "put_ns": (t1 - t0) / a.n * 1e9,
        "sync_s": t2 - t1,
        "get_ns": (t3 - t2) / a.n * 1e9,
        "misses": miss,
        "records": stats.get("records"),
        "index_bytes": stats.get("index_bytes"),
    }


# --------------------------------------------------------------------------- parent


def run_child(
    extra: list[str], a: argparse.Namespace, wrap: list[str] | None = None, log: Any = None
) -> dict[str, Any]:
    cmd = [
        *(wrap or []),
        sys.executable,
        str(Path(__file__).resolve()),
        "--_workload",
        "--n",
        str(a.n),
        "--value-size",
        str(a.value_size),
        "--dir",
        a.dir,
        *extra,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if log is not None:
        log.write("$ " + " ".join(cmd) + "\n" + p.stderr)
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            rec: dict[str, Any] = json.loads(line[len(MARK) :])
            return rec
    raise SystemExit(f"profile.py: child failed (rc={p.returncode}):\n{p.stderr[-3000:]}")


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")


@dataclass
class Frame:
    func: str
    where: str  # file:line or library

    @property
    def lib(self) -> str:
        return self.where.rsplit(":", 1)[0] if ":" in self.where else self.where


def parse_frame(text: str) -> Frame:
    m = _FRAME.match(text)
    return Frame(m.group("func"), m.group("where")) if m else Frame(text, "")


def classify(below: list[Frame]) -> tuple[str, str]:
    """(layer, leaf function) of one sample, from the frames under the phase function."""
    if not below:
        return "Python loop of the caller (bytecode, iteration, call dispatch)", "(loop)"
    leaf = below[-1]
    stack = " ".join(f.func for f in below)
    if "write_slow" in stack or "new_block" in stack or any("pmem" in f.lib for f in below):
        named = [f.func for f in below if not f.func.startswith("0x")]
        tail = " > ".join(named[-2:])
        if leaf.func.startswith("0x"):
            tail += f" > [{leaf.lib}]"
        return "slow path: a new 4 MiB block (Engine.write_slow, libpmemobj)", f"new block: {tail}"
    if leaf.lib.endswith(".c") and "vipercore" in leaf.lib:
        return "native core (native/)", leaf.func
    if leaf.lib.endswith(".py"):
        return "viperdbm Python code", f"{leaf.func} ({leaf.lib})"
    if "libc" in leaf.lib:
        inside = next((f.func for f in reversed(below) if "vipercore" in f.lib), None)
        if inside is None:
            return (
                "libc (memcpy, memcmp, ...; the caller was not unwound)",
                "libc (caller not unwound)",
            )
        return "libc called by the native core (memcpy, memcmp, ...)", f"libc under {inside}"
    if "libpython" in leaf.lib or leaf.lib.endswith((".h", ".c")):
        return "CPython runtime (objects, refcounts)", leaf.func
    return "other", f"{leaf.func} ({leaf.lib})"


def pyspy_breakdown(raw: Path, phase: str) -> tuple[Counter[str], Counter[str], int]:
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [parse_frame(f) for f in stack.split(";")]
        idx = next((i for i, f in enumerate(frames) if f.func == phase), None)
        if idx is None:
            continue
        n = int(count)
        total += n
        layer, leaf = classify(frames[idx + 1 :])
        layers[layer] += n
        leaves[f"{layer} | {leaf}"] += n
    return layers, leaves, total


_PERF_LINE = re.compile(r"^\s*(?P<pct>[\d.]+)%\s+(?P<dso>\S+)\s+\[(?P<k>[.k])\]\s+(?P<sym>.+)$")


PerfResult = tuple[dict[str, float], list[tuple[float, str, str]]]


def perf_breakdown(data: Path) -> PerfResult:
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio"],
        capture_output=True,
        text=True,
    ).stdout
    rows: list[tuple[float, str, str]] = []
    groups: dict[str, float] = {}
    for line in out.splitlines():
        m = _PERF_LINE.match(line)
        if not m:
            continue
        pct, dso, sym = float(m.group("pct")), m.group("dso"), m.group("sym").strip()
        rows.append((pct, dso, sym))
        if m.group("k") == "k" or "kernel" in dso:
            g = "kernel (page faults, syscalls)"
        elif "vipercore" in dso:
            g = "native core (_vipercore.so)"
        elif "libpython" in dso or dso.startswith("python"):
            g = "CPython (libpython: eval loop, objects)"
        elif "libc" in dso:
            g = "libc"
        elif "pmem" in dso:
            g = "libpmem / libpmemobj"
        else:
            g = dso
        groups[g] = groups.get(g, 0.0) + pct
    return dict(sorted(groups.items(), key=lambda kv: -kv[1])), rows


def perf_run(phase: str, a: argparse.Namespace, tmp: Path, log: Any) -> Path | None:
    perf = shutil.which("perf")
    if not perf:
        return None
    ctl, ack = tmp / f"{phase}.ctl", tmp / f"{phase}.ack"
    for f in (ctl, ack):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
        os.mkfifo(f)
    data = tmp / f"perf-{phase}.data"
    wrap = [
        perf,
        "record",
        "-q",
        "-e",
        "cpu-clock",
        "-F",
        str(a.perf_freq),
        "-D",
        "-1",
        "--control",
        f"fifo:{ctl},{ack}",
        "-o",
        str(data),
        "--",
    ]
    try:
        run_child(
            ["--perf-phase", phase, "--perf-ctl", str(ctl), "--perf-ack", str(ack)],
            a,
            wrap=wrap,
            log=log,
        )
    except SystemExit as exc:
        log.write(f"perf run failed: {exc}\n")
        return None
    return data if data.exists() else None


def pct(n: float, total: float) -> float:
    return 100.0 * n / total if total else 0.0


def write_phase(
    out: Path,
    phase: str,
    ns: float,
    pys: tuple[Counter[str], Counter[str], int],
    perf: PerfResult | None,
    meta: dict[str, Any],
) -> list[str]:
    layers, leaves, total = pys
    title = "put (db[key] = value)" if phase == "put" else "get (db.get(key))"
    lines = [
        f"viperdbm profile of a {title}",
        f"N = {meta['n']:,}, 16-byte keys, {meta['value_size']}-byte values, "
        f"{meta['fs']} ({meta['dir']}); bare loop: {ns:.0f} ns per {phase} "
        f"({1e9 / ns / 1e6:.2f}M/s); under py-spy: {meta['profiled_ns']:.0f} ns",
        f"viperdbm {meta['viperdbm']}, Python {meta['python']}, py-spy {meta['pyspy']}",
        f"sync() after the {meta['n']:,} puts (not in the put loop): "
        f"{meta['sync_s'] * 1e3:.1f} ms = {meta['sync_s'] / meta['n'] * 1e9:.0f} ns per put",
        "",
        f"py-spy --native ({total} samples in phase_{phase}), by layer:",
        f"  {'share':>6}  {'ns/op':>6}  layer",
    ]
    summary = []
    for layer, n in layers.most_common():
        lines.append(f"  {pct(n, total):5.1f}%  {pct(n, total) * ns / 100:6.0f}  {layer}")
        summary.append((layer, pct(n, total)))
    lines += ["", "by leaf function (self time):", f"  {'share':>6}  {'ns/op':>6}  function"]
    for leaf, n in leaves.most_common(25):
        lines.append(f"  {pct(n, total):5.1f}%  {pct(n, total) * ns / 100:6.0f}  {leaf}")
    if perf is not None:
        groups, rows = perf
        lines += [
            "",
            "perf record -e cpu-clock during the loop only, self time by library:",
            f"  {'share':>6}  {'ns/op':>6}  library",
        ]
        for g, p in groups.items():
            lines.append(f"  {p:5.1f}%  {p * ns / 100:6.0f}  {g}")
        lines += ["", "perf, top symbols (self time):"]
        for p, dso, sym in rows[:25]:
            lines.append(f"  {p:5.1f}%  {p * ns / 100:6.0f}  {sym}  [{dso}]")
    (out / f"profile-{phase}{meta['suffix']}.txt").write_text("\n".join(lines) + "\n")
    return lines


def summary_md(
    phase: str,
    ns: float,
    pys: tuple[Counter[str], Counter[str], int],
    perf: PerfResult | None,
    meta: dict[str, Any],
) -> list[str]:
    layers, leaves, total = pys
    sync = ""
    if phase == "put":
        sync = (
            f" The `sync()` after the loop adds {meta['sync_s'] * 1e3:.0f} ms "
            f"({meta['sync_s'] / meta['n'] * 1e9:.0f} ns per put)."
        )
    md = [
        f"**{phase}**: {ns:.0f} ns per {phase} in the bare loop "
        f"({1e9 / ns / 1e6:.2f}M/s; N = {meta['n']:,}, {meta['value_size']}-byte values, "
        f"{meta['fs']}; {total} py-spy samples).{sync}",
        "",
        "| share | ns | where (py-spy --native) |",
        "|---|---|---|",
    ]
    for layer, n in layers.most_common():
        if pct(n, total) < 0.5:
            continue
        md.append(f"| {pct(n, total):.0f}% | {pct(n, total) * ns / 100:.0f} | {layer} |")
    md += ["", "| share | ns | top functions (self time, py-spy) |", "|---|---|---|"]
    for leaf, n in leaves.most_common(8):
        md.append(
            f"| {pct(n, total):.0f}% | {pct(n, total) * ns / 100:.0f} | {leaf.split(' | ', 1)[1]} |"
        )
    if perf is not None:
        groups, rows = perf
        md += [
            "",
            "perf (cpu-clock, loop only, self time, includes the kernel): "
            + ", ".join(f"{g} {p:.0f}%" for g, p in list(groups.items())[:5])
            + "; top symbols: "
            + ", ".join(f"`{sym}` {p:.0f}%" for p, _dso, sym in rows[:6])
            + ".",
        ]
    return [*md, ""]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Profile viperdbm's put and get loops "
        "(py-spy --native and perf) and summarize where time goes."
    )
    p.add_argument("--n", type=int, default=1_000_000, help="records")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value")
    p.add_argument("--dir", default="/dev/shm", help="where the store goes")
    p.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    p.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    p.add_argument("--perf-freq", type=int, default=4999, help="perf samples per second")
    p.add_argument("--no-perf", action="store_true", help="py-spy only")
    p.add_argument(
        "--suffix",
        help="suffix of the output names (default: '' on tmpfs, else '-<file system type>')",
    )
    p.add_argument("--_workload", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--perf-phase", help=argparse.SUPPRESS)
    p.add_argument("--perf-ctl", help=argparse.SUPPRESS)
    p.add_argument("--perf-ack", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "viperdbm", "native"],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"git {head or '?'}{' + uncommitted changes' if dirty else ''}"


def find_pyspy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a._workload:
        print(MARK + json.dumps(workload(a)), flush=True)
        return 0
    pyspy = find_pyspy()
    if pyspy is None:
        print("profile.py: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    out: Path = a.out.resolve()
    (out / "raw").mkdir(parents=True, exist_ok=True)
    import viperdbm

    os.makedirs(a.dir, exist_ok=True)
    fs = peers.fs_type(a.dir)
    sfx = a.suffix if a.suffix is not None else ("" if fs == "tmpfs" else f"-{fs}")
    meta: dict[str, Any] = {
        "n": a.n,
        "value_size": a.value_size,
        "dir": a.dir,
        "fs": fs,
        "suffix": sfx,
        "python": sys.version.split()[0],
        "viperdbm": f"{getattr(viperdbm, '__version__', '?')} from "
        f"{Path(viperdbm.__file__).parent} (checkout: {git_state()})",
        "pyspy": subprocess.run([pyspy, "--version"], capture_output=True, text=True)
        .stdout.strip()
        .removeprefix("py-spy "),
    }
    with (
        open(out / "raw" / f"profile{sfx}.log", "w") as log,
        tempfile.TemporaryDirectory(prefix="viperdbm-prof-") as tmpd,
    ):
        tmp = Path(tmpd)
        print(f"profile.py: bare run, N={a.n:,}", file=sys.stderr)
        bare = run_child([], a, log=log)
        rawf = out / "raw" / f"profile-pyspy{sfx}.txt"
        print("profile.py: py-spy run", file=sys.stderr)
        prof = run_child(
            [],
            a,
            wrap=[
                pyspy,
                "record",
                "--native",
                "--rate",
                str(a.rate),
                "--format",
                "raw",
                "-o",
                str(rawf),
                "--",
            ],
            log=log,
        )
        perf: dict[str, PerfResult] = {}
        if not a.no_perf:
            for phase in ("put", "get"):
                print(f"profile.py: perf run ({phase})", file=sys.stderr)
                data = perf_run(phase, a, tmp, log)
                if data is not None:
                    perf[phase] = perf_breakdown(data)
    md = [
        "Profiled with `benchmarks/profile.py` (py-spy "
        + meta["pyspy"]
        + " `record --native`, and perf for the kernel's share) on "
        + f"{fs} ({a.dir}); details in [profile-put{sfx}.txt](profile-put{sfx}.txt) "
        + f"and [profile-get{sfx}.txt](profile-get{sfx}.txt). "
        "Shares are of the samples inside each loop, ns = share x the bare loop's ns per "
        'op. "Python loop of the caller" is the benchmark\'s own `for` loop and call '
        "dispatch, which every store pays; it includes loading each shuffled key object "
        "(`listiter_next` in perf, a cache miss per key at this N). C functions are those "
        "of the native core (`native/`); with -O2 perf sees inlined helpers (e.g. `rec_parse`, "
        "`key_hash`) inside their callers (`index_lookup`), py-spy splits them by debug "
        "info.",
        "",
    ]
    meta["sync_s"] = float(bare["sync_s"])
    for phase in ("put", "get"):
        ns = float(bare[f"{phase}_ns"])
        meta["profiled_ns"] = float(prof[f"{phase}_ns"])
        pys = pyspy_breakdown(rawf, f"phase_{phase}")
        lines = write_phase(out, phase, ns, pys, perf.get(phase), meta)
        md += summary_md(phase, ns, pys, perf.get(phase), meta)
        print("\n".join(lines[:14]), file=sys.stderr)
    (out / f"profile-summary{sfx}.md").write_text("\n".join(md))
    print(
        f"profile.py: wrote {out}/profile-put{sfx}.txt, profile-get{sfx}.txt, "
        f"profile-summary{sfx}.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
