"""``corral.Queue`` and ``corral.SimpleQueue``: ``multiprocessing``'s queues
over shared memory.

Differences from ``multiprocessing.Queue`` a user can rely on:

- There is no feeder thread. ``put`` pickles and copies in the caller, so an
  object that cannot be pickled raises right there, and an item is in the
  queue when ``put`` returns. ``join_thread`` and ``cancel_join_thread``
  exist for compatibility and do nothing.
- Large buffers (numpy arrays above 64 KiB) are copied once into shared
  memory; the array ``get`` returns is a view on it, freed when collected.
  An item that is one large ``bytes``, ``bytearray`` or ``memoryview`` is
  copied once into shared memory too, and once out of it by ``get``, which
  returns a real ``bytes`` (``bytearray`` for a ``bytearray``) and frees
  the shared block at once.
  Buffers under 4 KiB travel inside the pickle, so a message may hold any
  number of them; out of band, a message carries up to ``max_buffers``
  (40,958 with the default ``ring_bytes``), and past that the largest stay
  out of band and the rest travel inside the pickle.
- ``get`` raises :class:`corral.ChannelClosed` once the queue is empty and
  every other process that holds it has called ``close()`` or died (the
  caller's own process counts too once it has put: one of its threads may
  still be producing).
- ``maxsize=0`` means bounded by the queue's shared memory (a 4 MiB ring of
  small messages, a 1 GiB arena of large parts, both allocated lazily; under
  an address-space limit, ``ulimit -v``, the default arena is an eighth of
  the room left instead); a ``put`` beyond that waits like a put on a full
  queue. Freed arena memory past 256 MiB into the arena (past 64 MiB after
  a block of more than 64 MiB) goes back to the system.
- Any number of processes may hold a queue over its life, at most 1024 at
  the same time (``ValueError`` past that: from ``Process.start`` in the
  parent for a child started with the queue, before the child runs).
- An item holding a corral object (a Queue, Lock, Pipe end) put by another
  process is loaded by fetching that object from its sender. ``get()``
  without a timeout waits for a stalled sender as long as it lives, and
  fails at once (``ChannelClosed``) if it exited. With a timeout, the fetch
  gets the rest of it (at least 1 s); the message has left the queue by
  then, so when that passes the item is lost and ``get`` raises
  :class:`corral.ItemLostError` (a ``TimeoutError``), not ``queue.Empty``.
"""

import itertools
import os
import queue as _stdlib_queue
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, Self, TypeVar, cast

from . import _core, _fds, _pickle
from .aio import wait_for_primitive

__all__ = ["Queue", "SimpleQueue"]

T = TypeVar("T")

Full = _stdlib_queue.Full
Empty = _stdlib_queue.Empty

#: A message as the core's queue returns it: the in-band pickle stream and
#: the out-of-band buffers, each as bytes or a block of the shared arena.
_Message = tuple[bytes | _core.ShmBlock, list[bytearray | _core.ShmBlock]]

#: How often an awaiting ``get_async``/``put_async`` also re-checks on its own: the end
#: of data (every producer gone) does not always change the queue's signal.
_ASYNC_RECHECK = 0.1


