"""Async forms of the corral primitives: ``await lock.acquire_async()``,
``async with lock``, ``await event.wait_async()``, the same for semaphores,
without a thread per waiter and across processes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

import _workers  # noqa: F401  (importable in children)
import corral
from _helpers import sleeping_on


def _threads_named(prefix: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix))


def test_many_coroutines_wait_on_a_lock_without_threads() -> None:
    lock = corral.Lock()
    order: list[int] = []
    entered = 0

    async def worker(i: int) -> None:
        nonlocal entered
        entered += 1  # then waits in acquire_async before it yields
        async with lock:
            order.append(i)
            await asyncio.sleep(0.001)

    async def main() -> int:
        before = threading.active_count()
        lock.acquire()
        tasks = [asyncio.ensure_future(worker(i)) for i in range(200)]
        # Every task waits on the lock once it has run its first step.
        await asyncio.wait_for(_until(lambda: entered == 200), 30)
        during = threading.active_count() - before
        lock.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return during

    extra_threads = asyncio.run(main())
    assert sorted(order) == list(range(200))
    assert extra_threads <= 1  # at most the core's one hub thread


def test_acquire_async_times_out_and_semaphore_counts() -> None:
    async def main() -> tuple[bool, bool, int]:
        lock = corral.Lock()
        lock.acquire()
        t0 = time.monotonic()
        got = await lock.acquire_async(timeout=0.1)
        waited = time.monotonic() - t0
        lock.release()
        assert 0.05 < waited < 10  # a generous bound: the machine may be loaded
        sem = corral.Semaphore(2)
        inside = 0
        peak = 0

        async def use() -> None:
            nonlocal inside, peak
            async with sem:
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(*[use() for _ in range(20)])
        return got, await lock.acquire_async(timeout=1), peak

    got, later, peak = asyncio.run(main())
    assert got is False and later is True
    assert peak == 2


def test_event_wait_async_sees_a_set_from_another_thread_even_if_cleared() -> None:
    async def main() -> list[bool]:
        ev = corral.Event()
        assert await ev.wait_async(timeout=0.05) is False
        waiter = asyncio.ensure_future(ev.wait_async(timeout=10))
        await asyncio.sleep(0)  # the waiter's first step runs: it waits (FIFO ready queue)
        assert not waiter.done()

        def set_then_clear() -> None:
            ev.set()
            ev.clear()

        setter = threading.Thread(target=set_then_clear)
        setter.start()
        first = await waiter
        setter.join(10)
        ev.set()
        return [first, await ev.wait_async()]

    assert asyncio.run(main()) == [True, True]


def test_a_lock_released_by_another_process_wakes_the_coroutine(start) -> None:
    lock = corral.Lock()
    lock.acquire()
    go = corral.Event()
    # A Lock may be released by any process: the child releases ours on go.
    p = start(_release_on, lock, go)

    async def main() -> bool:
        waiter = asyncio.ensure_future(lock.acquire_async(timeout=20))
        await asyncio.sleep(0)  # its first attempt fails: it waits (FIFO ready queue)
        assert not waiter.done()
        go.set()
        return await waiter

    assert asyncio.run(main()) is True
    p.join(20)
    lock.release()


def _release_on(lock: corral.Lock, go: corral.Event) -> None:
    if not go.wait(20):
        raise TimeoutError("never told to release")
    lock.release()


async def _until(predicate: Callable[[], bool]) -> None:
    """Yields to the loop until ``predicate()`` (bound it with wait_for)."""
    while not predicate():
        await asyncio.sleep(0.005)


def test_cancelled_waiter_does_not_swallow_the_wake_of_a_blocked_thread() -> None:
    sem = corral.Semaphore(0)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(sem.acquire(timeout=10)))

    async def main() -> None:
        waiter = asyncio.ensure_future(sem.acquire_async())
        await asyncio.sleep(0)  # the waiter's first step runs: it waits (FIFO ready queue)
        t.start()
        # The thread sleeps on the semaphore's futex word in the kernel.
        await asyncio.wait_for(_until(lambda: sleeping_on(sem, tid=t.native_id)), 30)
        waiter.cancel()
        sem.release()
        await asyncio.gather(waiter, return_exceptions=True)  # its cancellation is handled

    asyncio.run(main())
    t.join(10)
    assert got == [True]


def test_only_corral_primitives_can_be_awaited() -> None:
    with pytest.raises(TypeError):
        corral._core.wait_word(threading.Lock())


@pytest.mark.parametrize("lock", [corral.Lock, corral.RLock])
def test_condition_wait_async_is_woken_by_a_notify_from_a_thread(lock) -> None:
    cond = corral.Condition(lock())
    items: list[int] = []

    def producer() -> None:
        for i in range(5):
            time.sleep(0.01)
            with cond:
                items.append(i)
                cond.notify()

    async def consumer() -> list[int]:
        got: list[int] = []
        threading.Thread(target=producer).start()
        while len(got) < 5:
            async with cond:
                assert await cond.wait_for_async(lambda: items, timeout=10)
                got.extend(items)
                items.clear()
        async with cond:
            assert await cond.wait_async(timeout=0.05) is False  # nobody notifies
        return got

    assert asyncio.run(consumer()) == [0, 1, 2, 3, 4]


def test_condition_over_a_foreign_lock_has_no_async_form() -> None:
    cond = corral.Condition(threading.Lock())

    async def main() -> None:
        with cond:
            await cond.wait_async(0.01)

    with pytest.raises(TypeError):
        asyncio.run(main())
