"""Handles sent after a process started: a Queue or a Connection pickled
into a queue or a pipe reaches an already running child (its descriptor
crosses by SCM_RIGHTS), and the child can use it."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import _workers
import corral


def test_a_queue_put_into_a_queue_lets_a_running_child_produce_into_it(start):
    ctrl = corral.Queue()
    p = start(_workers.receive_queue_and_produce, ctrl, 20, "kid")
    data = corral.Queue()
    ctrl.put(data)
    assert [data.get(timeout=20) for _ in range(20)] == [("kid", i) for i in range(20)]
    assert p.result(timeout=20) == 20
    # The child was the only producer on that queue and is gone.
    with pytest.raises(corral.ChannelClosed):
        data.get(timeout=20)


def test_a_queue_put_into_a_queue_lets_a_running_child_consume_from_it(start):
    ctrl = corral.Queue()
    p = start(_workers.receive_queue_and_consume, ctrl, 50)
    data = corral.Queue(maxsize=5)
    ctrl.put(data)
    for i in range(50):
        data.put(i, timeout=20)
    assert p.result(timeout=20) == sum(range(50))


def test_one_queue_sent_to_two_running_children_carries_both_streams(start):
    ctrl = corral.Queue()
    # A process holds a queue received through a channel from when it loads
    # it: without the barrier, kid0 could finish and exit before kid1 has
    # loaded it, and the drained queue would rightly report its end.
    both = corral.Barrier(2)
    kids = [start(_workers.receive_queue_and_produce, ctrl, 30, f"kid{k}", both) for k in range(2)]
    data = corral.Queue()
    ctrl.put(data)
    ctrl.put(data)  # each pickle of the handle is fetched once
    got = [data.get(timeout=20) for _ in range(60)]
    assert sorted(got) == sorted((f"kid{k}", i) for k in range(2) for i in range(30))
    for k in range(2):  # FIFO per producer
        assert [i for tag, i in got if tag == f"kid{k}"] == list(range(30))
    assert [p.result(timeout=20) for p in kids] == [30, 30]


def test_large_arrays_flow_through_a_queue_received_by_a_child(start):
    ctrl = corral.Queue()
    p = start(_workers.receive_queue_and_consume, ctrl, 3)
    data = corral.Queue()
    ctrl.put(data)
    # The child sums what it gets; arrays of 8 MB sum element-wise.
    arrays = [np.full(1_000_000, k, dtype=np.float64) for k in (1, 2, 3)]
    for a in arrays:
        data.put(a, timeout=20)
    total = p.result(timeout=30)
    np.testing.assert_array_equal(total, np.full(1_000_000, 6.0))


def test_a_connection_sent_over_a_queue_lets_a_child_talk_back(start):
    ctrl = corral.Queue()
    p = start(_workers.receive_conn_from_queue_and_send, ctrl, {"hello": "parent"})
    mine, theirs = corral.Pipe()
    ctrl.put(theirs)
    theirs.close()  # the sent handle must not depend on our copy staying open
    assert mine.poll(20)
    assert mine.recv() == {"hello": "parent"}
    mine.send("hello child")
    assert p.result(timeout=20) == "hello child"
    # The child closed the only other copy: end-of-file.
    assert mine.poll(20)
    with pytest.raises(EOFError):
        mine.recv()


def test_a_queue_sent_over_a_pipe_reaches_a_running_child(start):
    ctrl_parent, ctrl_child = corral.Pipe()
    p = start(_workers.receive_queue_from_pipe_and_produce, ctrl_child, 10)
    ctrl_child.close()
    data = corral.Queue()
    ctrl_parent.send(data)
    assert [data.get(timeout=20) for _ in range(10)] == list(range(10))
    assert p.result(timeout=20) == 10


def test_handles_sent_through_a_queue_work_within_the_same_process():
    outer, inner = corral.Queue(), corral.Queue()
    a, b = corral.Pipe()
    outer.put(inner)
    outer.put(b)
    inner_again, b_again = outer.get(timeout=20), outer.get(timeout=20)
    inner_again.put("through the copy")
    assert inner.get(timeout=20) == "through the copy"
    b_again.send("through the copy")
    assert a.recv() == "through the copy"


def _open_fds() -> dict[int, tuple[int, int]]:
    """This process's descriptors: number -> (device, inode) of what it
    opens (a leak is a descriptor that was not there before; one closed
    meanwhile by a thread an earlier test left, such as a fork server's
    reader at its server's end, is none)."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, or closed meanwhile
            continue
        fds[int(name)] = (st.st_dev, st.st_ino)
    return fds


def _use_and_drop_handles() -> None:
    a, b = corral.Pipe()
    a.send(1)
    assert b.recv() == 1
    a.close()
    b.close()
    q = corral.Queue()
    q.put(np.ones(100_000))  # arena part too
    q.get(timeout=20)
    outer, inner = corral.Queue(), corral.Queue()
    c, d = corral.Pipe()
    outer.put(inner)
    outer.put(d)
    inner_copy, d_copy = outer.get(timeout=20), outer.get(timeout=20)
    d_copy.send("x")
    assert c.recv() == "x"
    del q, outer, inner, inner_copy, c, d, d_copy
    gc.collect()


def test_using_and_dropping_pipes_and_queues_leaks_no_descriptors():
    _use_and_drop_handles()  # warm-up: the fd broker opens its socket once
    before = _open_fds()
    for _ in range(50):
        _use_and_drop_handles()
    new = {fd: ident for fd, ident in _open_fds().items() if before.get(fd) != ident}
    assert not new, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in new if os.path.exists(f"/proc/self/fd/{fd}")}
