"""The store directory: what is a store, its parts, and how a store is built and swapped in.

A store is a directory (``pool.set``, ``parts/``, ``lock``, ``blocks``; see
docs/format.md). This module owns every file-system operation on it that is not inside the
pool itself:

* **Durable names.** By POSIX a new name (a file created, a directory made, a rename) is
  durable only once the directory holding it has been fsynced; the data of a file is not
  enough. :func:`fsync_dir` is the one way to do that, and every place that adds a name
  calls it before it reports success.
* **Is this a store?** :func:`check_is_store` says why not, and tells a permission problem
  apart from a directory that is not a store.
* **The parts.** :func:`part_files` is the one scan of ``parts/`` outside libpmemobj;
  :func:`repair_interrupted_growth` undoes what a killed growth leaves behind.
* **Building and swapping.** A new store is built beside its path (:func:`temp_path`,
  :func:`make_durable`) and appears there in one step: :func:`publish` renames it into an
  empty place, or exchanges it with what is there (``renameat2(RENAME_EXCHANGE)``), so that
  a crash at any instant leaves either the old store or the new one at the path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import logging
import os
import shutil
import stat
import uuid

from . import _layout as layout
from ._errors import NotAStoreError, StoreFullError, error
from ._pmemobj import write_poolset

log = logging.getLogger("viperdbm")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_PERMISSION_HINT = "check the permissions of the store and of the directories above it"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error(what: str, exc: OSError, path: str) -> error:
    """``exc`` as a viperdbm error about the store ``path`` (never a temporary name)."""
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
def fsync_dir(path: str) -> None:
    """Make the names in the directory ``path`` durable (its entries, not their data)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error("cannot open a directory of the store to fsync it", exc, path) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        # a few file systems cannot fsync a directory (they keep names durable otherwise)
        if exc.errno not in (_errno.EINVAL, _errno.EOPNOTSUPP, _errno.ENOTSUP):
            raise os_error("cannot fsync a directory of the store", exc, path) from exc
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, mode: int) -> None:
    """Give the file ``path`` the content ``data`` durably and in one step: a temporary file
    beside it, written and fsynced, renamed over it, then its directory fsynced."""
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


# ---------------------------------------------------------------------- what a store is
def check_is_store(path: str) -> None:
    """Raise unless ``path`` is a store directory: NotAStoreError saying why not, or an
    error with errno EACCES when the answer cannot be read."""
    # flag 'n' replaces a plain file (as dbm.gnu does), never a directory that is not a store
    hint = "check the path; flag 'n' does not replace a directory that is not a store"
    try:
        st = os.stat(path)
    except PermissionError:
        raise permission_denied("cannot look at the store", path) from None
    except OSError as exc:
        raise os_error("cannot look at the store", exc, path) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise NotAStoreError(
            "not a viperdbm store (a viperdbm store is a directory)", filename=path
        )
    for name in (layout.SET_FILE, layout.PARTS_DIR):
        try:
            entry = os.lstat(os.path.join(path, name))
        except PermissionError:
            raise permission_denied("cannot read the store directory", path) from None
        except FileNotFoundError:
            raise NotAStoreError(
                f"not a viperdbm store (the directory has no {name!r})", filename=path, hint=hint
            ) from None
        except OSError as exc:
            raise os_error("cannot read the store directory", exc, path) from exc
        if name == layout.PARTS_DIR and not stat.S_ISDIR(entry.st_mode):
            raise NotAStoreError(
                f"not a viperdbm store ({layout.PARTS_DIR!r} is not a directory)",
                filename=path,
                hint=hint,
            )


# ---------------------------------------------------------------------- the parts
def _numbered_parts(parts_dir: str) -> list[tuple[int, str, int, bool]]:
    """(number, path, size, is a regular file) of every ``N.pmem`` entry, in order."""
    numbered = []
    with os.scandir(parts_dir) as it:
        for entry in it:
            stem, dot, ext = entry.name.partition(".")
            if dot and ext == "pmem" and stem.isdigit():
                st = entry.stat(follow_symlinks=False)
                numbered.append((int(stem), entry.path, st.st_size, stat.S_ISREG(st.st_mode)))
    numbered.sort()
    return numbered


def part_files(parts_dir: str) -> list[tuple[str, int]]:
    """The pool's part files in order with their mapped sizes, as libpmemobj maps them.

    A last part too small to map (the empty file a growth killed before its fallocate
    leaves) is left out: the heap never used it, and a writer's open removes it."""
    parts = []
    for expected, (index, path, size, regular) in enumerate(_numbered_parts(parts_dir)):
        if index != expected or not regular:
            break  # libpmemobj stops at the first missing number too
        parts.append((path, size - size % layout.OS_PAGE_SIZE))
    while len(parts) > 1 and parts[-1][1] == 0:
        parts.pop()
    return parts


