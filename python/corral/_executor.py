"""The executor skeleton the three executors share (``ProcessPoolExecutor``,
``ThreadPoolExecutor``, ``RayExecutor``/``DaskExecutor``).

- :class:`Future`: the one future type, a ``concurrent.futures.Future``
  that can be awaited and killed (``kill`` stops a running task where the
  executor can: see the method).
- :class:`Options`: what ``executor.options(...)`` returns, with the same
  methods on every executor (``submit``, ``map``, ``imap_unordered``).
- :class:`Executor`: the shutdown lock and flag, the open check, the
  context manager, one exit hook for every live executor, and the public
  ``submit``/``map``/``imap_unordered`` signatures. A subclass provides
  ``_submit(fn, args, kwargs, opts)``, ``_map(fn, iterables, ordered, opts,
  timeout=, chunksize=, progress=)``, ``_stop(first, cancel_futures)`` and
  ``_join()``, and ``options(...)``: what differs.
- :class:`FutureStreams`: lazy, bounded ``map``/``imap_unordered`` for the
  executors whose every task is a future (threads, Ray, Dask; the process
  pool streams chunks through its core instead: ``pool._MapState``).

What ``timeout`` means is one thing per executor kind, written in each
``options`` docstring: process pool, seconds from when a worker starts the
task (the core kills the worker); thread pool, seconds from when a thread
takes the task (the core's timer fails the future, the thread runs on);
Ray/Dask, seconds from submission (the engine task is cancelled). In
``map``/``imap_unordered``, ``timeout`` is everywhere the stdlib's: seconds
from the call until each result must be there.
"""

import atexit
import collections
import concurrent.futures as cf
import inspect
import itertools
import os
import queue
import threading
import time
import weakref
from _thread import RLock as _RLock
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import _base
from typing import Any, ParamSpec, Self, TypeVar, overload

from . import _core, _pickle, _progress
from ._state import run_chunk

__all__ = ["Executor", "Future", "FutureStreams", "Options"]

T = TypeVar("T")
P = ParamSpec("P")
# The element types of the iterables given to map.
A1 = TypeVar("A1")
A2 = TypeVar("A2")
A3 = TypeVar("A3")

_PENDING, _RUNNING, _FINISHED = _base.PENDING, _base.RUNNING, _base.FINISHED
_CANCELLED, _CANCELLED_AND_NOTIFIED = _base.CANCELLED, _base.CANCELLED_AND_NOTIFIED
_CANCELLED_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED))
_DONE_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))

#: Every executor not shut down yet (the exit hook shuts them down).
_live: "weakref.WeakSet[Executor]" = weakref.WeakSet()
#: Set by the exit hook: no new tasks anywhere.
_exiting = False


#: The lock under which every corral future of this process changes state
#: (and records its sleepers and callbacks): each future's ``_lock``. One
#: lock, not one per future: a lock is one more object for the garbage
#: collector (an RLock is tracked since CPython 3.10) for every future
#: alive, and with 20,000 futures pending (submit N, then gather) a full
#: collection walks all of them (7-12 ms each). A future holds it for a
#: few bytecodes that make no object and call nothing (a collection, which
#: could run a finalizer that waits for another thread's future, starts
#: inside an allocation on CPython 3.11, and at the next call or backward
#: jump after one on 3.12+), never while it waits, tells a waiter or runs
#: a callback; under the GIL two threads contend for it only when the GIL
#: changes hands inside such a section. (Left: a ``list.append``/``remove``
#: of a second sleeper or callback, a C call without a check of pending
#: work once specialized, and the RLock's own ``__exit__``.)
#:
#: The stdlib's ``wait``/``as_completed`` hold a future's ``_condition``
#: while they allocate (their waiter, sets): so that lock is the future's
#: own, made with the Condition on first use, as the stdlib's is (a
#: finalizer run there blocks only a thread ending that future, as with
#: the stdlib's, not every future of the program). Order: a future's
#: condition, then ``_futures_lock``; a change of state of a future that
#: has a condition takes both, and tells the waiters under the first.
_futures_lock = _RLock()


