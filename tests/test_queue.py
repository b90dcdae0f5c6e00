"""corral.Queue and corral.SimpleQueue: the multiprocessing.Queue API, plus
what corral promises beyond it (immediate pickling errors, zero-copy numpy
views freed on collection, ChannelClosed instead of a hang)."""

from __future__ import annotations

import gc
import os
import pickle
import queue
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest

import _workers
import corral
from _helpers import Interrupted, act_when_blocked, interrupt_after, wait_until

PICKLING_ERRORS = (TypeError, pickle.PicklingError)


# -- the stdlib API, in one process --------------------------------------------


def test_items_come_out_in_the_order_they_were_put():
    q = corral.Queue()
    items = [0, "one", (2, 2.0), {"three": [3]}, None, b"five" * 10]
    for x in items:
        q.put(x)
    assert [q.get(timeout=5) for _ in items] == items


@pytest.mark.parametrize("call", ["get_nowait", "get_block_false"])
def test_non_blocking_get_on_an_empty_queue_raises_empty(call):
    q = corral.Queue()
    with pytest.raises(queue.Empty):
        if call == "get_nowait":
            q.get_nowait()
        else:
            q.get(block=False)


def test_get_with_timeout_raises_empty_after_waiting_that_long():
    q = corral.Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    elapsed = time.monotonic() - t0
    assert 0.15 <= elapsed < 5.0


def test_bounded_queue_raises_full_and_accepts_again_after_a_get():
    q = corral.Queue(maxsize=2)
    q.put(1)
    q.put(2)
    assert q.full()
    assert q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.2)
    assert time.monotonic() - t0 >= 0.15
    assert q.get(timeout=5) == 1
    assert not q.full()
    q.put_nowait(3)
    assert [q.get(timeout=5), q.get(timeout=5)] == [2, 3]


def test_blocked_put_proceeds_when_a_consumer_makes_room():
    q = corral.Queue(maxsize=1)
    q.put("first")
    consumer = act_when_blocked(q._q, threading.get_native_id(), q.get)
    q.put("second", timeout=10)  # would raise Full if never woken
    assert q.get(timeout=5) == "second"
    consumer.join(20)
    assert consumer.blocked, "the put did not wait for room"


def test_a_blocking_get_or_put_is_interrupted_by_a_signal_like_ctrl_c():
    # Without signal checks the call would wait out its 20 s timeout.
    q = corral.Queue(maxsize=1)
    with pytest.raises(Interrupted):
        with interrupt_after(0.2) as waited:
            q.get(timeout=20)
    assert waited.elapsed < 10
    q.put("fills it")
    with pytest.raises(Interrupted):
        with interrupt_after(0.2) as waited:
            q.put("no room", timeout=20)
    assert waited.elapsed < 10
    assert q.get(timeout=5) == "fills it" and q.empty()


def test_qsize_empty_and_full_track_the_contents():
    q = corral.Queue()
    assert (q.qsize(), q.empty(), q.full()) == (0, True, False)
    for i in range(5):
        q.put(i)
    assert (q.qsize(), q.empty(), q.full()) == (5, False, False)
    q.get(timeout=5)
    assert q.qsize() == 4
    while not q.empty():
        q.get(timeout=5)
    assert q.qsize() == 0


def test_put_many_puts_in_order_and_returns_the_count():
    q = corral.Queue()
    assert q.put_many(range(10)) == 10
    assert q.put_many(x for x in "abc") == 3
    assert q.qsize() == 13
    got = []
    while len(got) < 13:
        got.extend(q.get_many(13, timeout=5))
    assert got == list(range(10)) + ["a", "b", "c"]


def test_get_many_returns_between_one_and_max_items_in_order():
    q = corral.Queue()
    q.put_many(range(7))
    got = []
    while len(got) < 7:
        batch = q.get_many(3, timeout=5)
        assert 1 <= len(batch) <= 3
        got.extend(batch)
    assert got == list(range(7))
    assert q.empty()


