"""Verifying a closed store (:func:`check`) and copying what is readable out of it
(:func:`salvage`).

:func:`check` looks at every layer a store has, from the outside in: the directory and
its poolset, libpmemobj's own consistency check of the pool (``pmemobj_check``), the open
itself (whose recovery scan verifies every block header and every record's CRC-32C), the
block logs that ended in unreadable bytes, every live record read back through the
index, and the index's own consistency (its length, membership, and the
``firstkey``/``nextkey`` walk). It reports; it never changes the store, apart from what
every open does (a moved store's ``pool.set`` is rewritten).
"""

from __future__ import annotations

import errno as _errno
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from . import _layout as layout
from . import _pmemobj
from . import _readers as readers
from . import _storedir as storedir
from ._dbm import Database
from ._dbm import open as _open_db
from ._dump import new_store
from ._errors import CorruptedError, LockError, error
from ._progress import Progress

__all__ = ["CheckReport", "Salvaged", "check", "salvage"]

_MAX_LISTED = 10  # problems listed per kind before they are only counted


@dataclass
class CheckReport:
    """What :func:`check` found. ``ok`` is true when ``problems`` is empty.

    ``problems`` are sentences about damage or inconsistency; ``notes`` are facts worth
    knowing that are not damage (the store was moved, ...). ``pool_check`` is the verdict
    of libpmemobj's ``pmemobj_check``: ``"consistent"``, ``"inconsistent"`` or why it
    did not run. ``damage`` lists ``(block offset, offset of the first unreadable
    byte)`` for every block log that ended in bytes that are not a record.
    """

    path: str
    opened: bool = False
    records: int = 0
    records_read: int = 0
    unreadable: int = 0
    pool_check: str = "not run"
    damage: list[tuple[int, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, int | float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing is wrong with the store."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (with ``ok``)."""
        data = asdict(self)
        data["ok"] = self.ok
        data["damage"] = [list(d) for d in self.damage]
        return data

    def __str__(self) -> str:
        lines = [f"{self.path}: {'ok' if self.ok else 'PROBLEMS FOUND'}"]
        if self.opened:
            lines.append(
                f"  {self.records:,} records, {self.records_read:,} read back, "
                f"{self.unreadable:,} unreadable"
            )
        else:
            lines.append("  the store does not open")
        lines.append(f"  pool check (pmemobj_check): {self.pool_check}")
        lines.extend(f"  problem: {p}" for p in self.problems)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _problem(report: CheckReport, counter: dict[str, int], kind: str, text: str) -> None:
    counter[kind] = counter.get(kind, 0) + 1
    if counter[kind] <= _MAX_LISTED:
        report.problems.append(text)
    elif counter[kind] == _MAX_LISTED + 1:
        report.problems.append(f"(more problems of this kind: {kind}; only the first are listed)")


def _check_poolset(path: str, report: CheckReport) -> None:
    """Structural checks of the lock file and pool.set."""
    parts_dir = os.path.join(path, layout.PARTS_DIR)
    if not os.path.lexists(os.path.join(path, layout.LOCK_FILE)):
        report.notes.append("the lock file is missing (harmless: the next open makes it)")
    try:
        named = storedir.poolset_names(path)
    except error as exc:
        # viperdbm opens the pool without it; PMDK's own tools need it
        report.problems.append(f"pool.set: {exc.message}")
    else:
        if named is not None and os.path.abspath(named) != parts_dir:
            report.notes.append(
                f"pool.set names {named!r}: the store was moved or copied; "
                "the next writable open points it at its own parts/"
            )


def _check_parts(path: str, report: CheckReport) -> bool:
    """Structural checks of parts/; True if libpmemobj may be run on them."""
    parts_dir = os.path.join(path, layout.PARTS_DIR)
    try:
        _pmemobj.validate_parts(_pmemobj.scan_parts_of(parts_dir, path), path)
    except error as exc:
        report.problems.append(f"parts/: {exc.message}")
        return False
    return True


def _pmemobj_check(path: str, report: CheckReport) -> None:
    """libpmemobj's own check of the pool's metadata and heap (read-only)."""
    parts_dir = os.path.join(path, layout.PARTS_DIR)
    try:
        reservation = storedir.reservation_for(storedir.scan_parts(parts_dir))
    except OSError as exc:
        report.pool_check = f"not run ({exc.strerror})"
        report.problems.append(f"parts/: cannot read it ({exc.strerror})")
        return
    result = _pmemobj.check_pool(parts_dir, layout.POOL_LAYOUT, reservation, label=path)
    if result.consistent:
        report.pool_check = "consistent"
    elif result.consistent is False:
        report.pool_check = "inconsistent"
        report.problems.append(f"libpmemobj finds the pool inconsistent ({result.message})")
    elif result.errno in (_errno.EAGAIN, _errno.EWOULDBLOCK):
        raise LockError("the store is in use by another process or handle", filename=path)
    elif result.errno in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        _pool_check_not_run_for_readers(report)
    else:
        report.pool_check = f"could not run ({result.message})"
        report.problems.append(f"libpmemobj cannot check the pool: {result.message}")


def _check_open_store(db: Database, report: CheckReport, progress: Progress | None) -> None:
    with db.snapshot():  # one state, if a writer writes meanwhile
        _check_state(db, report, progress)


def _check_state(db: Database, report: CheckReport, progress: Progress | None) -> None:
    counter: dict[str, int] = {}
    report.damage = db.damage
    for block, at in report.damage:
        _problem(
            report,
            counter,
            "damaged block log",
            f"the log of the block at offset {block} ends in unreadable bytes at offset {at}: "
            "records written after that point in this block are lost",
        )
    report.stats = db.stats()
    keys = db.keys()
    report.records = len(db)
    if len(keys) != report.records:
        report.problems.append(f"the index counts {report.records} records but lists {len(keys)}")
    unique = set(keys)
    if len(unique) != len(keys):
        report.problems.append(f"the index lists {len(keys) - len(unique)} keys more than once")
    if report.stats.get("records", report.records) != report.records:
        report.problems.append(
            f"the store's counters say {report.stats['records']} records, "
            f"the index {report.records}"
        )
    if progress is not None:
        progress.total = len(keys)
    for key in keys:
        try:
            value = db.get(key)
            present = key in db
        except error as exc:
            report.unreadable += 1
            _problem(report, counter, "unreadable", f"key {key!r} cannot be read: {exc}")
        else:
            if value is None or not present:
                report.unreadable += 1
                _problem(report, counter, "missing", f"key {key!r} is listed but cannot be found")
            else:
                report.records_read += 1
        if progress is not None:
            progress.update()
    # the gdbm walk must visit each key exactly once
    seen: set[bytes] = set()
    key_or_none = db.firstkey()
    steps = 0
    while key_or_none is not None and steps <= len(keys):
        if key_or_none in seen:
            _problem(report, counter, "walk", f"firstkey/nextkey visits key {key_or_none!r} twice")
            break
        seen.add(key_or_none)
        steps += 1
        key_or_none = db.nextkey(key_or_none)
    if seen != unique:
        report.problems.append(
            f"firstkey/nextkey visit {len(seen)} keys; the index lists {len(unique)}"
        )


def check(path: str | os.PathLike[str], *, progress: Progress | None = None) -> CheckReport:
    """Verify the closed store at ``path`` and report what was found.

    Raises :class:`viperdbm.error` when there is nothing to check (no store at ``path``)
    and :class:`viperdbm.LockError` when the store is in use; everything else, including
    a store that does not open, is reported in the returned :class:`CheckReport`.

    >>> import os, tempfile, viperdbm
    >>> path = os.path.join(tempfile.mkdtemp(), "c.vdb")
    >>> with viperdbm.open(path, "c") as db:
    ...     db[b"k"] = b"v"
    >>> report = viperdbm.check(path)
    >>> report.ok, report.records, report.pool_check
    (True, 1, 'consistent')
    """
    started = time.perf_counter()
    apath = os.path.abspath(os.fspath(path))
    storedir.check_is_store(apath, hint="check the path")
    for attempt in range(_SWAPS_TOLERATED + 1):
        # The store's writer may swap a new store in at the path (reorganize()) while the
        # parts are looked at: what is found then is of a store no longer there, so look
        # again. The directory is held open, so its inode cannot name another meanwhile.
        try:
            held = os.open(apath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise storedir.os_error("cannot look at the store", exc, apath) from exc
        try:
            try:
                report = _check_once(apath, progress)
            except error:
                if attempt < _SWAPS_TOLERATED and not storedir.is_open_as(apath, held):
                    continue
                raise
            if report.ok or attempt == _SWAPS_TOLERATED or storedir.is_open_as(apath, held):
                break
        finally:
            os.close(held)
    report.seconds = time.perf_counter() - started
    return report


#: swaps of the store during one check() after which it reports what it found
_SWAPS_TOLERATED = 5


def _check_once(apath: str, progress: Progress | None) -> CheckReport:
    report = CheckReport(path=apath)
    _check_poolset(apath, report)
    # Hold the store exclusively (no writer) for the whole check, and open it with 'u' so
    # that the open goes through libpmemobj and the full recovery scan of every object in
    # the pool, not through the readers' shared path. Under a live writer, check the data
    # as a reader sees it instead: the parts the writer uses are those its reader maps (a
    # part it is adding at this moment is no damage).
    try:
        lock_fd: int | None = storedir.lock(apath, exclusive=True, label=apath)
    except LockError:
        if not readers.writer_is_live(apath):
            raise
        _check_as_reader(apath, report, progress, beside_writer=True)
        return report
    try:
        if not _check_parts(apath, report):
            return report  # (libpmemobj is not run on parts that are not a pool's)
        try:
            db = _open_db(apath, "ru")
        except LockError:
            raise
        except error as exc:
            if exc.errno not in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
                report.problems.append(f"the store does not open: {exc}")
            else:
                # a user who may only read: libpmemobj opens the parts for writing, the
                # readers' shared path does not (and takes its own shared lock)
                assert lock_fd is not None
                os.close(lock_fd)
                lock_fd = None
                _check_as_reader(apath, report, progress)
        else:
            report.opened = True
            with db:
                _check_open_store(db, report, progress)
        if lock_fd is not None:
            _pmemobj_check(apath, report)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return report


def _check_as_reader(
    path: str, report: CheckReport, progress: Progress | None, *, beside_writer: bool = False
) -> None:
    try:
        db = _open_db(path, "r")
    except LockError:
        raise
    except error as exc:
        report.problems.append(f"the store does not open: {exc}")
    else:
        report.opened = True
        with db:
            _check_open_store(db, report, progress)
    if beside_writer:
        report.pool_check = "not run (a writer has the store open)"
        report.notes.append(
            "a writer has the store open: checked every record it had published, as a reader "
            "reads them; libpmemobj's own check was not run (close the writer for it)"
        )
        return
    _pool_check_not_run_for_readers(report)


def _pool_check_not_run_for_readers(report: CheckReport) -> None:
    # libpmemobj's check opens the part files for writing: not a fault of the store
    report.pool_check = "not run (it needs write access to the part files)"
    report.notes.append(
        "libpmemobj's own check was not run: it needs write access to the part files"
    )


class Salvaged(NamedTuple):
    """What :func:`salvage` did: records copied, and records that could not be read."""

    copied: int
    unreadable: int


def salvage(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> Salvaged:
    """Copy every readable record of the store ``path`` into a new store ``out``.

    The store must open read-only, either through libpmemobj or, when its last writer
    closed it, through the readers' path that maps the part files directly (which works
    even if libpmemobj's pool metadata is damaged). Recovery already drops torn and
    damaged records; this copies what the index holds, skipping any record that cannot be
    read. Salvaging from a store that does not open at all is not supported in this
    version: that raises :class:`viperdbm.CorruptedError`. ``out`` appears only when
    complete.
    """
    apath = os.path.abspath(os.fspath(path))
    storedir.check_is_store(apath, hint="check the path")
    try:
        src = _open_db(apath, "r")
    except LockError:
        raise
    except error as exc:
        raise CorruptedError(
            f"the store does not open, so nothing can be salvaged from it ({exc.message}); "
            "salvaging from a pool that does not open is not supported in this version",
            filename=apath,
            hint="restore the store from a dump or a backup",
        ) from exc
    copied = unreadable = 0
    with src:
        keys = src.keys()
        if progress is not None:
            progress.total = len(keys)
        with new_store(out, replace=replace) as dst:
            for key in keys:
                try:
                    value = src.get(key)
                except error:
                    value = None
                if value is None:
                    unreadable += 1
                else:
                    dst[key] = value
                    copied += 1
                if progress is not None:
                    progress.update()
    return Salvaged(copied, unreadable)
