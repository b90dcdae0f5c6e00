"""``corral.ThreadPoolExecutor`` and ``corral.Thread``.

The thread pool has ``concurrent.futures.ThreadPoolExecutor``'s API; its
worker threads, task queue and task timeouts are the Rust core's
(``threadpool.rs``): a thread waits for work with the GIL released and
takes the GIL only to run Python code (and runs every task already queued
before giving it back). On top of the stdlib:

- ``map`` reads its input lazily with a bounded number of tasks in flight;
  ``imap_unordered`` yields as tasks finish; both take ``progress=True``.
  Items travel in chunks (one task per chunk), sized from the measured
  time per item to run about 5 ms each unless ``chunksize`` is given: a
  tiny function no longer pays a future per item, while items that take
  longer (a request to a service) stay one per task and run concurrently.
  An item's exception is raised as the object raised, at its place.
- What the ``initializer`` returns is :func:`corral.worker_state` in tasks
  run by that thread.
- ``pool.options(timeout=...)``: the task's future raises ``TimeoutError``
  once the task has run that long (the core's timer; no Python thread). A
  Python thread cannot be killed: the function keeps running and its
  result is dropped; ``Future.kill`` is ``cancel`` here.
- ``pool.stats()``; futures (:class:`corral.Future`) are awaitable;
  ``run_async``/``map_async`` for asyncio (``arun``/``amap``: their older
  names).

``corral.Thread`` is ``threading.Thread`` plus ``result(timeout)``.
"""

import collections
import functools
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures.thread import BrokenThreadPool
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _core, _executor, _state
from ._executor import Future, FutureStreams, Options, check_timeout, run_local_chunk, settle
from .aio import AsyncCall, bridge

if TYPE_CHECKING:
    import asyncio  # imported where used: on a loop, where it is loaded already

#: The stdlib pools' logger (its initializer failures are logged there).
_log = logging.getLogger("concurrent.futures")

__all__ = ["Thread", "ThreadFuture", "ThreadPool", "ThreadPoolExecutor"]

T = TypeVar("T")
A = TypeVar("A")
P = ParamSpec("P")

#: The older name of :class:`corral.Future` for the thread pool's futures.
ThreadFuture = Future

_counter = itertools.count()