def test_get_many_waits_only_for_the_first_item():
    q = corral.Queue()
    producer = act_when_blocked(q._q, threading.get_native_id(), lambda: q.put("late"))
    t0 = time.monotonic()
    batch = q.get_many(10, timeout=20)
    assert batch == ["late"]
    # It returned with one item instead of waiting out the 20 s timeout.
    assert time.monotonic() - t0 < 10
    producer.join(20)
    assert producer.blocked, "get_many did not wait for the first item"


def test_get_many_raises_empty_on_timeout():
    q = corral.Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0.2)
    assert time.monotonic() - t0 >= 0.15


def test_get_many_rejects_a_max_below_one():
    q = corral.Queue()
    with pytest.raises(ValueError):
        q.get_many(0, timeout=0.1)


@pytest.mark.parametrize(
    "bad",
    [threading.Lock(), (x for x in range(3))],
    ids=["lock", "generator"],
)
def test_an_unpicklable_item_raises_in_put_and_the_queue_stays_usable(bad):
    q = corral.Queue()
    q.put("before")
    with pytest.raises(PICKLING_ERRORS):
        q.put({"payload": bad})
    assert q.qsize() == 1
    q.put("after")
    assert [q.get(timeout=5), q.get(timeout=5)] == ["before", "after"]
    assert q.empty()


def test_put_many_with_one_bad_item_puts_none_of_the_batch():
    q = corral.Queue()
    with pytest.raises(PICKLING_ERRORS):
        q.put_many([1, 2, threading.Lock(), 4])
    assert q.qsize() == 0
    q.put_many([5, 6])
    assert [q.get(timeout=5), q.get(timeout=5)] == [5, 6]


def test_put_and_get_on_a_closed_handle_raise_value_error():
    q = corral.Queue()
    q.put(1)
    q.close()
    q.close()  # idempotent
    with pytest.raises(ValueError):
        q.put(2)
    with pytest.raises(ValueError):
        q.get(timeout=1)
    with pytest.raises(ValueError):
        q.get_nowait()
    with pytest.raises(ValueError):
        q.put_many([3])
    with pytest.raises(ValueError):
        q.get_many(1, timeout=1)


def test_join_thread_and_cancel_join_thread_are_harmless_no_ops():
    q = corral.Queue()
    q.put(1)
    assert q.cancel_join_thread() is None
    q.close()
    assert q.join_thread() is None


def test_lambdas_and_closures_inside_items_round_trip():
    q = corral.Queue()
    offset = 10

    def closure(x):
        return x + offset

    q.put({"lambda": lambda x: x * 3, "closure": closure})
    got = q.get(timeout=5)
    assert got["lambda"](4) == 12
    assert got["closure"](1) == 11


def test_a_message_bigger_than_the_ring_goes_through():
    q = corral.Queue(ring_bytes=1 << 16)
    payload = bytes(range(256)) * (20 * 4096)  # 20 MiB
    q.put(payload)
    assert q.get(timeout=20) == payload


def test_a_20_mb_bytes_object_goes_through_the_default_queue():
    q = corral.Queue()
    payload = b"\x01\x02\x03" * (7 * 1024 * 1024)
    q.put(payload)
    q.put("next")
    assert q.get(timeout=20) == payload
    assert q.get(timeout=5) == "next"


def test_simple_queue_put_get_empty_close():
    q = corral.SimpleQueue()
    assert q.empty()
    q.put("a")
    q.put(["b"])
    assert not q.empty()
    assert q.get() == "a"
    assert q.get() == ["b"]
    assert q.empty()
    q.close()
    with pytest.raises(ValueError):
        q.put("c")


