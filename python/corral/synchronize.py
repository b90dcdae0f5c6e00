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

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Callable, TypeVar

from . import _core, _fds


__all__ = ["Barrier", "BoundedSemaphore", "BrokenBarrierError", "Condition", "Event", "Lock", "RLock", "Semaphore"]

from threading import TIMEOUT_MAX, BrokenBarrierError

T = TypeVar("T")


def _lock_timeout(blocking: bool, timeout: float) -> float | None:
    """``threading.Lock.acquire``'s argument rules; None means no limit."""
    if not blocking and timeout != -1:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0 and timeout != -1:
        raise ValueError("timeout value must be a non-negative number")
    if timeout > TIMEOUT_MAX:
        raise OverflowError("timeout value is too large")
    return None if timeout == -1 else float(timeout)


class _Shared:
    """Pickling of a primitive: its descriptor goes with it."""

    _c: Any

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), type(self._c), _fds.export_fd(self._c.fileno())))


def _rebuild(cls: type, core_cls: Any, handle: _fds.FdHandle) -> Any:
    self = cls.__new__(cls)
    self._c = core_cls.from_fd(_fds.import_fd(handle))
    return self


class _LockBase(_Shared):
    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def _at_fork_reinit(self) -> None:
        self._c.reset()

    def __repr__(self) -> str:
        state = "locked" if self._c.locked() else "unlocked"
        return f"<{state} {type(self).__module__}.{type(self).__qualname__} object at {hex(id(self))}>"


class Lock(_LockBase):
    """A primitive lock (``threading.Lock``), shared across processes.

    Any thread may release it. ``acquire`` raises :class:`OwnerDiedError`
    if the process holding it died (the lock is then free again).
    """

    def __init__(self) -> None:
        self._c = _core.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquires the lock; False if ``blocking`` is false and it is
        taken, or the ``timeout`` (seconds) passes."""
        return self._c.acquire(blocking, _lock_timeout(blocking, timeout))

    acquire_lock = acquire

    def release(self) -> None:
        """Releases the lock; RuntimeError if it is not locked."""
        self._c.release()

    release_lock = release

    def locked(self) -> bool:
        """True if the lock is held."""
        return self._c.locked()

    locked_lock = locked


class RLock(_LockBase):
    """A reentrant lock (``threading.RLock``), shared across processes and
    owned by one thread: only the owner may release it."""

    def __init__(self) -> None:
        self._c = _core.RLock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquires the lock (again, if the caller already owns it)."""
        return self._c.acquire(blocking, _lock_timeout(blocking, timeout))

    def release(self) -> None:
        """Releases one level; RuntimeError if the caller does not own it."""
        self._c.release()

    def locked(self) -> bool:
        """True if any thread holds the lock."""
        return self._c.locked()

    def _is_owned(self) -> bool:
        return self._c.is_owned()

    def _recursion_count(self) -> int:
        return self._c.recursion_count()

    def _release_save(self) -> int:
        return self._c.release_all()

    def _acquire_restore(self, state: int) -> None:
        self._c.acquire(True, None, state)

    def __repr__(self) -> str:
        state = "locked" if self._c.locked() else "unlocked"
        return (
            f"<{state} {type(self).__module__}.{type(self).__qualname__} object owner=? "
            f"count={self._c.recursion_count()} at {hex(id(self))}>"
        )


class Condition(_Shared):
    """A condition variable (``threading.Condition``), shared across
    processes. ``lock`` defaults to a new corral ``RLock``; to share the
    condition with other processes it must be a corral ``Lock`` or
    ``RLock`` (any lock works between threads)."""

    def __init__(self, lock: Any = None) -> None:
        if lock is None:
            lock = RLock()
        self._lock = lock
        self._c = _core.Condition()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_condition, (self._lock, _fds.export_fd(self._c.fileno())))

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
            return self._lock._is_owned()
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
        return self._lock._recursion_count()

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


class Semaphore(_Shared):
    """A counting semaphore (``threading.Semaphore``), shared across
    processes. ``value`` may be at most 2**32 - 1."""

    _bounded = False

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        if value >= 1 << 32:
            raise ValueError("semaphore initial value must be < 2**32")
        self._c = _core.Semaphore(value, self._bounded)

    def __repr__(self) -> str:
        return f"<corral.{type(self).__qualname__} at {hex(id(self))}: value={self._c.value}>"

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Takes a permit; False if ``blocking`` is false and none is free,
        or the ``timeout`` passes."""
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        return self._c.acquire(blocking, timeout)

    __enter__ = acquire

    def release(self, n: int = 1) -> None:
        """Adds ``n`` permits, waking up to ``n`` waiters."""
        if n < 1:
            raise ValueError("n must be one or more")
        self._c.release(n)

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    @property
    def _value(self) -> int:
        return self._c.value


class BoundedSemaphore(Semaphore):
    """A semaphore whose ``release`` raises ``ValueError`` past its initial
    value (``threading.BoundedSemaphore``)."""

    _bounded = True

    def __repr__(self) -> str:
        return (
            f"<corral.{type(self).__qualname__} at {hex(id(self))}: "
            f"value={self._c.value}/{self._c.initial}>"
        )


class Event(_Shared):
    """An event flag (``threading.Event``), shared across processes."""

    def __init__(self) -> None:
        self._c = _core.Event()

    def __repr__(self) -> str:
        status = "set" if self._c.is_set() else "unset"
        return f"<corral.{type(self).__qualname__} at {hex(id(self))}: {status}>"

    def is_set(self) -> bool:
        """True if the flag is set."""
        return self._c.is_set()

    isSet = is_set

    def set(self) -> None:
        """Sets the flag, waking every waiter."""
        self._c.set()

    def clear(self) -> None:
        """Clears the flag."""
        self._c.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the flag is set or the timeout passes; returns the flag."""
        return self._c.wait(timeout)

    def _at_fork_reinit(self) -> None:
        pass


