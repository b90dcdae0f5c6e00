"""``corral.Pool``: the ``multiprocessing.Pool`` API on corral's process pool.

A ``Pool`` is a :class:`corral.ProcessPoolExecutor` behind the stdlib's
method names; it schedules nothing itself. What a user of
``multiprocessing.Pool`` can rely on, and where it differs:

- A worker that dies (SIGKILL, segfault, ``os._exit``) fails the task it
  was running with :class:`corral.WorkerLostError` (``get()`` raises it,
  ``error_callback`` receives it) and is replaced; the stdlib's pool hangs
  on that task for ever.
- ``map``/``starmap``/``imap``/``imap_unordered`` run through the
  executor's streamed map: the input is read lazily, and ``chunksize=None``
  sizes chunks from the measured time per item. ``map_async`` and
  ``starmap_async`` read their whole input at the call and cut it into
  chunks by the stdlib's rule (``len / (4 x processes)``), one task each.
- Callbacks run on the pool's results thread, before ``get()`` returns, as
  the stdlib's; one that raises is logged (``concurrent.futures`` logger),
  and the result still completes.
- ``terminate()`` (and leaving a ``with`` block) cancels what has not
  started and kills the workers running the rest: their ``AsyncResult``
  raises ``concurrent.futures.CancelledError`` instead of never finishing.
- ``get(timeout)`` raises :class:`corral.TimeoutError`, which is both
  ``multiprocessing.TimeoutError`` and the builtin ``TimeoutError``; so
  does ``next(timeout)`` of what ``imap``/``imap_unordered`` return
  (:class:`IMapIterator`). As with the executor's map, an item that raises
  ends the iteration (the stdlib's ``imap`` goes on with the next items).
"""

import builtins
import collections
import concurrent.futures as cf
import functools
import itertools
import multiprocessing
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Self, TypeVar

from . import process
from ._executor import Future
from .pool import ProcessPoolExecutor

__all__ = ["AsyncResult", "IMapIterator", "MapResult", "Pool", "TimeoutError"]

T = TypeVar("T")

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"


class TimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError):
    """``AsyncResult.get`` timed out: ``multiprocessing.TimeoutError``, and
    the builtin ``TimeoutError`` too."""


def _is_int(value: object) -> bool:
    """An int and not a bool (the annotations are not enforced)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _run_chunk(fn: Callable[..., Any], chunk: Sequence[Any], star: bool) -> list[Any]:
    """A ``map_async``/``starmap_async`` chunk, in a worker."""
    if star:
        return [fn(*args) for args in chunk]
    return [fn(x) for x in chunk]


class _Starred:
    """``fn`` called with each item unpacked (``starmap``), picklable as
    long as ``fn`` is."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: Iterable[Any]) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Starred, (self.fn,))


class AsyncResult(Generic[T]):
    """What ``apply_async`` returns (``multiprocessing.pool.AsyncResult``):
    ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(
        self,
        fut: cf.Future[Any] | None,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        #: The task's future; without callbacks it is the whole state (an
        #: Event and a done callback per task cost ~40% of the throughput
        #: of tiny tasks).
        self._fut = fut
        self._event: threading.Event | None = None
        self._success = False
        self._value: Any = None
        self._callback = callback
        self._error_callback = error_callback
        if fut is None or callback is not None or error_callback is not None:
            # The callback runs before get() returns, as the stdlib's.
            self._event = threading.Event()
            if fut is not None:
                fut.add_done_callback(self._from_future)

    def ready(self) -> bool:
        """True once the call has completed (callbacks included)."""
        if self._event is None:
            assert self._fut is not None
            return self._fut.done()
        return self._event.is_set()

    def successful(self) -> bool:
        """True if the call returned without raising; ValueError if it is
        not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        if self._event is None:
            assert self._fut is not None
            return not self._fut.cancelled() and self._fut.exception() is None
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Waits until the result is ready or ``timeout`` seconds pass."""
        if self._event is not None:
            self._event.wait(timeout)
            return
        assert self._fut is not None
        try:
            self._fut.exception(timeout)
        except (builtins.TimeoutError, cf.CancelledError):
            pass

    def get(self, timeout: float | None = None) -> T:
        """The result, once it arrives; raises the call's exception, or
        :class:`TimeoutError` if it is not ready within ``timeout`` s."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError()
        if self._event is None:
            assert self._fut is not None
            return self._fut.result()  # type: ignore[no-any-return]
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def _set(self, ok: bool, value: Any) -> None:
        """Completes the result: the callback, then the waiters (once)."""
        assert self._event is not None
        if self._event.is_set():
            return
        self._success, self._value = ok, value
        callback = self._callback if ok else self._error_callback
        self._callback = self._error_callback = None
        try:
            if callback is not None:
                callback(value)
        finally:
            self._event.set()

    def _from_future(self, fut: cf.Future[Any]) -> None:
        """Done callback of the task's future."""
        if fut.cancelled():
            self._set(False, cf.CancelledError())
            return
        exc = fut.exception()
        if exc is None:
            self._set(True, fut.result())
        else:
            self._set(False, exc)