def repair_interrupted_growth(parts_dir: str, label: str) -> None:
    """Undo what a crash during pool growth leaves behind, before libpmemobj opens the pool.

    libpmemobj grows a pool by creating the next part file with no permissions at all,
    allocating its space, mapping it, and only then giving it mode 0600 (which viperdbm
    changes to the first part's mode). A process killed before the allocation leaves an
    empty file that the heap never used, on which pmemobj_open() would fail: it is removed
    (only an empty file with the highest number). One killed before the chmod leaves a
    part that only root can open: it gets the first part's mode.
    """
    numbered = _numbered_parts(parts_dir)
    if len(numbered) < 2:
        return
    _, path, size, regular = numbered[-1]
    if regular and size == 0:
        log.warning("%s: removing the empty part file left by an interrupted growth", label)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error(
                "cannot remove the empty part file an interrupted growth left", exc, label
            ) from exc
        fsync_dir(parts_dir)
        numbered.pop()
    mode0 = stat.S_IMODE(os.stat(numbered[0][1]).st_mode)
    for _, path, _, regular in numbered[1:]:
        if regular and stat.S_IMODE(os.stat(path).st_mode) == 0 != mode0:
            with contextlib.suppress(OSError):  # not ours to change: the open says so
                os.chmod(path, mode0)


def reservation_for(parts_dir: str) -> int:
    """Address space to reserve for a pool: 64 GiB, or four times its parts if more.

    The pool grows inside this reservation while it is open (it is address space, not
    disk); it is computed anew at every open, so a store can always grow past it later."""
    used = sum(size for _, size in part_files(parts_dir))
    reservation = layout.MIN_RESERVATION
    while reservation < 4 * used:
        reservation *= 2
    return reservation


def write_informational_poolset(directory: str, mode: int) -> None:
    """``pool.set``: marks the directory as a store and lets PMDK's tools (pmempool) open it.

    viperdbm itself opens the pool through an in-memory poolset (Pool.open_in), so a store
    can live under any path and be moved; a path the poolset syntax cannot express gets a
    file that says so."""
    set_path = os.path.join(directory, layout.SET_FILE)
    parts = os.path.join(os.path.abspath(directory), layout.PARTS_DIR)
    try:
        write_poolset(set_path, parts, layout.MIN_RESERVATION, mode)
    except error:
        with open(set_path, "w", encoding="utf-8") as f:
            f.write(
                "PMEMPOOLSET\n# viperdbm store: its path cannot be written in poolset syntax;\n"
                "# viperdbm opens it through an in-memory poolset\n"
            )
            f.flush()
            os.fsync(f.fileno())
        os.chmod(set_path, mode & ~umask())
        fsync_dir(directory)


def point_poolset_at_parts(directory: str) -> None:
    """Rewrite ``pool.set`` of a store that was moved or copied so that it names the store's
    own ``parts/`` again (PMDK's tools, and ``viperdbm check``'s pmemobj_check, read it)."""
    set_path = os.path.join(directory, layout.SET_FILE)
    parts = os.path.join(os.path.abspath(directory), layout.PARTS_DIR)
    try:
        with open(set_path, encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
        if any(line.split()[-1:] == [parts] for line in text.splitlines()):
            return
        write_informational_poolset(directory, stat.S_IMODE(os.stat(set_path).st_mode))
    except OSError as exc:  # only informational: the store opens without it
        log.debug("%s: cannot point pool.set at the store's parts (%s)", directory, exc)


# ---------------------------------------------------------------------- build and swap
def temp_path(path: str, what: str) -> str:
    """A hidden name beside ``path`` for a store being built (``what``: new, old, build)."""
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{base}.viperdbm-{what}-{uuid.uuid4().hex}")


def make_durable(directory: str) -> None:
    """Make every name of the newly built store ``directory`` durable, innermost first:
    the part files' data and sizes, the names in ``parts/``, the names in the store."""
    parts = os.path.join(directory, layout.PARTS_DIR)
    for part, _ in part_files(parts):
        fsync_file(part)
    fsync_dir(parts)
    fsync_dir(directory)


def _renameat2(src: str, dst: str, flags: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
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


def remove_old(old: str | None) -> None:
    """Remove what :func:`publish` swapped out (a store directory or a file)."""
    if old is None:
        return
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(old)


def discard(built: str) -> None:
    """Remove a store that was being built and will not be published."""
    shutil.rmtree(built, ignore_errors=True)
