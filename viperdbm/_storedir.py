"""The store directory: what is a store, its parts, and how a store is built and swapped in.

A store is a directory (``pool.set``, ``parts/``, ``lock``, ``blocks``; see
docs/format.md). This module owns every file-system operation on it that is not inside the
pool itself; the engine, ``_pmemobj``, check, dump/load/copy and compat.whichdb go through
it:

* **Durable names.** By POSIX a new name (a file created, a directory made, a rename) is
  durable only once the directory holding it has been fsynced; the data of a file is not
  enough. :func:`fsync_dir` is the one way to do that, and every place that adds a name
  calls it before it reports success. :func:`atomic_file` replaces a small file (the
  blocks file, pool.set, a dump) in one durable step.
* **Is this a store?** :func:`is_store` is the one answer and says why not;
  :func:`check_is_store` raises it, and tells a permission problem apart from a
  directory that is not a store.
* **The lock.** :func:`lock`, :func:`probe_lock` and :func:`flock`: the one place the
  ``lock`` file is opened and flocked (read-only where the user may not write it).
* **The parts.** :func:`scan_parts` is the one listing of ``parts/`` outside libpmemobj
  (an open lists it once and hands the listing on); :func:`repair_interrupted_growth`
  undoes what a killed growth leaves behind. :data:`OS_PAGE_SIZE` and :func:`umask` are
  the one source of the page size and the umask.
* **pool.set.** Written (:func:`write_poolset`, :func:`write_informational_poolset`) and
  read (:func:`read_poolset`, :func:`poolset_names`) here.
* **Building and swapping.** A new store is built beside its path (:func:`temp_path`,
  :func:`make_durable`) and appears there in one step: :func:`publish` renames it into an
  empty place, or exchanges it with what is there (``renameat2(RENAME_EXCHANGE)``), so that
  a crash at any instant leaves either the old store or the new one at the path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import fcntl
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

from . import _layout as layout
from ._errors import LockError, NotAStoreError, StoreFullError, error
from ._signals import Deferred

log = logging.getLogger("viperdbm")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: the hint of a refused permission: os_error also words dump files (and other files the
#: user names), whose permissions are not the store's
_PERMISSION_HINT = "check the permissions of that path and of the directories above it"


#: the OS page: libpmemobj maps each part file in whole pages (one source for every module;
#: the native core reads the same sysconf)
OS_PAGE_SIZE = os.sysconf("SC_PAGESIZE")


def umask() -> int:
    """The process's umask, read without changing it (os.umask would race other threads
    creating files); the fallback is for kernels without the Umask: line (before 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error(what: str, exc: OSError, path: str) -> error:
    """``exc`` as a viperdbm error about ``path``, a store or a file the user named such as
    a dump (never a temporary name)."""
    if isinstance(exc, error):
        return exc
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return StoreFullError(f"{what}: {exc.strerror}", filename=path, errno=exc.errno)
    hint = _PERMISSION_HINT if exc.errno in (_errno.EACCES, _errno.EPERM) else None
    return error(f"{what}: {exc.strerror or exc}", filename=path, errno=exc.errno, hint=hint)


def permission_denied(what: str, path: str) -> error:
    return error(
        f"{what}: permission denied", filename=path, errno=_errno.EACCES, hint=_PERMISSION_HINT
    )


# ---------------------------------------------------------------------- durability
def fsync_dir(path: str, *, on_failed_fsync: Callable[[int], None] | None = None) -> None:
    """Make the names in the directory ``path`` durable (its entries, not their data).

    ``on_failed_fsync`` is told the errno when the fsync itself fails (not the open): the
    data it was to make durable may be lost, which a later fsync would not say."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error("cannot open a directory of the store to fsync it", exc, path) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        # a few file systems cannot fsync a directory (they keep names durable otherwise)
        if exc.errno not in (_errno.EINVAL, _errno.EOPNOTSUPP, _errno.ENOTSUP):
            if on_failed_fsync is not None:
                on_failed_fsync(exc.errno or _errno.EIO)
            raise os_error("cannot fsync a directory of the store", exc, path) from exc
    finally:
        os.close(fd)


def fsync_file(path: str, *, on_failed_fsync: Callable[[int], None] | None = None) -> None:
    """Make the data and size of the file ``path`` durable (``on_failed_fsync``: see
    :func:`fsync_dir`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error("cannot open a file of the store to fsync it", exc, path) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        if on_failed_fsync is not None:
            on_failed_fsync(exc.errno or _errno.EIO)
        raise os_error("cannot fsync a file of the store", exc, path) from exc
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` durably and in one step when the ``with``
    block succeeds: written beside it under a hidden temporary name, fsynced, renamed
    over it, then its directory fsynced. On failure the temporary file is removed and
    ``path`` is untouched. (Errors are the caller's to word: they must name ``path``.)"""
    parent, base = os.path.split(os.path.abspath(path))
    # (random bytes, as uuid4 is: importing uuid brings in platform at every start)
    tmp = os.path.join(parent, f".{base}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


def replace_file(path: str, data: bytes, mode: int) -> None:
    """Give the file ``path`` the content ``data`` durably and in one step
    (:func:`atomic_file`)."""
    with atomic_file(path, mode) as f:
        f.write(data)


# ---------------------------------------------------------------------- what a store is
_NOT_A_DIRECTORY = "a viperdbm store is a directory"


def is_store(path: str) -> str | None:
    """None if ``path`` is a store directory, else why not, in the user's terms.

    The one answer to "is this a store?" for the engine, check, dump/load/copy and
    compat.whichdb: a directory holding a ``pool.set`` file and a ``parts/`` directory.
    (Whether the store inside is healthy is for the open and ``check`` to say.) Raises
    an error with errno EACCES when the answer cannot be read, and ENOENT when nothing
    is at ``path``: neither means "not a store"."""
    try:
        st = os.stat(path)
    except PermissionError:
        raise permission_denied("cannot look at the store", path) from None
    except FileNotFoundError:
        raise error("no viperdbm store at this path", filename=path, errno=_errno.ENOENT) from None
    except OSError as exc:
        raise os_error("cannot look at the store", exc, path) from exc
    if not stat.S_ISDIR(st.st_mode):
        return _NOT_A_DIRECTORY
    for name, want_dir in ((layout.SET_FILE, False), (layout.PARTS_DIR, True)):
        try:
            entry = os.lstat(os.path.join(path, name))
        except PermissionError:
            raise permission_denied("cannot read the store directory", path) from None
        except (FileNotFoundError, NotADirectoryError):
            return f"the directory has no {name!r}"
        except OSError as exc:
            raise os_error("cannot read the store directory", exc, path) from exc
        if stat.S_ISDIR(entry.st_mode) != want_dir:
            return f"{name!r} is {'not ' if want_dir else ''}a directory"
    return None


def check_is_store(path: str, hint: str | None = None) -> None:
    """Raise unless ``path`` is a store directory (see :func:`is_store`): NotAStoreError
    saying why not, or an error with errno EACCES or ENOENT."""
    why = is_store(path)
    if why is None:
        return
    if hint is None:
        # flag 'n' replaces a plain file (as dbm.gnu does), never a directory that is not
        # a store
        hint = (
            "check the path; flag 'n' replaces a file with a new store"
            if why == _NOT_A_DIRECTORY
            else "check the path; flag 'n' does not replace a directory that is not a store"
        )
    raise NotAStoreError(f"not a viperdbm store ({why})", filename=path, hint=hint)


# ---------------------------------------------------------------------- the lock
_IN_USE = "the store is in use by another process or handle"


def _open_lock_file(directory: str, *, create: bool) -> int:
    """The store's lock file, opened for flock: read-write (created if missing and
    ``create``), or read-only for a user who may read the store but not write its lock
    file (flock works on any descriptor)."""
    path = os.path.join(directory, layout.LOCK_FILE)
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno not in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
            raise
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def flock(fd: int, *, exclusive: bool, label: str, wait: bool = False) -> None:
    """Take (or change) the store's lock on ``fd``; LockError at once if another holds it
    (unless ``wait``). The one place viperdbm calls flock."""
    how = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, how if wait else how | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockError(_IN_USE, filename=label) from None


def lock(directory: str, *, exclusive: bool, label: str, timeout: float = 0.0) -> int:
    """Lock the store in ``directory`` (exclusive for a writer; shared for a reader that
    keeps writers out); the descriptor, which holds the lock until it is closed. LockError
    if another holds it ``timeout`` seconds from now (0: at once).

    The lock is the one of the store at ``directory`` when it is taken: a writer that swaps
    another store in there (reorganize(), flag 'n') moves the old lock file away with the
    old store and lets go of it after, so a lock taken meanwhile is taken again, on the new
    store's file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = _open_lock_file(directory, create=True)
        except OSError as exc:
            raise os_error("cannot open the store's lock file", exc, label) from exc
        try:
            _flock_until(fd, deadline, exclusive=exclusive, label=label)
            if is_open_as(os.path.join(directory, layout.LOCK_FILE), fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the lock of a store swapped out of the path meanwhile


def _flock_until(fd: int, deadline: float, *, exclusive: bool, label: str) -> None:
    """:func:`flock`, tried again until ``deadline`` (time.monotonic()); then LockError."""
    while True:
        try:
            flock(fd, exclusive=exclusive, label=label)
            return
        except LockError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(0.05, max(0.001, deadline - time.monotonic())))


def is_open_as(path: str, fd: int) -> bool:
    """Is the file or directory at ``path`` the one open as ``fd``? (While ``fd`` is open
    its inode cannot be reused: a match is never another file's.)"""
    try:
        named = os.stat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def probe_lock(directory: str, *, label: str) -> None:
    """LockError if anyone holds the store in ``directory`` (for 'u', which holds none)."""
    try:
        fd = _open_lock_file(directory, create=False)
    except OSError:
        return  # no lock file, nobody to protect
    try:
        flock(fd, exclusive=True, label=label)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- the parts
_PART_NAME = re.compile(r"[0-9]+\.pmem\Z")


def part_path(parts_dir: str, number: int) -> str:
    """Where part ``number`` is or will be: libpmemobj names a directory poolset's parts
    000000.pmem, 000001.pmem, ... (set.c, ``util_poolset_append_new_part``)."""
    return os.path.join(parts_dir, f"{number:06d}.pmem")


class Part(NamedTuple):
    number: int
    path: str
    size: int
    mode: int  # st_mode


class Parts(NamedTuple):
    """One scan of ``parts/``: every entry libpmemobj would read as a part, by number.

    libpmemobj (set.c, ``util_poolset_directory_load``) takes every entry whose name ends
    in ``.pmem`` and parses its number with ``strtol``; ``strays`` are the names it would
    misread (``foo.pmem`` becomes a second part 0, which crashes it)."""

    directory: str
    numbered: list[Part]
    strays: list[str]

    def mapped(self) -> list[tuple[str, int]]:
        """The part files in order with their mapped sizes, as libpmemobj maps them: the
        regular files numbered 0..n-1, each rounded down to whole pages. A last part too
        small to map (the empty file a growth killed before its fallocate leaves) is left
        out: the heap never used it, and a writer's open removes it."""
        parts = []
        for expected, part in enumerate(self.numbered):
            if part.number != expected or not stat.S_ISREG(part.mode):
                break  # libpmemobj stops at the first missing number too
            parts.append((part.path, part.size - part.size % OS_PAGE_SIZE))
        while len(parts) > 1 and parts[-1][1] == 0:
            parts.pop()
        return parts

    def mapped_size(self) -> int:
        return sum(size for _, size in self.mapped())


def scan_parts(parts_dir: str) -> Parts:
    """The one listing of ``parts/`` (an open reads the directory once, here)."""
    numbered: list[Part] = []
    strays: list[str] = []
    with os.scandir(parts_dir) as it:
        for entry in it:
            name = entry.name
            if len(name) <= 5 or not name.endswith(".pmem"):
                continue
            if not _PART_NAME.match(name):
                strays.append(name)
                continue
            st = entry.stat(follow_symlinks=False)
            numbered.append(Part(int(name[:-5]), entry.path, st.st_size, st.st_mode))
    numbered.sort()
    return Parts(parts_dir, numbered, strays)


def repair_interrupted_growth(parts: Parts, label: str) -> Parts:
    """Undo what a crash during pool growth leaves behind, before libpmemobj opens the pool;
    the parts as they are afterwards (no second scan).

    libpmemobj grows a pool by creating the next part file with no permissions at all,
    allocating its space, mapping it, and only then giving it mode 0600 (which viperdbm
    changes to the first part's mode). A process killed before the allocation leaves an
    empty file that the heap never used, on which pmemobj_open() would fail: it is removed
    (only an empty file with the highest number). One killed before the chmod leaves a
    part that only root can open: it gets the first part's mode.
    """
    numbered = list(parts.numbered)
    if len(numbered) < 2:
        return parts
    last = numbered[-1]
    if stat.S_ISREG(last.mode) and last.size == 0:
        log.warning("%s: removing the empty part file left by an interrupted growth", label)
        try:
            os.unlink(last.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_error(
                "cannot remove the empty part file an interrupted growth left", exc, label
            ) from exc
        else:
            fsync_dir(parts.directory)
        numbered.pop()
    mode0 = stat.S_IMODE(numbered[0].mode)
    for i, part in enumerate(numbered[1:], 1):
        if stat.S_ISREG(part.mode) and stat.S_IMODE(part.mode) == 0 != mode0:
            with contextlib.suppress(OSError):  # not ours to change: the open says so
                os.chmod(part.path, mode0)
                numbered[i] = part._replace(mode=part.mode | mode0)
    return Parts(parts.directory, numbered, parts.strays)


def reservation_for(parts: Parts) -> int:
    """Address space to reserve for a pool: 64 GiB, or four times its parts if more.

    The pool grows inside this reservation while it is open (it is address space, not
    disk); it is computed anew at every open, so a store can always grow past it later."""
    return reservation_for_size(parts.mapped_size())


def reservation_for_size(used: int) -> int:
    """:func:`reservation_for` a pool of ``used`` bytes. A reader takes it as the bound of
    the pool's offsets, as the writer does, so that its index keeps as many hash bits."""
    reservation = layout.MIN_RESERVATION
    while reservation < 4 * used:
        reservation *= 2
    return reservation


# ---------------------------------------------------------------------- pool.set
_SIZE_TOKEN = re.compile(r"([0-9]+)([KMGTP]?)(?:i?B)?\Z")
#: the smallest pool libpmemobj makes (PMEMOBJ_MIN_POOL), so the smallest reservation
MIN_POOL = 8 << 20
#: the first line of the pool.set viperdbm writes where the path has characters the
#: poolset syntax cannot express (white space, '#')
_INFORMATIONAL = "# viperdbm store: its path cannot be written in poolset syntax;"


def format_size(nbytes: int) -> str:
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)


def poolset_text(parts_dir: str, reservation: int) -> str:
    """A SINGLEHDR directory poolset: libpmemobj's description of a growable pool."""
    return f"PMEMPOOLSET\nOPTION SINGLEHDR\n{format_size(reservation)} {parts_dir}\n"


def write_poolset(set_path: str, parts_dir: str, reservation: int, mode: int) -> None:
    """Write the poolset file ``set_path`` describing a growable directory pool.

    The file reads::

        PMEMPOOLSET
        OPTION SINGLEHDR
        64G /absolute/path/of/parts_dir

    ``reservation`` (bytes, at least :data:`MIN_POOL`) is the address space reserved for
    the pool, i.e. the most it can grow to.  The parts directory is written as an
    absolute path (libpmemobj requires it; a moved store needs the file rewritten); it
    must not contain white space or ``#``, which the poolset syntax cannot express.
    ``parts_dir`` is not created here.  The file is replaced atomically and durably
    (:func:`replace_file`), with permissions ``mode & ~umask``.
    """
    if isinstance(reservation, bool) or not isinstance(reservation, int):
        raise error("reservation must be an int", filename=set_path, errno=_errno.EINVAL)
    if reservation < MIN_POOL:
        raise error(
            f"reservation {reservation} is smaller than the minimum pool size {MIN_POOL}",
            filename=set_path,
            errno=_errno.EINVAL,
        )
    parts_abs = os.path.abspath(parts_dir)
    if re.search(r"[\s#\0]", parts_abs):
        raise error(
            "the parts directory path cannot contain white space or '#' "
            "(the poolset file syntax cannot express them)",
            filename=parts_abs,
            errno=_errno.EINVAL,
        )
    set_abs = os.path.abspath(set_path)
    if "\0" in set_abs:
        raise error("the .set path contains a NUL byte", filename=set_path, errno=_errno.EINVAL)
    try:
        replace_file(set_abs, poolset_text(parts_abs, reservation).encode(), mode & 0o7777)
    except OSError as exc:
        if isinstance(exc, error):
            raise
        raise error(
            f"cannot write the poolset file: {exc.strerror}", filename=set_path, errno=exc.errno
        ) from exc


def read_poolset(set_path: str, label: str | None = None) -> str:
    """Check that ``set_path`` is a SINGLEHDR directory poolset and return its directory.

    libpmemobj 1.12.1 dies of SIGBUS on ``pmemobj_open`` of an empty file, so the file
    is checked here before the library sees it.  ``label`` names the store in messages.
    """
    shown = label or set_path
    try:
        st = os.stat(set_path)
    except OSError as exc:
        raise error(f"cannot open store: {exc.strerror}", filename=shown, errno=exc.errno) from exc
    if not stat.S_ISREG(st.st_mode):
        raise NotAStoreError("not a viperdbm store (the .set path is not a file)", filename=shown)
    if st.st_size == 0 or st.st_size > 65536:
        raise NotAStoreError(
            f"not a viperdbm store (a .set file of {st.st_size} bytes)", filename=shown
        )
    try:
        with open(set_path, "rb") as f:
            text = os.fsdecode(f.read())
    except OSError as exc:
        raise error(f"cannot read store: {exc.strerror}", filename=shown, errno=exc.errno) from exc
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines or lines[0] != "PMEMPOOLSET":
        raise NotAStoreError("not a viperdbm store (not a poolset file)", filename=shown)
    options: set[str] = set()
    elements: list[list[str]] = []
    for line in lines[1:]:
        tokens = line.split()
        if tokens[0] == "OPTION":
            options.update(tokens[1:])
        else:
            elements.append(tokens)
    if (
        "SINGLEHDR" not in options
        or len(elements) != 1
        or len(elements[0]) != 2
        or not _SIZE_TOKEN.match(elements[0][0])
        or not os.path.isabs(elements[0][1])
    ):
        raise NotAStoreError(
            "not a viperdbm store (not a SINGLEHDR poolset with one parts directory)",
            filename=shown,
        )
    return elements[0][1]


def poolset_names(directory: str) -> str | None:
    """The parts directory the store's ``pool.set`` names, or None where it is the
    informational file of a path the poolset syntax cannot express (see
    :func:`write_informational_poolset`). Raises NotAStoreError for a file that is
    neither."""
    set_path = os.path.join(directory, layout.SET_FILE)
    try:
        with open(set_path, "rb") as f:
            if _INFORMATIONAL.encode() in f.read(4096).splitlines()[1:2]:
                return None
    except OSError:
        pass  # read_poolset says what is wrong
    return read_poolset(set_path, directory)


def write_informational_poolset(directory: str, mode: int) -> None:
    """``pool.set``: marks the directory as a store and lets PMDK's tools (pmempool) open it.

    viperdbm itself opens the pool through an in-memory poolset (Pool.open_in), so a store
    can live under any path and be moved; a path the poolset syntax cannot express gets a
    file that says so."""
    set_path = os.path.join(directory, layout.SET_FILE)
    parts = os.path.join(os.path.abspath(directory), layout.PARTS_DIR)
    try:
        write_poolset(set_path, parts, layout.MIN_RESERVATION, mode)
    except error as exc:
        if exc.errno != _errno.EINVAL:
            raise
        text = f"PMEMPOOLSET\n{_INFORMATIONAL}\n# viperdbm opens it through an in-memory poolset\n"
        replace_file(set_path, text.encode(), mode & 0o7777)


def point_poolset_at_parts(directory: str) -> None:
    """Rewrite ``pool.set`` of a store that was moved or copied so that it names the store's
    own ``parts/`` again (PMDK's tools, and ``viperdbm check``'s pmemobj_check, read it)."""
    set_path = os.path.join(directory, layout.SET_FILE)
    parts = os.path.join(os.path.abspath(directory), layout.PARTS_DIR)
    try:
        try:
            named = poolset_names(directory)
        except error:
            named = ""  # damaged: written anew
        if named == parts or (named is None and re.search(r"[\s#]", parts)):
            return
        write_informational_poolset(directory, stat.S_IMODE(os.stat(set_path).st_mode))
    except OSError as exc:  # only informational: the store opens without it
        log.debug("%s: cannot point pool.set at the store's parts (%s)", directory, exc)


# ---------------------------------------------------------------------- build and swap
def temp_path(path: str, what: str) -> str:
    """A hidden name beside ``path`` for a store being built (``what``: new, old, build)."""
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{base}.viperdbm-{what}-{os.urandom(16).hex()}")


def make_durable(directory: str) -> None:
    """Make every name of the newly built store ``directory`` durable, innermost first:
    the part files' data and sizes, the names in ``parts/``, the names in the store."""
    parts = os.path.join(directory, layout.PARTS_DIR)
    for part, _ in scan_parts(parts).mapped():
        fsync_file(part)
    fsync_dir(parts)
    fsync_dir(directory)


def _renameat2(src: str, dst: str, flags: int) -> None:
    # the C library is already in the process: dlopen(NULL) finds it without
    # ctypes.util.find_library, which runs /sbin/ldconfig in a child process
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fn = libc.renameat2
    except AttributeError:  # a C library older than glibc 2.28
        raise OSError(_errno.ENOSYS, "renameat2 is not available") from None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def publish(built: str, path: str, *, replace: bool) -> str | None:
    """Put the complete store ``built`` (beside ``path``) at ``path`` in one step.

    Without ``replace`` the path must be free (a plain rename). With it, whatever is at
    the path (an old store, or a file being replaced by flag 'n') is exchanged with the new
    store atomically, so a crash at any instant leaves one of the two at the path; the
    parent directory is fsynced before this returns. Returns the hidden name the old entry
    now has (remove it with :func:`remove_old`), or None.
    """
    parent = os.path.dirname(os.path.abspath(path))
    old: str | None = None
    if replace and os.path.lexists(path):
        try:
            _renameat2(built, path, _RENAME_EXCHANGE)
        except OSError as exc:
            if exc.errno in (_errno.EINVAL, _errno.ENOSYS, _errno.EOPNOTSUPP, _errno.ENOTSUP):
                raise error(
                    "cannot replace the store: this file system cannot swap two directories "
                    f"in one step ({exc.strerror}); the old store was left in place",
                    filename=path,
                    errno=exc.errno,
                    hint="remove it yourself, then create the new store",
                ) from exc
            raise os_error("cannot replace the store", exc, path) from exc
        old = built  # the old entry now has the temporary name
    else:
        os.rename(built, path)
    fsync_dir(parent)
    return old


def _rmtree(path: str) -> None:
    # shutil (with bz2, lzma and fnmatch) only here, where a store is replaced or abandoned:
    # opening one needs none of it
    import shutil

    # Signals wait until it is done: shutil.rmtree (3.11) closes a directory's descriptor,
    # then sets the flag that tells its `finally` not to close it again. A KeyboardInterrupt
    # between the two closed it twice: an OSError (EBADF) instead of the interrupt, or the
    # descriptor another thread had just opened closed under it. (A SIGINT storm test found
    # it in reorganize()'s removal of a leftover.)
    deferred = Deferred()
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        deferred.end()


def remove_old(old: str | None) -> None:
    """Remove what :func:`publish` swapped out (a store directory or a file)."""
    if old is None:
        return
    if os.path.isdir(old) and not os.path.islink(old):
        _rmtree(old)
    else:
        with contextlib.suppress(OSError):
            os.unlink(old)


def discard(built: str) -> None:
    """Remove a store that was being built and will not be published."""
    _rmtree(built)
