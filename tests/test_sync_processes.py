"""corral's synchronization primitives used across real processes.

``test_sync_conformance`` runs CPython's ``lock_tests`` against them, in
threads of one process. Here the same objects are shared with
``corral.Process`` children (spawn), passed at start or through a Queue,
and each test checks a cross-process guarantee: mutual exclusion, wake-ups,
permits, barrier indices, ownership, and what happens when a process dies
holding a lock.

Shared state between the processes lives in ``_workers.SharedInts``
(``corral._core.Counters``). Every blocking call has a timeout. Where a
test must tell a wake-up from a timeout, the child's own timeout is longer
than the time the parent waits for its result, so a missed wake-up fails
the test (TimeoutError) instead of passing late. Nothing here asserts speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import _workers as w
import corral
from _helpers import sleeping_on, wait_until
from _workers import SharedInts

# -- 1. mutual exclusion -----------------------------------------------------------

N = 3000

# name -> (factory, how many times each increment acquires it)
GUARDS: dict[str, tuple[Callable[[], Any], int]] = {
    "Lock": (corral.Lock, 1),
    "RLock-acquired-twice": (corral.RLock, 2),
    "Condition-of-a-Lock": (lambda: corral.Condition(corral.Lock()), 1),
    "Condition-of-its-RLock-acquired-twice": (corral.Condition, 2),
}


@pytest.mark.parametrize("guard", list(GUARDS))
def test_non_atomic_increments_by_two_children_and_the_parent_lose_no_update(start: Any, guard: str) -> None:
    make, depth = GUARDS[guard]
    lock, ints, go = make(), SharedInts(), corral.Event()
    children = [start(w.locked_increments, lock, ints, N, depth, go) for _ in range(2)]
    # Both children ready, then all three processes increment at once.
    assert wait_until(lambda: ints.get(1) == 2, 20), "children did not start"
    go.set()
    w.locked_increments(lock, ints, N, depth)
    assert [p.result(30) for p in children] == [N, N]
    assert ints.get(0) == 3 * N
    assert not lock.locked()


# -- 2. every primitive passed at start and through a queue --------------------------

KINDS = ["Lock", "RLock", "Semaphore", "Event", "Condition", "Barrier"]


def _prepared(kind: str) -> Any:
    """The primitive, in the state ``_workers.exercise_primitive`` expects."""
    if kind == "Lock":
        lock = corral.Lock()
        assert lock.acquire(False)
        return lock
    if kind == "RLock":
        rlock = corral.RLock()
        assert rlock.acquire(False)
        return rlock
    if kind == "Semaphore":
        sem = corral.Semaphore(2)
        assert sem.acquire(False)
        return sem
    if kind == "Event":
        ev = corral.Event()
        ev.set()
        return ev
    if kind == "Condition":
        return corral.Condition()
    if kind == "Barrier":
        return corral.Barrier(2)
    raise ValueError(kind)


def _notify_until_done(cond: corral.Condition, p: corral.Process, timeout: float) -> None:
    """Notifies ``cond`` again and again until ``p`` ends (its wait may
    start at any time; a notify with no waiter is lost)."""
    deadline = time.monotonic() + timeout
    while p.is_alive() and time.monotonic() < deadline:
        assert cond.acquire(timeout=10)
        try:
            cond.notify_all()
        finally:
            cond.release()
        p.join(0.05)


def _check_child_used(kind: str, obj: Any, p: corral.Process) -> None:
    """The parent's side: completes the exchange and checks that the child
    acted on the very same primitive."""
    if kind == "Lock":
        # Child: saw it locked, could not take it, released the parent's
        # hold, took it and exited holding it.
        assert p.result(20) == (True, False, True)
        assert obj.locked()
        obj.release()
        assert obj.acquire(False)
        obj.release()
    elif kind == "RLock":
        # Child: locked, not owned by it, not acquirable, not releasable.
        assert p.result(20) == (True, False, False, "RuntimeError")
        assert obj._is_owned()
        obj.release()
        assert not obj.locked()
    elif kind == "Semaphore":
        # Child: took the last permit, found none, released three.
        assert p.result(20) == (True, False)
        assert [obj.acquire(False) for _ in range(4)] == [True, True, True, False]
    elif kind == "Event":
        # Child: saw it set, cleared it.
        assert p.result(20) is True
        assert not obj.is_set()
    elif kind == "Condition":
        _notify_until_done(obj, p, 15)
        assert p.result(5) is True  # notified, not timed out
    elif kind == "Barrier":
        mine = obj.wait(timeout=20)
        assert {mine, p.result(20)} == {0, 1}
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_primitive_passed_to_a_child_at_start_is_the_same_primitive(start: Any, kind: str) -> None:
    obj = _prepared(kind)
    p = start(w.exercise_primitive, kind, obj)
    _check_child_used(kind, obj, p)


@pytest.mark.parametrize("kind", KINDS)
def test_primitive_sent_through_a_queue_to_a_running_child_is_the_same_primitive(start: Any, kind: str) -> None:
    obj = _prepared(kind)
    q = corral.Queue()
    p = start(w.receive_and_exercise, q, kind)
    # The child runs and waits in q.get when the item arrives.
    assert wait_until(lambda: sleeping_on(q._q, pid=p.pid), 20), "the child never waited on the queue"
    q.put(obj)
    _check_child_used(kind, obj, p)


# -- 3. events -------------------------------------------------------------------------


def test_event_ping_pong_with_a_child_completes_100_round_trips(start: Any) -> None:
    n = 100
    ping, pong = corral.Event(), corral.Event()
    p = start(w.event_pong, ping, pong, n)
    for i in range(n):
        ping.set()
        assert pong.wait(10), f"no pong {i}"
        pong.clear()
    assert p.result(10) == n
    assert not ping.is_set() and not pong.is_set()


# -- 4. semaphores -----------------------------------------------------------------------


def test_semaphore_of_two_never_lets_more_than_two_of_four_children_in(start: Any) -> None:
    sem, ints, go = corral.Semaphore(2), SharedInts(), corral.Event()
    children = [start(w.semaphore_occupancy, sem, ints, go, 5, 0.02) for _ in range(4)]
    assert wait_until(lambda: ints.get(1) == 4, 20), "children did not start"
    go.set()
    most = [p.result(30) for p in children]
    assert all(1 <= m <= 2 for m in most), most
    assert ints.get(0) == 0
    # Every permit came back, no more.
    assert [sem.acquire(False) for _ in range(3)] == [True, True, False]


def test_bounded_semaphore_released_too_often_in_a_child_raises_value_error_there(start: Any) -> None:
    sem = corral.BoundedSemaphore(2)
    p = start(w.over_release, sem)
    assert p.result(20) == "ValueError"
    # The refused release added nothing.
    assert [sem.acquire(False) for _ in range(3)] == [True, True, False]


# -- 5. conditions -------------------------------------------------------------------------


def test_condition_wait_for_in_a_child_returns_true_when_the_parent_sets_and_notifies(start: Any) -> None:
    cond, ints = corral.Condition(), SharedInts()
    # The child's wait_for would time out after 30 s: longer than we wait
    # for its result, so only the notify can make this pass.
    p = start(w.condition_wait_for_counter, cond, ints, 5, 30)
    assert wait_until(lambda: ints.get(1) == 1, 20), "child did not start waiting"
    # The child counted itself holding the lock; we get the lock once its
    # wait has released it, so it is registered as a waiter by then.
    assert cond.acquire(timeout=10)
    try:
        ints.set(0, 5)
        cond.notify_all()
    finally:
        cond.release()
    assert p.result(15) is True


def test_condition_notify_one_wakes_exactly_the_oldest_of_three_waiting_children(start: Any) -> None:
    cond, ints = corral.Condition(corral.Lock()), SharedInts()
    children = [start(w.condition_wait_once, cond, ints) for _ in range(3)]
    assert wait_until(lambda: ints.get(1) == 3, 20), "children did not all wait"
    assert cond.acquire(timeout=10)  # every child has released it in wait
    try:
        cond.notify(1)
    finally:
        cond.release()
    assert wait_until(lambda: ints.get(2) == 1, 10), "notify(1) woke no one"
    assert wait_until(lambda: sum(p.is_alive() for p in children) == 2, 10)
    # notify(1) signalled one slot: the two others still wait in theirs.
    assert cond._c.waiters == 2
    assert ints.get(2) == 1
    still_waiting = [p for p in children if p.is_alive()]
    assert len(still_waiting) == 2
    (woken,) = [p for p in children if not p.is_alive()]
    # (arrival order, notified): the first to wait is the one woken.
    assert woken.result(5) == (1, True)

    assert cond.acquire(timeout=10)
    try:
        cond.notify_all()
    finally:
        cond.release()
    assert wait_until(lambda: ints.get(2) == 3, 10), "notify_all did not wake the others"
    assert sorted(p.result(10) for p in still_waiting) == [(2, True), (3, True)]


def test_condition_notify_one_wakes_a_live_waiter_when_an_older_waiter_was_killed(start: Any) -> None:
    # A process killed inside Condition.wait leaves its slot behind; the
    # notification must go to a waiter that can still wake up.
    cond, ints = corral.Condition(corral.Lock()), SharedInts()
    dead = start(w.condition_wait_once, cond, ints)
    assert wait_until(lambda: ints.get(1) == 1, 20), "first child did not wait"
    assert cond.acquire(timeout=10)  # it has released the lock: it is waiting
    cond.release()
    dead.kill()
    dead.join(10)
    assert dead.exitcode == -9
    live = start(w.condition_wait_once, cond, ints)
    assert wait_until(lambda: ints.get(1) == 2, 20), "second child did not wait"
    assert cond.acquire(timeout=10)  # the live child is registered by now
    try:
        cond.notify(1)
    finally:
        cond.release()
    assert wait_until(lambda: ints.get(2) == 1, 5), "notify(1) went to the dead waiter; the live one still waits"
    assert live.result(10) == (2, True)


# -- 6. barriers ------------------------------------------------------------------------------


def test_barrier_of_three_children_gives_each_a_distinct_index_every_round(start: Any) -> None:
    rounds = 5
    barrier = corral.Barrier(3)
    children = [start(w.barrier_rounds, barrier, rounds) for _ in range(3)]
    results = [p.result(30) for p in children]
    for r in range(rounds):
        assert sorted(res[r] for res in results) == [0, 1, 2], (r, results)
    assert not barrier.broken
    assert barrier.n_waiting == 0


def test_barrier_abort_in_the_parent_breaks_the_waits_of_two_children_then_reset_reuses_it(start: Any) -> None:
    barrier = corral.Barrier(3)
    children = [start(w.barrier_wait_outcome, barrier) for _ in range(2)]
    assert wait_until(lambda: barrier.n_waiting == 2, 20), "children did not both wait"
    barrier.abort()
    # Their waits would time out after 20 s; they must end now, broken.
    assert [p.result(15) for p in children] == ["broken", "broken"]
    assert barrier.broken

    barrier.reset()
    assert not barrier.broken
    children = [start(w.barrier_wait_outcome, barrier) for _ in range(2)]
    mine = barrier.wait(timeout=20)
    assert sorted([str(mine)] + [p.result(20) for p in children]) == ["0", "1", "2"]


def test_a_party_killed_while_waiting_breaks_the_barrier_for_the_others(start: Any) -> None:
    barrier = corral.Barrier(3)
    victim = start(w.barrier_wait_outcome, barrier)
    survivor = start(w.barrier_wait_outcome, barrier)
    assert wait_until(lambda: barrier.n_waiting == 2, 20), "children did not both wait"
    victim.kill()
    victim.join(10)
    # Without the check the survivor would wait its whole 20 s timeout.
    assert survivor.result(10) == "broken"
    assert barrier.broken
    barrier.reset()
    children = [start(w.barrier_wait_outcome, barrier) for _ in range(2)]
    mine = barrier.wait(timeout=20)
    assert sorted([str(mine)] + [p.result(20) for p in children]) == ["0", "1", "2"]


# -- 7. ownership ---------------------------------------------------------------------------------


def test_rlock_owned_by_a_child_cannot_be_released_by_the_parent(start: Any) -> None:
    rlock, held, done = corral.RLock(), corral.Event(), corral.Event()
    p = start(w.hold_until, rlock, held, done)
    assert held.wait(20), "child did not take the lock"
    with pytest.raises(RuntimeError):
        rlock.release()
    assert rlock.locked()
    assert not rlock._is_owned()
    assert not rlock.acquire(False)
    done.set()
    assert p.result(20) is True  # the child could release it
    assert rlock.acquire(timeout=10)
    rlock.release()


# -- 8. a process that dies holding a lock ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_held_by_a_sigkilled_child_raises_owner_died_then_is_free(start: Any, kind: str) -> None:
    lock = getattr(corral, kind)()
    p = start(w.acquire_then_sigkill, lock)
    p.join(20)
    assert p.exitcode == -9
    assert lock.locked()  # the dead owner still holds it
    # The lock never becomes free by itself: this waiter notices the death
    # (it would return False after 10 s otherwise).
    with pytest.raises(corral.OwnerDiedError):
        lock.acquire(timeout=10)
    assert not lock.locked()
    assert lock.acquire(blocking=False)
    lock.release()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_waiter_blocked_before_the_owner_is_sigkilled_gets_owner_died(start: Any, kind: str) -> None:
    lock, held, die = getattr(corral, kind)(), corral.Event(), corral.Event()
    p = start(w.acquire_then_sigkill, lock, held, die)
    assert held.wait(20), "child did not take the lock"
    waiting, outcome = threading.Event(), []
    t = threading.Thread(target=lambda: outcome.append(w.acquire_outcome(lock, waiting, 15)))
    t.start()
    try:
        assert waiting.wait(10)
        assert wait_until(lambda: sleeping_on(lock, tid=t.native_id), 20), "the waiter never blocked"
        assert t.is_alive()  # blocked: the owner lives
        die.set()
        p.join(20)
        assert p.exitcode == -9
    finally:
        die.set()
        t.join(20)
    assert outcome == ["owner-died"]
    assert lock.acquire(blocking=False)
    lock.release()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_of_two_waiters_in_two_processes_one_gets_owner_died_and_the_other_the_lock(start: Any, kind: str) -> None:
    lock, held, die = getattr(corral, kind)(), corral.Event(), corral.Event()
    owner = start(w.acquire_then_sigkill, lock, held, die)
    assert held.wait(20), "child did not take the lock"
    # Waiter 1: another child. Waiter 2: a thread of the parent.
    child_waiting = corral.Event()
    other = start(w.acquire_outcome, lock, child_waiting, 15)
    waiting, outcome = threading.Event(), []
    t = threading.Thread(target=lambda: outcome.append(w.acquire_outcome(lock, waiting, 15)))
    t.start()
    try:
        assert child_waiting.wait(20) and waiting.wait(10)
        assert wait_until(lambda: sleeping_on(lock, tid=t.native_id), 20), "the thread never blocked"
        assert wait_until(lambda: sleeping_on(lock, pid=other.pid), 20), "the child never blocked"
        assert t.is_alive() and other.is_alive()
        die.set()
        owner.join(20)
        assert owner.exitcode == -9
    finally:
        die.set()
        t.join(20)
    assert sorted(outcome + [other.result(20)]) == ["acquired", "owner-died"]
    assert lock.acquire(blocking=False)
    lock.release()


def test_rlock_held_by_a_thread_that_ended_raises_owner_died_then_is_free() -> None:
    rlock = corral.RLock()
    t = threading.Thread(target=rlock.acquire)
    t.start()
    t.join(10)
    assert rlock.locked() and not rlock._is_owned()
    with pytest.raises(corral.OwnerDiedError):
        rlock.acquire(timeout=10)
    assert rlock.acquire(blocking=False)
    rlock.release()
    assert not rlock.locked()


# -- 9. interrupting a wait in a child -------------------------------------------------------------


def _blocking(kind: str) -> Any:
    """A primitive on which a child's acquire or wait blocks."""
    if kind in ("Lock", "RLock"):
        lock = getattr(corral, kind)()
        assert lock.acquire(False)  # held by the parent
        return lock
    if kind == "Semaphore":
        return corral.Semaphore(0)
    if kind == "Event":
        return corral.Event()
    if kind == "Condition":
        return corral.Condition()  # never notified
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "Event", "Condition"])
def test_blocking_wait_in_a_child_is_interrupted_by_a_signal_handler(start: Any, kind: str) -> None:
    obj = _blocking(kind)
    # The child blocks for up to 20 s; SIGUSR1 after 0.3 s raises in it.
    p = start(w.interrupted_wait, kind, obj, 0.3)
    # A Condition's wait takes its lock back before the exception leaves it.
    assert p.result(15) == ("interrupted", True if kind == "Condition" else None)
    if kind in ("Lock", "RLock"):
        assert obj.locked()  # still the parent's
        obj.release()
