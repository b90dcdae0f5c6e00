"""No future of the process pool may end up asleep forever: a result whose
handling in the results thread raises (the handler was already taken off
the task) ends its future with that error, and the threads blocked in
``result()`` wake. Found under load: the result arena's ``used()`` walked
the blocks without the arena lock and raised ``CorruptDataError`` ("no block
at offset ...") for a block a worker was merging; the pump had popped the
task's future and the error handler found nothing to fail, so the DataLoader
slept in ``Future.result()`` with the pool idle (completed=N, outstanding=0,
no handlers). Every wait here is bounded."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any

import pytest

import corral


def _ident(x: int) -> int:
    return x


def _outcomes(futs: list[Any], timeout: float) -> list[Any]:
    """What each future gave to a thread blocked in ``result(timeout)``:
    its value, its exception, or "lost" (the wait timed out)."""
    got: list[Any] = [None] * len(futs)

    def wait(i: int) -> None:
        try:
            got[i] = futs[i].result(timeout)
        except TimeoutError:
            got[i] = "lost"
        except BaseException as e:
            got[i] = e

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(futs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    return got


@pytest.mark.parametrize("where", ["_resolve", "_fail"])
def test_a_task_event_whose_handling_raises_ends_its_future_with_that_error(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with corral.ProcessPoolExecutor(2, retries=2) as pool:
        assert pool.submit(_ident, 0).result(60) == 0  # workers up
        real = getattr(pool, where)
        broken: list[int] = []

        def handle(fut: Any, *args: Any) -> None:
            # Every other task's first handling raises, as the arena walk did.
            if len(broken) < 4 and fut._task % 2 == 0 and fut._task not in broken:
                broken.append(fut._task)
                raise RuntimeError(f"handling task {fut._task} failed")
            real(fut, *args)

        monkeypatch.setattr(pool, where, handle)
        if where == "_resolve":
            futs = [pool.submit(_ident, i) for i in range(12)]
        else:  # TaskLost: a task that kills its worker, retries=0
            futs = [pool.options(retries=0).submit(_exit_now) for _ in range(4)]
        got = _outcomes(futs, 30)
        lost = [f._task for f, g in zip(futs, got, strict=True) if g == "lost"]
        assert not lost, f"futures never woken: tasks {lost} (handling raised for {broken})"
        assert broken, "the injected failure ran"
        for f, g in zip(futs, got, strict=True):
            if f._task in broken:
                assert isinstance(g, RuntimeError) and f"task {f._task}" in str(g)
            elif where == "_resolve":
                assert isinstance(g, int)
            else:
                assert isinstance(g, corral.WorkerLostError)


def _exit_now() -> None:
    import os

    os._exit(5)


class _RaisingWaiter:
    """A ``wait``/``as_completed`` waiter whose notification raises."""

    def add_result(self, f: Any) -> None:
        raise RuntimeError("waiter failed")

    add_exception = add_cancelled = add_result


def test_a_waiter_raising_while_a_future_ends_does_not_lose_the_blocked_threads_wake_up() -> None:
    f: corral.Future[int] = corral.Future()
    f._waiters.append(_RaisingWaiter())
    blocked = threading.Event()
    got: list[Any] = []

    def wait() -> None:
        blocked.set()
        got.append(f.result(120))  # a wake-up lost: it returns only when this runs out

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    assert blocked.wait(30)
    # Until the thread sleeps in result() (its sleeper is recorded).
    for _ in range(3000):
        with f._lock:
            if f._sleepers:
                break
        threading.Event().wait(0.01)
    with pytest.raises(RuntimeError, match="waiter failed"):
        f.set_result(7)
    t.join(20)
    assert not t.is_alive(), "the thread in result() was not woken"
    assert got == [7]


def test_a_result_reported_cancelled_ends_a_future_still_pending_cancelled() -> None:
    # A worker reports "cancelled" for a task cancelled on the board before
    # it began; the pump has taken the future off the pool, so it must end
    # here if its canceller has not ended it yet.
    with corral.ProcessPoolExecutor(1) as pool:
        fut = pool.submit(_ident, 1)
        fut.result(60)
        pending = corral.pool.Future(pool, 0)
        wake: list[Any] = []
        pool._resolve(pending, "cancelled", b"", [], wake)
        assert pending.cancelled()
        with pytest.raises(cf.CancelledError):
            pending.result(0)
