"""``corral.ThreadPoolExecutor`` and ``corral.Thread``.

The thread pool has ``concurrent.futures.ThreadPoolExecutor``'s API; its
worker threads and task queue are the Rust core's: a thread waits for work
with the GIL released and takes the GIL only to run Python code (and runs
every task already queued before giving it back). On top of the stdlib:

- ``map`` reads its input lazily with a bounded number of tasks in flight;
  ``imap_unordered`` yields as tasks finish; both take ``progress=True``.
- What the ``initializer`` returns is :func:`corral.worker_state` in tasks
  run by that thread.
- ``pool.options(timeout=...)``: the task's future raises ``TimeoutError``
  once the task has run that long. A Python thread cannot be killed: the
  function keeps running and its result is dropped.
- ``pool.stats()``; futures are awaitable; ``arun``/``amap`` for asyncio.

``corral.Thread`` is ``threading.Thread`` plus ``result(timeout)``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import heapq
import itertools
import os
import threading
import time
import weakref
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, AsyncIterator, Callable, Iterable, TypeVar

from . import _core, _worker
from ._streams import StreamingMixin, ThreadFuture

__all__ = ["Thread", "ThreadFuture", "ThreadPool", "ThreadPoolExecutor"]

T = TypeVar("T")

_counter = itertools.count()
_live: "weakref.WeakSet[ThreadPoolExecutor]" = weakref.WeakSet()
_exiting = False


class _Watchdog:
    """One thread per pool that fails the futures of tasks past their
    timeout (a thread per task would cost a thread per task). It ends at
    ``stop``, or when ``owner`` is collected without being shut down."""

    def __init__(self, owner: object) -> None:
        self._heap: list[tuple[float, int, "weakref.ref[ThreadFuture]", float]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Not the owner itself: the finalizer would keep it alive.
        weakref.finalize(owner, self.stop)

    def watch(self, fut: ThreadFuture, timeout: float) -> None:
        with self._cond:
            # A weak reference: a finished task's result is not kept until
            # its deadline.
            heapq.heappush(self._heap, (time.monotonic() + timeout, next(self._seq), weakref.ref(fut), timeout))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="corral-thread-timeouts", daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self, join: bool = False) -> None:
        """Ends the thread; with ``join``, waits until it has ended."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, fut, timeout = self._heap[0]  # type: ignore[assignment]
                left = when - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                fut = fut()
                if fut is not None and not fut.done():
                    try:
                        fut.set_exception(TimeoutError(f"the task ran longer than its timeout of {timeout} s"))
                    except cf.InvalidStateError:
                        pass


class _WorkItem:
    __slots__ = ("pool", "future", "fn", "args", "kwargs", "timeout")

    def __init__(
        self, pool: "ThreadPoolExecutor", future: ThreadFuture, fn: Callable[..., Any], args: Any, kwargs: Any, timeout: float | None
    ) -> None:
        self.pool, self.future, self.fn, self.args, self.kwargs, self.timeout = pool, future, fn, args, kwargs, timeout

    def __call__(self) -> None:
        pool = self.pool
        if not getattr(pool._local, "ready", False) and not pool._init_thread():
            try:
                self.future.set_exception(BrokenThreadPool(pool._broken))
            except cf.InvalidStateError:
                pass
            return
        if not self.future.set_running_or_notify_cancel():
            return
        if self.timeout is not None:
            pool._watchdog.watch(self.future, self.timeout)
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            try:
                self.future.set_exception(exc)
            except cf.InvalidStateError:
                pass  # timed out meanwhile
            self = None  # type: ignore[assignment]  # break the reference cycle with the traceback
        else:
            try:
                self.future.set_result(result)
            except cf.InvalidStateError:
                pass


