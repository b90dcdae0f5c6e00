"""``JoinableQueue``: ``multiprocessing.JoinableQueue`` over a corral
:class:`~corral.Queue`, with a shared semaphore and condition. A module of
its own so that a worker, which loads ``queues`` for its channels, does not
load the sync primitives unless a program makes one of these."""

from collections.abc import Iterable
from typing import Any, TypeVar

from .queues import Queue
from .synchronize import Condition, Semaphore

__all__ = ["JoinableQueue"]

T = TypeVar("T")


class JoinableQueue(Queue[T]):
    """A :class:`Queue` with ``task_done`` and ``join``
    (``multiprocessing.JoinableQueue``), across processes: every ``put``
    counts an unfinished task in a shared semaphore, ``task_done`` takes
    one back, and ``join`` waits on a shared condition until none is left."""

    def __init__(self, maxsize: int = 0, *, ring_bytes: int = 4 << 20, arena_bytes: int | None = None) -> None:
        super().__init__(maxsize, ring_bytes=ring_bytes, arena_bytes=arena_bytes)
        self._unfinished = Semaphore(0)
        self._cond = Condition()

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild, args = super().__reduce__()
        return (rebuild, args, (self._unfinished, self._cond))

    def __setstate__(self, state: tuple[Semaphore, Condition]) -> None:
        self._unfinished, self._cond = state

    def _count(self, n: int) -> None:
        """Counts ``n`` more unfinished tasks, before their items can be taken."""
        if n > 0:
            self._unfinished.release(n)

    def _uncount(self, n: int) -> None:
        """Takes back ``n`` tasks counted for items that did not enter the
        queue, waking ``join`` if none is left."""
        if n <= 0:
            return
        with self._cond:
            for _ in range(n):
                self._unfinished.acquire(False)
            if self._unfinished.value == 0:
                self._cond.notify_all()

    def put(self, obj: T, block: bool = True, timeout: float | None = None) -> None:
        """As :meth:`Queue.put`; the item counts as an unfinished task
        until a ``task_done`` for it."""
        self._check_closed()
        # Counted first: a consumer may take the item and call task_done
        # before this returns.
        self._count(1)
        try:
            super().put(obj, block, timeout)
        except BaseException:
            self._uncount(1)
            raise

    def put_many(self, items: Iterable[T]) -> int:
        """As :meth:`Queue.put_many`; each item put is an unfinished task."""
        batch = list(items)
        self._check_closed()
        self._count(len(batch))
        put = 0
        try:
            put = super().put_many(batch)
        finally:
            self._uncount(len(batch) - put)
        return put

    async def put_async(self, obj: T, timeout: float | None = None) -> None:
        """As :meth:`Queue.put_async`; the item is an unfinished task."""
        self._check_closed()
        self._count(1)
        try:
            await super().put_async(obj, timeout)
        except BaseException:
            self._uncount(1)
            raise

    def task_done(self) -> None:
        """A task taken from the queue is finished; ValueError if called
        more times than items were put."""
        with self._cond:
            if not self._unfinished.acquire(False):
                raise ValueError("task_done() called too many times")
            if self._unfinished.value == 0:
                self._cond.notify_all()

    def join(self) -> None:
        """Waits until every item put has had its ``task_done``."""
        with self._cond:
            while self._unfinished.value != 0:
                self._cond.wait()