# Barrier state, in shared integers (indices).
_STATE, _COUNT = 0, 1
_FILLING, _DRAINING, _RESETTING, _BROKEN = 0, 1, -1, -2


class Barrier(_Shared):
    """A barrier for ``parties`` threads or processes
    (``threading.Barrier``): the same algorithm, its state in shared memory,
    guarded by a shared Condition. ``action`` runs in whichever thread
    arrives last."""

    def __init__(self, parties: int, action: Callable[[], Any] | None = None, timeout: float | None = None) -> None:
        if parties < 1:
            raise ValueError("parties must be > 0")
        self._cond = Condition(Lock())
        self._ints = _core.Counters()
        self._action = action
        self._timeout = timeout
        self._parties = parties

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_barrier,
            (self._cond, _fds.export_fd(self._ints.fileno()), self._action, self._timeout, self._parties),
        )

    def __repr__(self) -> str:
        if self.broken:
            return f"<corral.{type(self).__qualname__} at {hex(id(self))}: broken>"
        return (
            f"<corral.{type(self).__qualname__} at {hex(id(self))}:"
            f" waiters={self.n_waiting}/{self.parties}>"
        )

    @property
    def _state(self) -> int:
        return self._ints.get(_STATE)

    @_state.setter
    def _state(self, v: int) -> None:
        self._ints.set(_STATE, v)

    @property
    def _count(self) -> int:
        return self._ints.get(_COUNT)

    @_count.setter
    def _count(self, v: int) -> None:
        self._ints.set(_COUNT, v)

    def wait(self, timeout: float | None = None) -> int:
        """Waits until ``parties`` callers have called ``wait``; returns an
        index in ``range(parties)``, unique per caller of one round."""
        if timeout is None:
            timeout = self._timeout
        with self._cond:
            self._enter()
            index = self._count
            self._count += 1
            try:
                if index + 1 == self._parties:
                    self._release()
                else:
                    self._wait(timeout)
                return index
            finally:
                self._count -= 1
                self._exit()

    def _enter(self) -> None:
        while self._state in (_DRAINING, _RESETTING):
            self._cond.wait()
        if self._state < 0:
            raise BrokenBarrierError
        assert self._state == _FILLING

    def _release(self) -> None:
        try:
            if self._action:
                self._action()
            self._state = _DRAINING
            self._cond.notify_all()
        except BaseException:
            self._break()
            raise

    def _wait(self, timeout: float | None) -> None:
        if not self._cond.wait_for(lambda: self._state != _FILLING, timeout):
            self._break()
            raise BrokenBarrierError
        if self._state < 0:
            raise BrokenBarrierError
        assert self._state == _DRAINING

    def _exit(self) -> None:
        if self._count == 0:
            if self._state in (_RESETTING, _DRAINING):
                self._state = _FILLING
                self._cond.notify_all()

    def reset(self) -> None:
        """Returns the barrier to its initial state; waiters in the current
        round get BrokenBarrierError."""
        with self._cond:
            if self._count > 0:
                if self._state == _FILLING:
                    self._state = _RESETTING
                elif self._state == _BROKEN:
                    self._state = _RESETTING
            else:
                self._state = _FILLING
            self._cond.notify_all()

    def abort(self) -> None:
        """Breaks the barrier: current and future waiters get
        BrokenBarrierError until ``reset``."""
        with self._cond:
            self._break()

    def _break(self) -> None:
        self._state = _BROKEN
        self._cond.notify_all()

    @property
    def parties(self) -> int:
        """The number of callers needed to pass."""
        return self._parties

    @property
    def n_waiting(self) -> int:
        """Callers waiting now."""
        if self._state == _FILLING:
            return self._count
        return 0

    @property
    def broken(self) -> bool:
        """True if the barrier is broken."""
        return self._state == _BROKEN


def _rebuild_barrier(
    cond: Condition, handle: _fds.FdHandle, action: Any, timeout: float | None, parties: int
) -> Barrier:
    self = Barrier.__new__(Barrier)
    self._cond = cond
    self._ints = _core.Counters.from_fd(_fds.import_fd(handle))
    self._action = action
    self._timeout = timeout
    self._parties = parties
    return self



