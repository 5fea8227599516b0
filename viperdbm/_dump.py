"""Dump, load and copy viperdbm stores (the format is described in docs/dump-format.md).

A dump is a line-oriented ASCII text file::

    viperdbm-dump 1 {"created": "2025-01-01T00:00:00Z", "records": 2, "viperdbm": "0.1.0"}
    a2V5:dmFsdWU=
    :
    viperdbm-dump-end 2 sha256:5d0c…

The first line names the format and its version, followed by a JSON object of metadata;
then one line per record, ``base64(key):base64(value)``; then the end line with the number
of records and the SHA-256 of the record lines. Every byte string survives (any of the 256
byte values, empty keys and values, values of any size) and a dump round-trips exactly.

Loading and copying build the new store beside its destination and rename it into place
only when every record is in, so a damaged dump or an interrupted load leaves nothing
half-made at the destination.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import errno as _errno
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import IO, Any

from . import _readers as readers
from . import _storedir as storedir
from ._dbm import Database
from ._dbm import open as _open_db
from ._errors import error
from ._progress import Progress

__all__ = ["FORMAT_VERSION", "DumpError", "copy", "dump", "load", "read_dump"]

#: The version of the dump format this module writes; it reads this version and older.
FORMAT_VERSION = 1
MAGIC = b"viperdbm-dump"
END = b"viperdbm-dump-end"

PathArg = str | os.PathLike[str]


class DumpError(error):
    """A dump file that cannot be read: not a dump, damaged, truncated or too new.

    ``line`` is the 1-based number of the offending line (0 when it is not about a line).
    """

    default_errno = _errno.EINVAL
    default_hint = "the dump is damaged or not a viperdbm dump; make it again with 'viperdbm dump'"

    def __init__(self, message: str, *, line: int = 0, filename: str | None = None) -> None:
        self.line = line
        super().__init__(message, filename=filename)

    def __str__(self) -> str:
        where = self.filename if self.filename is not None else "the dump"
        at = f", line {self.line}" if self.line else ""
        return f"{where}{at}: {self.message} ({self.hint})"


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def header_line(records: int, extra: dict[str, Any] | None = None) -> bytes:
    """The first line of a dump of ``records`` records (with its newline)."""
    from . import __version__

    meta: dict[str, Any] = {"created": _now(), "records": records, "viperdbm": __version__}
    meta.update(extra or {})
    return MAGIC + b" %d " % FORMAT_VERSION + json.dumps(meta, sort_keys=True).encode() + b"\n"


def _dump_db(db: Mapping[bytes, bytes], out: IO[bytes], progress: Progress | None) -> int:
    if isinstance(db, Database):
        with db.snapshot():  # one state of a store a writer writes meanwhile
            return _dump_keys(db, sorted(db.keys()), out, progress)
    return _dump_keys(db, sorted(db.keys()), out, progress)


def _dump_keys(
    db: Mapping[bytes, bytes], keys: list[bytes], out: IO[bytes], progress: Progress | None
) -> int:
    if progress is not None and progress.total is None:
        progress.total = len(keys)
    out.write(header_line(len(keys)))
    digest = hashlib.sha256()
    count = 0
    for key in keys:
        value = db.get(key)
        if value is None:  # pragma: no cover - a snapshot is read
            continue
        line = _b64(key) + b":" + _b64(value) + b"\n"
        digest.update(line)
        out.write(line)
        count += 1
        if progress is not None:
            progress.update()
    out.write(END + b" %d sha256:%s\n" % (count, digest.hexdigest().encode()))
    return count


def dump(
    source: PathArg | Mapping[bytes, bytes],
    out: PathArg | IO[bytes],
    *,
    progress: Progress | None = None,
) -> int:
    """Write every record of ``source`` (a store path, an open store, or any mapping of
    bytes to bytes) to ``out``.

    ``out`` is a path (the file is written beside it and renamed into place when
    complete) or a binary file object. Records are written in the order of their keys, so
    dumps of stores with equal contents are equal apart from the creation time. Returns
    the number of records.

    >>> import io, os, tempfile, viperdbm
    >>> path = os.path.join(tempfile.mkdtemp(), "d.vdb")
    >>> with viperdbm.open(path, "c") as db:
    ...     db[b"k"] = b"\\x00\\xff"
    >>> buf = io.BytesIO()
    >>> viperdbm.dump(path, buf)
    1
    >>> buf.getvalue().splitlines()[1]
    b'aw==:AP8='
    """
    if isinstance(out, str | os.PathLike):
        target = os.fspath(out)
        try:
            with storedir.atomic_file(target) as f:
                count = dump(source, f, progress=progress)
        except OSError as exc:
            if isinstance(exc, error):
                raise
            # name the dump the user asked for, not the temporary file beside it
            raise storedir.os_error("cannot write the dump", exc, target) from exc
        return count
    if isinstance(source, Mapping):
        return _dump_db(source, out, progress)
    with _open_db(source, "r") as db:
        return _dump_db(db, out, progress)


def _meta_of(line: bytes, name: str | None) -> dict[str, Any]:
    fields = line.split(b" ", 2)
    if fields[0] != MAGIC:
        raise DumpError(
            "not a viperdbm dump (the first line does not start with 'viperdbm-dump')",
            line=1,
            filename=name,
        )
    if len(fields) < 2 or not fields[1].isdigit():
        raise DumpError("the header has no format version", line=1, filename=name)
    version = int(fields[1])
    if version > FORMAT_VERSION or version < 1:
        raise DumpError(
            f"dump format version {version}; this viperdbm reads version {FORMAT_VERSION} "
            "(upgrade viperdbm to load it)",
            line=1,
            filename=name,
        )
    if len(fields) < 3 or not fields[2].strip():
        return {}
    try:
        meta = json.loads(fields[2])
    except ValueError:
        raise DumpError("the header's metadata is not JSON", line=1, filename=name) from None
    if not isinstance(meta, dict):
        raise DumpError("the header's metadata is not a JSON object", line=1, filename=name)
    return meta


def read_dump(
    f: IO[bytes], *, name: str | None = None, meta: dict[str, Any] | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """Yield the ``(key, value)`` records of a dump, checking everything as it goes.

    Raises :class:`DumpError` naming the line of the first problem. The count and the
    checksum are checked when the end line is reached, so a consumer must not treat the
    records as complete until the iterator is exhausted. ``meta``, if given, receives the
    header's metadata.
    """
    lineno = 0
    digest = hashlib.sha256()
    count = 0
    ended = False
    for raw in f:
        lineno += 1
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
        if lineno == 1:
            found = _meta_of(line, name)
            if meta is not None:
                meta.update(found)
            continue
        if ended:
            raise DumpError("text after the end line", line=lineno, filename=name)
        if line.startswith(END):
            fields = line.split(b" ")
            if len(fields) != 3 or not fields[1].isdigit() or not fields[2].startswith(b"sha256:"):
                raise DumpError(
                    "a malformed end line (expected 'viperdbm-dump-end COUNT sha256:HEX')",
                    line=lineno,
                    filename=name,
                )
            if int(fields[1]) != count:
                raise DumpError(
                    f"the end line says {int(fields[1])} records but the dump holds {count}: "
                    "lines were lost or added",
                    line=lineno,
                    filename=name,
                )
            if fields[2][7:].decode("ascii", "replace") != digest.hexdigest():
                raise DumpError(
                    f"the checksum does not match: a record between lines 2 and {lineno - 1} "
                    "was changed",
                    line=lineno,
                    filename=name,
                )
            ended = True
            continue
        key_b64, sep, value_b64 = line.partition(b":")
        if not sep:
            raise DumpError(
                "not a record (expected 'BASE64KEY:BASE64VALUE')", line=lineno, filename=name
            )
        try:
            key = base64.b64decode(key_b64, validate=True)
            value = base64.b64decode(value_b64, validate=True)
        except (binascii.Error, ValueError):
            raise DumpError(
                "a record that is not valid base64", line=lineno, filename=name
            ) from None
        digest.update(line + b"\n")
        count += 1
        yield key, value
    if lineno == 0:
        raise DumpError("the dump is empty", line=1, filename=name)
    if not ended:
        raise DumpError(
            "the dump ends without its 'viperdbm-dump-end' line: it is truncated",
            line=lineno + 1,
            filename=name,
        )


# ---------------------------------------------------------------------- new stores
def _hold_store_lock(path: str) -> int:
    """Lock the existing store at ``path`` exclusively (it is about to be replaced)."""
    storedir.check_is_store(path, hint="remove it yourself or choose another destination")
    return storedir.lock(path, exclusive=True, label=path)


@contextlib.contextmanager
def new_store(path: PathArg, *, replace: bool = False, mode: int = 0o666) -> Iterator[Database]:
    """A new, empty store that appears at ``path`` only if the ``with`` block succeeds.

    Without ``replace`` the destination must not exist. With it, an existing store there
    is exchanged for the new one in one step (under its lock) and then removed: at every
    instant the path holds the old store or the new one.
    """
    target = os.path.abspath(os.fspath(path))
    if os.path.lexists(target) and not replace:
        raise error(
            "the destination exists",
            filename=target,
            errno=_errno.EEXIST,
            hint="choose a new path, or pass --replace to overwrite a store",
        )
    tmp = storedir.temp_path(target, "build")
    try:
        db = _open_db(tmp, "n", mode)
        try:
            yield db
        finally:
            db.close()
        storedir.make_durable(tmp)
        lock_fd = _hold_store_lock(target) if os.path.lexists(target) else None
        try:
            if lock_fd is None:
                old = storedir.publish(tmp, target, replace=False)
            else:
                with readers.new_readers_barred(target):
                    old = storedir.publish(tmp, target, replace=True)
        except OSError as exc:
            if isinstance(exc, error):
                raise
            raise storedir.os_error("cannot put the new store in place", exc, target) from exc
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
        storedir.remove_old(old)
        storedir.write_informational_poolset(target, mode)  # name the final path
    except BaseException:
        storedir.discard(tmp)
        raise


def load(
    source: PathArg | IO[bytes],
    path: PathArg,
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> int:
    """Create the store ``path`` from the dump ``source`` (a path or a binary file).

    The store appears at ``path`` only when the whole dump was read and verified; a
    damaged dump raises :class:`DumpError` naming the line and leaves ``path`` untouched.
    ``replace=True`` overwrites an existing store. Returns the number of records.
    """
    if isinstance(source, str | os.PathLike):
        dump_path = os.fspath(source)
        try:
            f = open(dump_path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise error(
                f"cannot read the dump: {exc.strerror}", filename=dump_path, errno=exc.errno
            ) from exc
        with f:
            return load(f, path, replace=replace, progress=progress)
    name = getattr(source, "name", None)
    meta: dict[str, Any] = {}
    count = 0
    with new_store(path, replace=replace) as db:
        for key, value in read_dump(
            source, name=name if isinstance(name, str) else None, meta=meta
        ):
            if progress is not None:
                if progress.total is None and isinstance(meta.get("records"), int):
                    progress.total = meta["records"]
                progress.update()
            db[key] = value
            count += 1
    return count


def copy(
    source: PathArg,
    destination: PathArg,
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> int:
    """Copy every record of the store ``source`` into a new store ``destination``.

    The copy holds only live records (it is compact) and appears at ``destination`` only
    when complete. Returns the number of records copied.
    """
    with _open_db(source, "r") as src, src.snapshot():  # one state, whatever a writer does
        keys = src.keys()
        if progress is not None:
            progress.total = len(keys)
        count = 0
        with new_store(destination, replace=replace) as dst:
            for key in keys:
                value = src.get(key)
                if value is not None:
                    dst[key] = value
                    count += 1
                if progress is not None:
                    progress.update()
    return count