class _LoopBridge:
    """Hands results from pool threads to one asyncio loop: an eventfd read
    by ``loop.add_reader``, written once per burst of results (not once per
    result, as ``call_soon_threadsafe`` would)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ready: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self.armed = False
        self.lock = threading.Lock()
        loop.add_reader(self.fd, self._drain)
        # Not the loop itself: a finalizer holding it would keep it alive.
        weakref.finalize(loop, os.close, self.fd)

    def post(self, fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """From any thread: resolve ``fut`` on its loop."""
        self.ready.append((fut, ok, value))
        with self.lock:
            if self.armed:
                return
            self.armed = True
        os.eventfd_write(self.fd, 1)

    def _drain(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
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


_bridges: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge]" = weakref.WeakKeyDictionary()


def _bridge(loop: asyncio.AbstractEventLoop) -> _LoopBridge:
    b = _bridges.get(loop)
    if b is None:
        b = _bridges[loop] = _LoopBridge(loop)
    return b


class _AsyncWorkItem:
    """A task whose result goes straight to an asyncio future (no
    ``concurrent.futures.Future`` in between)."""

    __slots__ = ("pool", "bridge", "future", "fn", "args", "kwargs")

    def __init__(self, pool: "ThreadPoolExecutor", bridge: _LoopBridge, future: asyncio.Future[Any], fn: Any, args: Any, kwargs: Any) -> None:
        self.pool, self.bridge, self.future, self.fn, self.args, self.kwargs = pool, bridge, future, fn, args, kwargs

    def __call__(self) -> None:
        pool = self.pool
        if not getattr(pool._local, "ready", False) and not pool._init_thread():
            self.bridge.post(self.future, False, BrokenThreadPool(pool._broken))
            return
        if self.future.cancelled():
            return
        try:
            value = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.bridge.post(self.future, False, exc)
        else:
            self.bridge.post(self.future, True, value)


class _Options:
    """Per-task options bound to a pool (``pool.options(timeout=...)``)."""

    def __init__(self, pool: "ThreadPoolExecutor", timeout: float | None) -> None:
        self._pool, self._timeout = pool, timeout

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> ThreadFuture:
        """``pool.submit`` with these options."""
        return self._pool._submit(fn, args, kwargs, self._timeout)


class ThreadPoolExecutor(StreamingMixin, cf.Executor):
    """A pool of threads (``concurrent.futures.ThreadPoolExecutor``).

    ``max_workers`` defaults to ``min(32, cpus + 4)`` as in the stdlib;
    threads start as tasks arrive. ``initializer(*initargs)`` runs once in
    each thread; its return value is :func:`corral.worker_state` there.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._local = threading.local()
        self._broken: str | None = None
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        self._watchdog = _Watchdog(self)
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()
        #: threading's record of each pool thread (made in _init_thread).
        self._records: list[tuple[int, threading.Thread]] = []
        self._name = thread_name_prefix or f"ThreadPoolExecutor-{next(_counter)}"
        self._thread_ids = itertools.count()
        self._core = _core.ThreadPoolCore(max_workers, self._name)
        # A pool dropped without shutdown(wait=True): its threads end with
        # the core pool; threading's records of them must go too.
        self._forget = weakref.finalize(self, _forget_records, self._records)
        _live.add(self)

    def _init_thread(self) -> bool:
        """First task in a thread: names it (for ``threading``, which sees
        the core's threads as foreign) and runs the initializer."""
        if self._broken is not None:
            return False
        me = threading.current_thread()
        me.name = f"{self._name}_{next(self._thread_ids)}"
        self._records.append((threading.get_ident(), me))
        if self._initializer is not None:
            try:
                _worker._tls.state = self._initializer(*self._initargs)
            except BaseException as exc:
                self._set_broken(f"A thread initializer failed: {exc!r}; the thread pool is not usable anymore")
                return False
        self._local.ready = True
        return True

    def _set_broken(self, reason: str) -> None:
        self._broken = reason
        for job in self._core.drain():
            if isinstance(job, _AsyncWorkItem):
                job.bridge.post(job.future, False, BrokenThreadPool(reason))
                continue
            try:
                job.future.set_exception(BrokenThreadPool(reason))
            except cf.InvalidStateError:
                pass

    def _check_open(self) -> None:
        if self._broken is not None:
            raise BrokenThreadPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> ThreadFuture:  # type: ignore[override]
        """Schedules ``fn(*args, **kwargs)``; returns its future."""
        return self._submit(fn, args, kwargs, None)

    def _submit(self, fn: Callable[..., Any], args: Any, kwargs: Any, timeout: float | None) -> ThreadFuture:
        with self._shutdown_lock:
            self._check_open()
            return self._enqueue(fn, args, kwargs, timeout)

    def _enqueue(self, fn: Callable[..., Any], args: Any, kwargs: Any, timeout: float | None = None) -> ThreadFuture:
        fut = ThreadFuture()
        self._core.submit(_WorkItem(self, fut, fn, args, kwargs, timeout))
        return fut

    def options(self, *, timeout: float | None = None) -> _Options:
        """Per-task options: ``timeout`` (seconds once the task starts;
        then its future raises TimeoutError, the thread runs on)."""
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        return _Options(self, timeout)

    async def arun(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await pool.arun(fn, *args)``: runs ``fn`` in a pool thread. The
        result reaches the loop through an eventfd the loop watches (one
        wake-up per burst of results; no polling, no thread per waiter)."""
        return await self._afuture(fn, args, kwargs)

    def _afuture(self, fn: Callable[..., T], args: Any, kwargs: Any) -> "asyncio.Future[T]":
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._shutdown_lock:
            self._check_open()
            self._core.submit(_AsyncWorkItem(self, _bridge(loop), fut, fn, args, kwargs))
        return fut

    async def amap(self, fn: Callable[..., T], iterable: Iterable[Any], *, limit: int | None = None) -> AsyncIterator[T]:
        """``async for r in pool.amap(fn, xs, limit=n)``: results in order,
        at most ``limit`` tasks in flight (default: 4 per thread)."""
        limit = limit or 4 * self._max_workers
        if limit < 1:
            raise ValueError("limit must be >= 1")
        pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        try:
            for x in iterable:
                pending.append(self._afuture(fn, (x,), {}))
                if len(pending) >= limit:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            for f in pending:
                f.cancel()

    def stats(self) -> dict[str, Any]:
        """Per thread: tasks done, busy and idle seconds; tasks queued."""
        return {"threads": self._core.stats(), "queued": self._core.queued}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As the stdlib: no new tasks; ``cancel_futures`` cancels the tasks
        no thread has started; ``wait`` joins the threads."""
        with self._shutdown_lock:
            self._shutdown = True
            if not cancel_futures:
                # As the stdlib's eager map: results not read yet still come.
                self._fill_streams()
            if cancel_futures:
                for job in self._core.drain():
                    if isinstance(job, _WorkItem):
                        job.future.cancel()
                    else:
                        job.bridge.post(job.future, False, asyncio.CancelledError())
        self._core.shutdown(wait)
        if wait:
            self._watchdog.stop(join=True)
            self._forget()

    def __enter__(self) -> "ThreadPoolExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=True)


ThreadPool = ThreadPoolExecutor


def _forget_records(records: list[tuple[int, threading.Thread]]) -> None:
    """Drops threading's record of each pool thread (threading keeps one for
    every foreign thread it was asked about, named in ``_init_thread``, and
    never removes it itself): the threads have ended. A record that is not
    ours any more (the ident was reused by a newer thread) stays."""
    active = threading._active  # type: ignore[attr-defined]
    for ident, record in records:
        if active.get(ident) is record:
            active.pop(ident, None)


def _python_exit() -> None:
    # As the stdlib: before the interpreter finalizes, queued tasks finish
    # and the pools' threads are joined (they run Python code).
    global _exiting
    _exiting = True
    for pool in list(_live):
        pool.shutdown(wait=True)


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


class Thread(threading.Thread):
    """``threading.Thread`` plus :meth:`result`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outcome: tuple[bool, Any] | None = None
        #: Set when ``run`` has ended: waiting on it can be interrupted
        #: without harm (see ``join``).
        self._ran = threading.Event()

    def run(self) -> None:
        try:
            if self._target is not None:  # type: ignore[attr-defined]
                self._outcome = (True, self._target(*self._args, **self._kwargs))  # type: ignore[attr-defined]
            else:
                self._outcome = (True, None)
        except BaseException as exc:
            self._outcome = (False, exc)
            raise
        finally:
            del self._target, self._args, self._kwargs  # type: ignore[attr-defined]
            self._ran.set()

    def join(self, timeout: float | None = None) -> None:
        """``threading.Thread.join``; interrupting it (Ctrl-C) leaves the
        thread as it was. On CPython 3.11 and 3.12 an exception raised by a
        signal handler inside ``Thread.join`` marks the thread stopped while
        it runs (the ``except`` clause of ``_wait_for_tstate_lock`` releases
        the lock the running thread holds), so ``is_alive()`` and
        ``result()`` would lie afterwards. The wait happens on an event that
        ``run`` sets at its end; the join proper then only waits for the
        thread's last steps."""
        if type(self).run is Thread.run and self._started.is_set() and self is not threading.current_thread():  # type: ignore[attr-defined]
            t0 = time.monotonic()
            if not self._ran.wait(timeout):
                return
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - t0))
        super().join(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """Waits for the thread and returns its target's return value, or
        raises its exception (with the original traceback). TimeoutError if
        it is still running after ``timeout`` seconds; RuntimeError if it
        was never started."""
        if not self._started.is_set():  # type: ignore[attr-defined]
            raise RuntimeError("cannot get the result of a thread that was not started")
        self.join(timeout)
        if not self._ran.is_set() and self.is_alive():
            raise TimeoutError(f"thread {self.name} still running after {timeout} s")
        if self._outcome is None:
            raise RuntimeError(f"thread {self.name} ended without a result")
        ok, value = self._outcome
        if ok:
            return value
        raise value