# -- numpy ---------------------------------------------------------------------


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "small-1d-float": rng.random(100),
        "small-2d-int": np.arange(60, dtype=np.int32).reshape(6, 10),
        "small-uint8": np.arange(200, dtype=np.uint8),
        "large-1d-float64": rng.random(1_000_000),  # 8 MB
        "large-2d-int64": np.arange(1_000_000, dtype=np.int64).reshape(1000, 1000),
        "large-uint8": rng.integers(0, 255, 300_000, dtype=np.uint8),
        "fortran-float": np.asfortranarray(rng.random((300, 200))),
        "fortran-small-int": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
        "fortran-uint8-large": np.asfortranarray(rng.integers(0, 255, (400, 300), dtype=np.uint8)),
        "noncontiguous-slice": rng.random((600, 400))[::2, 1::3],
        "empty": np.empty((0, 3)),
        "bool": rng.random(100_000) > 0.5,
    }


ARRAYS = _arrays()


@pytest.mark.parametrize("name", list(ARRAYS))
def test_numpy_arrays_round_trip_equal_and_writable(name):
    a = ARRAYS[name]
    q = corral.Queue()
    q.put(a)
    b = q.get(timeout=20)
    assert isinstance(b, np.ndarray)
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    assert b.flags.writeable
    snapshot = a.copy()
    b[...] = 0
    # The received array is its own memory, not the sender's.
    np.testing.assert_array_equal(a, snapshot)
    assert not b.any()


def test_arrays_inside_a_structure_round_trip():
    q = corral.Queue()
    big = np.arange(2_000_000, dtype=np.float32)
    item = {"x": big, "y": [np.ones(3), big[:10].copy()], "label": "batch"}
    q.put(item)
    got = q.get(timeout=20)
    np.testing.assert_array_equal(got["x"], big)
    np.testing.assert_array_equal(got["y"][0], np.ones(3))
    np.testing.assert_array_equal(got["y"][1], big[:10])
    assert got["label"] == "batch"


def test_a_received_large_array_frees_its_shared_memory_when_collected():
    q = corral.Queue()
    assert q._q.arena_used() == 0
    q.put(np.ones(1_000_000))  # 8 MB: goes through the arena
    b = q.get(timeout=20)
    assert q._q.arena_used() >= b.nbytes
    del b
    gc.collect()
    assert q._q.arena_used() == 0


def test_a_view_of_a_received_array_keeps_its_memory_alive():
    q = corral.Queue()
    q.put(np.arange(1_000_000, dtype=np.int64))
    b = q.get(timeout=20)
    view = b[500_000:500_010]
    del b
    gc.collect()
    # The block must not be reused while a view still points into it.
    assert q._q.arena_used() > 0
    q.put(np.full(1_000_000, -1, dtype=np.int64))
    other = q.get(timeout=20)
    assert list(view) == list(range(500_000, 500_010))
    del view, other
    gc.collect()
    assert q._q.arena_used() == 0


def test_a_large_item_gives_its_shared_memory_back_once_released():
    q = corral.Queue()
    fd = q._q.fileno()

    def allocated() -> int:
        return os.fstat(fd).st_blocks * 512

    q.put(np.ones(256 << 20, dtype=np.uint8))
    assert allocated() >= 256 << 20
    a = q.get(timeout=10)
    assert a[-1] == 1
    del a
    gc.collect()
    # At most what a large block leaves warm (64 MiB), the ring (4 MiB) and
    # block headers stay allocated.
    assert allocated() <= (69 << 20), f"{allocated() >> 20} MiB still allocated"
    q.put(np.full(100 << 20, 3, dtype=np.uint8))
    b = q.get(timeout=10)
    assert b[0] == 3 and b[-1] == 3 and int(b.sum()) == 3 * (100 << 20)


def test_the_arena_is_reused_across_many_large_messages():
    # 30 x 8 MB through a 32 MB arena: only works if freed blocks come back.
    q = corral.Queue(arena_bytes=32 << 20)
    for i in range(30):
        q.put(np.full(1_000_000, i, dtype=np.float64), timeout=10)
        b = q.get(timeout=10)
        assert b[0] == i and b[-1] == i
        del b
    gc.collect()
    assert q._q.arena_used() == 0


# -- threads -----------------------------------------------------------------------


