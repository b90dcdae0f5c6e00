"""A consumer is not told the data has ended while a process that will
still put holds the queue, however the queue reached it (issue 11, the
outside review's probes p13, p14 and p34): a fork child started with it,
a pool task's arguments, a queue sent inside a message."""

from __future__ import annotations

import collections
import queue
import threading

import pytest

import _workers
import corral
from _helpers import pid_gone, wait_until


def _not_ended_yet(q: corral.Queue) -> None:
    """The queue is empty and its only producer so far is dead: a get must
    wait (Empty after its timeout), not raise ChannelClosed."""
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_started_with_the_queue_is_waited_for_before_its_first_put(start, method):
    q, go = corral.Queue(), corral.Event()
    a = start(_workers.put_and_return_pid, q, "first", start_method=method)
    a.join(20)
    assert a.exitcode == 0
    b = start(_workers.wait_then_put, go, q, "late", start_method=method)
    assert q.get(timeout=20) == "first"
    _not_ended_yet(q)  # before the fix (fork): ChannelClosed while b lives
    go.set()
    assert q.get(timeout=20) == "late"
    assert b.result(timeout=20) == b.pid
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)


def test_a_fork_child_with_unpicklable_arguments_still_holds_its_queue(start):
    # A fork carries what cannot be pickled: the queue is found by walking
    # the arguments instead.
    q, go = corral.Queue(), corral.Event()
    a = start(_workers.put_and_return_pid, q, "first", start_method="fork")
    a.join(20)
    b = start(_workers.wait_then_put, go, q, "late", threading.Lock(), {"k": [q]}, start_method="fork")
    assert q.get(timeout=20) == "first"
    _not_ended_yet(q)
    go.set()
    assert q.get(timeout=20) == "late"
    b.result(timeout=20)
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)


def test_a_fork_child_that_closed_before_its_parent_registered_it_stays_closed(start):
    # The parent adds the child after fork() returns; a child quicker than
    # that, already closed, is not reopened (or the consumer would wait
    # for it until it exits).
    q = corral.Queue()
    stay, go = corral.Pipe()
    p = start(_workers.produce_close_then_wait, q, 3, stay, start_method="fork")
    assert [q.get(timeout=20) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)
    assert p.is_alive()
    go.send("go")
    assert p.result(timeout=20) == 3


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_pool_task_submitted_with_the_queue_is_waited_for_after_an_earlier_worker_exits(method):
    q, go = corral.Queue(), corral.Event()
    with corral.ProcessPoolExecutor(1, start_method=method, max_tasks_per_child=1) as pool:
        first = pool.submit(_workers.put_and_return_pid, q, "a").result(timeout=30)
        assert q.get(timeout=20) == "a"
        assert wait_until(lambda: pid_gone(first), 20), "the first worker did not exit"
        f = pool.submit(_workers.wait_then_put, go, q, "b")
        _not_ended_yet(q)  # before the fix: ChannelClosed, the task not run yet
        go.set()
        assert q.get(timeout=20) == "b"
        second = f.result(timeout=30)
        # Once the task is done and its worker gone, the data has ended:
        # the task's lend was taken back.
        assert wait_until(lambda: pid_gone(second), 20)
        with pytest.raises(corral.ChannelClosed):
            q.get(timeout=20)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_queue_sent_through_another_queue_is_held_until_the_receiver_loads_it(start, method):
    q, carrier, go = corral.Queue(), corral.Queue(), corral.Event()
    a = start(_workers.put_and_return_pid, q, "first", start_method=method)
    a.join(20)
    b = start(_workers.wait_then_receive_queue_and_put, go, carrier, "late", start_method=method)
    carrier.put(q)  # b has not loaded it yet
    assert q.get(timeout=20) == "first"
    _not_ended_yet(q)  # before the fix: ChannelClosed while q is on its way to b
    go.set()
    assert q.get(timeout=20) == "late"
    b.result(timeout=20)
    # The receiver took the lend back: the end is seen.
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)


def test_a_queue_sent_through_a_pipe_is_held_until_the_receiver_loads_it(start):
    q = corral.Queue()
    here, there = corral.Pipe()
    a = start(_workers.put_and_return_pid, q, "first")
    a.join(20)
    b = start(_workers.receive_queue_from_pipe_and_produce, there, 2)
    here.send(q)
    got = []
    got.append(q.get(timeout=20))
    got += [q.get(timeout=20) for _ in range(2)]
    assert sorted(map(str, got)) == sorted(map(str, ["first", *range(2)]))
    assert b.result(timeout=20) == 2
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)


def test_the_same_queue_sent_many_times_uses_one_slot_and_each_load_takes_one_lend_back(start):
    # 2000 pickles (twice the holder table) of one queue: one counter.
    q, carrier = corral.Queue(), corral.Queue()
    for _ in range(2000):
        carrier.put(q)
    for _ in range(2000):
        carrier.get(timeout=20)
    a = start(_workers.put_and_return_pid, q, "x")
    assert q.get(timeout=20) == "x"
    a.join(20)
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)