class _Condition(threading.Condition):
    """A :class:`Future`'s ``_condition``: a Condition around a reentrant
    lock of its own (as the stdlib future's) whose notifications also
    wake the threads in ``result`` / ``exception`` (code written for the
    stdlib's future may change ``_state`` under it and notify it)."""

    def __init__(self, future: "Future[Any]") -> None:
        super().__init__(_RLock())
        self._future = weakref.ref(future)  # no cycle: the future holds this

    def notify(self, n: int = 1) -> None:
        """As Condition's (``notify_all`` calls it); the future's
        sleepers wake and look at its state again."""
        super().notify(n)
        f = self._future()
        if f is not None:
            with _futures_lock:
                sleepers = f._sleepers
                f._sleepers = None
            for s in sleepers or ():
                s.wake()


#: What ``_settle`` returns when no thread is blocked in ``result``.
_NO_SLEEPERS: tuple[_core.Sleeper, ...] = ()


class Future(cf.Future[T]):
    """A ``concurrent.futures.Future`` (it works with ``wait``,
    ``as_completed``, callbacks, ``asyncio.wrap_future``) that can also be
    awaited, and killed."""

    # Why not the stdlib's own state: its ``__init__`` builds a
    # ``threading.Condition`` (a Python object around an RLock) per future,
    # and ``result()`` a second lock per wait, ~4 us of a ~10 us
    # submit+result round trip of a tiny task, and three objects more for
    # the garbage collector per future alive. Here a fresh future has no
    # attribute of its own: it reads its state, result and lists from
    # class defaults until they are set, and every change of ``_state`` is
    # made under the one lock of all futures (``_lock``, the module's
    # ``_futures_lock``). The Condition that ``concurrent.futures.wait`` /
    # ``as_completed`` (and ``cf.Future`` methods a subclass may call) take
    # as ``_condition`` is made on first use (with a lock of its own, see
    # ``_futures_lock``); once it exists every change of state is made
    # under it too, so they see every change in order, as with the
    # stdlib's future. A
    # thread blocked in ``result()``/``exception()`` waits on a lock of its
    # own (``_sleepers``) that the change to a final state releases.
    _state: str = _PENDING
    _result: Any = None
    _exception: BaseException | None = None
    #: The Condition (``_condition``), made on first use, under ``_lock``:
    #: a future without one has no waiter to tell.
    _cond: _Condition | None = None
    #: ``wait``/``as_completed`` waiters (``_waiters``), made on first use
    #: (after the Condition), read and changed under the Condition.
    _waiter_list: list[Any] | None = None
    #: Done callbacks (``_done_callbacks``), made on first use.
    _callbacks: list[Callable[[Any], object]] | None = None
    #: Locks held by threads blocked in ``result``/``exception``; each is
    #: released when the future reaches a final state.
    _sleepers: list[_core.Sleeper] | None = None
    #: The lock of every future (a class attribute: see ``_futures_lock``).
    _lock = _futures_lock

    def __init__(self) -> None:
        pass  # not the stdlib's: nothing to make (see above)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _share_attribute_names(cls)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The stdlib's future cannot be pickled (its lock cannot); nor can
        # this one, which holds no lock: a copy in another process would
        # never end.
        raise TypeError(f"cannot pickle {type(self).__name__!r} object: a future belongs to the process that made it")

    # -- the stdlib future's attributes, made on first use ---------------------

    # Each made outside the lock, then set under it with plain attribute
    # loads and stores: no call there (on CPython 3.12+ an allocation only
    # schedules a collection, which runs at the next call or loop; see
    # ``_futures_lock``).

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            made = _Condition(self)
            with _futures_lock:
                cond = self._cond
                if cond is None:
                    cond = self._cond = made
        return cond

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        self._condition  # first: the waiters are told under it  # noqa: B018
        waiters = self._waiter_list
        if waiters is None:
            made: list[Any] = []
            with _futures_lock:
                waiters = self._waiter_list
                if waiters is None:
                    waiters = self._waiter_list = made
        return waiters

    @property
    def _done_callbacks(self) -> list[Callable[[Any], object]]:
        callbacks = self._callbacks
        if callbacks is None:
            made: list[Callable[[Any], object]] = []
            with _futures_lock:
                callbacks = self._callbacks
                if callbacks is None:
                    callbacks = self._callbacks = made
        return callbacks

    # -- reading ---------------------------------------------------------------

    def __repr__(self) -> str:
        state, exc = self._state, self._exception
        name, at = type(self).__name__, id(self)
        desc = _base._STATE_TO_DESCRIPTION_MAP[state]
        if state == _FINISHED:
            what = f"raised {type(exc).__name__}" if exc is not None else f"returned {type(self._result).__name__}"
            return f"<{name} at {at:#x} state={desc} {what}>"
        return f"<{name} at {at:#x} state={desc}>"

    def cancelled(self) -> bool:
        """True if the future was cancelled."""
        return self._state in _CANCELLED_STATES

    def running(self) -> bool:
        """True while the task runs."""
        return self._state == _RUNNING

    def done(self) -> bool:
        """True if the future was cancelled or finished."""
        return self._state in _DONE_STATES

    def result(self, timeout: float | None = None) -> T:
        """The task's return value (or raises its exception), waiting up
        to ``timeout`` seconds (None: no limit). CancelledError if it was
        cancelled, TimeoutError if it is not done in time."""
        self._wait_finished(timeout)
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:
                del exc, self  # no reference cycle through the traceback
        return self._result  # type: ignore[no-any-return]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception (None if it returned), waiting as
        ``result`` does."""
        self._wait_finished(timeout)
        return self._exception

    def _wait_finished(self, timeout: float | None) -> None:
        """Returns once the future finished; CancelledError if it was
        cancelled, TimeoutError if it did not finish in ``timeout`` s."""
        if self._state != _FINISHED:
            self._wait(timeout)
            if self._state in _CANCELLED_STATES:
                raise cf.CancelledError()
            if self._state != _FINISHED:
                raise TimeoutError()

    def _wait(self, timeout: float | None) -> None:
        """Blocks until the future is done or ``timeout`` (seconds) passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._state in _DONE_STATES:
                return
            # Made before the lock is taken (see ``_futures_lock``).
            sleeper = _core.Sleeper()
            mine = [sleeper]
            with _futures_lock:
                if self._state in _DONE_STATES:
                    return
                if self._sleepers is None:
                    self._sleepers = mine
                else:
                    self._sleepers.append(sleeper)
            woken = False
            try:
                if deadline is None:
                    woken = sleeper.wait()
                else:
                    left = deadline - time.monotonic()
                    if left > 0:
                        woken = sleeper.wait(left)
            finally:
                if not woken:  # timed out or interrupted: no longer waiting
                    self._forget_sleeper(sleeper)
            if not woken:
                return

    def _forget_sleeper(self, sleeper: _core.Sleeper) -> None:
        with _futures_lock:
            if self._sleepers is not None and sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    # -- callbacks -------------------------------------------------------------

    def add_done_callback(self, fn: Callable[[Self], object]) -> None:
        """Calls ``fn(future)`` when the future is done (at once if it is),
        in the order added, in the thread that ends it."""
        mine = [fn]  # made before the lock is taken (see ``_futures_lock``)
        with _futures_lock:
            if self._state not in _DONE_STATES:
                if self._callbacks is None:
                    self._callbacks = mine
                else:
                    self._callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            _base.LOGGER.exception("exception calling callback for %r", self)

    def _invoke_callbacks(self) -> None:
        for callback in self._callbacks or ():
            try:
                callback(self)
            except Exception:
                _base.LOGGER.exception("exception calling callback for %r", self)

    # -- changes of state --------------------------------------------------------

    def _finish(self, ok: bool, value: Any) -> bool:
        """Sets the result (``ok``) or the exception ``value``; False (and
        nothing changes) if the future is already done."""
        sleepers = self._settle(ok, value)
        if sleepers is None:
            return False
        for s in sleepers:
            s.wake()
        return True

    def _lock_state(self) -> "_Condition | None":
        """Takes the locks a change of this future's state needs: its
        Condition's if it has one (its waiters are told under it, as the
        stdlib's), then ``_futures_lock``; returns the Condition (None if
        none). The caller releases ``_futures_lock`` once the state is
        changed, then the Condition."""
        while True:
            cond = self._cond
            if cond is not None:
                cond.acquire()
            _futures_lock.acquire()
            if self._cond is cond:
                return cond
            _futures_lock.release()  # one was made meanwhile (``cond`` was None): again, under it

    def _settle(self, ok: bool, value: Any) -> Sequence[_core.Sleeper] | None:
        """``_finish`` that leaves waking the threads blocked in
        ``result``/``exception`` to the caller: returns their sleepers
        (None if the future was already done; a list when there are any).
        A thread-pool job returns them to its thread, which wakes them once
        it released the GIL."""
        cond = self._lock_state()
        try:
            try:
                if self._state in _DONE_STATES:
                    return None
                if ok:
                    self._result = value
                else:
                    self._exception = value
                self._state = _FINISHED
                taken = self._sleepers
                self._sleepers = None
            finally:
                _futures_lock.release()
            sleepers: Sequence[_core.Sleeper] = taken or _NO_SLEEPERS
            if cond is not None:
                try:
                    for waiter in self._waiter_list or ():
                        if ok:
                            waiter.add_result(self)
                        else:
                            waiter.add_exception(self)
                    cond.notify_all()
                except BaseException:
                    # The future is done: whatever raised, the threads
                    # blocked in result() are woken (their sleepers are taken).
                    for s in sleepers:
                        s.wake()
                    raise
        finally:
            if cond is not None:
                cond.release()
        if self._callbacks is not None:
            return self._after_settle(sleepers)
        return sleepers

    def _after_settle(self, sleepers: Sequence[_core.Sleeper]) -> Sequence[_core.Sleeper]:
        """The end of ``_settle``: runs the callbacks (waking ``sleepers``
        first, then none are left to the caller)."""
        if self._callbacks is not None:
            # The waiters first, as the stdlib notifies them before it runs
            # the callbacks: a slow callback (or one waiting for a waiter)
            # must not hold them, and one raising SystemExit must not lose
            # their wake-up.
            for s in sleepers:
                s.wake()
            sleepers = _NO_SLEEPERS
            self._invoke_callbacks()
        return sleepers

    def set_result(self, result: T) -> None:
        """Sets the return value (for executors; InvalidStateError if the
        future is done)."""
        if not self._finish(True, result):
            raise cf.InvalidStateError(f"{self._state}: {self!r}")

    def set_exception(self, exception: BaseException | None) -> None:
        """Sets the exception (for executors; InvalidStateError if the
        future is done)."""
        if not self._finish(False, exception):
            raise cf.InvalidStateError(f"{self._state}: {self!r}")

    def _start(self) -> bool | None:
        """Before running the task: True (now RUNNING) if it is pending;
        False if it was cancelled (now CANCELLED_AND_NOTIFIED:
        ``wait``/``as_completed`` are told); None in any other state
        (already running, ended: timed out)."""
        cond = self._lock_state()
        try:
            try:
                state = self._state
                if state == _PENDING:
                    self._state = _RUNNING
                    return True
                if state != _CANCELLED:
                    return None
                self._state = _CANCELLED_AND_NOTIFIED
            finally:
                _futures_lock.release()
            for waiter in self._waiter_list or ():
                waiter.add_cancelled(self)
            return False
        finally:
            if cond is not None:
                cond.release()

    def set_running_or_notify_cancel(self) -> bool:
        """As the stdlib's: RUNNING and True if pending; False (waiters
        told) if cancelled; RuntimeError in any other state."""
        started = self._start()
        if started is not None:
            return started
        _base.LOGGER.critical("Future %s in unexpected state: %s", id(self), self._state)
        raise RuntimeError("Future in unexpected state")

    def cancel(self) -> bool:
        """Cancels the future unless it runs or ended; True if it is
        cancelled."""
        cond = self._lock_state()
        try:
            try:
                state = self._state
                if state in (_RUNNING, _FINISHED):
                    return False
                if state in _CANCELLED_STATES:
                    return True
                self._state = _CANCELLED
                taken = self._sleepers
                self._sleepers = None
            finally:
                _futures_lock.release()
            if cond is not None:
                cond.notify_all()
        finally:
            if cond is not None:
                cond.release()
        for s in taken or ():
            s.wake()
        self._invoke_callbacks()
        return True

    # -- corral's extras -----------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        import asyncio  # here: awaited on a loop, so loaded already (a worker never pays for it)

        return asyncio.wrap_future(self).__await__()

    def kill(self, timeout: float | None = 10.0) -> bool:
        """Stops the task even if it is running, where its executor can:
        a process pool kills and replaces the worker running it, and the
        future ends cancelled (this waits up to ``timeout`` seconds for
        that). Elsewhere ``kill`` is ``cancel``: a thread pool cannot stop
        a running function (False, it runs on); the engine executors'
        futures stay pending while the engine runs them, and cancelling one
        cancels the engine's task (``RayExecutor``: ``ray.cancel(force=True)``
        kills its worker; ``DaskExecutor``: a running function runs on).
        True if the future ended cancelled, False if the task already
        ended or runs on."""
        if self.done():
            return False
        if self.cancel():
            return True
        if not self._kill_running():
            return self.cancel() or self.cancelled()
        cf.wait([self], timeout=timeout)
        return self.cancelled()

    def _kill_running(self) -> bool:
        """Asks the executor to stop the running task; False if it cannot."""
        return False


