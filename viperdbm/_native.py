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
batch_jumbo_size = core.batch_jumbo_size
sigblock = core.sigblock
sigunblock = core.sigunblock
sigpoll = core.sigpoll
# the on-media format (FORMAT: native/vipercore.h's structures and constants, which
# viperdbm/_layout.py reads), the block constructor's address (BLOCK_CONSTRUCTOR: the native
# pmemobj_alloc constructor of blocks and the reserve, whose argument Core.block_init makes),
# the codes the core's writes return (WriteCode: done, or one need; see native/core.h) and
# its persist modes
from ._vipercore import (  # noqa: E402 (after the import above, which explains a failure)
    BLOCK_CONSTRUCTOR,
    FORMAT,
    PERSIST_FUNC,
    PERSIST_MSYNC,
    PERSIST_NONE,
    WriteCode,
)

__all__ = [
    "BLOCK_CONSTRUCTOR",
    "FORMAT",
    "PERSIST_FUNC",
    "PERSIST_MSYNC",
    "PERSIST_NONE",
    "Core",
    "WriteCode",
    "batch_jumbo_size",
    "core",
    "crash_point",
    "crc32c",
    "jumbo_size",
]
