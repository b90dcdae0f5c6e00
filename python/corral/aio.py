"""asyncio forms of corral's blocking calls, and the one bridge between
corral's threads and an event loop.

- ``Connection.arecv()`` waits for the pipe's descriptor with
  ``loop.add_reader``: no thread at all.
- ``Queue.aget()`` / ``Queue.aput()`` wait on the queue's futex signals
  through the same hub as the primitives: no thread.
- Executor futures (:class:`corral.Future`) are awaitable;
  ``ThreadPoolExecutor.run_async``/``map_async`` run functions in threads
  and hand their results to the loop through :class:`LoopBridge`.
- ``Lock``/``RLock``/``Semaphore``: ``await x.acquire_async()`` and
  ``async with x``; ``Event``: ``await e.wait_async()``. The core's one hub
  thread sleeps on all their futex words at once (``futex_waitv``) and wakes
  the loop through an eventfd: no thread per waiter.

One :class:`LoopBridge` per event loop carries both kinds of wake-up through
one eventfd (the core's ``AsyncNotifier``): tokens of primitives the hub saw
change, and results posted by threads (``post``).
"""

import asyncio
import atexit
import collections
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _core

__all__ = ["AsyncCall", "LoopBridge", "bridge", "run_blocking", "wait_for_primitive", "wait_readable"]

#: Most threads lent to coroutines waiting on blocking calls at once.
BLOCKING_THREADS = 32


class LoopBridge:
    """Per event loop: one eventfd the loop watches (the core's
    ``AsyncNotifier``), the futures of coroutines waiting for a primitive
    (by token), and results posted from other threads. A burst of posts
    costs one wake-up of the loop, not one per result (as
    ``call_soon_threadsafe`` would)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.notifier = _core.AsyncNotifier()
        self.fd = self.notifier.fileno()
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.tokens = itertools.count(1)
        self.ready: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self.armed = False
        self.lock = threading.Lock()
        # The notifier (and its eventfd) goes with this bridge, which goes
        # with its loop (the bridges are weakly keyed by loop).
        loop.add_reader(self.fd, self._drain)

    def post(self, fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """From any thread: resolve ``fut`` on its loop with ``value`` (a
        result if ``ok``, else an exception; a ``CancelledError`` cancels)."""
        self.ready.append((fut, ok, value))
        with self.lock:
            if self.armed:
                return
            self.armed = True
        os.eventfd_write(self.fd, 1)

    def _drain(self) -> None:
        # take() also clears the eventfd.
        for token in self.notifier.take():
            waiter = self.waiting.pop(token, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        with self.lock:
            self.armed = False
        ready = self.ready
        while ready:
            fut, ok, value = ready.popleft()
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            elif isinstance(value, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(value)


_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBridge] = weakref.WeakKeyDictionary()


def bridge(loop: asyncio.AbstractEventLoop) -> LoopBridge:
    """The bridge of ``loop`` (made at first use; it goes with the loop)."""
    b = _bridges.get(loop)
    if b is None:
        b = _bridges[loop] = LoopBridge(loop)
    return b


class AsyncCall:
    """A job for the core's thread pool whose outcome goes straight to an
    asyncio future through its loop's bridge (no
    ``concurrent.futures.Future`` in between). ``prepare``, if given, runs
    first in the thread and returns an exception to fail with instead of
    calling ``fn`` (the thread pool's initializer check)."""

    __slots__ = ("bridge", "future", "fn", "args", "kwargs", "prepare")

    def __init__(
        self,
        bridge: LoopBridge,
        future: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: Any,
        kwargs: Any,
        prepare: Callable[[], BaseException | None] | None = None,
    ) -> None:
        self.bridge, self.future, self.fn, self.args, self.kwargs, self.prepare = (
            bridge,
            future,
            fn,
            args,
            kwargs,
            prepare,
        )

    def __call__(self) -> None:
        """Runs the call in this thread and posts its outcome to the loop."""
        if self.prepare is not None:
            err = self.prepare()
            if err is not None:
                self.bridge.post(self.future, False, err)
                return
        if self.future.cancelled():
            return
        try:
            value = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.bridge.post(self.future, False, exc)
        else:
            self.bridge.post(self.future, True, value)

    def fail(self, exc: BaseException) -> None:
        """Ends the call without running it (its pool was shut down or broke)."""
        self.bridge.post(self.future, False, exc)


_blocking: Any = None
_blocking_lock = threading.Lock()
#: Pools inherited by a fork child: their threads do not exist there, so
#: they are never shut down (that would wait for those threads) nor dropped.
_inherited: list[Any] = []


_stopped = False


def _stop_blocking() -> None:
    # As the executors (``_executor._exit_all``): before the interpreter
    # finalizes, the threads (which run Python code) are joined, and no pool
    # is made after that.
    global _stopped
    _stopped = True
    if _blocking is not None:
        _blocking.shutdown(True)


def _forget_blocking_after_fork() -> None:
    global _blocking, _blocking_lock
    if _blocking is not None:
        _inherited.append(_blocking)
    _blocking, _blocking_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_blocking_after_fork)
atexit.register(_stop_blocking)


def _blocking_pool() -> Any:
    global _blocking
    if _blocking is None:
        with _blocking_lock:
            if _stopped:
                raise RuntimeError("cannot run a blocking call after interpreter shutdown")
            if _blocking is None:
                _blocking = _core.ThreadPoolCore(BLOCKING_THREADS, "corral-aio")
    return _blocking


async def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs a blocking call in a shared pool of ``BLOCKING_THREADS`` threads
    (``corral-aio_N``, the core's thread pool) and returns its result: a
    coroutine, so ``asyncio.run(run_blocking(f, x))`` works as well as
    ``await run_blocking(f, x)``."""
    pool = _blocking_pool()
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()
    pool.submit(AsyncCall(bridge(loop), fut, fn, args, {}))
    return await fut


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
    if attempt():
        return True
    loop = asyncio.get_running_loop()
    b = bridge(loop)
    deadline = None if timeout is None else loop.time() + max(0.0, timeout)
    while True:
        seen = _core.wait_word(primitive, room, slot)
        if attempt():
            return True
        if deadline is not None and loop.time() >= deadline:
            return False
        fut: asyncio.Future[None] = loop.create_future()
        token = next(b.tokens)
        b.waiting[token] = fut
        watch = _core.watch(primitive, seen, b.notifier, token, room, slot)
        slice_ = None if deadline is None else deadline - loop.time()
        if recheck is not None:
            slice_ = recheck if slice_ is None else min(slice_, recheck)
        try:
            if slice_ is None:
                await fut
            else:
                await asyncio.wait_for(fut, max(0.0, slice_))
        except TimeoutError:
            pass
        finally:
            _core.unwatch(watch)
            b.waiting.pop(token, None)
        if attempt():
            return True