def _share_attribute_names(cls: type) -> None:
    """Puts the names of every attribute a ``cls`` future may get (the
    class defaults it overrides: the annotated names of ``cls`` and its
    bases) in the keys its instances share, before any instance is made.

    CPython (3.11-3.13) keeps an instance's attributes inline, in the
    order of keys shared by every instance of the class, and makes the
    instance a dict of its own when it gets a name not in those keys once
    they are closed: each new instance closes them a little more (one
    slot per instance). A future gets ``_result``/``_state`` only when it
    ends, so after a burst of submits (2,000 futures before the first
    result), every future of the program got a dict when it ended: one
    more object for the garbage collector per future alive (3 instead of
    2, measured with ``gc.get_objects``) and a copy of its attributes.
    Setting the names once on a throw-away instance (the class defaults
    stay what a new instance reads) puts them in the keys for good.

    Only an optimisation, so it never runs user code: a class with a
    ``__del__`` (it would run on the half-made instance) is left as it is,
    and a name the class defines as a descriptor with a setter (a
    property) is not set."""
    if any("__del__" in vars(klass) for klass in cls.__mro__[:-1]):
        return
    names: list[str] = []
    for klass in reversed(cls.__mro__[:-1]):
        names += [n for n in getattr(klass, "__annotations__", {}) if n not in names]
    names = [n for n in names if not hasattr(type(inspect.getattr_static(cls, n, None)), "__set__")]
    try:
        probe: object = object.__new__(cls)
    except TypeError:  # an abstract subclass: its concrete subclasses get theirs
        return
    for name in names:
        try:
            object.__setattr__(probe, name, None)
        except AttributeError:  # a read-only descriptor: not an instance attribute
            pass


