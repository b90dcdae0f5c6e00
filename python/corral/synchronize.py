"""Locks, conditions, events, semaphores and barriers that work the same
between threads and between processes, with ``threading``'s API and
semantics.

Each object lives in shared memory (its own small memfd), so it can be
passed to a :class:`corral.Process` at start or sent through a corral Queue
or Pipe, and every copy is the same primitive. Waiting releases the GIL and
sleeps on a futex. A process that dies holding a ``Lock`` or ``RLock`` does
not leave the others waiting for ever: the first waiter to notice gets
:class:`corral.OwnerDiedError` and the lock is free again.
"""

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, cast

from . import _core, _fds
from .aio import wait_for_primitive

__all__ = ["Barrier", "BoundedSemaphore", "BrokenBarrierError", "Condition", "Event", "Lock", "RLock", "Semaphore"]

from threading import BrokenBarrierError

T = TypeVar("T")


def _rebuild_native(cls: type, base: Any, handle: _fds.FdHandle) -> Any:
    return base.__new__(cls, _fd=_fds.import_fd(handle))


def _lock_repr(lock: Any) -> str:
    state = "locked" if lock.locked() else "unlocked"
    return f"<{state} corral.{type(lock).__qualname__} object at {hex(id(lock))}>"


class _AsyncAcquire:
    """``await x.acquire_async(timeout=None)`` and ``async with x:`` for the
    corral locks and semaphores, without blocking the event loop or taking a
    thread (see ``corral.aio``). An ``RLock`` is owned by the thread, so all
    coroutines of one event loop count as its owner."""

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """Acquires without blocking the loop; False if ``timeout`` passes."""
        return await wait_for_primitive(self, lambda: self.acquire(False), timeout)  # type: ignore[attr-defined]

    async def __aenter__(self) -> Any:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()  # type: ignore[attr-defined]


class Lock(_AsyncAcquire, _core.Lock):
    """A primitive lock (``threading.Lock``), shared across processes.

    ``acquire(blocking=True, timeout=-1)``, ``release()``, ``locked()`` and
    ``with lock:`` behave as ``threading.Lock``'s (implemented in Rust, so
    an uncontended pair costs about what the stdlib's does). Any thread may
    release it. ``acquire`` raises :class:`corral.OwnerDiedError` if the
    process holding the lock died (the lock is then free again).
    """

    def __new__(cls) -> Self:
        """A new lock, unlocked."""
        return _core.Lock.__new__(cls)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_native, (type(self), _core.Lock, _fds.export_fd(self.fileno())))

    def __repr__(self) -> str:
        return _lock_repr(self)

    acquire_lock = _core.Lock.acquire
    release_lock = _core.Lock.release
    locked_lock = _core.Lock.locked


class RLock(_AsyncAcquire, _core.RLock):
    """A reentrant lock (``threading.RLock``), shared across processes and
    owned by one thread: only the owner may release it (RuntimeError
    otherwise). A thread or process that dies holding it is detected:
    the waiter that notices gets :class:`corral.OwnerDiedError`."""

    def __new__(cls) -> Self:
        """A new reentrant lock, unlocked."""
        return _core.RLock.__new__(cls)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_native, (type(self), _core.RLock, _fds.export_fd(self.fileno())))

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<{state} corral.RLock object count={self._recursion_count()} at {hex(id(self))}>"


class _LockLike(Protocol):
    """The lock under a ``Condition``: ``threading.Lock``'s protocol (a
    corral ``Lock`` or ``RLock``, or any lock between threads). The private
    methods of ``threading.Condition``'s protocol (``_is_owned``,
    ``_release_save``, ``_acquire_restore``) are used when present."""

    def acquire(self, blocking: bool = ..., timeout: float = ..., /) -> bool: ...
    def release(self) -> None: ...
    def locked(self) -> bool: ...
    def _at_fork_reinit(self) -> None: ...
    def __enter__(self) -> bool: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...


class _OwnedLock(_LockLike, Protocol):
    """A lock that knows its owning thread (``RLock``)."""

    def _is_owned(self) -> bool: ...
    def _recursion_count(self) -> int: ...


