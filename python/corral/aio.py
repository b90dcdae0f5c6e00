"""asyncio forms of corral's blocking calls.

- ``Connection.arecv()`` waits for the pipe's descriptor with
  ``loop.add_reader``: no thread at all.
- ``Queue.aget()`` / ``Queue.aput()`` wait on the queue's futex signals
  through the same hub as the primitives: no thread.
- Pool futures are awaitable; ``ThreadPoolExecutor.arun``/``amap`` run
  functions in threads (see ``corral.threads``).
- ``Lock``/``RLock``/``Semaphore``: ``await x.acquire_async()`` and
  ``async with x``; ``Event``: ``await e.wait_async()``. The core's one hub
  thread sleeps on all their futex words at once (``futex_waitv``) and wakes
  the loop through an eventfd: no thread per waiter.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import weakref
from typing import Any, Callable

__all__ = ["run_blocking", "wait_for_primitive", "wait_readable"]

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


class _SyncBridge:
    """Per event loop: the core's notifier (an eventfd the loop watches) and
    the futures of coroutines waiting for a lock, semaphore or event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from . import _core

        self.notifier = _core.AsyncNotifier()
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.tokens = itertools.count(1)
        # The notifier (and its eventfd) goes with this bridge, which goes
        # with its loop (the bridges are weakly keyed by loop).
        loop.add_reader(self.notifier.fileno(), self._drain)

    def _drain(self) -> None:
        for token in self.notifier.take():
            fut = self.waiting.pop(token, None)
            if fut is not None and not fut.done():
                fut.set_result(None)


_sync_bridges: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SyncBridge]" = weakref.WeakKeyDictionary()


async def wait_for_primitive(
    primitive: Any,
    attempt: Callable[[], bool],
    timeout: float | None,
    *,
    room: bool = False,
    recheck: float | None = None,
    slot: int | None = None,
) -> bool:
    """Retries ``attempt()`` (a non-blocking acquire, get or check) each
    time the primitive's futex word changes (a queue's space signal with
    ``room``), and every ``recheck`` seconds if given, until it succeeds or
    ``timeout`` passes; the waiting is done by the core's one hub thread,
    not by a thread per waiter. Returns the last ``attempt()``."""
    from . import _core

    if attempt():
        return True
    loop = asyncio.get_running_loop()
    bridge = _sync_bridges.get(loop)
    if bridge is None:
        bridge = _sync_bridges[loop] = _SyncBridge(loop)
    deadline = None if timeout is None else loop.time() + max(0.0, timeout)
    while True:
        seen = _core.wait_word(primitive, room, slot)
        if attempt():
            return True
        if deadline is not None and loop.time() >= deadline:
            return False
        fut: asyncio.Future[None] = loop.create_future()
        token = next(bridge.tokens)
        bridge.waiting[token] = fut
        watch = _core.watch(primitive, seen, bridge.notifier, token, room, slot)
        slice_ = None if deadline is None else deadline - loop.time()
        if recheck is not None:
            slice_ = recheck if slice_ is None else min(slice_, recheck)
        try:
            if slice_ is None:
                await fut
            else:
                await asyncio.wait_for(fut, max(0.0, slice_))
        except asyncio.TimeoutError:
            pass
        finally:
            _core.unwatch(watch)
            bridge.waiting.pop(token, None)
        if attempt():
            return True