_share_attribute_names(Future)


def cancel_now(fut: cf.Future) -> bool:  # type: ignore[type-arg]
    """Cancels a future no worker runs and tells its waiters (``wait``,
    ``as_completed``) at once. The plain future's ``cancel``, not a
    subclass' (which asks its executor first)."""
    cancelled = Future.cancel(fut) if isinstance(fut, Future) else cf.Future.cancel(fut)
    if cancelled:
        fut.set_running_or_notify_cancel()
        return True
    return fut.cancelled()


def settle(fut: cf.Future, ok: bool, value: Any) -> None:  # type: ignore[type-arg]
    """Sets a result (``ok``) or an exception, unless the future already
    ended (cancelled or timed out meanwhile)."""
    if isinstance(fut, Future):
        fut._finish(ok, value)
        return
    try:
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except cf.InvalidStateError:
        pass


def check_timeout(timeout: float | None, most: float | None = None) -> None:
    """Raises TypeError unless ``timeout`` is None or a number of seconds,
    ValueError unless it is in (0, most]."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if most is None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
    elif not 0 < timeout <= most:
        raise ValueError(f"timeout must be > 0 and at most {most:.0f} seconds")


#: This process's pid, kept by a fork handler: every submit checks that the
#: executor is this process's, and ``os.getpid()`` is a system call (glibc
#: does not cache it).
_this_pid = [os.getpid()]


def _after_fork() -> None:
    _this_pid[0] = os.getpid()
    # Another thread of the parent may have held it: the child has only
    # this thread.
    _futures_lock._at_fork_reinit()  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=_after_fork)


class _Mapping:
    """``map`` and ``imap_unordered``, typed once for the executors and
    their :class:`Options`: each supplies ``_map_with(fn, iterables,
    ordered, *, timeout, chunksize, progress)``."""

    __slots__ = ()
    _map_with: Callable[..., Iterator[Any]]

    # map's overloads check each iterable's elements against fn's
    # parameters (0, 1, 2, 3, then 4 or more iterables, unchecked).
    # Together they accept every call the stdlib's ``map`` accepts, but
    # mypy wants one overload that accepts them all ([override]), and that
    # one would let ``map(square, ["x"])`` through.
    @overload
    def map(
        self,
        fn: Callable[[], T],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A1, A2], T],
        iterable: Iterable[A1],
        iterable2: Iterable[A2],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A1, A2, A3], T],
        iterable: Iterable[A1],
        iterable2: Iterable[A2],
        iterable3: Iterable[A3],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        iterable2: Iterable[Any],
        iterable3: Iterable[Any],
        iterable4: Iterable[Any],
        /,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
    ) -> Iterator[T]: ...
    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
    ) -> Iterator[T]:
        """Results of ``fn`` over the zipped ``iterables``, in order. The
        input is read lazily, a bounded number of tasks ahead of the
        results (at ``shutdown`` the rest of an input of known length is
        submitted, so results can still be read after the ``with`` block).
        ``timeout``: seconds from this call; a later result raises
        TimeoutError. ``chunksize``: items per task where the executor
        chunks (None: sized from the measured time per item; the thread pool
        ignores it). ``progress``: True, a dict of tqdm options or a tqdm
        class shows a bar counting items (``total``: ``len()`` of the input)."""
        return self._map_with(fn, iterables, True, timeout=timeout, chunksize=chunksize, progress=progress)

    def imap_unordered(
        self,
        fn: Callable[[A1], T],
        iterable: Iterable[A1],
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
    ) -> Iterator[T]:
        """Results of ``fn`` over ``iterable`` as they finish (the keywords
        of ``map``)."""
        return self._map_with(fn, (iterable,), False, timeout=timeout, chunksize=chunksize, progress=progress)


class Executor(_Mapping, cf.Executor):  # type: ignore[misc]  # map: typed by _Mapping, not as the stdlib
    """The skeleton of corral's executors (see the module)."""

    _max_workers: int
    #: The options of a plain ``submit``/``map``.
    _default_opts: Any = None

    def _open(self) -> None:
        """Called by the subclass' ``__init__`` once it can run tasks."""
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        self._owner_pid = _this_pid[0]
        _live.add(self)

    # -- what differs (subclasses) ---------------------------------------------

    #: ``_submit(fn, args, kwargs, opts)``: one task, after the open check.
    _submit: Callable[..., Future[Any]]
    #: ``_map(fn, iterables, ordered, opts, *, timeout, chunksize,
    #: progress)``: a lazy stream of results (see ``map``).
    _map: Callable[..., Iterator[Any]]

    def _check_usable(self) -> None:
        """Raises if the executor cannot take tasks for a reason of its own
        (broken, inherited by a forked child)."""

    def _owned(self) -> bool:
        """False in a process that cannot act on this executor (a forked
        child of its owner, whose threads do not exist there): ``shutdown``
        then does nothing."""
        return self._owner_pid == _this_pid[0]

    def _stop(self, first: bool, cancel_futures: bool) -> None:
        """Stops taking tasks (``first``: the first ``shutdown``); with
        ``cancel_futures`` cancels those not started."""

    def _join(self) -> None:
        """Waits until every submitted task has ended and lets go of the
        executor's threads, workers or engine."""

    def _interrupted(self) -> None:
        """A ``with`` block ends by Ctrl-C or SystemExit (before ``shutdown``)."""

    # -- the same everywhere ----------------------------------------------------

    def _check_open(self) -> None:
        """Raises unless new tasks are accepted (call it under ``_shutdown_lock``)."""
        self._check_usable()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedules ``fn(*args, **kwargs)``; returns its :class:`Future`."""
        return self._submit(fn, args, kwargs, self._default_opts)

    def _map_with(
        self, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], ordered: bool, **kw: Any
    ) -> Iterator[Any]:
        return self._map(fn, iterables, ordered, self._default_opts, **kw)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As the stdlib: no new tasks; ``cancel_futures`` cancels the tasks
        not started; ``wait`` blocks until the others are done and the
        executor's threads, workers or engine are let go."""
        if not self._owned():
            return
        with self._shutdown_lock:
            first = not self._shutdown
            self._shutdown = True
        self._stop(first, cancel_futures)
        if wait:
            self._join()
            _live.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            self._interrupted()
        self.shutdown(wait=True)


