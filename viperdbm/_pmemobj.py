"""ctypes binding of libpmemobj (PMDK), plus the few libpmem calls viperdbm needs.

This is the only module of viperdbm that calls into PMDK.  Everything else sees a
:class:`Pool`: a libpmemobj pool made of a *directory poolset* (see
:func:`write_poolset`), addressed by **pool offsets** (``PMEMoid.off``).  The address of
an offset is ``pool.base + offset``, because a ``PMEMobjpool*`` is the pool's base
address and the whole pool is mapped contiguously.

Safety rules kept here, so that no other module has to know them:

* **One choke point.**  Every foreign call runs inside :func:`_invoke`.  It refuses to
  run a call on a closed handle or on a handle inherited through ``fork()`` (raising
  :class:`~viperdbm._errors.ClosedError`), counts the call as in flight so that
  :meth:`Pool.close` waits for it before unmapping the pool, and turns a failure into a
  :mod:`viperdbm._errors` exception carrying errno, the ``.set`` path and the text of
  ``pmemobj_errormsg()`` (read right after the failing call: it is thread-local and is
  never cleared, so it is meaningless after a success).
* **No garbage reaches the library.**  Offsets given to :meth:`Pool.free`,
  :meth:`Pool.usable_size`, :meth:`Pool.persist` and :meth:`Pool.msync` are checked
  against the mapped size of the pool first, and ``free``/``usable_size`` accept only
  objects that are currently allocated (libpmemobj would corrupt its heap, or crash,
  on anything else).  Before ``pmemobj_open`` the ``.set`` file and the part files are
  checked for the states that crash libpmemobj 1.12.1 instead of failing (an empty
  file; a ``*.pmem`` name that is not a part number).
* **Fork.**  A child created by ``fork()`` inherits the mapping and the part-file lock,
  and a copy of libpmemobj's volatile heap state.  Every open :class:`Pool` is marked
  as forked in the child: its ``close()`` drops the handle without calling
  ``pmemobj_close`` (which would write the parent's pool header), and every other use
  raises :class:`~viperdbm._errors.ClosedError`.  The child keeps the pool locked until
  it exits.

Functions that may block (open, create, close, allocation, free, persist, msync) are
called through :class:`ctypes.CDLL`, which releases the GIL.  :meth:`Pool.read` and
:meth:`Pool.write` copy bytes in and out of the pool with the same guard and bounds
check, for code that does not keep a memoryview.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import importlib.util
import os
import re
import stat
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from viperdbm._errors import (
    GROWTH_STOPPED,
    IO_FAILED,
    RESERVATION_REACHED,
    WRITES_REFUSED,
    ClosedError,
    CorruptedError,
    LockError,
    NotAStoreError,
    StoreFullError,
    VersionMismatchError,
    error,
)
from viperdbm._storedir import (
    MIN_POOL,
    OS_PAGE_SIZE,
    Parts,
    fsync_dir,
    fsync_file,
    part_path,
    poolset_text,
    read_poolset,
    scan_parts,
    umask,
    write_poolset,
)

__all__ = [
    "LAYOUT_MAX",
    "MAX_ALLOC_SIZE",
    "MIN_GRANULARITY",
    "MIN_POOL",
    "PMEMoid",
    "Pool",
    "library_version",
    "write_poolset",
]

#: Longest layout name, in bytes of UTF-8 (``PMEMOBJ_MAX_LAYOUT`` is 1024 with the NUL).
LAYOUT_MAX: Final = 1023
#: ``PMEMOBJ_MAX_ALLOC_SIZE``: the largest object (and root object) libpmemobj allocates.
MAX_ALLOC_SIZE: Final = 0x3FFDFFFC0
#: ``heap.size.granularity`` must be 0 (no growth) or larger than this.
MIN_GRANULARITY: Final = 2 << 20

_U64_MAX: Final = (1 << 64) - 1
_API_MAJOR: Final = 2
_INSTALL_HINT: Final = (
    "viperdbm needs PMDK's libpmemobj and libpmem; on Debian or Ubuntu install them "
    "with: apt-get install libpmemobj1 libpmem1"
)


# --------------------------------------------------------------------------------------
# Loading the libraries and declaring the prototypes


def _load(sonames: tuple[str, ...], short: str) -> ctypes.CDLL:
    for soname in sonames:
        try:
            return ctypes.CDLL(soname, use_errno=True)
        except OSError:
            pass
    # only now: find_library runs ldconfig and the C compiler in child processes, and
    # importing ctypes.util brings in subprocess, which every start would pay for
    from ctypes.util import find_library

    found = find_library(short)
    if found is not None:
        try:
            return ctypes.CDLL(found, use_errno=True)
        except OSError:
            pass
    raise ImportError(f"cannot load lib{short} ({', '.join(sonames)}): {_INSTALL_HINT}")


class PMEMoid(ctypes.Structure):
    """``PMEMoid``: a persistent pointer, passed and returned by value (16 bytes)."""

    _fields_ = (("pool_uuid_lo", ctypes.c_uint64), ("off", ctypes.c_uint64))
    pool_uuid_lo: int
    off: int


def _load_interposer() -> ctypes.CDLL:
    """The native extension, loaded into the global scope before libpmemobj.

    It defines ``pmem_msync`` (native/pmemio.c); loaded ``RTLD_GLOBAL`` first, it is the
    definition the dynamic linker binds libpmemobj's ``pmem_msync@LIBPMEM_1.0`` to, so a
    failed msync inside libpmemobj is recorded (and raised by :func:`_invoke`) instead of
    aborting the process in libpmemobj's ``FATAL()``.  viperdbm's own :meth:`Pool.msync`
    still calls libpmem's definition, through the ``_libpmem`` handle.
    """
    spec = importlib.util.find_spec("viperdbm._vipercore")
    if spec is None or spec.origin is None:
        raise ImportError(
            "viperdbm's native core (viperdbm._vipercore) is not built: install the package "
            "with 'pip install .' (or 'make setup' in a checkout)"
        )
    return ctypes.CDLL(spec.origin, mode=os.RTLD_GLOBAL | os.RTLD_NOW)


_interposer = _load_interposer()  # before libpmemobj: see _load_interposer
_libobj = _load(("libpmemobj.so.1", "libpmemobj.so"), "pmemobj")
_libpmem = _load(("libpmem.so.1", "libpmem.so"), "pmem")

_c_void_p = ctypes.c_void_p
_c_char_p = ctypes.c_char_p
_c_size_t = ctypes.c_size_t
_c_uint64 = ctypes.c_uint64
_c_int = ctypes.c_int
_POID = ctypes.POINTER(PMEMoid)


def _declare(lib: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> Any:
    try:
        fn = getattr(lib, name)
    except AttributeError:
        raise ImportError(
            f"{lib._name} has no symbol {name}: it is too old or not PMDK; {_INSTALL_HINT}"
        ) from None
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


# Prototypes: /usr/include/libpmemobj/*.h and libpmem.h of PMDK 1.12.1 (design doc §1.2).
_pmemobj_check_version = _declare(
    _libobj, "pmemobj_check_version", _c_char_p, [ctypes.c_uint, ctypes.c_uint]
)
_pmemobj_errormsg = _declare(_libobj, "pmemobj_errormsg", _c_char_p, [])
_pmemobj_create = _declare(
    _libobj, "pmemobj_create", _c_void_p, [_c_char_p, _c_char_p, _c_size_t, ctypes.c_uint32]
)
_pmemobj_open = _declare(_libobj, "pmemobj_open", _c_void_p, [_c_char_p, _c_char_p])
_pmemobj_close = _declare(_libobj, "pmemobj_close", None, [_c_void_p])
_pmemobj_check = _declare(_libobj, "pmemobj_check", ctypes.c_int, [_c_char_p, _c_char_p])
_pmemobj_root = _declare(_libobj, "pmemobj_root", PMEMoid, [_c_void_p, _c_size_t])
_pmemobj_root_size = _declare(_libobj, "pmemobj_root_size", _c_size_t, [_c_void_p])
_pmemobj_oid = _declare(_libobj, "pmemobj_oid", PMEMoid, [_c_void_p])
_pmemobj_type_num = _declare(_libobj, "pmemobj_type_num", _c_uint64, [PMEMoid])
_pmemobj_alloc_usable_size = _declare(_libobj, "pmemobj_alloc_usable_size", _c_size_t, [PMEMoid])
# The constructor (pmemobj_constr) is a C function's address or NULL: declared void*, so
# that ctypes never makes a Python callback of it (see Pool.alloc).
_pmemobj_alloc = _declare(
    _libobj,
    "pmemobj_alloc",
    _c_int,
    [_c_void_p, _POID, _c_size_t, _c_uint64, _c_void_p, _c_void_p],
)
_pmemobj_zalloc = _declare(
    _libobj, "pmemobj_zalloc", _c_int, [_c_void_p, _POID, _c_size_t, _c_uint64]
)
_pmemobj_free = _declare(_libobj, "pmemobj_free", None, [_POID])
_pmemobj_first = _declare(_libobj, "pmemobj_first", PMEMoid, [_c_void_p])
_pmemobj_next = _declare(_libobj, "pmemobj_next", PMEMoid, [PMEMoid])
_pmemobj_persist = _declare(_libobj, "pmemobj_persist", None, [_c_void_p, _c_void_p, _c_size_t])
_pmemobj_ctl_set = _declare(_libobj, "pmemobj_ctl_set", _c_int, [_c_void_p, _c_char_p, _c_void_p])
_pmemobj_ctl_exec = _declare(_libobj, "pmemobj_ctl_exec", _c_int, [_c_void_p, _c_char_p, _c_void_p])
_pmem_errormsg = _declare(_libpmem, "pmem_errormsg", _c_char_p, [])
_pmem_msync = _declare(_libpmem, "pmem_msync", _c_int, [_c_void_p, _c_size_t])
_pmem_is_pmem = _declare(_libpmem, "pmem_is_pmem", _c_int, [_c_void_p, _c_size_t])
_pmem_persist = _declare(_libpmem, "pmem_persist", None, [_c_void_p, _c_size_t])
#: errno of a failed msync inside libpmemobj not yet taken by _invoke (0: none)
_io_slot = ctypes.c_int.in_dll(_interposer, "viperdbm_pmemio_errno")
#: how many times libpmemobj called viperdbm's pmem_msync (tests check the binding)
io_interposer_calls = ctypes.c_ulong.in_dll(_interposer, "viperdbm_pmemio_calls")
_pmemio_take = _declare(_interposer, "viperdbm_pmemio_take", _c_int, [ctypes.POINTER(_c_size_t)])

#: Address of ``void pmemobj_persist(PMEMobjpool *pop, const void *addr, size_t len)``, for
#: native constructors that run inside :meth:`Pool.alloc` and must persist what they write.
PMEMOBJ_PERSIST_ADDRESS: int = ctypes.cast(_pmemobj_persist, ctypes.c_void_p).value or 0

if _pmemobj_check_version(_API_MAJOR, 0) is not None:  # checked before any other call
    raise ImportError(
        "libpmemobj has an incompatible API version "
        f"({_pmemobj_check_version(_API_MAJOR, 0).decode(errors='replace')}); {_INSTALL_HINT}"
    )


# --------------------------------------------------------------------------------------
# The choke point


def _errmsg_obj() -> str:
    raw: bytes | None = _pmemobj_errormsg()
    return raw.decode(errors="replace") if raw else ""


def _errmsg_pmem() -> str:
    raw: bytes | None = _pmem_errormsg()
    return raw.decode(errors="replace") if raw else ""


_OPEN_NOT_CORRUPT: Final = frozenset(
    {
        _errno.ENOENT,
        _errno.EACCES,
        _errno.EPERM,
        _errno.EROFS,
        _errno.ENOTDIR,
        _errno.EISDIR,
        _errno.ELOOP,
        _errno.ENAMETOOLONG,
        _errno.EMFILE,
        _errno.ENFILE,
        _errno.ENOMEM,
        _errno.ENODEV,
        _errno.EOPNOTSUPP,
    }
)
_FULL_ERRNOS: Final = frozenset({_errno.ENOSPC, _errno.EFBIG, _errno.EDQUOT})
# Messages of pmemobj_open that mean "this is no pmemobj pool (of ours)".
_NOT_A_STORE_MSGS: Final = (
    "wrong layout",
    "wrong pool type",
    "invalid major version (0)",
    "pool header zeroed",
    "signature mismatch",
    "no pool set parts",
    "the first line must be exactly",
    "invalid token found",
    "incorrect format of size",
    "is not a poolset file",
)
# Messages of a failed growth inside an allocation (PMDK 1.12.1 set.c util_pool_extend).
_GROWTH_FAILED_MSGS: Final = (
    "new part",
    "unable to append a new part",
    "posix_fallocate",
    "chmod",
)
_VERSION_MSGS: Final = ("pool version", "incompatible pool format", "pmdk-convert", "feature")


_DAMAGED_HINT: Final = (
    "its pool is damaged or not viperdbm's: 'viperdbm check PATH' says more, and "
    "'--salvage OUT' copies what can be read"
)
_UNREADABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffd]")


def _unquote_garbage(found: re.Match[str]) -> str:
    return "(unreadable bytes)" if _UNREADABLE.search(found.group(0)) else found.group(0)


def _user_text(libmsg: str) -> str:
    """libpmemobj's text in the user's terms: the in-memory poolset of Pool.open_in names
    the parts directory /proc/self/fd/N, which means nothing to a user; and a damaged
    header's bytes, which libpmemobj quotes (``wrong pool type: "E|v..."``), are not
    shown raw (they would garble the terminal)."""
    text = re.sub(r"/proc/self/fd/[0-9]+", "parts", libmsg)
    text = re.sub(r'"[^"]*"', _unquote_garbage, text)
    return _UNREADABLE.sub("?", text)


def _failure(context: str, what: str, path: str | None, code: int, libmsg: str) -> error:
    """Map a failed call (errno ``code``, libpmemobj text ``libmsg``) to an exception.

    ``context`` is ``"open"`` (pmemobj_open), ``"create"`` (pmemobj_create), ``"alloc"``
    (a call that allocates from the heap, where ENOMEM means "no room") or ``"call"``
    (any other call on an open pool).  The exception carries the library's errno.
    """
    libmsg = _user_text(libmsg)
    detail = libmsg or (os.strerror(code) if code else "unknown failure")
    errno_ = code or None
    if code in (_errno.EAGAIN, _errno.EWOULDBLOCK):
        return LockError(
            f"store is in use by another process or handle ({what}: {detail})",
            filename=path,
            errno=code,
        )
    if context == "open":
        if any(m in libmsg for m in _NOT_A_STORE_MSGS):
            # inside a store directory this is damage far more often than a foreign pool:
            # never suggest flag 'n', which would discard what the store holds
            return NotAStoreError(
                f"not a viperdbm store ({detail})",
                filename=path,
                errno=errno_,
                hint=_DAMAGED_HINT,
            )
        if any(m in libmsg for m in _VERSION_MSGS):
            return VersionMismatchError(
                f"pool written in an incompatible format ({detail})", filename=path, errno=errno_
            )
        if "reservation too small" in libmsg:
            return error(
                f"{what}: {detail}",
                filename=path,
                errno=errno_,
                hint="the reservation in the .set file is smaller than the pool; raise it",
            )
        if code in _OPEN_NOT_CORRUPT:
            hint = "raise the open-files limit (ulimit -n)" if code == _errno.EMFILE else None
            return error(f"{what}: {detail}", filename=path, errno=errno_, hint=hint)
        return CorruptedError(f"{what}: {detail}", filename=path, errno=errno_)
    if "requested size too large" in libmsg or "incorrect grow size" in libmsg:
        return error(f"{what}: {detail}", filename=path, errno=_errno.EINVAL)
    if "exceeded reservation size" in libmsg:
        return RESERVATION_REACHED(path, errno=errno_, what=what, detail=detail)
    if (
        "cannot open the new part" in libmsg
        or code in _FULL_ERRNOS
        or (context == "alloc" and code == _errno.ENOMEM)
    ):
        return StoreFullError(f"{what}: {detail}", filename=path, errno=errno_)
    return error(f"{what}: {detail}", filename=path, errno=errno_)


def _invoke(
    pool: Pool | None,
    what: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    failed: Callable[[Any], bool] | None = None,
    errmsg: Callable[[], str] = _errmsg_obj,
    context: str = "call",
    path: str | None = None,
) -> Any:
    """Run ``fn(*args)``: the single place where viperdbm calls into PMDK.

    With ``pool`` given, the call runs only while the pool is open and was not inherited
    through fork(), and it is counted as in flight so that :meth:`Pool.close` waits for
    it.  ``fn`` may also be a Python function making several foreign calls (such as the
    object walk); it then runs entirely inside that guard.  ``failed(result)`` tells
    whether the call failed; errno (ctypes' copy, saved right after the call) and
    ``errmsg()`` are read at once and turned into an exception by :func:`_failure`.
    ``pool=None`` is for calls that need no open pool (creation, open, global CTL, the
    handle that close() has already detached).

    The in-flight count is lock-free: a token is appended to ``pool._calls`` *before*
    the open check and popped after the call (both atomic under the GIL), while close()
    clears ``pool._pop`` *before* waiting for ``pool._calls`` to empty.  So either the
    call sees the pool closed, or close() sees the token and waits.
    """
    if pool is None:
        ctypes.set_errno(0)
        result = fn(*args)
        _unowned.code = 0
        if _io_slot.value:
            # an msync failed in a call without an open Pool (create, open): the Pool made
            # from its result takes it (Pool.__init__) and refuses to be set up
            code, owner = _take_io_failure(None)
            if owner is None:
                _unowned.code = code
        if failed is not None and failed(result):
            _unowned.code = 0
            raise _failure(context, what, path, ctypes.get_errno(), errmsg())
        return result
    calls = pool._calls
    # A token of its own, appended inside the try and removed without a call in between
    # that could raise: a KeyboardInterrupt anywhere here can neither leave a token behind
    # (close() would wait for it forever) nor remove another call's.
    token = object()
    try:
        calls.append(token)
        if pool._pop is None or pool._forked:
            raise pool._closed_error()
        result = fn(*args)
        if context == "alloc":
            pool._may_have_grown = True
        if _io_slot.value:  # an msync inside libpmemobj failed (native/pmemio.c)
            code, owner = _take_io_failure(pool)
            if owner is pool:
                raise pool._io_error(code)
        if failed is not None and failed(result):
            code, libmsg = ctypes.get_errno(), _user_text(errmsg())
            if context == "alloc" and any(m in libmsg for m in _GROWTH_FAILED_MSGS):
                pool._stop_growth()
                pool._growth_error = libmsg
            if context == "alloc" and pool._growth_stopped:
                raise GROWTH_STOPPED(
                    pool.set_path,
                    errno=code if code in _FULL_ERRNOS else _errno.ENOSPC,
                    what=what,
                    reason=pool._growth_error,
                )
            raise _failure(context, what, pool.set_path, code, libmsg)
        return result
    finally:
        try:  # noqa: SIM105 - contextlib.suppress() would be a call before the removal
            calls.remove(token)
        except ValueError:
            pass  # interrupted before the append


#: an msync failure of this thread's last call without a Pool (see _invoke)
_unowned = threading.local()


def _take_io_failure(default: Pool | None) -> tuple[int, Pool | None]:
    """Take the msync failure recorded by native/pmemio.c: (errno, the pool it hit).

    The pool is the open one whose mapping holds the failed address, else ``default``;
    that pool is marked failed (see :meth:`Pool.io_errno`)."""
    addr = _c_size_t(0)
    code = int(_pmemio_take(ctypes.byref(addr)))
    if not code:
        return 0, None
    owner = default
    for pool in list(_POOLS):
        base = pool._pop
        if base is not None and base <= addr.value < base + max(pool._mapped, MIN_POOL):
            owner = pool
            break
    if owner is not None:
        owner.mark_io_failed(code)
    return code, owner


def _is_null(result: Any) -> bool:
    return not result


def _is_nonzero(result: Any) -> bool:
    return bool(result != 0)


def _is_null_oid(result: Any) -> bool:
    return int(result.off) == 0


# --------------------------------------------------------------------------------------
# Module-level helpers


_sds_lock = threading.Lock()
_sds_done = False


def _ctl_set(pool: Pool | None, pop: int | None, name: str, value: Any) -> None:
    """pmemobj_ctl_set(pop, name, &value) through the choke point (pop None: global)."""
    _invoke(
        pool,
        f"cannot set libpmemobj's {name}",
        _pmemobj_ctl_set,
        (pop, name.encode("ascii"), ctypes.byref(value)),
        failed=_is_nonzero,
    )


def _disable_sds() -> None:
    """``sds.at_create = 0`` once, before the first create (PMDK >= 2.1 needs it off PMem)."""
    global _sds_done
    with _sds_lock:
        if _sds_done:
            return
        _ctl_set(None, None, "sds.at_create", ctypes.c_int(0))
        _sds_done = True


_version_cache: list[str] = []


def library_version() -> str:
    """The libpmemobj in use, e.g. ``"libpmemobj 1.12.1 (API 2.4)"``.

    The API version comes from ``pmemobj_check_version``; the PMDK release is the
    ``src version`` string compiled into the library file, when it can be found.
    """
    if _version_cache:
        return _version_cache[0]
    minor = 0
    while minor < 64:
        res = _invoke(
            None, "pmemobj_check_version", _pmemobj_check_version, (_API_MAJOR, minor + 1)
        )
        if res is not None:
            break
        minor += 1
    text = f"API {_API_MAJOR}.{minor}"
    release = _release_from_maps()
    text = f"libpmemobj {release} ({text})" if release else f"libpmemobj {text}"
    _version_cache.append(text)
    return text


def _release_from_maps() -> str | None:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {
                line.split(None, 5)[5].strip()
                for line in maps
                if "libpmemobj" in line and len(line.split(None, 5)) == 6
            }
        for lib_path in sorted(paths):
            with open(lib_path, "rb") as lib:
                found = re.search(rb"src version: ([0-9][0-9A-Za-z.+~-]*)", lib.read())
            if found:
                return found.group(1).decode("ascii", "replace")
    except OSError:
        return None
    return None


def _encode(text: str, what: str, path: str | None = None) -> bytes:
    raw = os.fsencode(text)
    if b"\0" in raw:
        raise error(f"{what} contains a NUL byte", filename=path, errno=_errno.EINVAL)
    return raw


def _failed(what: str, exc: OSError, label: str) -> error:
    """A failed system call, in the user's terms: what could not be done, and why."""
    return error(f"{what}: {exc.strerror}", filename=label, errno=exc.errno)


def scan_parts_of(parts_dir: str, label: str) -> Parts:
    """:func:`viperdbm._storedir.scan_parts` with a failure in the user's terms."""
    try:
        return scan_parts(parts_dir)
    except OSError as exc:
        raise _failed("cannot open store: cannot read the parts directory", exc, label) from exc


def validate_parts(parts: Parts, label: str) -> set[int] | None:
    """Refuse the part-directory states that crash libpmemobj instead of failing cleanly.

    ``parts`` is the scan of the parts directory (see :func:`viperdbm._storedir.scan_parts`).
    Returns the offsets of the large objects that libpmemobj's heap records (see
    :meth:`Pool.objects`)."""
    if parts.strays:
        raise CorruptedError(
            f"unexpected files in the parts directory: {sorted(parts.strays)}",
            filename=label,
        )
    if not parts.numbered:
        raise NotAStoreError(
            "not a viperdbm store (no part files in its parts directory)", filename=label
        )
    bad = [
        os.path.basename(part.path)
        for i, part in enumerate(parts.numbered)
        if part.number != i or part.size == 0 or not stat.S_ISREG(part.mode)
    ]
    if bad:
        raise CorruptedError(
            "damaged part files in the parts directory (missing, duplicated, empty or not "
            f"regular files): {bad}",
            filename=label,
        )
    # libpmemobj's open trusts its lanes and heap headers and can loop forever on damaged
    # ones (see _pmdk_metadata): refuse those pools before calling it. Imported here, at
    # the first open of an existing store: creating one or only importing needs none of it.
    from viperdbm._pmdk_metadata import survey

    try:
        found = survey(
            [(part.path, part.size - part.size % OS_PAGE_SIZE) for part in parts.numbered]
        )
    except OSError as exc:
        raise _failed("cannot read the part files", exc, label) from exc
    if found.damage:
        raise CorruptedError(f"the pool is damaged: {found.damage}", filename=label)
    return found.large_objects


def _memory_poolset(parts_dir: str, reservation: int, label: str) -> tuple[str, list[int]]:
    """A poolset for the pool in ``parts_dir`` whatever characters its path has: written to
    an anonymous memory file, naming the parts directory as ``/proc/self/fd/N`` (the poolset
    syntax cannot express white space or ``#``, and a moved store needs nothing
    rewritten). Returns its path and the two descriptors to keep open while it is used."""
    try:
        parts_fd = os.open(parts_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _failed("cannot open the store's parts directory", exc, label) from exc
    try:
        set_fd = os.memfd_create("viperdbm.set", os.MFD_CLOEXEC)
    except BaseException:
        os.close(parts_fd)
        raise
    try:
        os.write(set_fd, poolset_text(f"/proc/self/fd/{parts_fd}", reservation).encode())
    except BaseException:
        os.close(parts_fd)
        os.close(set_fd)
        raise
    return f"/proc/self/fd/{set_fd}", [parts_fd, set_fd]


class PoolCheck(NamedTuple):
    """What libpmemobj's ``pmemobj_check`` said: ``consistent`` is None when it could not
    run (``message`` and ``errno`` say why)."""

    consistent: bool | None
    message: str
    errno: int


def check_pool(parts_dir: str, layout: str, reservation: int, *, label: str) -> PoolCheck:
    """libpmemobj's own consistency check of the closed pool in ``parts_dir`` (whatever
    its path: through an in-memory poolset, as :meth:`Pool.open_in`). It needs write
    access to the part files, as an open does."""
    set_path, fds = _memory_poolset(parts_dir, reservation, label)
    try:
        ctypes.set_errno(0)
        result = _pmemobj_check(os.fsencode(set_path), layout.encode())
        code = ctypes.get_errno()
        message = _user_text(_errmsg_obj())
    finally:
        for fd in fds:
            os.close(fd)
    if result == 1:
        return PoolCheck(True, "", 0)
    if result == 0:
        return PoolCheck(False, message or "no detail", 0)
    return PoolCheck(None, message or os.strerror(code), code)


# --------------------------------------------------------------------------------------
# The pool


_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forked = True
        # The parent's other threads do not exist here: drop the state they may hold.
        pool._calls = []
        pool._close_lock = threading.Lock()
        pool._objlock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Pool:
    """An open libpmemobj pool built on a SINGLEHDR directory poolset.

    Obtain one with :meth:`create` or :meth:`open`; it is usable until :meth:`close`.
    Offsets are pool offsets (``PMEMoid.off``); ``base + offset`` is the address.

    **Mapped size.**  With ``OPTION SINGLEHDR`` only the first part file carries a pool
    header, and libpmemobj maps part *i* at ``base + (sizes of parts 0..i-1)``: at open
    every part, and when the pool grows, the new part at ``base + poolsize``
    (``util_pool_extend`` in PMDK's set.c).  So the pool is one contiguous range of
    ``sum(part file sizes, each rounded down to the page size)`` bytes starting at
    ``base`` (checked against ``/proc/self/maps`` and against ``offset + usable_size`` of
    every object in the tests).  That is :meth:`mapped_size`, the bound for every offset
    checked here.  The reservation beyond it is mapped too, but past the end of the first
    part file, so touching it raises SIGBUS.
    """

    set_path: str

    def __init__(self, pop: int, set_path: str, parts_dir: str) -> None:
        # Private: use Pool.create() or Pool.open().
        self.set_path = set_path
        self._parts_dir = parts_dir
        #: the address space the pool is mapped in, which it never outgrows (0: unknown)
        self.reservation = 0
        self._pop: int | None = pop
        self._pid = os.getpid()
        self._forked = False
        self._calls: list[object] = []  # one token per call in flight (see _invoke)
        self._close_lock = threading.Lock()
        self._objlock = threading.Lock()
        self._live: set[int] | None = None  # DRAM cache of allocated object offsets
        #: the large objects the heap's chunk headers recorded at open (see objects())
        self._large_at_open: set[int] | None = None
        self._mapped = 0
        #: an allocation ran since the parts were last scanned (it may have grown the pool)
        self._may_have_grown = True
        self._uuid_lo = 0
        self._keep_fds: list[int] = []  # descriptors the poolset names (see open_in)
        #: the mapped parts as last scanned: (path, bytes mapped), in mapping order
        self._mapped_parts: list[tuple[str, int]] = []
        #: the parts opened for writing, (descriptor, bytes mapped); None until asked for
        #: (see writable_parts)
        self._part_writers: list[tuple[int, int]] | None = None
        self._growth_stopped = False  # a growth failed: never grow again (see _stop_growth)
        self._growth_error = "a part after a missing number"
        # an msync of this pool failed: writes are refused (see io_errno); the msync may
        # have failed inside the pmemobj_open/create this handle comes from (see _invoke)
        self._io_errno: int = getattr(_unowned, "code", 0)
        _unowned.code = 0
        #: called with the errno when the pool turns write-refusing (the engine's core)
        self.on_io_failure: Callable[[int], object] | None = None
        _POOLS.add(self)

    # ---- construction ------------------------------------------------------------

    @staticmethod
    def _layout_bytes(layout: str, set_path: str) -> bytes:
        raw = layout.encode()
        if b"\0" in raw or len(raw) > LAYOUT_MAX:
            raise error(
                f"invalid layout name (at most {LAYOUT_MAX} bytes, no NUL)",
                filename=set_path,
                errno=_errno.EINVAL,
            )
        return raw

    @classmethod
    def create(cls, set_path: str, layout: str, mode: int, *, label: str | None = None) -> Pool:
        """Create a new pool from the poolset file ``set_path`` (see :func:`write_poolset`).

        The parts directory must exist and hold no part yet.  The part files get the
        permissions ``mode & ~umask`` (libpmemobj itself chmods the first part to
        ``mode`` ignoring the umask, and later parts to 0600; this class fixes both).
        """
        shown = label or set_path
        layout_b = cls._layout_bytes(layout, shown)
        path_b = _encode(set_path, "the .set path", shown)
        parts_dir = read_poolset(set_path, shown)
        _disable_sds()

        def set_up(pool: Pool) -> None:
            os.chmod(os.path.join(parts_dir, "000000.pmem"), mode & 0o7777 & ~umask())
            pool._setup()

        return cls._from_handle(
            ("cannot create store", _pmemobj_create, (path_b, layout_b, 0, mode & 0o7777)),
            "create",
            shown,
            parts_dir,
            set_up,
            "cannot set up the new store",
        )

    @classmethod
    def open(
        cls, set_path: str, layout: str, *, label: str | None = None, parts: Parts | None = None
    ) -> Pool:
        """Open the existing pool of ``set_path``, checking its layout name.

        ``label`` (default: ``set_path``) names the store in error messages; ``parts`` is
        the caller's scan of the parts directory (else it is scanned here)."""
        shown = label or set_path
        layout_b = cls._layout_bytes(layout, shown)
        path_b = _encode(set_path, "the .set path", shown)
        parts_dir = read_poolset(set_path, shown)
        if parts is None:
            parts = scan_parts_of(parts_dir, shown)
        large_objects = validate_parts(parts, shown)

        def set_up(pool: Pool) -> None:
            pool._large_at_open = large_objects
            pool._setup(parts)

        return cls._from_handle(
            ("cannot open store", _pmemobj_open, (path_b, layout_b)),
            "open",
            shown,
            parts_dir,
            set_up,
            "cannot set up the store",
        )

    @classmethod
    def _from_handle(
        cls,
        call: tuple[str, Callable[..., Any], tuple[Any, ...]],
        context: str,
        shown: str,
        parts_dir: str,
        set_up: Callable[[Pool], None],
        setting_up: str,
    ) -> Pool:
        """Make the pool handle (``call``: what it does, pmemobj_create or pmemobj_open,
        their arguments) and ``set_up`` the Pool; a failure of that closes it again."""
        what, fn, args = call
        pop = _invoke(None, what, fn, args, failed=_is_null, context=context, path=shown)
        pool = cls(int(pop), shown, parts_dir)
        try:
            set_up(pool)
        except OSError as exc:
            pool.close()
            raise _failed(setting_up, exc, shown) from exc
        except BaseException:
            pool.close()
            raise
        return pool

    @classmethod
    def open_in(
        cls,
        parts_dir: str,
        layout: str,
        reservation: int,
        *,
        label: str,
        parts: Parts | None = None,
    ) -> Pool:
        """Open the pool whose parts are in ``parts_dir``, whatever characters its path has.

        The poolset is written to an anonymous memory file and names the parts directory as
        ``/proc/self/fd/N`` (a descriptor held until close): the poolset syntax cannot
        express white space or ``#``, and a store moved elsewhere needs nothing rewritten.
        """
        return cls._via_memory_poolset(
            parts_dir, reservation, label, lambda p: cls.open(p, layout, label=label, parts=parts)
        )

    @classmethod
    def create_in(
        cls, parts_dir: str, layout: str, mode: int, reservation: int, *, label: str
    ) -> Pool:
        """Create a pool in the empty directory ``parts_dir`` (see :meth:`open_in`)."""
        return cls._via_memory_poolset(
            parts_dir, reservation, label, lambda p: cls.create(p, layout, mode, label=label)
        )

    @classmethod
    def _via_memory_poolset(
        cls, parts_dir: str, reservation: int, label: str, opener: Callable[[str], Pool]
    ) -> Pool:
        set_path, fds = _memory_poolset(parts_dir, reservation, label)
        try:
            pool = opener(set_path)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        pool._keep_fds = fds
        pool.reservation = reservation
        return pool

    def _setup(self, parts: Parts | None = None) -> None:
        if self._io_errno:  # an msync of pmemobj_open/create failed
            raise self._io_error(self._io_errno)
        pop = self._handle()
        oid = _invoke(self, "pmemobj_oid", _pmemobj_oid, (pop,), failed=_is_null_oid_uuid)
        self._uuid_lo = int(oid.pool_uuid_lo)
        self._refresh_mapped(parts)

    # ---- state -------------------------------------------------------------------

    def _closed_error(self) -> ClosedError:
        if self._forked:
            return ClosedError(
                "the store was opened before fork() and cannot be used in the child "
                "process; open it again in the child (or use the 'spawn' start method)",
                filename=self.set_path,
            )
        return ClosedError("DBM object has already been closed", filename=self.set_path)

    def _handle(self) -> int:
        pop = self._pop
        if pop is None or self._forked:
            raise self._closed_error()
        return pop

    @property
    def io_errno(self) -> int:
        """The errno of a failed msync of this pool, or 0.

        After a failed msync the kernel may have dropped the dirty pages (and marked them
        clean), so a later msync that succeeds does not make them durable: from then on
        every write (and sync) raises :class:`viperdbm.error`; reads and close() work.
        """
        return self._io_errno

    def mark_io_failed(self, code: int) -> None:
        if not self._io_errno:
            self._io_errno = code
            if self.on_io_failure is not None:
                self.on_io_failure(code)

    def _io_error(self, code: int, *, refused: bool = False) -> error:
        message = WRITES_REFUSED if refused else IO_FAILED
        return message(self.set_path, errno=code or _errno.EIO)

    def _require_sound(self) -> None:
        """Refuse a write once an msync of this pool failed (see :attr:`io_errno`)."""
        if self._io_errno:
            raise self._io_error(self._io_errno, refused=True)

    @property
    def is_open(self) -> bool:
        """True while the handle is usable (False once closed, and in a forked child)."""
        return self._pop is not None and not self._forked

    @property
    def base(self) -> int:
        """The pool's base address (the ``PMEMobjpool*`` value)."""
        return self._handle()

    @property
    def persist_function_address(self) -> int:
        """Address of libpmem's ``void pmem_persist(const void *addr, size_t len)``.

        For native code that flushes on real persistent memory (only meaningful when
        :meth:`is_pmem` is true).
        """
        self._handle()
        address = ctypes.cast(_pmem_persist, ctypes.c_void_p).value
        assert address is not None
        return address

    def __repr__(self) -> str:
        state = "forked" if self._forked else "open" if self._pop is not None else "closed"
        return f"<viperdbm._pmemobj.Pool {self.set_path!r} {state}>"

    def close(self) -> None:
        """Close the pool (idempotent).  Waits for calls in flight in other threads.

        In a child process created by fork() the handle is only dropped: calling
        ``pmemobj_close`` there would write the parent's pool header.  Every memoryview
        over the pool must have been released before (a stale view segfaults).
        """
        with self._close_lock:
            pop = self._pop
            if pop is None:
                return
            self._pop = None  # from here on, _invoke refuses new calls
            forked = self._forked or os.getpid() != self._pid
            while self._calls:  # wait for the calls in flight in other threads
                time.sleep(0.0002)
        _POOLS.discard(self)
        self._live = None
        if forked:
            self._forked = True
            return
        failed_before = self._io_errno
        try:
            _invoke(None, "pmemobj_close", _pmemobj_close, (pop,))
        finally:
            fds, self._keep_fds = self._keep_fds, []
            writers, self._part_writers = self._part_writers or [], None
            fds += [fd for fd, _ in writers]
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        code, _unowned.code = getattr(_unowned, "code", 0), 0
        if code:  # an msync of pmemobj_close itself failed (taken by _invoke: see there)
            self.mark_io_failed(code)
            if not failed_before:
                raise self._io_error(code)

    # ---- bounds ------------------------------------------------------------------

    def _refresh_mapped(self, parts: Parts | None = None) -> int:
        """Recompute the mapped size from the part files (see the class docstring);
        ``parts`` is a scan the caller made just now (the open's), else one is made.

        This is where the pool learns that libpmemobj grew it (inside an allocation): the
        new part file is then made durable, data and name, before the caller can put a
        record in it (a name is durable only once its directory is fsynced), and given
        the first part's mode (libpmemobj creates grown parts 0600)."""
        self._may_have_grown = False
        if parts is None:
            try:
                parts = scan_parts(self._parts_dir)
            except OSError as exc:
                raise _failed("cannot read the parts directory", exc, self.set_path) from exc
        total = 0
        mode0 = 0
        grown: list[str] = []
        mapped_parts: list[tuple[str, int]] = []
        for i, part in enumerate(parts.numbered):
            if part.number != i or not stat.S_ISREG(part.mode):
                if self._pop is not None and part.number > i:
                    # a part after a missing number: libpmemobj numbers the next part past
                    # the one a failed growth did not create (PMDK 1.12.1 set.c
                    # util_poolset_append_new_part); a pool so grown would not open again
                    self._stop_growth()
                break  # libpmemobj maps only the regular files of parts 0..n-1
            start = total
            total += part.size - part.size % OS_PAGE_SIZE
            mapped_parts.append((part.path, total - start))
            if i == 0:
                mode0 = part.mode & 0o7777
            elif total > self._mapped:
                if part.mode & 0o7777 != mode0:
                    with contextlib.suppress(OSError):
                        os.chmod(part.path, mode0)
                if self._mapped and start >= self._mapped:
                    grown.append(part.path)
        if grown:
            self._make_parts_durable(grown)
        self._mapped = total
        self._mapped_parts = mapped_parts
        return total

    @property
    def has_part_writers(self) -> bool:
        """Whether :meth:`writable_parts` was asked for (flag 's' on an ordinary file)."""
        return self._part_writers is not None

    def writable_parts(self) -> list[tuple[int, int]]:
        """The part files opened for writing, as (descriptor, bytes mapped) in mapping
        order: what the core's staged writes under flag 's' go to (native/log.c says why).

        The descriptors are the pool's, closed with it; each call opens the parts the pool
        gained since the last. A part that cannot be opened ends the list: the core writes
        what lies past it through the mapping, as without this."""
        self._handle()
        if self._part_writers is None:
            self._part_writers = []
        writers = self._part_writers
        for path, size in self._mapped_parts[len(writers) :]:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                break
            writers.append((fd, size))
        return list(writers)

    def _make_parts_durable(self, paths: list[str]) -> None:
        # a failed fsync is as a failed msync: a later fsync would not vouch for the data
        try:
            for path in paths:
                fsync_file(path, on_failed_fsync=self.mark_io_failed)
            fsync_dir(self._parts_dir, on_failed_fsync=self.mark_io_failed)
        except error as exc:
            raise error(
                "cannot make the pool's new part durable: "
                + (os.strerror(exc.errno) if exc.errno else str(exc)),
                filename=self.set_path,
                errno=exc.errno,
            ) from exc

    def _stop_growth(self) -> None:
        """After a failed growth this handle must never grow the pool again.

        libpmemobj 1.12.1 has already counted the part it failed to create (it unlinks the
        file, but not the number): its next growth would create a part after a gap, which
        neither it nor viperdbm maps at the next open, so every record placed there would be
        lost, and the pool would grow without bound. With growth off, the allocation fails
        cleanly (StoreFullError); a new open counts the parts afresh and can grow again.
        """
        if self._growth_stopped:
            return
        self._growth_stopped = True
        pop = self._pop
        if pop is None or self._forked:
            return
        _ctl_set(self, pop, "heap.size.granularity", ctypes.c_uint64(0))

    def mapped_size(self) -> int:
        """Bytes of the pool mapped at :attr:`base` now (sum of the part file sizes).

        Only an allocation can grow the pool, so the parts are scanned again only after
        one (not at every call: an open would otherwise list the directory many times),
        and only if a part file after the mapped ones exists: a growth adds the next one
        (or, after a failed growth, the one after it). Listing a directory of many parts
        after every allocation took a millisecond of each new block at 100M records."""
        self._handle()
        if not self._may_have_grown:
            return self._mapped
        after = len(self._mapped_parts)
        if self._mapped_parts and not any(
            os.path.lexists(part_path(self._parts_dir, n)) for n in (after, after + 1)
        ):
            self._may_have_grown = False
            return self._mapped
        return self._refresh_mapped()

    def _check_range(self, what: str, offset: int, length: int) -> None:
        if type(offset) is not int or type(length) is not int:
            raise error(f"{what}: offset and length must be ints", errno=_errno.EINVAL)
        if offset < 0 or length < 0 or offset + length > self._mapped:
            self._handle()
            if offset < 0 or length < 0 or offset + length > self._refresh_mapped():
                raise error(
                    f"{what}: range [{offset}, {offset + length}) is outside the pool "
                    f"(mapped size {self._mapped})",
                    filename=self.set_path,
                    errno=_errno.EINVAL,
                )

    def _oid(self, offset: int) -> PMEMoid:
        return PMEMoid(self._uuid_lo, offset)

    # ---- root --------------------------------------------------------------------

    def root(self, size: int) -> int:
        """``pmemobj_root``: the root object's offset, allocated zeroed on the first call.

        A ``size`` larger than the current root reallocates it, **which moves it** (the
        offset changes).  ``size=0`` returns the existing root (an error if there is none).
        """
        _check_size("root", size, allow_zero=True)
        if size:
            self._require_sound()
        pop = self._handle()
        with self._objlock:  # it may allocate: not during a walk of the heap
            # a root at least this large already: nothing is allocated, nothing can grow
            stale = self._may_have_grown or size > self.root_size()
            oid = _invoke(
                self,
                "cannot get the root object",
                _pmemobj_root,
                (pop, size),
                failed=_is_null_oid,
                context="alloc",
            )
            self._may_have_grown = stale
        off = int(oid.off)
        if off + size > self._mapped:
            self._refresh_mapped()
        return off

    def root_size(self) -> int:
        """Size of the root object (0 if there is none)."""
        pop = self._handle()
        return int(_invoke(self, "pmemobj_root_size", _pmemobj_root_size, (pop,)))

    def _root_offset(self) -> int:
        pop = self._handle()
        if _invoke(self, "pmemobj_root_size", _pmemobj_root_size, (pop,)) == 0:
            return 0
        oid = _invoke(
            self, "cannot get the root object", _pmemobj_root, (pop, 0), failed=_is_null_oid
        )
        return int(oid.off)

    # ---- objects -----------------------------------------------------------------

    def alloc(
        self, size: int, type_num: int, *, zero: bool = True, constructor: int = 0, arg: int = 0
    ) -> int:
        """Allocate an object of at least ``size`` bytes; return its offset.

        The object is allocated into a DRAM ``PMEMoid``: until its offset is stored
        (and persisted) somewhere in the pool, a crash leaks it; :meth:`objects` finds
        such orphans.  ``zero`` selects ``pmemobj_zalloc`` over ``pmemobj_alloc``.

        ``constructor``: the address of a native ``int (*)(PMEMobjpool *pop, void *ptr,
        void *arg)`` that ``pmemobj_alloc`` runs on the new object, with ``arg`` (an
        address, kept valid by the caller) as its argument, before it publishes the
        allocation: a crash during the constructor leaves nothing allocated. It must
        persist what it writes (pmemobj_persist: :data:`PMEMOBJ_PERSIST_ADDRESS`), must
        return 0, and runs without the GIL. Not with ``zero``.
        """
        _check_size("alloc", size, allow_zero=False)
        _check_u64("alloc", "type_num", type_num)
        if constructor and zero:
            raise error("alloc: a constructor replaces zero=True", errno=_errno.EINVAL)
        self._require_sound()
        pop = self._handle()
        oid = PMEMoid()
        with self._objlock:
            if zero:
                _invoke(
                    self,
                    "cannot allocate",
                    _pmemobj_zalloc,
                    (pop, ctypes.byref(oid), size, type_num),
                    failed=_is_nonzero,
                    context="alloc",
                )
            else:
                _invoke(
                    self,
                    "cannot allocate",
                    _pmemobj_alloc,
                    (pop, ctypes.byref(oid), size, type_num, constructor or None, arg or None),
                    failed=_is_nonzero,
                    context="alloc",
                )
            off = int(oid.off)
            self._large_at_open = None
            if self._live is not None:
                self._live.add(off)
        if off + size > self._mapped:
            self._refresh_mapped()  # the pool grew: learn the new size, fix part modes
        return off

    def _walk(self) -> list[tuple[int, int, int]]:
        pop = self._handle()

        def walk() -> list[tuple[int, int, int]]:
            found: list[tuple[int, int, int]] = []
            append = found.append
            type_num = _pmemobj_type_num
            usable = _pmemobj_alloc_usable_size
            nxt = _pmemobj_next
            oid = _pmemobj_first(pop)
            while oid.off:
                append((int(oid.off), int(type_num(oid)), int(usable(oid))))
                oid = nxt(oid)
            return found

        result: list[tuple[int, int, int]] = _invoke(self, "cannot list objects", walk, ())
        self._live = {off for off, _, _ in result}
        if self._large_at_open is not None:
            # An object whose header libpmemobj cannot read (damaged flags mark it
            # internal) is silently left out of the walk: every large object the heap
            # recorded at open must be listed, or a block would vanish with its records.
            missing = sorted(self._large_at_open - self._live - {self._root_offset()})
            self._large_at_open = None
            if missing:
                raise CorruptedError(
                    f"the pool's heap records {len(missing)} object(s) that libpmemobj does "
                    f"not list (damaged object header; first at offset {missing[0]})",
                    filename=self.set_path,
                )
        return result

    def objects(self) -> list[tuple[int, int, int]]:
        """Every allocated object except the root: ``(offset, type_num, usable_size)``.

        In heap order: one walk with ``pmemobj_first``/``pmemobj_next`` (three foreign
        calls per object, 1.5-5 µs per object from Python).  It also refreshes the
        DRAM set of live offsets that :meth:`free` and :meth:`usable_size` check.
        """
        with self._objlock:
            return self._walk()

    def _require_object(self, what: str, offset: int, *, allow_root: bool) -> None:
        """Raise unless ``offset`` is an allocated object (objlock held).

        Membership is checked against a DRAM set of offsets, built from one walk of
        the heap at first need and kept up to date by alloc/free; a miss walks again.
        Nothing of it is persistent.
        """
        self._check_range(what, offset, 1)
        live = self._live
        if live is not None and offset in live:
            return
        if allow_root and offset == self._root_offset() != 0:
            return
        if offset in {off for off, _, _ in self._walk()}:
            return
        raise error(
            f"{what}: offset {offset} is not an allocated object",
            filename=self.set_path,
            errno=_errno.EINVAL,
        )

    def free(self, offset: int) -> None:
        """Free the object at ``offset`` (``pmemobj_free``).  The root cannot be freed."""
        self._require_sound()
        with self._objlock:
            self._require_object("free", offset, allow_root=False)
            oid = self._oid(offset)
            _invoke(self, "cannot free", _pmemobj_free, (ctypes.byref(oid),))
            self._large_at_open = None
            if self._live is not None:
                self._live.discard(offset)

    def usable_size(self, offset: int) -> int:
        """Usable size of the allocated object (or the root) at ``offset``."""
        with self._objlock:
            self._require_object("usable_size", offset, allow_root=True)
            return int(
                _invoke(
                    self,
                    "pmemobj_alloc_usable_size",
                    _pmemobj_alloc_usable_size,
                    (self._oid(offset),),
                )
            )

    # ---- plain memory access (not in the original interface; used by _engine) ----

    def read(self, offset: int, length: int) -> bytes:
        """A copy of ``length`` bytes at ``offset`` (bounds-checked)."""
        self._check_range("read", offset, length)
        pop = self._handle()
        data: bytes = _invoke(self, "read", ctypes.string_at, (pop + offset, length))
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to ``offset`` (bounds-checked; no flush: see :meth:`persist`)."""
        src: bytes | ctypes.Array[ctypes.c_char]
        if type(data) is bytes:
            src, length = data, len(data)  # passed to memmove without a copy
        else:
            view = memoryview(data).cast("B")
            length = view.nbytes
            src = (ctypes.c_char * length).from_buffer_copy(view)
        self._check_range("write", offset, length)
        self._require_sound()
        pop = self._handle()
        if length:
            _invoke(self, "write", ctypes.memmove, (pop + offset, src, length))

    # ---- durability --------------------------------------------------------------

    def persist(self, offset: int, length: int) -> None:
        """``pmemobj_persist(pop, base + offset, length)``.

        On a non-pmem file this is an ``msync(MS_SYNC)`` inside libpmemobj, through
        viperdbm's ``pmem_msync`` (native/pmemio.c): a failure raises and marks the pool
        (see :attr:`io_errno`); the range check keeps it inside the mapping.
        """
        self._check_range("persist", offset, length)
        self._require_sound()
        pop = self._handle()
        _invoke(self, "persist", _pmemobj_persist, (pop, pop + offset, length))

    def msync(self, offset: int, length: int) -> None:
        """``pmem_msync(base + offset, length)``: msync(MS_SYNC), page-aligned for you.

        libpmem's own ``pmem_msync`` (it returns -1): a failure marks the pool failed
        (see :attr:`io_errno`), since a later msync would not make the lost pages durable.
        """
        self._check_range("msync", offset, length)
        self._require_sound()
        pop = self._handle()
        try:
            _invoke(
                self,
                "msync failed",
                _pmem_msync,
                (pop + offset, length),
                failed=_is_nonzero,
                errmsg=_errmsg_pmem,
            )
        except ClosedError:
            raise
        except error as exc:
            self.mark_io_failed(exc.errno or _errno.EIO)
            raise self._io_error(exc.errno or _errno.EIO) from exc

    def set_heap_granularity(self, nbytes: int) -> None:
        """Set ``heap.size.granularity``: the growth step (0 = never grow, else > 2 MiB).

        Runtime only: set it after every open.
        """
        _check_u64("set_heap_granularity", "nbytes", nbytes)
        if 0 < nbytes <= MIN_GRANULARITY:
            raise error(
                f"heap granularity must be 0 or larger than {MIN_GRANULARITY} bytes",
                filename=self.set_path,
                errno=_errno.EINVAL,
            )
        pop = self._handle()
        if self._growth_stopped:
            nbytes = 0
        _ctl_set(self, pop, "heap.size.granularity", ctypes.c_uint64(nbytes))

    def extend(self, nbytes: int) -> None:
        """Grow the pool by one part of ``nbytes`` now (``heap.size.extend``), not when an
        allocation finds the heap full. Fails as that growth would (StoreFullError on a full
        disk, and this handle then never grows again: see :meth:`_stop_growth`)."""
        _check_u64("extend", "nbytes", nbytes)
        pop = self._handle()
        if self._growth_stopped:
            raise GROWTH_STOPPED(
                self.set_path,
                errno=_errno.ENOSPC,
                what="cannot grow the pool",
                reason=self._growth_error,
            )
        _invoke(
            self,
            "cannot grow the pool",
            _pmemobj_ctl_exec,
            (pop, b"heap.size.extend", ctypes.byref(ctypes.c_uint64(nbytes))),
            failed=_is_nonzero,
            context="alloc",
        )

    def is_pmem(self, length: int) -> bool:
        """``pmem_is_pmem(base, length)``: whether CPU flushes make the range durable."""
        self._check_range("is_pmem", 0, length)
        pop = self._handle()
        return bool(_invoke(self, "pmem_is_pmem", _pmem_is_pmem, (pop, length)))


def _is_null_oid_uuid(result: Any) -> bool:
    return int(result.pool_uuid_lo) == 0


def _check_u64(what: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise error(f"{what}: {name} must be an int in [0, 2**64)", errno=_errno.EINVAL)


def _check_size(what: str, size: int, *, allow_zero: bool) -> None:
    if isinstance(size, bool) or not isinstance(size, int):
        raise error(f"{what}: size must be an int", errno=_errno.EINVAL)
    if size < 0 or (size == 0 and not allow_zero) or size > MAX_ALLOC_SIZE:
        raise error(
            f"{what}: size {size} is out of range (1..{MAX_ALLOC_SIZE})", errno=_errno.EINVAL
        )
