"""Producer and echo functions run in the benchmark's child processes (a
module, so that every start method can import them)."""

from __future__ import annotations

from typing import Any


def produce(q: Any, n: int, kind: str, size: int) -> None:
    """Puts the start time (``perf_counter``: CLOCK_MONOTONIC, the same
    clock in every process), ``n`` messages of about ``size`` bytes, then a
    None."""
    import time

    if kind == "bytes":
        msg: Any = b"x" * size
    else:
        import numpy as np

        msg = np.ones(size // 8, dtype=np.float64)
    q.put(time.perf_counter())
    for _ in range(n):
        q.put(msg)
    q.put(None)


def echo(conn: Any, n: int) -> None:
    """Sends back each of ``n`` received messages."""
    for _ in range(n):
        conn.send(conn.recv())