def test_many_threads_produce_and_consume_every_item_exactly_once():
    q = corral.Queue(maxsize=64)
    n_producers, n_consumers, per_producer = 4, 4, 500
    received: list[list] = [[] for _ in range(n_consumers)]
    errors: list[BaseException] = []

    def producer(tag):
        try:
            for i in range(per_producer):
                q.put((tag, i), timeout=20)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def consumer(k):
        try:
            while True:
                item = q.get(timeout=20)
                if item is None:
                    return
                received[k].append(item)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    consumers = [threading.Thread(target=consumer, args=(k,)) for k in range(n_consumers)]
    producers = [threading.Thread(target=producer, args=(t,)) for t in range(n_producers)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join(30)
    for _ in consumers:
        q.put(None, timeout=20)
    for t in consumers:
        t.join(30)
    assert not errors, errors
    assert not any(t.is_alive() for t in consumers + producers)
    everything = Counter(item for r in received for item in r)
    assert everything == Counter((t, i) for t in range(n_producers) for i in range(per_producer))
    # FIFO per producer, as each consumer saw it.
    for r in received:
        for tag in range(n_producers):
            seq = [i for t, i in r if t == tag]
            assert seq == sorted(seq)


# -- across processes ------------------------------------------------------------


def test_a_child_produces_and_the_parent_consumes(start):
    q = corral.Queue()
    p = start(_workers.produce, q, 200)
    assert [q.get(timeout=20) for _ in range(200)] == list(range(200))
    assert p.result(timeout=20) == 200


def test_the_parent_produces_and_a_child_consumes_and_returns_the_sum(start):
    q = corral.Queue(maxsize=10)  # smaller than the stream: backpressure
    p = start(_workers.consume_sum, q, 100)
    for i in range(100):
        q.put(i, timeout=20)
    assert p.result(timeout=20) == sum(range(100))


def test_large_arrays_cross_processes_in_both_directions(start):
    q_in, q_out = corral.Queue(), corral.Queue()
    p = start(_workers.apply_items, q_in, q_out, 2)
    a = np.arange(1_500_000, dtype=np.float64).reshape(1500, 1000)
    q_in.put((np.transpose, a))
    q_in.put((lambda x: x * 2, a[:, :7]))
    t = q_out.get(timeout=20)
    np.testing.assert_array_equal(t, a.T)
    np.testing.assert_array_equal(q_out.get(timeout=20), a[:, :7] * 2)
    assert p.result(timeout=20) == 2


def test_lambdas_in_items_run_in_a_child(start):
    q_in, q_out = corral.Queue(), corral.Queue()
    p = start(_workers.apply_items, q_in, q_out, 2)
    base = 100
    q_in.put((lambda x: x + base, 1))
    q_in.put((lambda s: s.upper(), "abc"))
    assert q_out.get(timeout=20) == 101
    assert q_out.get(timeout=20) == "ABC"
    assert p.result(timeout=20) == 2


def test_messages_bigger_than_the_ring_reach_a_child(start):
    q_in, q_out = corral.Queue(ring_bytes=1 << 16), corral.Queue()
    p = start(_workers.echo_sizes, q_in, q_out)
    payload = b"a" + b"\x00" * (20 * 1024 * 1024) + b"z"
    q_in.put(payload)
    q_in.put(None)
    assert q_out.get(timeout=30) == (len(payload), b"a", b"z")
    p.result(timeout=20)


def test_get_raises_channel_closed_once_the_only_producer_child_exited(start):
    q = corral.Queue()
    p = start(_workers.produce, q, 50)
    assert [q.get(timeout=20) for _ in range(50)] == list(range(50))
    # No join first: the exited child may still be an unreaped zombie.
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)
    assert p.result(timeout=20) == 50


