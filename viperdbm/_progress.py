"""A small progress bar for the command line's long operations.

It draws on standard error only when that is a terminal, so pipes, files and CI logs stay
clean; ``VIPERDBM_PROGRESS=0`` turns it off and ``VIPERDBM_PROGRESS=1`` forces it on. No
dependency: one line, redrawn at most ten times a second, cleared when the work is done.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from ._closing import ClosesOnExit
from ._signals import start_quiet

__all__ = ["Progress", "Ticker", "wanted"]

_WIDTH = 28
_INTERVAL = 0.1


def wanted(stream: TextIO | None = None) -> bool:
    """Whether a progress bar should be drawn on ``stream`` (default: standard error)."""
    setting = os.environ.get("VIPERDBM_PROGRESS", "")
    if setting in ("0", "1"):
        return setting == "1"
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:,.0f}"
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or suffix == "GiB":
            return f"{n:,.0f} {suffix}" if suffix == "B" else f"{n:,.1f} {suffix}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover - the loop returns first


class Progress(ClosesOnExit):
    """A bar for ``total`` units of work (records, or bytes with ``unit='B'``).

    Use it as a context manager and call :meth:`update` with the units just done. When
    ``enabled`` is false (the default on anything but a terminal) every call is a no-op.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "",
        enabled: bool | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = sys.stderr if stream is None else stream
        self.enabled = wanted(self._stream) if enabled is None else enabled
        self._started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; redraw if the last drawing is old enough."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= _INTERVAL:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self._started
        done = _human(self.done, self.unit)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            filled = int(_WIDTH * frac)
            bar = "#" * filled + "." * (_WIDTH - filled)
            text = f"{self.label} [{bar}] {frac:4.0%} {done}/{_human(self.total, self.unit)}"
        else:
            text = f"{self.label} {done}"
        text += f" {elapsed:.1f}s"
        self._stream.write("\r" + text + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Draw the final state and end the line (only if anything was drawn or enabled)."""
        if self.enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._draw(time.monotonic())
        return self


class Ticker(Progress):
    """A bar for one long call that reports no progress of its own: shows elapsed time.

    A daemon thread redraws the line while the ``with`` block runs.
    """

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        super().__init__(label, None, enabled=enabled)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _draw(self, now: float) -> None:
        self._stream.write(f"\r{self.label} ... {now - self._started:.1f}s\x1b[K")
        self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(_INTERVAL * 2):
            self._draw(time.monotonic())

    def __enter__(self) -> Ticker:
        if self.enabled:
            self._draw(time.monotonic())
            self._thread = threading.Thread(target=self._run, name="viperdbm-ticker", daemon=True)
            start_quiet(self._thread)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        super().close()