class Options(_Mapping):
    """Per-task options bound to an executor (``executor.options(...)``):
    the executor's ``submit``, ``map`` and ``imap_unordered`` with them."""

    __slots__ = ("_executor", "_opts")

    def __init__(self, executor: Executor, opts: Any) -> None:
        self._executor, self._opts = executor, opts

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """``executor.submit`` with these options."""
        return self._executor._submit(fn, args, kwargs, self._opts)

    def _map_with(
        self, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], ordered: bool, **kw: Any
    ) -> Iterator[Any]:
        return self._executor._map(fn, iterables, ordered, self._opts, **kw)


def _exit_all() -> None:
    # Before the interpreter finalizes, submitted tasks finish and the
    # executors' threads and workers are let go. An atexit hook, as the
    # process pool always had (not threading's, which the stdlib's pools
    # use): it runs once the non-daemon threads have ended, so a thread that
    # outlives the main thread can still submit and get its results.
    global _exiting
    _exiting = True
    for ex in list(_live):
        try:
            ex.shutdown(wait=True)
        except Exception:
            pass


atexit.register(_exit_all)


# -- lazy, bounded streams of futures ------------------------------------------


class _Stream:
    """The futures one ``map``/``imap_unordered`` call has in flight: at
    most ``4 x max_workers`` while iterated, all the rest at ``shutdown``.

    Work given to ``map`` is done unless it is cancelled: the first window
    is submitted by the call itself, and a map whose iterator is dropped
    before it is read (``pool.map(upload, files)`` for the side effects)
    runs its whole input, window by window. At ``shutdown``, an input of
    known length is submitted in full; an input of unknown length (it may be
    endless) is read no further, and a consumer that reads past what ran
    gets a ``RuntimeError`` there."""

    def __init__(
        self, pool: "FutureStreams", fn: Callable[..., Any], items: Iterator[Any], ordered: bool, opts: Any
    ) -> None:
        self.pool, self.fn, self.items, self.ordered, self.opts = pool, fn, items, ordered, opts
        self.window = 4 * pool._max_workers
        self.pending: collections.deque[Future[Any]] = collections.deque()  # ordered
        self.running: set[Future[Any]] = set()  # unordered
        self.finished: queue.SimpleQueue[cf.Future[Any]] = queue.SimpleQueue()
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
        new: list[Future[Any]] = []
        with self.lock:
            while not self.exhausted and not self.cut and (everything or self._size() < self.window):
                try:
                    args = next(self.items)
                except StopIteration:
                    self.exhausted = True
                    break
                f = self.pool._enqueue(self.fn, args, {}, self.opts)
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

    def _orphan_done(self, f: cf.Future[Any]) -> None:
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
                if not self.pool._shutdown:
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

    def next(self, deadline: float | None) -> cf.Future[Any] | None:
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
            self.pool._drop(f)


