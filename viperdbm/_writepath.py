"""The slow write paths: a put or delete that the native core's fast path could not finish.

The core answers with a code saying what it needs (a new block, a jumbo block, the reserve
set aside again, another thread's reorganize() to end) or what is left to do after the write
(give space back); these loops supply it through :class:`~viperdbm._space.Space` and retry.
The engine calls them holding its lock, with signals deferred.
"""

from __future__ import annotations

from . import _layout as layout
from . import _native
from ._errors import StoreFullError, error
from ._space import Space


def finish_put(space: Space, rc: int, key: bytes | str, value: bytes | str) -> None:
    """Finish a put that the fast path could not do (rc from Core.put)."""
    core = space.core
    busy = False
    while True:
        if rc == _native.RC_OK:
            return
        if rc in (_native.RC_FREEABLE, _native.RC_COMPACT):
            space.reclaim()  # the put is done: this only gives space back
            return
        if rc == _native.RC_BUSY:
            busy = _wait_busy(busy, space.path)
        elif rc == _native.RC_NO_RESERVE:
            space.take_back_reserve()
        elif rc == _native.RC_NEED_BLOCK:
            try:
                space.new_block()
            except StoreFullError as exc:
                raise space.full("the put was not written", exc, deletes_work=True) from exc
        elif rc == _native.RC_NEED_JUMBO:
            kb, vb = _as_bytes(key), _as_bytes(value)
            size = _native.jumbo_size(len(kb), len(vb))
            try:
                off, usable = space.alloc(size, layout.TYPE_JUMBO_BLOCK, zero=False)
            except StoreFullError as exc:
                raise space.full("the put was not written", exc, deletes_work=True) from exc
            rc = space.adopt(off, core.put_jumbo, off, usable, kb, vb)
            continue
        else:  # pragma: no cover - the core returns only the codes above
            raise error(f"unexpected return code {rc} from the native core")
        rc = core.put(key, value)


def finish_delete(space: Space, rc: int, key: bytes | str) -> bool:
    """Finish a delete that the fast path could not do; False if the key is missing."""
    core = space.core
    busy = False
    while True:
        if rc == -1:
            return False
        if rc == _native.RC_OK:
            return True
        if rc in (_native.RC_FREEABLE, _native.RC_COMPACT):
            space.reclaim()
            return True
        if rc == _native.RC_BUSY:
            busy = _wait_busy(busy, space.path)
        elif rc == _native.RC_NEED_BLOCK:
            try:
                space.new_block(may_use_reserve=True)
            except StoreFullError as exc:
                raise space.full("the delete was not written", exc, deletes_work=False) from exc
        elif rc == _native.RC_NEED_JUMBO:
            kb = _as_bytes(key)
            try:
                off, usable = space.alloc(
                    _native.jumbo_size(len(kb), 0), layout.TYPE_JUMBO_BLOCK, zero=False
                )
            except StoreFullError as exc:
                raise space.full("the delete was not written", exc, deletes_work=False) from exc
            rc = space.adopt(off, core.delete_jumbo, off, usable, kb)
            if rc == -1:  # deleted by another thread meanwhile: the block is not needed
                space.pool.free(off)
            continue
        rc = core.delete(key)


def _wait_busy(busy: bool, path: str) -> bool:
    """RC_BUSY: reorganize() ran in another thread; holding the lock, we waited for it.

    A second RC_BUSY under the lock means this very thread is inside reorganize() (a
    signal handler that writes, run between two of its steps): it cannot wait for itself."""
    if busy:
        raise error(
            "the store cannot be written while this thread is reorganizing it (a signal "
            "handler that writes to the store?)",
            filename=path,
        )
    return True


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)