def test_a_pickle_thrown_away_leaves_no_lend_and_no_broker_entry(start):
    # The first pass (pickle) fails on the lambda and cloudpickle starts
    # over; a message that cannot be pickled at all is refused: neither
    # may leave the queue counted as lent, or this process would wait for
    # a receiver that does not exist and never see the end of the data.
    q, carrier = corral.Queue(), corral.Queue()
    entries = corral._core.shared_fd_count()
    with pytest.raises(TypeError):
        carrier.put((q, threading.Lock()))
    assert corral._core.shared_fd_count() == entries
    carrier.put((q, lambda: 1))
    assert corral._core.shared_fd_count() == entries + 1
    got, fn = carrier.get(timeout=20)
    assert fn() == 1
    # The broker drops a one-shot entry just after handing it over.
    assert wait_until(lambda: corral._core.shared_fd_count() == entries, 10)
    a = start(_workers.put_and_return_pid, q, "x")
    assert q.get(timeout=20) == "x"
    a.join(20)
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)


class _SlotsHolder:
    """Holds its queue in a slot, beside something that does not pickle."""

    __slots__ = ("q", "lock")

    def __init__(self, q: corral.Queue) -> None:
        self.q = q
        self.lock = threading.Lock()


def _put_from_slots(holder: _SlotsHolder, go: corral.Event) -> None:
    assert go.wait(20)
    holder.q.put("late")


def _put_from_deque(dq: collections.deque[corral.Queue], go: corral.Event) -> None:
    assert go.wait(20)
    dq[0].put("late")


@pytest.mark.parametrize("where", ["slots", "deque"])
def test_a_fork_child_holds_a_queue_it_reaches_through_slots_or_a_deque(start, where):
    # The walk that registers a fork child's queues did not look into
    # __slots__ or deques: ChannelClosed came before the child's put.
    q: corral.Queue = corral.Queue()
    first = start(_workers.produce, q, 1, start_method="fork")
    first.join(20)
    go = corral.Event()
    if where == "slots":
        start(_put_from_slots, _SlotsHolder(q), go, start_method="fork")
    else:
        start(_put_from_deque, collections.deque([q]), go, start_method="fork")
    assert q.get(timeout=20) == 0
    _not_ended_yet(q)
    go.set()
    assert q.get(timeout=20) == "late"


def test_a_fork_child_does_not_inherit_the_one_shot_lock_held_by_another_thread(start):
    # A thread of the parent inside _fds.settle at the fork left the lock
    # held in the child, whose first pickling of a queue then hung.
    from corral import _fds

    q: corral.Queue = corral.Queue()
    out: corral.Queue = corral.Queue()
    with _fds._oneshots_lock:
        p = start(_workers.forward_queue_in_message, q, out, start_method="fork")
    assert out.get(timeout=20) == "sent"
    p.join(20)
    assert p.exitcode == 0


def test_a_foreign_pickle_of_a_queue_is_not_undone_by_a_later_failed_attempt(start):
    # copy.copy(q) left a one-shot entry that a later put falling back to
    # cloudpickle withdrew: the lend of a queue still in flight to a
    # receiver was taken back, and ChannelClosed came before its put.
    import copy

    q: corral.Queue = corral.Queue()
    first = start(_workers.produce, q, 1)
    first.join(20)
    a, b = corral.Pipe()
    go = corral.Event()
    start(_workers.receive_queue_then_put, b, go)
    a.send(q)  # in flight: the receiver loads it once go is set
    copy.copy(q)
    corral.Queue().put(lambda: 1)  # pickle fails, cloudpickle takes over
    assert q.get(timeout=20) == 0
    _not_ended_yet(q)
    go.set()
    assert q.get(timeout=20) == "late"


def _put_a_queue_then_wait(q: corral.Queue, sent: corral.Event) -> None:
    q.put(corral.Queue())  # its descriptor is fetched from this process
    sent.set()
    threading.Event().wait(60)  # alive until the test kills it


def test_get_many_returns_the_items_it_could_load_and_raises_the_failure_next(start):
    # One item whose sender exited before it was loaded lost the whole
    # batch, plain items from live producers included.
    q: corral.Queue = corral.Queue()
    q.put("plain-1")
    sent = corral.Event()
    p = start(_put_a_queue_then_wait, q, sent, start_method="fork")
    assert sent.wait(20)
    q.put("plain-2")
    p.kill()
    p.join(20)
    assert q.get_many(10, timeout=20) == ["plain-1", "plain-2"]
    with pytest.raises(corral.ChannelClosed, match="exited before it was loaded"):
        q.get(timeout=5)
    q.put("plain-3")
    assert q.get(timeout=5) == "plain-3"