class Condition:
    """A condition variable (``threading.Condition``), shared across
    processes. ``lock`` defaults to a new corral ``RLock``; to share the
    condition with other processes it must be a corral ``Lock`` or
    ``RLock`` (any lock works between threads)."""

    def __init__(self, lock: Any = None) -> None:
        if lock is None:
            lock = RLock()
        self._lock: _LockLike = lock
        self._c = _core.Condition()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_condition, (self._lock, _fds.export_fd(self._c.fileno())))

    async def __aenter__(self) -> Self:
        if not isinstance(self._lock, _AsyncAcquire):
            raise TypeError("async with needs a corral Lock or RLock under the condition")
        await self._lock.acquire_async()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: Any) -> None:
        self._lock.__exit__(*args)

    def __repr__(self) -> str:
        return f"<corral.Condition({self._lock}, {self._c.waiters})>"

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquires the underlying lock."""
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        """Releases the underlying lock."""
        self._lock.release()

    # As threading.Condition: use the lock's own protocol when it has one.
    def _is_owned(self) -> bool:
        if hasattr(self._lock, "_is_owned"):
            # The lock has the RLock protocol (checked just above).
            return cast(_OwnedLock, self._lock)._is_owned()
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def _release_save(self) -> Any:
        if hasattr(self._lock, "_release_save"):
            return self._lock._release_save()
        self._lock.release()
        return None

    def _acquire_restore(self, state: Any) -> None:
        if hasattr(self._lock, "_acquire_restore"):
            self._lock._acquire_restore(state)
        else:
            self._lock.acquire()

    def _recursion_count(self) -> int:
        # Only an RLock counts; another lock raises AttributeError here.
        return cast(_OwnedLock, self._lock)._recursion_count()

    def locked(self) -> bool:
        """True if the underlying lock is held."""
        return self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Releases the lock, waits for a notify or the timeout, takes the
        lock back; False if the timeout passed."""
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        slot = self._c.register()
        saved = self._release_save()
        try:
            if timeout is not None and timeout <= 0:
                return not self._c.cancel(slot)
            return self._c.wait(slot, timeout)
        finally:
            self._acquire_restore(saved)

    async def wait_async(self, timeout: float | None = None) -> bool:
        """``wait`` for coroutines: releases the lock, waits for a notify
        (from any thread or process) without blocking the loop or taking a
        thread, takes the lock back with ``acquire_async``. The lock must be
        a corral ``Lock`` or ``RLock``."""
        if not isinstance(self._lock, _AsyncAcquire):
            raise TypeError("wait_async needs a corral Lock or RLock under the condition")
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        slot = self._c.register()
        depth = self._lock._release_save() if hasattr(self._lock, "_release_save") else None
        if depth is None:
            self._lock.release()
        try:
            signaled = await wait_for_primitive(self._c, lambda: self._c.is_signaled(slot), timeout, slot=slot)
            # Completes the wait (SIGNALED), or takes the slot back; a notify
            # that lands meanwhile still counts.
            notified = self._c.wait(slot, 0) if signaled else not self._c.cancel(slot)
        except BaseException:
            self._c.cancel(slot)
            raise
        finally:
            await self._lock.acquire_async()
            for _ in range((depth or 1) - 1):
                self._lock.acquire(False)
        return notified

    async def wait_for_async(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """``wait_for`` for coroutines (see ``wait_async``)."""
        endtime = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if endtime is None else endtime - time.monotonic()
            if left is not None and left <= 0:
                break
            await self.wait_async(left)
            result = predicate()
        return result

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Waits until ``predicate()`` is true or the timeout passes;
        returns the last value of the predicate."""
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wakes up to ``n`` waiters (oldest first); needs the lock."""
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        if n > 0:
            self._c.notify(n)

    def notify_all(self) -> None:
        """Wakes every waiter; needs the lock."""
        self.notify(1 << 30)

    notifyAll = notify_all

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()


def _rebuild_condition(lock: Lock | RLock, handle: _fds.FdHandle) -> Condition:
    self = Condition.__new__(Condition)
    self._lock = lock
    self._c = _core.Condition.from_fd(_fds.import_fd(handle))
    return self


class Semaphore(_AsyncAcquire, _core.Semaphore):
    """A counting semaphore (``threading.Semaphore``), shared across
    processes: ``acquire(blocking=True, timeout=None)``, ``release(n=1)``,
    ``with sem:``. ``value`` may be at most 2**32 - 1."""

    def __new__(cls, value: int = 1) -> Self:
        """A semaphore with ``value`` permits."""
        return _core.Semaphore.__new__(cls, value, False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_native, (type(self), _core.Semaphore, _fds.export_fd(self.fileno())))

    def __repr__(self) -> str:
        return f"<corral.Semaphore at {hex(id(self))}: value={self.value}>"

    @property
    def _value(self) -> int:
        return self.value


class BoundedSemaphore(Semaphore):
    """A semaphore whose ``release`` raises ``ValueError`` past its initial
    value (``threading.BoundedSemaphore``)."""

    def __new__(cls, value: int = 1) -> Self:
        """A bounded semaphore with ``value`` permits."""
        return _core.Semaphore.__new__(cls, value, True)

    def __repr__(self) -> str:
        return f"<corral.BoundedSemaphore at {hex(id(self))}: value={self.value}/{self.initial}>"


class Event(_core.Event):
    """An event flag (``threading.Event``), shared across processes:
    ``is_set``, ``set``, ``clear``, ``wait(timeout=None)``. A waiter
    released by ``set`` returns True even if ``clear`` follows at once."""

    def __new__(cls) -> Self:
        """A new event, not set."""
        return _core.Event.__new__(cls)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_native, (type(self), _core.Event, _fds.export_fd(self.fileno())))

    def __repr__(self) -> str:
        status = "set" if self.is_set() else "unset"
        return f"<corral.Event at {hex(id(self))}: {status}>"

    isSet = _core.Event.is_set

    async def wait_async(self, timeout: float | None = None) -> bool:
        """``wait`` for coroutines: the loop keeps running, no thread is
        taken (see ``corral.aio``). True once set (even if cleared again
        before the coroutine resumes), False if ``timeout`` passes."""
        start = _core.wait_word(self) >> 1  # the generation: +1 per set()
        return await wait_for_primitive(self, lambda: self.is_set() or _core.wait_word(self) >> 1 != start, timeout)

    def _at_fork_reinit(self) -> None:
        pass


