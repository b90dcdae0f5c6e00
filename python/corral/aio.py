"""asyncio forms of corral's blocking calls.

- ``Connection.arecv()`` waits for the pipe's descriptor with
  ``loop.add_reader``: no thread at all.
- ``Queue.aget()`` / ``Queue.aput()`` try without blocking first; only when
  they must wait do they borrow a thread of one shared, bounded pool (a
  queue has no descriptor to watch), so a waiting coroutine never blocks
  the event loop.
- Pool futures are awaitable; ``ThreadPoolExecutor.arun``/``amap`` run
  functions in threads (see ``corral.threads``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

__all__ = ["run_blocking", "wait_readable"]

_pool: Any = None
_pool_lock = threading.Lock()
#: Most threads lent to coroutines waiting on queues at once.
BLOCKING_THREADS = 32


def run_blocking(fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
    """Runs a blocking call in the shared pool of ``BLOCKING_THREADS``
    threads; returns an awaitable."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                from .threads import ThreadPoolExecutor

                _pool = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="corral-aio")
    return _pool.arun(fn, *args)


async def wait_readable(fd: int) -> None:
    """Returns once ``fd`` is readable (or at its end), through the loop's
    own selector."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
