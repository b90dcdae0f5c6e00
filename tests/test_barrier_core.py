"""``corral.Barrier`` over the core's barrier (``sync/barrier.rs``): the
action, a failing action, a party that dies running the action, pickling,
limits, and ``wait_async`` (timeout, cancellation, across processes).

CPython's ``lock_tests.BarrierTests`` run in ``test_sync_conformance``;
the dead waiter case is in ``test_sync_processes``. Every wait has a
timeout; steps between threads and processes are ordered by events and
by ``n_waiting`` (the barrier's own state), never by sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import pickle
import threading
import time
from typing import Any

import pytest

import _workers as w
import corral
from _helpers import wait_until
from _workers import SharedInts

pytestmark = pytest.mark.timeout(120)


def _stuck_action(entered: corral.Event, never: corral.Event) -> None:
    """An action that never ends by itself (a minute at most)."""
    entered.set()
    never.wait(60)


def _failing_action() -> None:
    raise KeyError("from the action")


def _waits(barrier: corral.Barrier, timeout: float = 30) -> threading.Thread:
    """A thread that waits on ``barrier``; its outcome in ``thread.outcome``."""

    def run() -> None:
        try:
            t.outcome = barrier.wait(timeout)  # type: ignore[attr-defined]
        except BaseException as e:
            t.outcome = e  # type: ignore[attr-defined]

    t = threading.Thread(target=run)
    t.start()
    return t


def test_the_action_runs_once_per_round_across_processes(start: Any) -> None:
    ints = SharedInts()
    barrier = corral.Barrier(3, action=functools.partial(ints.add, 0, 1))
    rounds = 5
    children = [start(w.barrier_rounds, barrier, rounds) for _ in range(2)]
    mine = [barrier.wait(timeout=30) for _ in range(rounds)]
    theirs = [p.result(30) for p in children]
    for r in range(rounds):
        assert sorted([mine[r], theirs[0][r], theirs[1][r]]) == [0, 1, 2]
    assert ints.get(0) == rounds


def test_a_failing_action_breaks_the_barrier_and_reaches_the_last_party() -> None:
    barrier = corral.Barrier(2, action=_failing_action)
    t = _waits(barrier)
    assert wait_until(lambda: barrier.n_waiting == 1, 20)
    with pytest.raises(KeyError):
        barrier.wait(10)
    t.join(20)
    assert isinstance(t.outcome, corral.BrokenBarrierError)  # type: ignore[attr-defined]
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken and barrier.n_waiting == 0


def test_a_party_killed_while_running_the_action_breaks_the_barrier(start: Any) -> None:
    entered, never = corral.Event(), corral.Event()
    barrier = corral.Barrier(2, action=functools.partial(_stuck_action, entered, never))
    waiter = _waits(barrier, timeout=60)
    assert wait_until(lambda: barrier.n_waiting == 1, 20)
    releaser = start(w.barrier_wait_outcome, barrier)  # arrives last: runs the action
    assert entered.wait(20), "the child did not run the action"
    t0 = time.monotonic()
    releaser.kill()
    waiter.join(30)
    assert isinstance(waiter.outcome, corral.BrokenBarrierError), waiter.outcome  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 20, "the dead releaser was not noticed before the 60 s timeout"
    assert barrier.broken


def test_a_pickled_barrier_keeps_parties_action_and_timeout() -> None:
    barrier = corral.Barrier(3, action=_failing_action, timeout=0.25)
    copy = pickle.loads(pickle.dumps(barrier))
    assert (copy.parties, copy._action, copy._timeout) == (3, _failing_action, 0.25)
    t = _waits(copy, timeout=30)
    assert wait_until(lambda: barrier.n_waiting == 1, 20), "the copy is the same barrier"
    # The default timeout (0.25 s) of the original breaks it.
    with pytest.raises(corral.BrokenBarrierError):
        barrier.wait()
    t.join(20)
    assert isinstance(t.outcome, corral.BrokenBarrierError)  # type: ignore[attr-defined]
    assert "broken" in repr(copy)


def test_parties_limits() -> None:
    with pytest.raises(ValueError):
        corral.Barrier(0)
    with pytest.raises(ValueError):
        corral.Barrier(513)
    assert corral.Barrier(512).parties == 512


def test_wait_async_passes_with_blocking_waiters_in_other_processes(start: Any) -> None:
    barrier = corral.Barrier(3)
    children = [start(w.barrier_rounds, barrier, 3) for _ in range(2)]

    async def main() -> list[int]:
        return [await barrier.wait_async(timeout=30) for _ in range(3)]

    mine = asyncio.run(main())
    theirs = [p.result(30) for p in children]
    for r in range(3):
        assert sorted([mine[r], theirs[0][r], theirs[1][r]]) == [0, 1, 2]


def test_wait_async_runs_the_action_and_many_coroutines_pass_together() -> None:
    ran: list[int] = []
    barrier = corral.Barrier(20, action=lambda: ran.append(1))

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(barrier.wait_async(30) for _ in range(20))), 60)

    assert sorted(asyncio.run(main())) == list(range(20))
    assert ran == [1]


def test_wait_async_timeout_breaks_and_cancel_withdraws() -> None:
    async def main() -> None:
        barrier = corral.Barrier(2)
        with pytest.raises(corral.BrokenBarrierError):
            await barrier.wait_async(timeout=0.05)
        assert barrier.broken
        barrier.reset()
        task = asyncio.ensure_future(barrier.wait_async(timeout=30))
        for _ in range(2000):
            if barrier.n_waiting == 1:
                break
            await asyncio.sleep(0.005)
        assert barrier.n_waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Withdrawn, not broken: the round needs two new parties.
        assert barrier.n_waiting == 0 and not barrier.broken
        t = _waits(barrier)
        assert await barrier.wait_async(timeout=30) in (0, 1)
        t.join(20)
        assert t.outcome in (0, 1)  # type: ignore[attr-defined]

    asyncio.run(main())