#: How often an awaiting ``Barrier.wait_async`` runs the core's check for
#: parties that died (a blocking ``wait`` does it in the core).
_PARTY_CHECK = 0.1


class Barrier(_core.Barrier):
    """A barrier for ``parties`` threads or processes
    (``threading.Barrier``), implemented in the core
    (``sync/barrier.rs``). ``action`` runs in whichever party arrives last,
    before the others are released; if it raises, the barrier breaks. A
    timeout breaks the barrier, and so does a party whose process died
    while waiting (seen within about 0.1 s): the others get
    ``BrokenBarrierError`` instead of waiting for their timeout. At most
    512 parties."""

    _action: Callable[[], Any] | None
    _timeout: float | None

    def __new__(cls, parties: int, action: Callable[[], Any] | None = None, timeout: float | None = None) -> Self:
        """A barrier for ``parties`` threads or processes."""
        return _core.Barrier.__new__(cls, parties)

    def __init__(self, parties: int, action: Callable[[], Any] | None = None, timeout: float | None = None) -> None:
        self._action = action
        self._timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_barrier, (type(self), _fds.export_fd(self.fileno()), self._action, self._timeout))

    def __repr__(self) -> str:
        if self.broken:
            return f"<corral.{type(self).__qualname__} at {hex(id(self))}: broken>"
        return f"<corral.{type(self).__qualname__} at {hex(id(self))}: waiters={self.n_waiting}/{self.parties}>"

    def wait(self, timeout: float | None = None) -> int:  # type: ignore[override]
        """Waits until ``parties`` callers have called ``wait``; returns an
        index in ``range(parties)``, unique per caller of one round.
        ``timeout`` (default: the barrier's) passing breaks the barrier."""
        return _core.Barrier.wait(self, self._timeout if timeout is None else timeout, self._action)

    async def wait_async(self, timeout: float | None = None) -> int:
        """``wait`` for coroutines: the loop keeps running and no thread is
        taken (the core's hub watches the waiter's word, see
        ``corral.aio``). The action, if this party arrives last, runs in the
        coroutine. A cancelled wait leaves the round without breaking it."""
        if timeout is None:
            timeout = self._timeout
        arrived: list[tuple[int, int | None]] = []

        def arrive() -> bool:
            got = self.try_arrive()
            if got is not None:
                arrived.append(got)
            return got is not None

        # As ``wait``: no deadline while the previous round's action runs.
        await wait_for_primitive(self, arrive, None, recheck=_PARTY_CHECK)
        index, slot = arrived[0]
        if slot is None:
            if self._action is not None:
                try:
                    self._action()
                except BaseException:
                    self.fail_round()
                    raise
            self.pass_round()
            return index

        def polled() -> bool:
            return self.poll(slot)

        try:
            if await wait_for_primitive(self, polled, timeout, slot=slot, recheck=_PARTY_CHECK):
                return index
            if not self.expire(slot):
                # The round's action runs: its end decides, as in ``wait``.
                await wait_for_primitive(self, polled, None, slot=slot, recheck=_PARTY_CHECK)
            return index
        except BrokenBarrierError:
            raise  # the slot is free already
        except BaseException:
            self.withdraw(slot)
            raise


def _rebuild_barrier(cls: type, handle: _fds.FdHandle, action: Any, timeout: float | None) -> Barrier:
    self = cast(Barrier, _core.Barrier.__new__(cls, _fd=_fds.import_fd(handle)))
    self._action = action
    self._timeout = timeout
    return self
