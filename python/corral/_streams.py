"""Lazy, bounded ``map`` and ``imap_unordered`` for the executors whose
tasks are futures (the thread pool, the Ray and Dask executors): at most
``4 x max_workers`` tasks in flight while the results are read, and the
rest of the input submitted at ``shutdown`` so results can still be read
after the ``with`` block (the stdlib's ``map`` submits everything at once).

A class using ``StreamingMixin`` provides ``_enqueue(fn, args, kwargs)``
(returns a ``ThreadFuture``, no shutdown check), ``_max_workers``,
``_shutdown_lock``, ``_check_open()`` and a ``_streams`` WeakSet, and calls
``_fill_streams()`` in ``shutdown`` when it does not cancel.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

from . import _progress

__all__ = ["StreamingMixin", "ThreadFuture"]

T = TypeVar("T")


class ThreadFuture(cf.Future):  # type: ignore[type-arg]
    """A ``concurrent.futures.Future`` that can be awaited."""

    def __await__(self) -> Any:
        return asyncio.wrap_future(self).__await__()


class _Stream:
    """The tasks one ``map``/``imap_unordered`` call has in flight: at most
    ``4 x max_workers`` while iterated, all the rest at ``shutdown``."""

    def __init__(self, pool: Any, fn: Callable[..., Any], items: Iterator[Any], ordered: bool) -> None:
        self.pool, self.fn, self.items, self.ordered = pool, fn, items, ordered
        self.window = 4 * pool._max_workers
        self.pending: collections.deque[ThreadFuture] = collections.deque()  # ordered
        self.running: set[ThreadFuture] = set()  # unordered
        self.finished: queue.SimpleQueue[ThreadFuture] = queue.SimpleQueue()
        self.exhausted = False
        self.lock = threading.Lock()

    def _size(self) -> int:
        return len(self.pending) if self.ordered else len(self.running)

    def fill(self, everything: bool = False) -> None:
        with self.lock:
            while not self.exhausted and (everything or self._size() < self.window):
                try:
                    args = next(self.items)
                except StopIteration:
                    self.exhausted = True
                    return
                f = self.pool._enqueue(self.fn, args, {})
                if self.ordered:
                    self.pending.append(f)
                else:
                    self.running.add(f)
                    f.add_done_callback(self.finished.put)

    def next(self, deadline: float | None) -> ThreadFuture | None:
        """The next future to yield (None at the end)."""
        self.fill()
        with self.lock:
            if self.ordered:
                return self.pending.popleft() if self.pending else None
            if not self.running:
                return None
        try:
            f = self.finished.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError() from None
        with self.lock:
            self.running.discard(f)
        return f

    def abandon(self) -> None:
        with self.lock:
            left = list(self.pending) + list(self.running)
            self.pending.clear()
            self.running.clear()
        for f in left:
            f.cancel()



class StreamingMixin:
    """``map``/``imap_unordered`` over ``_enqueue`` (see the module)."""

    # Provided by the executor (see the module).
    _max_workers: int
    _shutdown_lock: Any
    _streams: Any
    _check_open: Callable[[], None]
    _enqueue: Callable[..., ThreadFuture]

    def _fill_streams(self) -> None:
        """Submits the rest of every live stream's input (at shutdown)."""
        for st in list(self._streams):
            st.fill(everything=True)

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> Iterator[T]:
        """Results of ``fn`` over the zipped ``iterables``, in order. The
        input is read lazily, at most a few tasks per thread ahead (at
        ``shutdown`` the rest is submitted, so results can still be read
        after the ``with`` block). ``chunksize`` is accepted and ignored,
        as in the stdlib."""
        return self._stream(fn, zip(*iterables), True, timeout, _bar(progress, iterables))

    def imap_unordered(
        self, fn: Callable[..., T], iterable: Iterable[Any], *, timeout: float | None = None, progress: bool = False
    ) -> Iterator[T]:
        """Results of ``fn`` over ``iterable`` as they finish."""
        return self._stream(fn, ((x,) for x in iterable), False, timeout, _bar(progress, (iterable,)))

    def _stream(self, fn: Callable[..., Any], items: Iterator[Any], ordered: bool, timeout: float | None, bar: Any) -> Iterator[Any]:
        with self._shutdown_lock:
            self._check_open()
            st = _Stream(self, fn, items, ordered)
            self._streams.add(st)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._iterate(st, deadline, bar)

    def _iterate(self, st: "_Stream", deadline: float | None, bar: Any) -> Iterator[Any]:
        try:
            while True:
                f = st.next(deadline)
                if f is None:
                    return
                yield _result(f, deadline, bar)
        finally:
            self._streams.discard(st)
            st.abandon()
            if bar is not None:
                bar.close()

def _result(f: ThreadFuture, deadline: float | None, bar: Any) -> Any:
    r = f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
    if bar is not None:
        bar.update(1)
    return r


def _bar(progress: bool, iterables: tuple[Iterable[Any], ...]) -> Any:
    return _progress.bar(_progress.total_of(iterables)) if progress else None


