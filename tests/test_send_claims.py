"""A message holding corral objects (a Queue, Lock, Pipe end) registers
their descriptors with this process's broker as it is pickled, for its
receiver to fetch once. A put or send that fails after the pickling (the
queue full past a timeout, the message too large, the peer gone) withdraws
them: no receiver will come, and they stayed in the broker, descriptors
open, until this process exited. A message sent keeps them for its
receiver; a message sent while another is pickled (a put inside a
``__reduce__``) keeps its own, whatever becomes of the other; and a
registration is withdrawn at most once (``_fds.claim``, ``_fds.send``).
A message that went keeps them even when a signal handler raises right
after the core's put returned."""

from __future__ import annotations

import asyncio
import os
import pickle
import queue
import signal
import time
from typing import Any

import pytest

import corral
from _helpers import wait_until
from corral import _core

TIMEOUT = 30


def _count_is(n: int) -> bool:
    """True once the broker holds ``n`` registrations: a fetched one is
    dropped by the broker's thread just after the receiver got it."""
    return wait_until(lambda: _core.shared_fd_count() == n, TIMEOUT)


def _descriptors() -> set[tuple[int, int, int]]:
    """This process's open descriptors, by number, device and inode."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor
        found.add((int(name), st.st_dev, st.st_ino))
    return found


@pytest.fixture
def full() -> Any:
    """A queue with no room, and a queue to put in it."""
    q: corral.Queue[Any] = corral.Queue(maxsize=1)
    q.put(0)
    inner: corral.Queue[Any] = corral.Queue()
    # The broker runs from the first registration on: started before the counts.
    q.get()
    before = _core.shared_fd_count()
    q.put([inner])
    q.get(timeout=TIMEOUT)
    assert _count_is(before)
    q.put(0)
    yield q, inner


def test_failed_puts_of_a_queue_leave_no_registration_nor_descriptor(full: Any) -> None:
    q, inner = full
    before, fds = _core.shared_fd_count(), _descriptors()
    for _ in range(20):
        with pytest.raises(queue.Full):
            q.put([inner], timeout=0.001)
        with pytest.raises(queue.Full):
            q.put_nowait({"q": inner, "lock": corral.Lock()})
    # Old code: 40 registrations, and as many descriptors, left.
    assert _core.shared_fd_count() == before
    assert _descriptors() - fds == set()
    # A put that goes keeps them for its receiver, which gets a live queue.
    assert q.get() == 0
    q.put([inner])
    assert _core.shared_fd_count() == before + 1
    got = q.get(timeout=TIMEOUT)[0]
    inner.put("through")
    assert got.get(timeout=TIMEOUT) == "through"
    assert _count_is(before)


def test_a_message_too_large_for_the_arena_gives_its_registrations_back() -> None:
    q: corral.Queue[Any] = corral.Queue(ring_bytes=64 * 1024, arena_bytes=1 << 20)
    inner: corral.Queue[Any] = corral.Queue()
    before = _core.shared_fd_count()
    with pytest.raises(ValueError, match="exceeds"):
        q.put([inner, b"x" * (2 << 20)])
    assert _core.shared_fd_count() == before


def test_a_send_to_a_gone_peer_gives_its_registrations_back() -> None:
    a, b = corral.Pipe()
    b.close()
    inner: corral.Queue[Any] = corral.Queue()
    before = _core.shared_fd_count()
    for _ in range(5):
        with pytest.raises(OSError):
            a.send([inner])
    assert _core.shared_fd_count() == before


def test_an_async_put_that_times_out_gives_its_registrations_back(full: Any) -> None:
    q, inner = full
    before = _core.shared_fd_count()
    with pytest.raises(queue.Full):
        asyncio.run(q.put_async([inner], timeout=0.01))
    assert _core.shared_fd_count() == before


def test_a_failed_put_keeps_a_plain_pickles_registration(full: Any) -> None:
    # pickle.dumps of a corral object, outside corral's channels: its
    # registration is the caller's to use, not the next put's to withdraw.
    q, inner = full
    other: corral.Queue[Any] = corral.Queue()
    before = _core.shared_fd_count()
    data = pickle.dumps(other)
    with pytest.raises(queue.Full):
        q.put([inner], timeout=0.001)
    assert _core.shared_fd_count() == before + 1
    assert q.get() == 0
    q.put(pickle.loads(data))  # loaded here: fetched from the broker
    assert _count_is(before + 1)  # the put's own, for its receiver
    q.get(timeout=TIMEOUT).put("ok")
    assert other.get(timeout=TIMEOUT) == "ok"
    assert _count_is(before)


class _PutsWhilePickled:
    """Calls ``put(item)`` (a queue's ``put`` or ``put_many``) when
    pickled: a message sent while another is being pickled."""

    def __init__(self, put: Any, item: Any) -> None:
        self.put, self.item = put, item

    def __reduce__(self) -> tuple[Any, ...]:
        self.put(self.item)
        return (int, (0,))


def test_a_message_sent_during_a_failed_put_keeps_its_registrations() -> None:
    # The put inside the outer message's pickling sent its own message:
    # the outer put's failure must withdraw its own registrations only,
    # or the receiver could not fetch the queue.
    carrier: corral.Queue[Any] = corral.Queue()
    inner: corral.Queue[Any] = corral.Queue()
    before = _core.shared_fd_count()
    outer = [_PutsWhilePickled(carrier.put, [inner]), corral.Queue()]
    full: corral.Queue[Any] = corral.Queue(maxsize=1)
    full.put(0)
    with pytest.raises(queue.Full):
        full.put(outer, timeout=0.001)
    assert _core.shared_fd_count() == before + 1  # the inner message's, not the outer's queue
    got = carrier.get(timeout=TIMEOUT)[0]
    inner.put("through")
    assert got.get(timeout=TIMEOUT) == "through"
    assert _count_is(before)


class _Alarm(Exception):
    """What the test's SIGALRM handler raises."""


def test_a_put_interrupted_by_a_signal_after_it_went_keeps_its_registrations() -> None:
    # A handler that raises (an alarm-based timeout, Ctrl-C caught) runs
    # right after the core's put returned, between two bytecodes: the put
    # withdrew the registrations of a message that had gone in, and its
    # receiver got "this object was already unpickled once" (3 such in
    # under a second with an alarm every 100 us).
    q: corral.Queue[Any] = corral.Queue()
    inner: corral.Queue[Any] = corral.Queue()
    armed = [False]

    def handler(signum: int, frame: Any) -> None:
        if armed[0]:
            raise _Alarm

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
    interrupted = went = 0
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and interrupted < 200:
            size = q.qsize()
            try:
                armed[0] = True
                q.put([inner])
            except _Alarm:
                interrupted += 1
            finally:
                armed[0] = False
            went += q.qsize() - size
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert interrupted > 0  # the alarm did interrupt puts
    for _ in range(went):
        got = q.get(timeout=TIMEOUT)[0]  # each fetched from the broker
        got.put(1)
        assert inner.get(timeout=TIMEOUT) == 1


def test_a_put_many_during_a_failed_put_keeps_its_registrations() -> None:
    # The put_many's pickling, inside the outer message's, left its exports
    # where the outer put took them as its own: the outer's failure
    # withdrew them, and the receiver of the put_many's message got "this
    # object was already unpickled once".
    carrier: corral.Queue[Any] = corral.Queue()
    inner: corral.Queue[Any] = corral.Queue()
    full: corral.Queue[Any] = corral.Queue(maxsize=1)
    full.put(0)
    with pytest.raises(queue.Full):
        full.put([_PutsWhilePickled(carrier.put_many, [[inner]])], timeout=0.001)
    got = carrier.get(timeout=TIMEOUT)[0]
    got.put("through")
    assert inner.get(timeout=TIMEOUT) == "through"