def test_channel_closed_is_an_eof_error_and_not_raised_while_items_remain(start):
    q = corral.Queue()
    p = start(_workers.produce, q, 5)
    p.join(20)
    assert p.exitcode == 0
    assert q.qsize() == 5
    # The producer is gone, but its items are still delivered first.
    assert [q.get(timeout=5) for _ in range(5)] == list(range(5))
    with pytest.raises(EOFError):
        q.get(timeout=20)


def test_get_raises_channel_closed_when_the_living_producer_called_close(start):
    q = corral.Queue()
    stay, go = corral.Pipe()
    p = start(_workers.produce_close_then_wait, q, 10, stay)
    assert [q.get(timeout=20) for _ in range(10)] == list(range(10))
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)
    assert p.is_alive()  # it is the close(), not an exit, that ended the data
    go.send("go")
    assert p.result(timeout=20) == 10


def test_items_put_before_a_sigkill_are_received_then_channel_closed(start):
    q = corral.Queue(maxsize=100)
    p = start(_workers.produce_forever, q)
    first = [q.get(timeout=20) for _ in range(300)]
    assert first == list(range(300))
    # Kill it while it is putting (the queue fills up behind it).
    p.kill()
    p.join(20)
    assert p.exitcode == -signal.SIGKILL
    rest = []
    with pytest.raises(corral.ChannelClosed):
        while True:
            rest.append(q.get(timeout=20))
    # Nothing lost, nothing duplicated, nothing torn: a contiguous run.
    assert rest == list(range(300, 300 + len(rest)))


def test_a_producer_killed_while_putting_large_arrays_does_not_wedge_the_queue(start):
    q = corral.Queue(maxsize=4, arena_bytes=16 << 20)
    p = start(_workers.produce_arrays_forever, q, 1 << 20)
    for _ in range(10):
        i, a = q.get(timeout=20)
        assert a[0] == i % 251 and a[-1] == i % 251
        del a
    p.kill()
    p.join(20)
    drained = []
    with pytest.raises(corral.ChannelClosed):
        while True:
            i, a = q.get(timeout=20)
            assert a[0] == i % 251 and a[-1] == i % 251
            drained.append(i)
            del a
    # The queue and its arena remain usable: 40 MB through a 16 MB arena.
    gc.collect()
    for k in range(10):
        q.put(np.full(1 << 20, k, dtype=np.uint32), timeout=10)
        b = q.get(timeout=10)
        assert b[0] == k and b[-1] == k
        del b


def test_a_get_without_timeout_ends_with_channel_closed_when_the_producer_dies(start):
    q = corral.Queue()
    p = start(_workers.produce_forever, q)
    assert q.get(timeout=20) == 0
    outcome: list = []
    taken = [0]

    def drain():  # the usual consumer loop: no timeout at all
        try:
            while True:
                q.get()
                taken[0] += 1
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    assert wait_until(lambda: taken[0] > 0, 20), "the consumer thread took nothing"
    p.kill()
    t.join(20)
    assert not t.is_alive(), "get() kept waiting on a dead producer"
    assert len(outcome) == 1 and isinstance(outcome[0], corral.ChannelClosed), outcome


def test_a_fork_child_produces_into_a_queue_made_before_the_fork(start):
    q = corral.Queue()
    p = start(_workers.produce, q, 30, start_method="fork")
    assert [q.get(timeout=20) for _ in range(30)] == list(range(30))
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=20)
    assert p.result(timeout=20) == 30


def test_get_raises_channel_closed_after_70_producer_children_one_after_another(start):
    # More processes than the holder table once had slots (64): the slots of
    # exited children are reused, so the end of data is still seen.
    q = corral.Queue()
    for i in range(70):
        p = start(_workers.produce, q, 1, i, start_method="fork")
        p.join(20)
        assert p.exitcode == 0
    assert sorted(q.get(timeout=5) for _ in range(70)) == list(range(70))
    with pytest.raises(corral.ChannelClosed):
        q.get(timeout=5)


def test_a_simple_queue_passed_to_a_child(start):
    q = corral.SimpleQueue()
    p = start(_workers.produce, q, 5)
    assert [q.get() for _ in range(5)] == list(range(5))
    assert p.result(timeout=20) == 5


