"""Ctrl-C that cannot be lost: while `latched_interrupts()` is active, SIGINT both raises
KeyboardInterrupt (at once, as usual) and latches a flag that `check_interrupt()` turns into a
KeyboardInterrupt at the next safe point. A raise that some library swallows (for instance
inside a callback run during XLA compilation, whose exceptions are only printed) therefore
still stops the run there, before any output is written."""
from __future__ import annotations

import signal
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
    a background job); the previous handler is restored afterwards."""
    global _latched
    _latched, previous = False, None
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGINT)
        if handler not in (signal.SIG_IGN, None):
            previous = signal.signal(signal.SIGINT, _handle)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        _latched = False
