"""Loads the native core (native/*.c), built by the package's own build."""

from __future__ import annotations

from . import _errors

try:
    from . import _vipercore as core
except ImportError as exc:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        "viperdbm's native core (viperdbm._vipercore) is not built: install the package with "
        "'pip install .' (or 'make setup' in a checkout), which compiles native/*.c"
    ) from exc

core.set_error_classes(_errors.ClosedError, _errors.CorruptedError, _errors.error)

Core = core.Core
MapBase = core.MapBase
crc32c = core.crc32c
#: a crash point of a Python step (tests: VIPERDBM_CRASH_AT / VIPERDBM_CRASH_LOG, see
#: native/module.c); a no-op unless one of them was set when the module was imported
crash_point = core.crash_point
jumbo_size = core.jumbo_size
sigblock = core.sigblock
sigunblock = core.sigunblock
sigpoll = core.sigpoll
#: address of the native pmemobj_alloc constructor of blocks and the reserve (Core.block_init
#: makes its argument)
BLOCK_CONSTRUCTOR: int = core.BLOCK_CONSTRUCTOR
#: Core.block_init's kind for the reserve object
INIT_RESERVE: int = core.INIT_RESERVE

RC_OK: int = core.RC_OK
RC_NEED_BLOCK: int = core.RC_NEED_BLOCK
RC_NEED_JUMBO: int = core.RC_NEED_JUMBO
RC_FREEABLE: int = core.RC_FREEABLE
RC_BUSY: int = core.RC_BUSY
RC_COMPACT: int = core.RC_COMPACT
RC_NO_RESERVE: int = core.RC_NO_RESERVE
PERSIST_NONE: int = core.PERSIST_NONE
PERSIST_MSYNC: int = core.PERSIST_MSYNC
PERSIST_FUNC: int = core.PERSIST_FUNC

__all__ = ["Core", "core", "crash_point", "crc32c", "jumbo_size"]
