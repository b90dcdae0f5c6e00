"""How a forked child ends (``corral.Process`` with ``start_method="fork"``
and the fork server's workers).

A forked child runs a copy of its parent's program: it must leave through
``os._exit`` whatever happens on the way out, or it would return into the
parent's code and run the parent's ``atexit`` handlers.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

__all__ = ["leave", "write_stderr"]


def write_stderr(text: str) -> None:
    """Writes to ``sys.stderr`` if it can: with stderr None or closed the
    text is dropped, and what follows (sending the outcome, leaving) still
    happens."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:
        pass


def _run_multiprocessing_finalizers() -> None:
    """Runs what ``multiprocessing`` registered in this process to run at
    its exit (``util.Finalize``: a ``multiprocessing.Queue``'s feeder thread
    flushes what was put, as a ``QueueHandler``'s records), as its own
    children do before they leave. The finalizers inherited from the
    parent are skipped by ``Finalize`` itself (they name its pid)."""
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None:
        return
    try:
        mp_util._run_finalizers(0)
        mp_util._run_finalizers()
    except BaseException:
        pass  # leaving anyway


def leave(code: object) -> NoReturn:
    """Ends the child with ``os._exit(code)`` after flushing stdio as far as
    it can. Nothing may stop the exit: a flush raises when ``sys.stdout`` or
    ``sys.stderr`` is None or closed (common under daemons and some
    launchers), and an exit code out of C ``int`` range would make
    ``os._exit`` itself raise, so only its low 8 bits are passed, which is
    all the kernel keeps."""
    status = 1
    try:
        if isinstance(code, int):
            status = code & 0xFF
        _run_multiprocessing_finalizers()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass  # stdio is None or closed, or a signal arrived: exit anyway
    finally:
        os._exit(status)
