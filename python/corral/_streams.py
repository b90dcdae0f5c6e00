"""Lazy, bounded ``map`` and ``imap_unordered`` for the executors whose
tasks are futures (the thread pool, the Ray and Dask executors): at most
``4 x max_workers`` tasks in flight while the results are read, and the
rest of the input submitted at ``shutdown`` so results can still be read
after the ``with`` block (the stdlib's ``map`` submits everything at once).

Work given to ``map`` is done unless it is cancelled: the first window is
submitted by the call itself, and a map whose iterator is dropped before
it is read (``pool.map(upload, files)`` for the side effects) runs its
whole input, window by window. At ``shutdown``, an input of known length
is submitted in full; an input of unknown length (it may be endless) is
read no further, and a consumer that reads past what ran gets a
``RuntimeError`` there.

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
import weakref
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
        #: The input's length is known (it is finite).
        self.sized = False
        #: The consumer has started iterating.
        self.started = False
        #: The consumer's iterator was dropped unread: the input runs anyway.
        self.orphaned = False
        #: Shut down with the input not read to its end: no more is read.
        self.cut = False
        self.submitted = 0
        self.lock = threading.Lock()
        self._refilling = False
        self._again = False

    def _size(self) -> int:
        return len(self.pending) if self.ordered and not self.orphaned else len(self.running)

    def fill(self, everything: bool = False) -> None:
        new: list[ThreadFuture] = []
        with self.lock:
            while not self.exhausted and not self.cut and (everything or self._size() < self.window):
                try:
                    args = next(self.items)
                except StopIteration:
                    self.exhausted = True
                    break
                f = self.pool._enqueue(self.fn, args, {})
                self.submitted += 1
                if self.orphaned:
                    self.running.add(f)
                    new.append(f)
                elif self.ordered:
                    self.pending.append(f)
                else:
                    self.running.add(f)
                    f.add_done_callback(self.finished.put)
        for f in new:
            f.add_done_callback(self._orphan_done)

    def orphan(self) -> None:
        """The consumer's iterator was dropped before it was read."""
        with self.lock:
            if self.started or self.exhausted and not self.pending and not self.running:
                return
            self.orphaned = True
            left = list(self.pending) + list(self.running)
            self.pending.clear()
            self.running = set(left)
        self.pool._orphan_streams.add(self)
        for f in left:
            f.add_done_callback(self._orphan_done)
        if not left:
            self._refill()

    def _orphan_done(self, f: ThreadFuture) -> None:
        with self.lock:
            self.running.discard(f)
        self._refill()

    def _refill(self) -> None:
        """Sends the next window of an orphaned stream; a done callback that
        runs at once (the future had finished) does not recurse."""
        with self.lock:
            if self._refilling:
                self._again = True
                return
            self._refilling = True
        try:
            while True:
                if not self.pool._is_shut_down():
                    try:
                        self.fill()
                    except BaseException:  # its input raised: it ends there
                        self.exhausted = True
                with self.lock:
                    if not self._again:
                        self._refilling = False
                        done = self.exhausted and not self.running
                        break
                    self._again = False
        finally:
            with self.lock:
                self._refilling = False
        if done:
            self.pool._orphan_streams.discard(self)

    def next(self, deadline: float | None) -> ThreadFuture | None:
        """The next future to yield (None at the end)."""
        self.fill()
        with self.lock:
            if self.ordered and self.pending:
                return self.pending.popleft()
            if self.ordered or not self.running:
                if self.cut and not self.exhausted:
                    raise RuntimeError(
                        f"the pool was shut down before this map's input was read to its end: the first"
                        f" {self.submitted} items ran; an input of unknown length is not read past shutdown"
                    )
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

    @property
    def _orphan_streams(self) -> set["_Stream"]:
        """Streams whose iterator was dropped unread, held until done."""
        try:
            return self.__dict__["_orphan_set"]  # type: ignore[no-any-return]
        except KeyError:
            return self.__dict__.setdefault("_orphan_set", set())  # type: ignore[no-any-return]

    def _is_shut_down(self) -> bool:
        return bool(getattr(self, "_shutdown", False))

    def _fill_streams(self) -> None:
        """At shutdown: submits the rest of every stream whose input is
        finite or that nobody reads; stops reading the others (see the
        module)."""
        for st in list(self._streams) + list(self._orphan_streams):
            if st.sized or st.orphaned:
                st.fill(everything=True)
            else:
                st.cut = True

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
        return self._stream(fn, zip(*iterables), True, timeout, _bar(progress, iterables), _sized(iterables))

    def imap_unordered(
        self, fn: Callable[..., T], iterable: Iterable[Any], *, timeout: float | None = None, progress: bool = False
    ) -> Iterator[T]:
        """Results of ``fn`` over ``iterable`` as they finish."""
        return self._stream(fn, ((x,) for x in iterable), False, timeout, _bar(progress, (iterable,)), _sized((iterable,)))

    def _stream(
        self,
        fn: Callable[..., Any],
        items: Iterator[Any],
        ordered: bool,
        timeout: float | None,
        bar: Any,
        sized: bool = False,
    ) -> Iterator[Any]:
        with self._shutdown_lock:
            self._check_open()
            st = _Stream(self, fn, items, ordered)
            st.sized = sized
            self._streams.add(st)
        deadline = None if timeout is None else time.monotonic() + timeout
        it = self._iterate(st, deadline, bar)
        # Dropped before its first item: the work is done anyway.
        weakref.finalize(it, st.orphan).atexit = False
        st.fill()
        return it

    def _iterate(self, st: "_Stream", deadline: float | None, bar: Any) -> Iterator[Any]:
        st.started = True
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


def _sized(iterables: tuple[Iterable[Any], ...]) -> bool:
    """True if the input's length is known (so it is finite)."""
    return _progress.total_of(iterables) is not None


def _bar(progress: bool, iterables: tuple[Iterable[Any], ...]) -> Any:
    return _progress.bar(_progress.total_of(iterables)) if progress else None


