"""Ctrl-C that cannot be lost: while `latched_interrupts()` is active, SIGINT both raises
KeyboardInterrupt (at once, as usual) and latches a flag that `check_interrupt()` turns into a
KeyboardInterrupt at the next safe point. A raise that Python cannot deliver still stops the
run there, before any output is written: seen when Ctrl-C lands while the garbage collector
runs jax's `_xla_gc_callback` during the first XLA compilation (an exception in a gc callback
is "ignored": printed, then dropped). Such a dropped KeyboardInterrupt is not printed either."""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

_latched = False


def _handle(signum, frame):
    global _latched
    _latched = True
    raise KeyboardInterrupt


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since `latched_interrupts()` began, even if
    the first KeyboardInterrupt never reached the caller."""
    if _latched:
        raise KeyboardInterrupt


@contextmanager
def latched_interrupts():
    """Latch SIGINT for the duration (main thread only, and never where SIGINT is ignored, e.g.
    a background job); the previous handler and unraisable hook are restored afterwards."""
    global _latched
    _latched, previous = False, None
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGINT)
        if handler not in (signal.SIG_IGN, None):
            previous = signal.signal(signal.SIGINT, _handle)
    hook = sys.unraisablehook

    def quiet(unraisable):            # a dropped Ctrl-C: the latch delivers it, no traceback
        if not (_latched and unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            hook(unraisable)
    sys.unraisablehook = quiet
    try:
        yield
    finally:
        sys.unraisablehook = hook
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        _latched = False
