"""Parent-side helpers shared by the corral test suites (imported by the
test modules; tests/ is on sys.path because it has no __init__.py)."""

from __future__ import annotations

import os
import time
from typing import Callable


def proc_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` ('R', 'S', 'Z', ...), or
    None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return text[text.rfind(")") + 2 :].split()[0]


def pid_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs: absent, or a zombie awaiting reaping."""
    return proc_state(pid) in (None, "Z", "X", "x")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Polls ``predicate`` until it is true or ``timeout`` seconds pass;
    returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)



class Interrupted(Exception):
    """Raised by the SIGUSR1 handler of :func:`interrupt_after`."""


class interrupt_after:
    """``with interrupt_after(0.2): blocking_call()``: sends this process
    SIGUSR1 after ``seconds``; its handler raises :class:`Interrupted` in
    the main thread, as Ctrl-C raises KeyboardInterrupt. ``elapsed`` is the
    time spent inside the block."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.elapsed = 0.0

    def __enter__(self) -> "interrupt_after":
        import signal
        import threading

        def handler(signum, frame):
            raise Interrupted()

        self._old = signal.signal(signal.SIGUSR1, handler)
        self._timer = threading.Timer(self.seconds, os.kill, args=(os.getpid(), signal.SIGUSR1))
        self._t0 = time.monotonic()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        self.elapsed = time.monotonic() - self._t0
        self._timer.cancel()
        self._timer.join()
        signal.signal(signal.SIGUSR1, self._old)