class Queue(Generic[T]):
    """A FIFO queue between threads and processes (``multiprocessing.Queue``).

    ``maxsize`` bounds the number of items (0: bounded only by memory).
    ``ring_bytes`` and ``arena_bytes`` size the shared memory behind it
    (``arena_bytes=None``: 1 GiB, or less under ``ulimit -v``).
    Pass it to a :class:`corral.Process` at start, or send it through
    another queue or pipe.
    """

    def __init__(self, maxsize: int = 0, *, ring_bytes: int = 4 << 20, arena_bytes: int | None = None) -> None:
        if maxsize < 0:
            maxsize = 0
        self._q = _core.SharedQueue(maxsize, ring_bytes, arena_bytes)
        self._max_buffers = self._q.max_buffers  # read once: put is hot
        self._closed = False
        #: An item of a batch that could not be loaded (see get_many).
        self._deferred: BaseException | None = None

    @classmethod
    def _from_core(cls, q: _core.SharedQueue) -> Self:
        self = cls.__new__(cls)
        self._q = q
        self._max_buffers = q.max_buffers
        self._closed = False
        self._deferred = None
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        target = _fds.pickling_for()
        if isinstance(target, _fds.Inheritance):
            # A child started with the queue counts as a holder from its
            # start, not from when it gets round to unpickling it.
            _fds.on_spawn(self._q.add_holder)
            return (_rebuild, (type(self), _fds.export_fd(self._q.fileno())))
        # Through the broker: this process counts as holding the queue for
        # the receiver (the queue is "lent") until the receiver holds it
        # itself, or, for a pool task, until the task is done.
        address, pid, token, slot = self._q.share_lent(target is not None)
        handle = ("broker", address, pid, token)
        if target is not None:
            target.tokens.append(token)  # withdrawn with the task
            return (_rebuild, (type(self), handle))
        q, me = self._q, os.getpid()

        def undo() -> None:  # the pickle was thrown away
            _core.unshare_fd(token)
            q.release_lent(slot, me)

        _fds.note_oneshot(undo)
        return (_rebuild, (type(self), handle, slot))

    def __repr__(self) -> str:
        return f"<corral.{type(self).__name__} maxsize={self._q.maxsize} qsize={self._q.qsize()}>"

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: T, block: bool = True, timeout: float | None = None) -> None:
        """Puts ``obj``, waiting for room if the queue is full.

        Raises ``queue.Full`` if ``block`` is false and there is no room, or
        the ``timeout`` (seconds) passes; the pickling error if ``obj``
        cannot be pickled.
        """
        self._check_closed()
        undo: list[Callable[[], None]] = []
        inband, buffers = _pickle.dumps(obj, self._max_buffers, undo)
        if not undo:  # no corral object of its own: nothing to withdraw
            self._q.put(inband, buffers, block, timeout)
            return
        # Their broker entries are withdrawn if it does not go in (full
        # past the timeout, closed, too large), or they would stay until
        # this process exits, descriptors open.
        _fds.send(undo, self._q.put, inband, buffers, block, timeout)

    def put_nowait(self, obj: T) -> None:
        """``put(obj, block=False)``."""
        self.put(obj, False)

    def put_many(self, items: Iterable[T]) -> int:
        """Puts every item of ``items`` in order, waiting for room as
        needed; returns how many were put. Each item is pickled before any
        is sent, so a bad item raises before the batch enters the queue."""
        self._check_closed()
        limit = self._max_buffers
        messages = [_pickle.dumps(obj, limit) for obj in items]
        return self._q.put_many(messages)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Removes and returns the oldest item.

        Raises ``queue.Empty`` if ``block`` is false and the queue is empty,
        or the ``timeout`` passes; :class:`corral.ChannelClosed` once the
        queue is empty and every other process holding it has closed it or
        died. An item holding a corral object from another process is
        loaded from that process: without a timeout ``get`` waits for it
        while it lives; with one, :class:`corral.ItemLostError` if the
        loading outlasts the timeout (at least 1 s; the item is lost).
        """
        self._check_closed()
        if self._deferred is not None:
            self._raise_deferred()
        if block and timeout is not None:
            # A corral object in the item is fetched from its sender within
            # the caller's timeout too.
            with _fds.fetching_by(time.monotonic() + timeout):
                return self._load(self._q.get(block, timeout))
        return self._load(self._q.get(block, timeout))

    def get_nowait(self) -> T:
        """``get(block=False)``."""
        return self.get(False)

    async def get_async(self, timeout: float | None = None) -> T:
        """``await queue.get_async()``: ``get`` without blocking the event
        loop and without a thread: the core's hub wakes the loop when a
        message arrives. ``queue.Empty`` after ``timeout``; ChannelClosed as
        ``get``."""
        self._check_closed()
        if self._deferred is not None:
            self._raise_deferred()
        got: list[T] = []

        def attempt() -> bool:
            try:
                message = self._q.get(False, None)
            except Empty:
                return False
            got.append(self._load(message))
            return True

        if await wait_for_primitive(self._q, attempt, timeout, recheck=_ASYNC_RECHECK):
            return got[0]
        raise Empty

    async def put_async(self, obj: T, timeout: float | None = None) -> None:
        """``await queue.put_async(obj)``: ``put`` without blocking the
        event loop or taking a thread; ``queue.Full`` after ``timeout``."""
        self._check_closed()
        undo: list[Callable[[], None]] = []
        inband, buffers = _pickle.dumps(obj, self._max_buffers, undo)
        # With corral objects of its own: whether the put returned, recorded
        # in C (see ``_fds.send``), for their withdrawal if it did not.
        went: list[object] = []
        put = itertools.starmap(self._q.put, itertools.repeat((inband, buffers, False, None))) if undo else None

        def attempt() -> bool:
            try:
                if put is None:
                    self._q.put(inband, buffers, False, None)
                else:
                    went.extend(itertools.islice(put, 1))
            except Full:
                return False
            return True

        try:
            if not await wait_for_primitive(self._q, attempt, timeout, room=True, recheck=_ASYNC_RECHECK):
                raise Full
        except BaseException:
            if not went:  # timed out, cancelled, closed: it did not go in
                _fds.withdraw(undo)
            raise

    async def get_many_async(self, max_items: int, timeout: float | None = None) -> list[T]:
        """``await queue.get_many_async(n)``: ``get_many`` without blocking
        the event loop or taking a thread; ``queue.Empty`` if no item came
        within ``timeout``."""
        self._check_closed()
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if self._deferred is not None:
            self._raise_deferred()
        got: list[list[T]] = []

        def attempt() -> bool:
            try:
                raw = self._q.get_many(max_items, False, None)
            except Empty:
                return False
            got.append(self._load_batch(raw))
            return True

        if await wait_for_primitive(self._q, attempt, timeout, recheck=_ASYNC_RECHECK):
            return got[0]
        raise Empty

    #: Older name of ``get_async`` (kept as an alias).
    aget = get_async
    #: Older name of ``put_async`` (kept as an alias).
    aput = put_async

    def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Returns between 1 and ``max_items`` items, waiting (up to
        ``timeout``) only for the first; ``queue.Empty`` if none came.
        Loading the items follows ``get`` (``corral.ItemLostError``). The
        batch is taken from the queue at once: when one of its items cannot
        be loaded (its sender has exited, or stalled past the timeout), the
        others are still returned and that item's error is raised by the
        next ``get``/``get_many``/``get_async`` of this handle."""
        self._check_closed()
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if self._deferred is not None:
            self._raise_deferred()
        if timeout is None:
            return self._load_batch(self._q.get_many(max_items, True, timeout))
        with _fds.fetching_by(time.monotonic() + timeout):
            return self._load_batch(self._q.get_many(max_items, True, timeout))

    def _load(self, message: _Message) -> T:
        """Unpickles one message of this queue."""
        inband, buffers = message
        # What a Queue[T] holds was put as a T (the type is not checked at
        # runtime, as for any generic container).
        return cast(T, _pickle.loads(inband, buffers))

    def _load_batch(self, raw: list[_Message]) -> list[T]:
        """Loads a taken batch; an item that fails is left out and its
        error deferred (raised now if nothing else loaded)."""
        items: list[T] = []
        failed: list[Exception] = []
        for message in raw:
            try:
                items.append(self._load(message))
            except Exception as e:  # Ctrl-C still ends the call
                failed.append(e)
        if failed:
            first = failed[0]
            if len(failed) > 1:
                first.add_note(f"corral: {len(failed) - 1} more item(s) of the same get_many batch could not be loaded")
            if not items:
                raise first
            self._deferred = first
        return items

    def _raise_deferred(self) -> None:
        e, self._deferred = self._deferred, None
        assert e is not None
        raise e

    def qsize(self) -> int:
        """The number of items in the queue now (exact, unlike the stdlib's
        approximation; still stale as soon as it returns)."""
        return self._q.qsize()

    def empty(self) -> bool:
        """True if the queue holds no item now."""
        return self._q.empty()

    def full(self) -> bool:
        """True if the queue holds ``maxsize`` items now."""
        return self._q.full()

    def close(self) -> None:
        """This process will put no more data through this handle. Once
        every producer process has closed (or died), consumers of an empty
        queue get :class:`corral.ChannelClosed`. Further use of this handle
        raises ``ValueError``."""
        if not self._closed:
            self._closed = True
            self._q.close_producer()

    def join_thread(self) -> None:
        """Compatibility: there is no feeder thread to join."""

    def cancel_join_thread(self) -> None:
        """Compatibility: there is no feeder thread to cancel."""


class SimpleQueue(Queue[T]):
    """An unbounded queue with ``get``, ``put``, ``empty`` and ``close``
    (``multiprocessing.SimpleQueue``)."""

    def __init__(self, *, ring_bytes: int = 4 << 20, arena_bytes: int | None = None) -> None:
        super().__init__(0, ring_bytes=ring_bytes, arena_bytes=arena_bytes)

    def put(self, obj: T) -> None:  # type: ignore[override]
        """Puts ``obj``, waiting only if shared memory is exhausted."""
        super().put(obj)

    def get(self) -> T:  # type: ignore[override]
        """Removes and returns the oldest item, waiting for one."""
        return super().get()


def _rebuild(cls: type[Queue[Any]], handle: _fds.FdHandle, lent_slot: int | None = None) -> Queue[Any]:
    q = _core.SharedQueue.from_fd(_fds.import_fd(handle))
    if lent_slot is not None:
        # This process holds the queue now: the sender's lend ends. Only a
        # broker handle is lent: ("broker", address, sender pid, token).
        assert len(handle) == 4
        q.release_lent(lent_slot, handle[2])
    return cls._from_core(q)