def run_timed_chunk(fn: Callable[..., Any], chunk: list[Any]) -> tuple[list[Any], bytes | None, int]:
    """Runs where the engine runs a task: ``fn(*args)`` for each item of a
    chunk; returns the results before any exception, the packed
    exception, and the nanoseconds it took."""
    t0 = time.perf_counter_ns()
    values, packed = run_chunk(fn, (True, chunk))
    return values, packed, time.perf_counter_ns() - t0


def run_local_chunk(fn: Callable[..., Any], chunk: list[Any]) -> tuple[list[Any], BaseException | None, int]:
    """``run_timed_chunk`` for a chunk run in this process (a thread
    pool's): the exception comes back as the object raised, with its
    traceback, as the stdlib's ``map`` raises it."""
    t0 = time.perf_counter_ns()
    out: list[Any] = []
    try:
        # list.extend keeps what was appended before an exception.
        out.extend(itertools.starmap(fn, chunk))
    except BaseException as e:
        return out, e, time.perf_counter_ns() - t0
    return out, None, time.perf_counter_ns() - t0


class FutureStreams(Executor):
    """An executor whose every task is one :class:`Future` from
    ``_enqueue(fn, args, kwargs, opts)`` (no open check there): lazy,
    bounded ``map``/``imap_unordered`` over those futures, one per item, or
    one per chunk of items when ``_chunks`` (sized from the measured time
    per item unless ``chunksize`` is given)."""

    #: One task per chunk of items, not per item (the engine executors and
    #: the thread pool).
    _chunks = False

    def _drop(self, fut: Future[Any]) -> None:
        """Ends ``fut``, a task of a map whose consumer is gone (it raised,
        or the map was closed): cancelled (an engine may let its task run
        on: ``RayExecutor``)."""
        fut.cancel()

    #: How a chunk runs: ``run_timed_chunk`` where the engine runs it
    #: (the exception travels packed); the thread pool runs chunks in this
    #: process and keeps the exception object itself.
    _chunk_runner: Callable[..., tuple[list[Any], Any, int]] = staticmethod(run_timed_chunk)
    #: Most items in a chunk the sizer makes (a ``chunksize`` given is
    #: used as given): with ``4 x max_workers`` chunks in flight, the items
    #: read ahead of the consumer are at most ``4 x max_workers x cap``.
    _chunk_cap = 1 << 16

    def _open(self) -> None:
        super()._open()
        self._streams: weakref.WeakSet[_Stream] = weakref.WeakSet()
        #: Streams whose iterator was dropped unread, held until done.
        self._orphan_streams: set[_Stream] = set()

    #: ``_enqueue(fn, args, kwargs, opts)``: one task as a future (each
    #: subclass defines it; ``_submit`` has done the open check).
    _enqueue: Callable[..., Future[Any]]

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Any) -> Future[Any]:
        with self._shutdown_lock:
            self._check_open()
            return self._enqueue(fn, args, kwargs, opts)

    def _fill_streams(self) -> None:
        """At shutdown: submits the rest of every stream whose input is
        finite or that nobody reads; stops reading the others."""
        for st in list(self._streams) + list(self._orphan_streams):
            if st.sized or st.orphaned:
                st.fill(everything=True)
            else:
                st.cut = True

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        opts: Any,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
    ) -> Iterator[Any]:
        total = _progress.total_of(iterables)
        items: Iterator[Any] = zip(*iterables, strict=False)  # the stdlib map stops at the shortest
        if not self._chunks:
            bar = _progress.bar(progress, total)
            return self._stream(fn, items, ordered, opts, timeout, bar, total is not None)
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        sizer = _core.ChunkSizer() if chunksize is None else None
        chunks = _chunked(fn, items, sizer, chunksize, self._chunk_cap)
        results = self._stream(type(self)._chunk_runner, chunks, ordered, opts, timeout, None, total is not None)
        return _flatten(results, sizer, _progress.bar(progress, total))

    def _stream(
        self,
        fn: Callable[..., Any],
        items: Iterator[Any],
        ordered: bool,
        opts: Any,
        timeout: float | None,
        bar: Any,
        sized: bool,
    ) -> Generator[Any, None, None]:
        with self._shutdown_lock:
            self._check_open()
            st = _Stream(self, fn, items, ordered, opts)
            st.sized = sized
            self._streams.add(st)
        deadline = None if timeout is None else time.monotonic() + timeout
        it = self._iterate(st, deadline, bar)
        # Dropped before its first item: the work is done anyway.
        weakref.finalize(it, st.orphan).atexit = False
        st.fill()
        return it

    def _iterate(self, st: _Stream, deadline: float | None, bar: Any) -> Generator[Any, None, None]:
        st.started = True
        try:
            while True:
                f = st.next(deadline)
                if f is None:
                    return
                # Neither the future nor its result stays referenced here
                # while the consumer holds the result (the stdlib's map
                # does not keep what it yielded either).
                try:
                    box = [f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))]
                except BaseException:
                    f.cancel()  # as the stdlib's map: the awaited task too, if it has not started
                    raise
                del f
                if bar is not None:
                    bar.update(1)
                yield box.pop()
        finally:
            self._streams.discard(st)
            st.abandon()
            if bar is not None:
                bar.close()


def _chunked(
    fn: Callable[..., Any], items: Iterator[Any], sizer: Any, chunksize: int | None, cap: int
) -> Iterator[tuple[Any, list[Any]]]:
    while True:
        chunk = list(itertools.islice(items, min(sizer.next(), cap) if sizer is not None else chunksize))
        if not chunk:
            return
        yield (fn, chunk)


def _flatten(results: Generator[Any, None, None], sizer: Any, bar: Any) -> Iterator[Any]:
    try:
        for values, packed, busy_ns in results:
            if sizer is not None:
                sizer.observe(max(1, len(values)), busy_ns)
            if bar is not None:
                bar.update(len(values))
            # Each result is let go once yielded: the chunk's list (also
            # held by its future until the next chunk) empties as it goes.
            values.reverse()
            pop = values.pop
            for _ in range(len(values)):
                yield pop()
            if isinstance(packed, BaseException):
                raise packed
            if packed is not None:
                raise _pickle.unpack_exception(packed)
    finally:
        # The stream ends now (its tasks not started are cancelled), not
        # when the traceback of an exception raised here lets go of it.
        results.close()
        if bar is not None:
            bar.close()