def test_arena_blocks_held_by_a_killed_consumer_are_reclaimed(start):
    q, report = corral.Queue(arena_bytes=16 << 20), corral.Queue()
    p = start(_workers.hold_two_items, q, report)
    q.put(np.ones(6 << 17), timeout=20)  # 6 MiB each: 12 of the 16 MiB
    q.put(np.ones(6 << 17), timeout=20)
    assert report.get(timeout=20) == 2 * (6 << 20)
    p.kill()
    p.join(20)
    # The dead consumer's 12 MiB must come back, or a 6 MiB put cannot fit.
    for k in range(5):
        q.put(np.full(6 << 17, k, dtype=np.float64), timeout=10)
        b = q.get(timeout=10)
        assert b[0] == k and b[-1] == k
        del b


def test_a_queue_is_usable_by_several_children_at_once(start):
    q = corral.Queue()
    producers = [start(_workers.produce, q, 100, 1000 * k) for k in range(2)]
    got = sorted(q.get(timeout=20) for _ in range(200))
    assert got == list(range(100)) + list(range(1000, 1100))
    for p in producers:
        assert p.result(timeout=20) == 100


def test_stress_two_producer_processes_two_consumer_threads_every_item_once(start):
    q = corral.Queue(maxsize=256)
    seconds = 1.0
    producers = [start(_workers.stress_producer, q, tag, seconds, 97) for tag in range(2)]
    seen: list[list] = [[], []]
    errors: list[BaseException] = []

    def consume(k):
        try:
            while True:
                for tag, i, payload in q.get_many(64, timeout=20):
                    if isinstance(payload, np.ndarray):
                        if not (payload.shape == (100_000,) and payload[0] == i % 256 and payload[-1] == i % 256):
                            errors.append(AssertionError(f"bad array for {(tag, i)}"))
                    elif payload != i:
                        errors.append(AssertionError(f"bad payload for {(tag, i)}: {payload!r}"))
                    seen[k].append((tag, i))
        except corral.ChannelClosed:
            return
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    counts = [p.result(timeout=30) for p in producers]
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a consumer never saw ChannelClosed"
    assert not errors, errors[:3]
    assert all(c > 0 for c in counts)
    everything = Counter(x for s in seen for x in s)
    assert everything == Counter((tag, i) for tag in range(2) for i in range(counts[tag]))
    for s in seen:  # per producer, each consumer saw increasing indices
        for tag in range(2):
            seq = [i for t, i in s if t == tag]
            assert seq == sorted(seq)


def _put_on(q, go, item):  # type: ignore[no-untyped-def]
    """Puts ``item`` into ``q`` (once ``go`` is set if given)."""
    if go is not None and not go.wait(30):
        raise TimeoutError("never told to put")
    q.put(item)


def test_get_waits_for_a_child_started_with_the_queue_before_it_has_even_loaded_it() -> None:
    # The only other producer has exited; a second child was just started
    # with the queue and is still booting (it has not unpickled the queue,
    # let alone put). The end of data must not be declared while it lives.
    q: corral.Queue[str] = corral.Queue()
    fast = corral.Process(target=_put_on, args=(q, None, "fast"))
    fast.start()
    go = corral.Event()
    slow = corral.Process(target=_put_on, args=(q, go, "slow"))
    try:
        assert q.get(timeout=20) == "fast"
        fast.join(20)
        assert fast.exitcode == 0
        slow.start()
        # slow puts only once this get waits: the get must wait, not end.
        releaser = act_when_blocked(q._q, threading.get_native_id(), go.set)
        assert q.get(timeout=20) == "slow"
        releaser.join(20)
        assert releaser.blocked, "the get did not wait for the booting child"
        slow.join(20)
        with pytest.raises(corral.ChannelClosed):
            q.get(timeout=20)
    finally:
        for p in (fast, slow):
            if p.pid is not None:
                p.kill()
                p.join(10)
