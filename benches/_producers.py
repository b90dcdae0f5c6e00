"""Producer and echo functions run in the benchmark's child processes (a
module, so that every start method can import them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def produce(q: Any, n: int, kind: str, size: int) -> None:
    """Puts the start time (``perf_counter``: CLOCK_MONOTONIC, the same
    clock in every process), ``n`` messages of about ``size`` bytes, then a
    None."""
    import time

    if kind in FRESH:
        # A fresh object per message, as a user's producer makes them
        # (``q.put(os.urandom(n))``, a chunk read from a file): the copy
        # that makes it is the same for every peer.
        src = bytearray(os.urandom(size))
        make = FRESH[kind]
        q.put(time.perf_counter())
        for _ in range(n):
            q.put(make(src))
        q.put(None)
        return
    if kind == "bytes":
        msg: Any = b"x" * size
    else:
        import numpy as np

        msg = np.ones(size // 8, dtype=np.float64)
    q.put(time.perf_counter())
    for _ in range(n):
        q.put(msg)
    q.put(None)


#: Message kinds made fresh for each put, by type.
FRESH: dict[str, Callable[[bytearray], Any]] = {
    "fresh bytes": bytes,
    "fresh bytearray": bytearray,
    "fresh memoryview": lambda src: memoryview(bytes(src)),
}


def echo(conn: Any, n: int) -> None:
    """Sends back each of ``n`` received messages."""
    for _ in range(n):
        conn.send(conn.recv())