class _Task(Future[Any]):
    """A thread-pool task: its future, which is also the job the core's
    thread runs (``_run``; ``ThreadPoolCore.submit_task``). One object per
    task, not a future and a work item: one object fewer to make and for
    the garbage collector to walk per task pending."""

    _pool: "ThreadPoolExecutor | None" = None
    _fn: Callable[..., Any] | None = None
    _args: Any = None
    _kwargs: Any = None

    def __init__(self, pool: "ThreadPoolExecutor", fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        # Not the base's ``__init__``: it makes nothing (a call less per submit).
        self._pool, self._fn, self._args, self._kwargs = pool, fn, args, kwargs

    def _forget(self) -> None:
        """The task is done with its pool, function and arguments: it ran,
        or it ends without running (cancelled, shut down, broken pool, timed
        out before it started). The one place they are dropped: a finished
        future holds none of them, as the stdlib's (its work item is
        dropped)."""
        self._pool = self._fn = self._args = self._kwargs = None

    def _run(self) -> Sequence[_core.Sleeper] | None:
        """Runs the task (once); returns the sleepers of the threads blocked
        on its result, for the pool thread to wake once it released the GIL."""
        pool, fn, args, kwargs = self._pool, self._fn, self._args, self._kwargs
        if pool is None:
            # Ended already (``_forget``: the pool goes with the function);
            # one cancelled while queued is CANCELLED_AND_NOTIFIED now, as
            # a thread taking it tells ``wait``/``as_completed``.
            self._start()
            return None
        # Held while the function runs (a chunk cancelled meanwhile empties
        # its items, ``_ChunkFuture.cancel``), dropped before the future ends:
        # a thread it wakes may look.
        if not getattr(pool._local, "ready", False):
            err = pool._prepare_thread()
            if err is not None:
                self._forget()
                return self._settle(False, err)
        # Not run if cancelled, or timed out before it started (the timeout
        # counts from when this thread took the task, its initializer included).
        if not self._start():
            self._forget()
            return None
        try:
            result = fn(*args, **kwargs)  # type: ignore[misc]  # None too: TypeError, as the stdlib's
        except BaseException as exc:
            # Not kept by the exception's traceback, which holds this frame.
            pool = fn = args = kwargs = None
            self._forget()
            try:
                return self._settle(False, exc)  # None if it timed out meanwhile
            finally:
                self = exc = None  # type: ignore[assignment]  # no reference cycle through the traceback
        pool = fn = args = kwargs = None
        self._forget()
        return self._settle(True, result)

    def cancel(self) -> bool:
        """As ``Future.cancel``; a task cancelled before it ran drops its
        function and arguments at once (it stays in the pool's queue until
        a thread takes it)."""
        if not super().cancel():
            return False
        self._forget()
        return True

    def fail(self, exc: BaseException) -> None:
        """Ends the task without running it (shut down or broken pool)."""
        import asyncio  # only when a pool shuts down or breaks with jobs queued

        self._forget()
        if isinstance(exc, asyncio.CancelledError):
            # Cancelled and notified at once: no thread will take it, so
            # ``wait``/``as_completed`` are told now (the stdlib's pool
            # leaves them waiting until their timeout).
            if Future.cancel(self):
                self._start()
        else:
            settle(self, False, exc)


class _ChunkFuture(_Task):
    """The future of one chunk of a ``map``: cancelling it while a thread
    runs the chunk (the consumer stopped: a ``timeout``, an exception, a
    ``break``) ends the chunk after the item that runs, as the stdlib's
    ``map`` cancels the items not started. The chunk's list of items
    (``run_local_chunk``'s arguments: ``fn``, ``items``) is emptied: the
    loop over it sees the end of the list, at no cost per item."""

    def cancel(self) -> bool:
        """As ``Future.cancel``; a running chunk runs no further item."""
        args = self._args
        if super().cancel():
            return True
        if args is not None and not self.done():
            args[1].clear()
        return False


def _timed_out(ref: weakref.ref[Future[Any]], timeout: float) -> None:
    """Called by the core's timer when a task has run ``timeout`` seconds.
    The future is held weakly: a finished task's result is not kept until
    its deadline."""
    fut = ref()
    if fut is not None and not fut.done():
        settle(fut, False, TimeoutError(f"the task ran longer than its timeout of {timeout} s"))


class ThreadPoolExecutor(FutureStreams):
    """A pool of threads (``concurrent.futures.ThreadPoolExecutor``).

    ``max_workers`` defaults to ``min(32, cpus + 4)`` as in the stdlib;
    threads start as tasks arrive. ``initializer(*initargs)`` runs once in
    each thread; its return value is :func:`corral.worker_state` there.
    """

    _chunks = True
    _chunk_runner = staticmethod(run_local_chunk)
    #: A thread runs a chunk for about 20 us per task of overhead: past 256
    #: items that is under 0.1 us an item, and the read-ahead of a map of
    #: a tiny function stays at 1,024 items per thread (24 k by default).
    _chunk_cap = 256

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
        #: threading's record of each pool thread (made in _init_thread).
        self._records: list[tuple[int, threading.Thread]] = []
        self._name = thread_name_prefix or f"ThreadPoolExecutor-{next(_counter)}"
        self._thread_ids = itertools.count()
        self._core = _core.ThreadPoolCore(max_workers, self._name)
        # A pool dropped without shutdown(wait=True): its threads end with
        # the core pool; threading's records of them must go too.
        self._forget = weakref.finalize(self, _forget_records, self._records)
        self._open()

    def _prepare_thread(self) -> BaseException | None:
        """Before a task in a pool thread: None if the thread is ready, else
        the error to fail the task with (the pool is broken)."""
        if getattr(self._local, "ready", False) or self._init_thread():
            return None
        return BrokenThreadPool(self._broken)

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
                _state.set_thread_state(self._initializer(*self._initargs))
            except BaseException as exc:
                # As the stdlib's ThreadPoolExecutor: logged at CRITICAL.
                _log.critical("Exception in initializer:", exc_info=True)
                self._set_broken(f"A thread initializer failed: {exc!r}; the thread pool is not usable anymore")
                return False
        self._local.ready = True
        return True

    def _set_broken(self, reason: str) -> None:
        self._broken = reason
        for job in self._core.drain():
            job.fail(BrokenThreadPool(reason))

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise BrokenThreadPool(self._broken)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Any) -> Future[Any]:
        # The flags are read without ``_shutdown_lock`` (taken only to
        # raise), as the process pool does: the core refuses a task once
        # the pool is shut down, and the submit then raises what
        # ``_check_open`` says (``_stop`` closes the core before it drains
        # it, so a submit racing ``shutdown(cancel_futures=True)`` is
        # refused or cancelled).
        if self._shutdown or self._broken is not None or _executor._exiting:
            with self._shutdown_lock:
                self._check_open()
        try:
            return self._enqueue(fn, args, kwargs, opts)
        except RuntimeError:
            with self._shutdown_lock:
                self._check_open()
            raise

    def _enqueue(self, fn: Callable[..., Any], args: Any, kwargs: Any, opts: Any) -> Future[Any]:
        task: _Task
        if fn is run_local_chunk:
            task = _ChunkFuture(self, fn, args, kwargs)
        else:
            task = _Task(self, fn, args, kwargs)
        if opts is None:
            self._core.submit_task(task)
        else:
            self._core.submit_task(task, opts, functools.partial(_timed_out, weakref.ref(task), opts))
        return task

    def options(self, *, timeout: float | None = None) -> Options:
        """Per-task options for ``submit``/``map``/``imap_unordered``:
        ``timeout`` is seconds from when a pool thread takes the task (the
        thread's initializer, run before its first task, counts too); past
        it the future raises TimeoutError and the thread runs on (a Python
        thread cannot be stopped), its result dropped."""
        check_timeout(timeout)
        return Options(self, timeout)

    async def run_async(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``await pool.run_async(fn, *args)``: runs ``fn`` in a pool
        thread. The result reaches the loop through the loop's
        :class:`corral.aio.LoopBridge` (one wake-up per burst of results; no
        polling, no thread per waiter)."""
        return await self._afuture(fn, args, kwargs)

    def _afuture(self, fn: Callable[..., T], args: Any, kwargs: Any) -> "asyncio.Future[T]":
        import asyncio

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._shutdown_lock:
            self._check_open()
            self._core.submit(AsyncCall(bridge(loop), fut, fn, args, kwargs, self._prepare_thread))
        return fut

    async def map_async(
        self, fn: Callable[[A], T], iterable: Iterable[A], *, limit: int | None = None
    ) -> AsyncIterator[T]:
        """``async for r in pool.map_async(fn, xs, limit=n)``: results in
        order, at most ``limit`` tasks in flight (default: 4 per thread)."""
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

    #: The older name of :meth:`run_async`.
    arun = run_async
    #: The older name of :meth:`map_async`.
    amap = map_async

    def stats(self) -> dict[str, Any]:
        """Per thread: tasks done, busy and idle seconds; tasks queued."""
        return {"threads": self._core.stats(), "queued": self._core.queued}

    def _stop(self, first: bool, cancel_futures: bool) -> None:
        if not cancel_futures:
            # As the stdlib's eager map: results not read yet still come.
            self._fill_streams()
            self._core.shutdown(False)
            return
        import asyncio  # its CancelledError cancels a job of either kind

        # Drained before the core is closed (its idle threads would take
        # jobs when it closes), and again after: a submit that read the
        # flags before this shutdown set them may have queued a job since.
        for close in (False, True):
            if close:
                self._core.shutdown(False)
            for job in self._core.drain():
                job.fail(asyncio.CancelledError())

    def _join(self) -> None:
        self._core.shutdown(True)
        self._forget()


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


class Thread(threading.Thread):
    """``threading.Thread`` plus :meth:`result`."""

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        super().__init__(group, target, name, args, kwargs, daemon=daemon)
        self._outcome: tuple[bool, Any] | None = None
        #: Set when ``run`` has ended: waiting on it can be interrupted
        #: without harm (see ``join``).
        self._ran = threading.Event()

    def run(self) -> None:
        """Runs the target and keeps its return value (``result()``)."""
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
