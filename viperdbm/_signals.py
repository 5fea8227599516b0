"""Signals deferred across the engine's multi-step changes (see the Engine's slow paths).

Python runs a signal's handler between two bytecodes of the main thread; when it raises
(``KeyboardInterrupt``), the exception lands wherever the main thread is. Inside a slow path
of the engine that would tear a multi-step change, so each one runs inside a
:class:`Deferred`:

* the native core blocks asynchronous signals in this thread (``_native.sigblock``): the
  kernel keeps them pending and delivers them, and their handlers run, when the change is
  complete (:meth:`Deferred.end`) or between two whole steps of a long one
  (:meth:`Deferred.poll`);
* a signal that another thread receives (the kernel gives a process's signal to a thread
  that does not block it) still sets the flag on which the main thread runs the handler.
  So when other threads exist, the Python-level handlers of the signals programs usually
  handle are swapped, for the section, for one that only records the signal; it is raised
  again at the end, where the real handler runs.

The engine's own threads block those signals for their whole life (:func:`start_quiet`), so
the kernel never hands them one of the program's signals: its C handler would then run when
that thread is next scheduled, which on a busy machine can be after the section ended, and
the ``KeyboardInterrupt`` would land late, at whatever the main thread does by then.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import _native

#: the signals whose Python handlers are swapped while other threads exist
_SWAPPED = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)

_Handler = Callable[[int, FrameType | None], Any]


def start_quiet(thread: threading.Thread) -> None:
    """Start one of the engine's own threads with the signals programs handle blocked for
    its whole life: the kernel then delivers each to a thread that does not block it, the
    main thread above all. (A new thread inherits its creator's mask, so the creator blocks
    them around the start: no instant of the new thread takes one. One that arrives
    meanwhile waits, pending, and is delivered when the creator's mask is restored.)"""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _SWAPPED)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class Deferred:
    """Asynchronous signals wait while this is open; :meth:`end` delivers them."""

    __slots__ = ("_caught", "_saved", "_token")

    def __init__(self) -> None:
        self._saved: list[tuple[int, _Handler]] = []
        self._caught: list[int] = []
        # handlers of signals flagged before this run here, and may raise: then nothing
        # is deferred and the section does not start
        self._token = _native.sigblock()
        try:
            self._swap()
        except BaseException:
            self._restore()
            _native.sigunblock(self._token)
            raise

    def _swap(self) -> None:
        if (
            threading.active_count() == 1
            or threading.current_thread() is not threading.main_thread()
        ):
            return  # (handlers run only in the main thread)
        for sig in _SWAPPED:
            handler = signal.getsignal(sig)
            if callable(handler):
                signal.signal(sig, self._record)
                self._saved.append((sig, handler))

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._caught.append(signum)

    def _restore(self) -> None:
        saved, self._saved = self._saved, []
        for sig, handler in saved:
            signal.signal(sig, handler)

    def _resend(self) -> None:
        # to this thread, which blocks them: pending until the native unblock delivers them
        caught, self._caught = self._caught, []
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)

    def poll(self) -> None:
        """Between two whole steps of a long change: deliver the signals that arrived (their
        handlers run here and may raise) and defer again. Returns, or raises, deferred."""
        swapped = bool(self._saved)
        self._restore()
        self._resend()
        try:
            _native.sigpoll(self._token)
        finally:
            if swapped:
                self._swap()

    def end(self) -> None:
        """The change is complete: deliver what arrived meanwhile (a handler may raise)."""
        self._restore()
        self._resend()
        _native.sigunblock(self._token)
