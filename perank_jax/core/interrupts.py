"""Ctrl-C that cannot be lost: while `latched_interrupts()` is active, SIGINT both raises
KeyboardInterrupt (at once, as usual) and latches a flag that `check_interrupt()` turns into a
KeyboardInterrupt at the next safe point. A raise that Python cannot deliver still stops the
run there, before any output is written: seen when Ctrl-C lands while the garbage collector
runs jax's `_xla_gc_callback` during the first XLA compilation (an exception in a gc callback
is "ignored": printed, then dropped). Such a dropped KeyboardInterrupt is not printed either.

SIGTERM (`kill`, a scheduler's stop) is handled the same way, as `Terminated` (a KeyboardInterrupt):
temps are removed and outputs left untouched as for Ctrl-C; the CLI then exits 143 (128 + 15)
where Ctrl-C exits 130."""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

_latched = None          # None, or the exception class a latched signal raises


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C (the CLI exits 143 instead of 130)."""


def _handle(signum, frame):
    global _latched
    _latched = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    raise _latched


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since `latched_interrupts()` began, even if
    the first KeyboardInterrupt never reached the caller."""
    if _latched:
        raise _latched


@contextmanager
def latched_interrupts():
    """Latch SIGINT and SIGTERM for the duration (main thread only, and never where the signal is
    ignored, e.g. SIGINT in a background job); the previous handlers and unraisable hook are
    restored afterwards."""
    global _latched
    _latched, previous = None, {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if handler not in (signal.SIG_IGN, None):
                previous[sig] = signal.signal(sig, _handle)
    hook = sys.unraisablehook

    def quiet(unraisable):            # a dropped Ctrl-C: the latch delivers it, no traceback
        if not (_latched and unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            hook(unraisable)
    sys.unraisablehook = quiet
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _latched = None
