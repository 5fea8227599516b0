"""Power-fail crash images: what survives when the machine loses power (ordinary files).

The README's contract on an ordinary file (ext4): everything up to the last ``sync()`` /
``close()`` survives a power cut. A power cut cannot be made in a test, so the images a
power cut can leave are built instead, from the real files of a real store:

1. A child (``tests/_powerfail_child.py``) writes, calls ``sync()``, and copies the part
   files right after it returns: image **D**, the durable point. It then writes more
   (recorded), and copies the part files again: image **F**, what the page cache holds.
   Copies are read through the page cache, which is coherent with the pool's shared mapping.
2. After a power cut each 4 KiB page that differs between D and F may hold either its D or
   its F content, independently of the other pages (the kernel writes dirty pages back in
   any order, at any time). Each crash image chooses, per differing page, D or F at random
   (seeded; plus the all-D and all-F extremes).
3. Except for the pages someone made durable on purpose after D: libpmemobj ``msync``\\ s its
   own metadata synchronously on ordinary files (every allocation and free), viperdbm
   msyncs the pool in ``reorganize()``, and so on. A page msynced after D is durable from
   that moment, so its D content is no longer a possible outcome. **Choice: the child runs
   under ``strace -f -e trace=msync,getppid``** (``getppid()`` marks D and F in the trace);
   every page covered by an msync between the two marks is given its F content in every
   image (its content at the msync may be older than F; F is still a possible outcome, since
   the kernel may have written the later changes back too, so no image built here is
   impossible; some possible images are not built). We chose strace over "F for every page
   outside viperdbm's blocks" because a block freed and reallocated after D lies inside
   viperdbm's blocks in F, yet libpmemobj zeroed it and msynced the zeroes: only the trace
   says so. The test is skipped, with the reason, where strace does not work.

4. **Names.** By POSIX a name is durable only once its directory is fsynced: a file created,
   a directory made, a rename or an unlink since the last fsync of the directory holding the
   name may be missing, reverted or undone after a power cut. The child is traced for those
   calls too (openat with O_CREAT, mkdir, rename, renameat2, unlink, unlinkat, rmdir, fsync,
   fdatasync; ``-y`` names each descriptor's file), its whole directory is copied at D and at
   F, and each image replays every name operation of the run: those an fsync of their
   directory made durable always, each other one with a chance (none in the all-D image,
   all in the all-F image). A directory's entries survive by an fsync of that directory,
   even where its own name does not (they are then unreachable, as in lost+found). The
   content of a file follows its inode through renames; a file fsynced after D gets its F
   content in every page.

Every image is opened (with 'w', as after a reboot, then again with 'r') in a child process:

* it must open (no error, no crash), and read the same again after the writable open;
* it must hold everything acknowledged up to D: a key that no operation after D touched
  has exactly its value at D; a key that was touched holds its value at D or a value
  written to it after D (or is absent, if it was absent at D or deleted after D);
* the all-F image (a ``kill -9`` at F) must hold exactly the state after every operation;
* and the state must be the state after some prefix of the operations since D (the
  power-fail rule of docs/format.md): no torn write, no resurrected delete, no later write
  without the earlier ones;
* with flag ``'s'`` (scenarios ``*-s``) every acknowledged write is durable: every image
  must hold exactly the state after every operation, for a pool that grew after D, for a
  store made after D, and for one that flag ``'n'`` replaced after D.

A few images of each scenario (``IMAGES_FOR_READERS``, copied before that probe) are opened
by a reader first, as a reader would after the reboot, before any writer: their ``readers``
file is what the power cut left of the crashed writer's (torn page by page, or missing). The
reader must read exactly what the writer's recovery found in the same image, nothing the
power cut lost; then a writer opens beside it and writes, and the reader must see that.

``VIPERDBM_POWERFAIL_IMAGES=N`` builds N random images per scenario (default 10). CI uses a
fixed seed; ``VIPERDBM_FRESH_SEEDS=1`` draws a new one and ``VIPERDBM_POWERFAIL_SEED``
replays a run (a failure names it). Images that fail are kept under /tmp.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _powerfail_child import SCENARIOS
from _strace import strace_problem
from _vdbtools import HERE, Prober, ProbeResult, child_env, describe, digest, env_seed, value_for
from test_live_readers import held_open

PAGE = 4096
CI_IMAGES = 10
#: the images a reader opens first, after the reboot, before a writer opens beside it
IMAGES_FOR_READERS = ("all-D", "all-F", "random-0", "random-1")
CI_SEED = 7
#: what the child is traced for: page flushes, the markers, and every call that makes,
#: renames or removes a name, or makes names or data durable
TRACED = (
    "msync,getppid,fsync,fdatasync,open,openat,creat,mkdir,mkdirat,"
    "rename,renameat,renameat2,unlink,unlinkat,rmdir"
)


def images_per_scenario() -> int:
    env = os.environ.get("VIPERDBM_POWERFAIL_IMAGES")
    return int(env) if env else CI_IMAGES


@functools.cache
def run_seed() -> int:
    return env_seed("VIPERDBM_POWERFAIL_SEED", CI_SEED)


# --------------------------------------------------------------------------- the run
@dataclass
class Image:
    name: str
    path: Path
    result: ProbeResult | None = None
    #: an untouched copy of the image (the probe opens ``path`` writable, which changes it)
    pristine: Path | None = None


@dataclass
class Scenario:
    name: str
    seed: int
    workdir: Path  # the store and the strace log: ext4 (/tmp), an ordinary file system
    imagedir: Path  # the crash images: tmpfs, only for speed
    states: list[dict[bytes, str]]  # state after 0, 1, ..., n operations since D
    allowed: dict[bytes, set[str | None]]  # per key touched after D: acceptable outcomes
    every_write_durable: bool = False  # flag 's': the state after every operation
    differing_pages: int = 0
    msynced_pages: int = 0
    name_ops: int = 0  # name operations in the run
    volatile_name_ops: int = 0  # of them, not made durable by an fsync of their directory
    images: list[Image] = field(default_factory=list)

    @property
    def at_d(self) -> dict[bytes, str]:
        return self.states[0]


def _apply(state: dict[bytes, str], op: list[Any], seed: int) -> None:
    if op[0] == "put":
        state[bytes.fromhex(op[1])] = digest(value_for(seed, op[2], op[3]))
    elif op[0] == "delete":
        state.pop(bytes.fromhex(op[1]), None)
    elif op[0] == "new":
        state.clear()
    elif op[0] == "batch":
        for write in op[1]:
            _apply(state, write, seed)


def _msynced_pages(home: Path, out: Path, trace: Path) -> dict[str, set[int]]:
    """File pages (path in HOME at F -> page numbers) msynced between the D and F marks."""
    maps: list[tuple[int, int, int, str]] = []
    for line in (out / "maps.txt").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        maps.append((start, end, int(fields[2], 16), os.path.relpath(fields[-1], home)))
    marks = 0
    pages: dict[str, set[int]] = {}
    for line in trace.read_text().splitlines():
        if "getppid()" in line:
            marks += 1
            continue
        found = re.search(r"msync\((0x[0-9a-f]+), (\d+)", line)
        if found is None or marks != 1:
            continue
        addr, length = int(found.group(1), 16), int(found.group(2))
        for start, end, offset, name in maps:
            lo, hi = max(addr, start), min(addr + length, end)
            if lo < hi:
                first = (lo - start + offset) // PAGE
                last = (hi - start + offset + PAGE - 1) // PAGE
                pages.setdefault(name, set()).update(range(first, last))
    assert marks == 3, f"expected 3 getppid() marks in {trace}, found {marks}"
    return pages


# --------------------------------------------------------------------------- names
@dataclass
class NameOp:
    """One operation on names, on inodes ("nodes"; 0 is HOME) rather than on paths.

    ``kind``: create (a file or, with ``is_dir``, a directory), rename (``node`` moves from
    ``parent``/``name`` to ``dparent``/``dname``, replacing ``node2`` if any), exchange
    (``node`` and ``node2`` swap places) or unlink."""

    kind: str
    parent: int
    name: str
    node: int
    dparent: int = 0
    dname: str = ""
    node2: int | None = None
    is_dir: bool = False
    durable: bool = False  # an fsync of the directory of the new name followed it


@dataclass
class NameModel:
    ops: list[NameOp]
    d_paths: dict[int, str]  # node -> its path in HOME at D
    f_paths: dict[int, str]  # node -> its path in HOME at F
    dirs: set[int]
    synced_after_d: set[int]  # files fsynced after D: every page holds its F content


_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)(?:<([^>]*)>)?")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD = re.compile(r"(AT_FDCWD|\d+)<([^>]*)>")


def _name_model(home: Path, trace: Path) -> NameModel:
    """Replay the traced name operations on a tree of nodes (see NameOp)."""
    children: dict[int, dict[str, int]] = {0: {}}
    ops: list[NameOp] = []
    fds: dict[tuple[str, int], str] = {}
    d_paths: dict[int, str] = {}
    synced_after_d: set[int] = set()
    fsyncs: list[tuple[int, int]] = []  # (op count at the time, directory node)
    marks = 0
    next_node = 1
    home_s = str(home)

    def rel(path: str) -> str | None:
        if path == home_s:
            return ""
        return path[len(home_s) + 1 :] if path.startswith(home_s + "/") else None

    def lookup(path: str | None) -> int | None:
        if path is None:
            return None
        if path == "":
            return 0
        node = 0
        for part in path.split("/"):
            found = children.get(node, {}).get(part)
            if found is None:
                return None
            node = found
        return node

    def split(path: str | None) -> tuple[int | None, str]:
        if path is None:
            return None, ""
        head, _, tail = path.rpartition("/")
        return (lookup(head) if head else 0), tail

    def walk() -> dict[int, str]:
        found: dict[int, str] = {}
        stack = [(0, "")]
        while stack:
            node, prefix = stack.pop()
            for name, child in children.get(node, {}).items():
                found[child] = prefix + name
                stack.append((child, prefix + name + "/"))
        return found

    def resolve(pid: str, dirfd: str | None, path: str) -> str:
        proc = re.match(r"/proc/self/fd/(\d+)(/.*)?$", path)
        if proc:
            return fds.get((pid, int(proc.group(1))), path) + (proc.group(2) or "")
        if not path.startswith("/") and dirfd is not None:
            return os.path.join(dirfd, path)
        return path

    def add(op: NameOp) -> None:
        ops.append(op)

    for line in trace.read_text().splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        pid, call, args, ret, ret_path = m.groups()
        if call == "getppid":
            marks += 1
            if marks == 1:
                d_paths = walk()
            continue
        if int(ret) < 0:
            continue
        strings = [bytes(x, "ascii").decode("unicode_escape") for x in _STRING.findall(args)]
        fd_args = [p for _, p in _FD.findall(args)]
        if call in ("fsync", "fdatasync"):
            node = lookup(rel(fd_args[0])) if fd_args else None
            if node is not None:
                if node in children:
                    fsyncs.append((len(ops), node))
                elif marks >= 1:
                    synced_after_d.add(node)
            continue
        if call in ("open", "openat", "creat"):
            if ret_path is not None:
                fds[(pid, int(ret))] = ret_path
            if ret_path is None or ("O_CREAT" not in args and call != "creat"):
                continue
            path = rel(ret_path)
            if path is None or lookup(path) is not None:
                continue  # outside HOME, or opened, not created
            parent, name = split(path)
            if parent is not None:
                node, next_node = next_node, next_node + 1
                children[parent][name] = node
                add(NameOp("create", parent, name, node))
            continue
        dirfd = fd_args[0] if call.endswith("at") or call == "renameat2" else None
        if call in ("mkdir", "mkdirat"):
            parent, name = split(rel(resolve(pid, dirfd, strings[0])))
            if parent is not None:
                node, next_node = next_node, next_node + 1
                children[parent][name] = node
                children[node] = {}
                add(NameOp("create", parent, name, node, is_dir=True))
        elif call in ("rename", "renameat", "renameat2"):
            src_dir = fd_args[0] if dirfd is not None else None
            dst_dir = fd_args[1] if dirfd is not None and len(fd_args) > 1 else None
            sp, sn = split(rel(resolve(pid, src_dir, strings[0])))
            dp, dn = split(rel(resolve(pid, dst_dir, strings[1])))
            if sp is None or dp is None or sn not in children[sp]:
                continue
            node = children[sp][sn]
            other = children[dp].get(dn)
            if "RENAME_EXCHANGE" in args:
                assert other is not None, line
                children[sp][sn], children[dp][dn] = other, node
                add(NameOp("exchange", sp, sn, node, dp, dn, other))
            else:
                del children[sp][sn]
                children[dp][dn] = node
                add(NameOp("rename", sp, sn, node, dp, dn, other))
        elif call in ("unlink", "unlinkat", "rmdir"):
            parent, name = split(rel(resolve(pid, dirfd, strings[0])))
            if parent is not None and name in children[parent]:
                node = children[parent].pop(name)
                add(NameOp("unlink", parent, name, node))
    # an op is durable if an fsync of the directory its new name is in came after it
    last_fsync: dict[int, int] = {}
    for at, node in fsyncs:
        last_fsync[node] = at
    for i, op in enumerate(ops):
        where = op.dparent if op.kind in ("rename", "exchange") else op.parent
        op.durable = last_fsync.get(where, -1) > i
    return NameModel(ops, d_paths, walk(), set(children), synced_after_d)


def _image_tree(model: NameModel, rng: random.Random, p_keep: float) -> dict[int, dict[str, int]]:
    """The names a crash leaves: durable ops always, each other one with chance p_keep.

    A directory's entries are its own: they survive by an fsync of that directory, whether
    or not the directory's own name survives (if it does not, they are unreachable, as in
    lost+found). A durable rename puts its node at the new name wherever the node was."""
    tree: dict[int, dict[str, int]] = {node: {} for node in model.dirs}
    tree.update({op.node: {} for op in model.ops if op.is_dir})
    for op in model.ops:
        if not (op.durable or rng.random() < p_keep):
            continue
        if op.kind == "create":
            tree[op.parent].setdefault(op.name, op.node)
        elif op.kind == "rename":
            if op.durable or tree[op.parent].get(op.name) == op.node:
                for entries in tree.values():  # wherever it is now
                    for name in [n for n, node in entries.items() if node == op.node]:
                        del entries[name]
                tree[op.dparent][op.dname] = op.node
        elif op.kind == "exchange":
            src, dst = tree[op.parent], tree[op.dparent]
            other = op.node2
            in_place = src.get(op.name) == op.node and dst.get(op.dname) == other
            if other is not None and (op.durable or in_place):
                src[op.name], dst[op.dname] = other, op.node
        elif op.kind == "unlink" and tree[op.parent].get(op.name) == op.node:
            del tree[op.parent][op.name]
    return tree


def _build_images(
    sc: Scenario, home: Path, out: Path, msynced: dict[str, set[int]], trace: Path, count: int
) -> None:
    model = _name_model(home, trace)
    sc.name_ops = len(model.ops)
    sc.volatile_name_ops = sum(not op.durable for op in model.ops)
    d_dir, f_dir = out / "D", out / "F"
    f_data = {
        node: (f_dir / path).read_bytes()
        for node, path in model.f_paths.items()
        if node not in model.dirs
    }
    d_data = {
        node: (d_dir / path).read_bytes()
        for node, path in model.d_paths.items()
        if node not in model.dirs and (d_dir / path).is_file()
    }
    forced: dict[int, set[int]] = {}  # node -> pages that hold their F content in every image
    free: dict[int, list[int]] = {}
    for node, f in f_data.items():
        d = d_data.get(node, b"")
        d = d[: len(f)] + bytes(max(0, len(f) - len(d)))  # a new file: zeros at D
        d_data[node] = d
        pages = range((len(f) + PAGE - 1) // PAGE)
        differing = [
            p for p in pages if f[p * PAGE : (p + 1) * PAGE] != d[p * PAGE : (p + 1) * PAGE]
        ]
        if node in model.synced_after_d:
            forced[node] = set(pages)
        else:
            forced[node] = msynced.get(model.f_paths[node], set())
        free[node] = [p for p in differing if p not in forced[node]]
        sc.differing_pages += len(differing)
        sc.msynced_pages += len([p for p in differing if p in forced[node]])
    rng = random.Random(f"{sc.seed}/{sc.name}")
    plans: list[tuple[str, float, float]] = [("all-D", 0.0, 0.0), ("all-F", 1.0, 1.0)]
    # the chance that a page holds its new content: from a coin toss to almost everything
    # written back (long prefixes, with gaps); and that a name not made durable survives
    plans += [
        (
            f"random-{i}",
            rng.choice([0.5, 0.9, 0.97, 0.995, rng.random()]),
            rng.choice([0.0, 0.5, 0.9, 1.0, rng.random()]),
        )
        for i in range(count)
    ]
    for label, p_new, p_keep in plans:
        img = sc.imagedir / f"image-{label}"
        tree = _image_tree(model, rng, p_keep)
        img.mkdir(parents=True)
        stack = [(0, img)]
        while stack:
            node, where = stack.pop()
            for name, child in tree.get(node, {}).items():
                if child in tree:
                    (where / name).mkdir()
                    stack.append((child, where / name))
                    continue
                if child not in f_data:  # gone by F: what it held at D, if anything
                    (where / name).write_bytes(d_data.get(child, b""))
                    continue
                data = bytearray(d_data[child])
                f = f_data[child]
                for p in forced[child]:
                    data[p * PAGE : (p + 1) * PAGE] = f[p * PAGE : (p + 1) * PAGE]
                for p in free[child]:
                    if rng.random() < p_new:
                        data[p * PAGE : (p + 1) * PAGE] = f[p * PAGE : (p + 1) * PAGE]
                (where / name).write_bytes(bytes(data[: len(f)]))
        sc.images.append(Image(label, img))


_RUNS: dict[str, Scenario] = {}


@functools.cache
def scenario_run(name: str) -> Scenario:
    """Run the child under strace, build the crash images and open each one."""
    problem = strace_problem()
    if problem is not None:
        pytest.skip(problem)
    seed = run_seed()
    print(f"scenario {name}: replay with VIPERDBM_POWERFAIL_SEED={seed}")  # shown on failure
    workdir = Path(tempfile.mkdtemp(prefix=f"viperdbm-powerfail-{name}-", dir="/tmp"))
    home, out, trace = workdir / "home", workdir / "out", workdir / "trace.txt"
    home.mkdir()
    out.mkdir()
    strace = shutil.which("strace")
    assert strace is not None
    proc = subprocess.run(
        [
            strace,
            *("-f", "-qq", "-y", "-s", "4096", "-e", f"trace={TRACED}", "-o", str(trace)),
            sys.executable,
            *(str(HERE / "_powerfail_child.py"), str(home), name, str(seed), str(out)),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"scenario {name} (VIPERDBM_POWERFAIL_SEED={seed}) child failed: {proc.stderr[-3000:]}"
    )
    ops = json.loads((out / "ops.json").read_text())
    state: dict[bytes, str] = {}
    for op in ops["before"]:
        _apply(state, op, seed)
    states = [dict(state)]
    allowed: dict[bytes, set[str | None]] = {}
    for op in ops["after"]:
        if op[0] in ("put", "delete"):
            touched = [bytes.fromhex(op[1])]
        elif op[0] == "batch":
            touched = [bytes.fromhex(write[1]) for write in op[1]]
        else:
            touched = list(state)
        for key in touched:
            allowed.setdefault(key, {states[0].get(key)})
        _apply(state, op, seed)
        for key in touched:
            allowed[key].add(state.get(key))
        states.append(dict(state))
    imagedir = Path(tempfile.mkdtemp(prefix=f"viperdbm-powerfail-{name}-", dir="/dev/shm"))
    sc = Scenario(name, seed, workdir, imagedir, states, allowed, "s" in ops["flag"])
    _RUNS[name] = sc
    msynced = _msynced_pages(home, out, trace)
    shutil.rmtree(home)
    _build_images(sc, home, out, msynced, trace, images_per_scenario())
    shutil.rmtree(out)
    for img in sc.images:
        if img.name in IMAGES_FOR_READERS:
            img.pristine = img.path.with_name(f"{img.path.name}-pristine")
            shutil.copytree(img.path, img.pristine, symlinks=True)
    with Prober(watchdog=300) as prober:
        for img in sc.images:
            img.result = prober.probe(img.path / "store", "w", reopen=True)
    return sc


def keep(sc: Scenario, img: Image) -> Path:
    """Keep a failing image for a reproducer; return where."""
    repro = Path(f"/tmp/viperdbm-powerfail-repro-{sc.seed}-{sc.name}-{img.name}")
    if not repro.exists():
        shutil.copytree(img.path, repro)
    return repro


def durable_violations(sc: Scenario, img: Image) -> list[str]:
    res = img.result
    assert res is not None
    if res.status != "ok":
        return [f"does not open: {res.summary()}"]
    problems = list(res.agreement)
    if res.state_after_reopen is not None and res.state_after_reopen != res.state:
        problems.append("reads differently after the writable open was closed and reopened")
    if sc.every_write_durable and res.state != sc.states[-1]:
        final = sc.states[-1]
        lost = sorted(k for k in set(final) | set(res.state) if res.state.get(k) != final.get(k))
        problems.append(
            f"flag 's': {len(lost)} keys do not hold their last acknowledged value, e.g. "
            f"{[(k, describe(res.state.get(k)), describe(final.get(k))) for k in lost[:3]]}"
        )
    for key in set(sc.at_d) | set(res.state) | set(sc.allowed):
        got = res.state.get(key)
        if key in sc.allowed:
            if got not in sc.allowed[key]:
                problems.append(
                    f"{key!r} (written after D) is {describe(got)}; acceptable: "
                    f"{sorted(describe(v) for v in sc.allowed[key])} (lost what sync() made "
                    "durable, or holds a value never written)"
                )
        elif got != sc.at_d.get(key):
            problems.append(
                f"{key!r} (untouched since D) is {describe(got)}, want {describe(sc.at_d.get(key))}"
            )
    return problems


def prefix_violation(sc: Scenario, img: Image) -> str | None:
    res = img.result
    assert res is not None
    if res.status != "ok":
        return f"does not open: {res.summary()}"
    if any(res.state == state for state in sc.states):
        return None
    best = min(
        range(len(sc.states)),
        key=lambda k: len(set(sc.states[k].items()) ^ set(res.state.items())),
    )
    diff = sorted(
        (key, describe(res.state.get(key)), describe(sc.states[best].get(key)))
        for key in set(res.state) | set(sc.states[best])
        if res.state.get(key) != sc.states[best].get(key)
    )
    return (
        f"the state is no prefix of the {len(sc.states) - 1} operations since D; nearest is "
        f"prefix {best}, differing in {len(diff)} keys, e.g. {diff[:3]}"
    )


def report(sc: Scenario, failures: list[tuple[Image, str]]) -> str:
    lines = [
        f"scenario {sc.name} (VIPERDBM_POWERFAIL_SEED={sc.seed}): {len(failures)} of "
        f"{len(sc.images)} images fail ({sc.differing_pages} pages differ between D and F, "
        f"{sc.msynced_pages} of them msynced after D; {sc.volatile_name_ops} of "
        f"{sc.name_ops} name operations not made durable by an fsync of their directory)"
    ]
    for n, (img, text) in enumerate(failures[:8]):
        where = f"kept at {keep(sc, img)}" if n < 2 else "not kept"
        lines.append(f"  image {img.name} ({where}): {text[:700]}")
    return "\n".join(lines)


@pytest.mark.parametrize("name", SCENARIOS)
def test_crash_images_open_and_keep_what_sync_made_durable(name: str) -> None:
    sc = scenario_run(name)
    failures = [
        (img, "; ".join(problems[:4]))
        for img in sc.images
        if (problems := durable_violations(sc, img))
    ]
    assert not failures, report(sc, failures)


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_page_cache_image_is_exactly_the_last_state(name: str) -> None:
    """The all-F image is what a kill -9 at F leaves: every operation must be there."""
    sc = scenario_run(name)
    img = next(i for i in sc.images if i.name == "all-F")
    assert img.result is not None and img.result.status == "ok", img.result
    assert img.result.state == sc.states[-1], report(sc, [(img, "not the final state")])


@pytest.mark.parametrize("name", SCENARIOS)
def test_crash_images_are_a_prefix_of_the_writes_since_the_sync(name: str) -> None:
    sc = scenario_run(name)
    failures = [(img, text) for img in sc.images if (text := prefix_violation(sc, img))]
    assert not failures, report(sc, failures)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_reader_opens_the_image_first_and_follows_a_new_writer(name: str) -> None:
    """After the reboot a reader opens the crash image before any writer (its readers file
    is whatever the power cut left of the crashed writer's, torn as the pages fell): it
    reads exactly what the store recovered, nothing the power cut lost; then a writer opens
    beside it, and the reader sees the writer's new writes."""
    sc = scenario_run(name)
    failures: list[tuple[Image, str]] = []
    for img in sc.images:
        if img.pristine is None or img.result is None or img.result.status != "ok":
            continue  # an image that does not open is reported by the tests above
        recovered = {digest(key): value for key, value in img.result.state.items()}
        problem = _reader_then_writer(img.pristine / "store", recovered)
        if problem:
            failures.append((img, problem))
    assert not failures, report(sc, failures)


def _reader_then_writer(store: Path, recovered: dict[str, str]) -> str | None:
    """What went wrong when a reader opens ``store`` first and a writer then writes beside
    it (``recovered``: the state a writer's recovery found, key digest -> value digest)."""
    with held_open(store, "r") as reader:
        seen = reader.call("digests")
        if seen != recovered:
            return f"the reader, alone, reads {_difference(seen, recovered)}"
        with held_open(store, "w") as writer:
            want = dict(recovered)
            for i, size in enumerate((64, 8192, (1 << 20) + 1000)):  # new keys, a jumbo too
                value = value_for("after the reboot", i, size)
                writer.put(b"after-reboot-%d" % i, value)
                want[digest(b"after-reboot-%d" % i)] = digest(value)
            keys = list(writer.call("keys"))[:2]  # an overwrite and a delete
            if keys:
                value = value_for("after the reboot", 9, 300)
                writer.put(base64.b64decode(keys[0]), value)
                want[digest(base64.b64decode(keys[0]))] = digest(value)
            if len(keys) > 1:
                writer.delete(base64.b64decode(keys[1]))
                del want[digest(base64.b64decode(keys[1]))]
            seen = reader.call("digests")
            if seen != want:
                return f"beside the new writer, the reader reads {_difference(seen, want)}"
            writer.close()
        reader.close()
    return None


def _difference(got: dict[str, str], want: dict[str, str]) -> str:
    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return (
        f"{len(got)} keys where {len(want)} are wanted; {len(differ)} differ, e.g. "
        f"{[(k[:12], describe(got.get(k)), describe(want.get(k))) for k in differ[:3]]}"
    )


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    for sc in _RUNS.values():
        shutil.rmtree(sc.workdir, ignore_errors=True)
        shutil.rmtree(sc.imagedir, ignore_errors=True)
    _RUNS.clear()
    scenario_run.cache_clear()


def test_the_set_up_installs_strace() -> None:
    """Without strace these tests skip, and a green `make test` proves nothing about power
    cuts: scripts/setup.sh (run by `make test`) must install it on a fresh Debian."""
    setup = (HERE.parent / "scripts" / "setup.sh").read_text()
    packages = re.search(r"^for pkg in ([^;]*); do", setup, re.MULTILINE)
    assert packages is not None, "scripts/setup.sh no longer lists its Debian packages"
    assert "strace" in packages.group(1).split(), packages.group(1)