ApplyResult = AsyncResult


class MapResult(AsyncResult[list[T]]):
    """What ``map_async``/``starmap_async`` return: the list of results
    once every chunk has returned; the first failure ends it at once."""

    def __init__(
        self,
        chunks: int,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        super().__init__(None, callback, error_callback)
        self._lock = threading.Lock()
        self._parts: list[list[T] | None] = [None] * chunks
        self._left = chunks
        if chunks == 0:
            self._set(True, [])

    def _chunk_done(self, index: int, fut: cf.Future[Any]) -> None:
        """Done callback of chunk ``index``'s future."""
        if fut.cancelled():
            self._set(False, cf.CancelledError())
            return
        exc = fut.exception()
        if exc is not None:
            self._set(False, exc)
            return
        with self._lock:
            self._parts[index] = fut.result()
            self._left -= 1
            last = self._left == 0
        if last:
            values: list[T] = []
            for part in self._parts:
                values.extend(part or ())
            self._parts = []
            self._set(True, values)


class IMapIterator(itertools.chain[T], Generic[T]):
    """What ``imap``/``imap_unordered`` return
    (``multiprocessing.pool.IMapIterator``): an iterator of the results,
    whose ``next(timeout)`` raises :class:`TimeoutError` when no result
    comes within ``timeout`` seconds; the result is not lost: a later
    ``next(timeout)``, or plain iteration, returns it.

    Iterated, it is the executor's lazy map behind an ``itertools.chain``
    (no Python call per result: a wrapper with ``__next__`` cost a loop of
    tiny tasks 40-130 ns per item, measured on the loaded 2-core VM,
    2026-12-07). The first ``next(timeout)`` hands the reading to one
    thread of the iterator's own (``_Reader``), which keeps at most
    ``_READ_AHEAD`` results ready ahead of the caller, as the stdlib's
    result handler fills its iterator: each later ``next``, timed or not,
    takes the next of them (a thread started per timed call, as before,
    made 20 k timed calls 2.88 s against the stdlib's 0.67 s).
    """

    #: The thread reading the results once a ``next(timeout)`` was called
    #: (None: this object's C iteration reads them).
    _reader: "_Reader | None" = None
    #: The executor's map this chains (what the reader reads: never this
    #: object, which the user may drop while the reader waits).
    _results: Iterator[T]
    #: Ends the map's wait for its next result (``_MapState.wake``): the
    #: reader waiting in it when this object is collected leaves at once.
    _wake: Callable[[], None]

    def next(self, timeout: float | None = None) -> T:
        """The next result; ``StopIteration`` after the last; the task's
        exception if it raised; :class:`TimeoutError` if none came within
        ``timeout`` seconds (None: wait for it)."""
        reader = self._reader
        if reader is None:
            if timeout is None:
                return next(self)
            reader = self._reader = _Reader(self)
            # From now on plain iteration takes the reader's results too,
            # in order (a result a timed-out call waited for comes first).
            self.__class__ = _ReadIMapIterator
        return reader.take(None if timeout is None else max(0.0, timeout))  # type: ignore[no-any-return]


class _ReadIMapIterator(IMapIterator[T]):
    """An :class:`IMapIterator` whose results its ``_Reader`` thread reads
    (a ``next(timeout)`` was called): a Python ``__next__`` that takes them
    from it."""

    def __next__(self) -> T:
        reader = self._reader
        assert reader is not None
        return reader.take(None)  # type: ignore[no-any-return]


#: Most results a ``_Reader`` holds ready ahead of its iterator's caller
#: (the map itself reads its input a bounded number of chunks ahead of
#: the reader); it is woken to read more once half of them were taken.
_READ_AHEAD = 256


class _Reader:
    """One thread reading an :class:`IMapIterator`'s results into
    ``items`` for its timed ``next``: started by the first, ended after the
    last result (or the iteration's exception), or once the iterator is
    collected. It never holds the iterator, only the map behind it
    (``_results``): an iterator dropped while the thread waits for a
    result (which may never come) or for room is collected, and its
    finalizer stops the thread and wakes the map's wait
    (``_MapState.wake``), which ends the map as dropping an iterator
    without a timed ``next`` does: the chunks not started are cancelled,
    the function and input let go."""

    __slots__ = ("cond", "end", "items", "reader_waits", "stopped", "__weakref__")

    def __init__(self, it: IMapIterator[Any]) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.items: collections.deque[Any] = collections.deque()
        #: What ends the results once ``items`` is empty: StopIteration, or
        #: the exception the iteration raised (given once, then
        #: StopIteration, as the chain ends after it).
        self.end: BaseException | None = None
        self.reader_waits = False
        #: The iterator was collected: the thread leaves.
        self.stopped = False
        weakref.finalize(it, self._stop, it._wake).atexit = False
        threading.Thread(target=self._run, args=(it._results,), name="corral-imap-next", daemon=True).start()

    def _stop(self, wake: Callable[[], None]) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        wake()

    def _run(self, results: Iterator[Any]) -> None:
        read = type(results).__next__
        while True:
            with self.cond:
                while len(self.items) >= _READ_AHEAD and not self.stopped:
                    self.reader_waits = True
                    self.cond.wait()
                self.reader_waits = False
                if self.stopped:
                    return
            try:
                value = read(results)
            except BaseException as e:  # StopIteration, the task's exception, CancelledError after terminate()
                with self.cond:
                    self.end = e
                    self.cond.notify_all()
                return
            with self.cond:
                self.items.append(value)
                self.cond.notify_all()
            del value

    def take(self, timeout: float | None) -> Any:
        """The next result (see ``IMapIterator.next``)."""
        with self.cond:
            if not self.items and self.end is None:
                if not self.cond.wait_for(lambda: self.items or self.end is not None, timeout):
                    raise TimeoutError()
            if self.items:
                value = self.items.popleft()
                if self.reader_waits and len(self.items) <= _READ_AHEAD // 2:
                    self.cond.notify_all()
                return value
            end = self.end
            assert end is not None
            if not isinstance(end, StopIteration):
                self.end = StopIteration()
            raise end


def _imap(
    ex: ProcessPoolExecutor, fn: Callable[[Any], T], iterable: Iterable[Any], ordered: bool, chunksize: int | None
) -> IMapIterator[T]:
    """The executor's map (``ordered``) or ``imap_unordered`` as an
    :class:`IMapIterator`."""
    states: list[Any] = []
    results = ex._map(fn, (iterable,), ordered, ex._default_opts, chunksize=chunksize, on_state=states.append)
    it: IMapIterator[T] = IMapIterator.from_iterable((results,))  # type: ignore[assignment]
    it._results = results
    it._wake = states[0].wake
    return it


class Pool:
    """A pool of worker processes (``multiprocessing.Pool``) over
    :class:`corral.ProcessPoolExecutor` (see the module for the
    differences).

    ``processes`` defaults to the CPUs this process may use;
    ``initializer(*initargs)`` runs once in each worker;
    ``maxtasksperchild`` replaces a worker after that many tasks (a chunk
    of a map counts as one); ``context`` is a context of
    :func:`corral.get_context` or of ``multiprocessing`` whose start method
    the workers use (``start_method`` says it directly; the default is
    corral's, "forkserver").
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        start_method: str | None = None,
    ) -> None:
        if processes is not None and (not _is_int(processes) or processes < 1):
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not _is_int(maxtasksperchild) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if start_method is None and context is not None:
            start_method = context.get_start_method()
        if start_method is None:
            start_method = process.chosen_start_method
        self._executor = ProcessPoolExecutor(
            processes,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks_per_child=maxtasksperchild,
            start_method=start_method,
        )
        self._processes = self._executor._max_workers
        # Running only once made (as the stdlib's INIT): a constructor that
        # raised leaves nothing for ``__del__`` to warn about.
        self._state = _RUN

    def __repr__(self) -> str:
        return f"<corral.Pool state={self._state} pool_size={self._processes}>"

    def __del__(self) -> None:
        # As the stdlib's (CPython's test_resource_warning); the executor's
        # own finalizer lets the workers go.
        if getattr(self, "_state", None) == _RUN:
            warnings.warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, stacklevel=2, source=self)

    def __reduce__(self) -> tuple[Any, ...]:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    # -- one call ------------------------------------------------------------

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> T:
        """``func(*args, **kwds)`` in a worker; waits for its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        """Starts ``func(*args, **kwds)`` in a worker; returns its
        :class:`AsyncResult`. ``callback(result)`` or
        ``error_callback(exception)`` runs when it completes."""
        self._check_running()
        fut = self._executor.submit(func, *tuple(args), **dict(kwds or {}))
        return AsyncResult(fut, callback, error_callback)

    # -- maps ------------------------------------------------------------------

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None) -> list[T]:
        """``[func(x) for x in iterable]``, run in the workers; raises the
        first exception in input order."""
        return self._map_list(func, iterable, chunksize)

    def starmap(
        self, func: Callable[..., T], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[T]:
        """``[func(*args) for args in iterable]``, run in the workers."""
        return self._map_list(_Starred(func), iterable, chunksize)

    def _map_list(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None) -> list[T]:
        """The executor's streamed map, gathered into a list: its chunks
        are taken whole (the list keeps every value anyway), not dropped
        from value by value as ``imap`` yields them."""
        self._check_running()
        ex = self._executor
        return list(ex._map(func, (iterable,), True, ex._default_opts, chunksize=chunksize, whole=True))

    def imap(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None) -> IMapIterator[T]:
        """The results of ``func`` over ``iterable`` in order, lazily (the
        input is read a bounded number of chunks ahead); ``next(timeout)``
        as the stdlib's (:class:`IMapIterator`)."""
        self._check_running()
        return _imap(self._executor, func, iterable, True, chunksize)

    def imap_unordered(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None
    ) -> IMapIterator[T]:
        """The results of ``func`` over ``iterable`` as they finish
        (:class:`IMapIterator`)."""
        self._check_running()
        return _imap(self._executor, func, iterable, False, chunksize)

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """``map`` without waiting: a :class:`MapResult` whose ``get()``
        returns the list."""
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[T]:
        """``starmap`` without waiting."""
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def _map_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        star: bool,
        chunksize: int | None,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> MapResult[T]:
        self._check_running()
        # A list, tuple or range is cut as it is (the stdlib reads it
        # without a copy too): a range's chunks travel as ranges.
        items: list[Any] | tuple[Any, ...] | range
        if isinstance(iterable, (list, tuple, range)) and type(iterable) in (list, tuple, range):
            items = iterable
        else:
            items = list(iterable)
        if chunksize is None:
            # The stdlib's rule: about four chunks per worker.
            chunksize, extra = divmod(len(items), self._processes * 4)
            if extra:
                chunksize += 1
        elif chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        chunksize = max(1, chunksize)
        chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        result: MapResult[T] = MapResult(len(chunks), callback, error_callback)
        futures: list[Future[Any]] = []
        try:
            for chunk in chunks:
                futures.append(self._executor.submit(_run_chunk, func, chunk, star))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        for i, fut in enumerate(futures):
            fut.add_done_callback(functools.partial(result._chunk_done, i))
        return result

    # -- life cycle ------------------------------------------------------------

    def close(self) -> None:
        """No more tasks; the workers leave once the submitted ones are done."""
        if self._state == _RUN:
            self._state = _CLOSE
            self._executor.shutdown(wait=False)

    def terminate(self) -> None:
        """Stops at once: cancels the tasks not started, kills the workers
        running the others (their results raise ``CancelledError``), and
        waits for the pool's threads."""
        self._state = _TERMINATE
        self._executor._stop_now()
        self._executor.shutdown(wait=True)

    def join(self) -> None:
        """Waits for the workers to leave, after ``close`` or ``terminate``
        (ValueError before)."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Self:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        # As the stdlib: leaving the block terminates the pool.
        self.terminate()
