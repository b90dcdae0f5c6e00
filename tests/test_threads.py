"""corral.ThreadPoolExecutor, corral.Thread and the asyncio forms: the
concurrent.futures/threading API, plus lazy map, per-thread state, per-task
timeouts and an eventfd bridge to asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import threading
import time
import traceback
from concurrent.futures.thread import BrokenThreadPool

import pytest

import _pool_tasks as t
import corral
from _helpers import Counting, Interrupted, interrupt_after


def test_submit_map_and_exceptions() -> None:
    with corral.ThreadPoolExecutor(4) as pool:
        assert pool.submit(t.add, 2, b=3, scale=2).result(timeout=10) == 10
        assert list(pool.map(t.square, range(100))) == [x * x for x in range(100)]
        assert list(pool.map(t.add, range(3), range(3))) == [0, 2, 4]
        f = pool.submit(t.raise_value_error, "boom")
        with pytest.raises(ValueError, match="boom") as info:
            f.result(timeout=10)
        assert "raise_value_error" in "".join(traceback.format_tb(info.value.__traceback__))
        with pytest.raises(KeyError):
            list(pool.map(t.fail_at, range(10), itertools.repeat(5)))


def test_map_runs_chunks_and_raises_the_item_exception_itself() -> None:
    boom = KeyError("item 700")

    def f(x: int) -> int:
        if x == 700:
            raise boom
        return x

    with corral.ThreadPoolExecutor(2) as pool:
        before = threading.active_count()
        got = []
        with pytest.raises(KeyError) as info:
            for v in pool.map(f, range(2_000)):
                got.append(v)
        assert info.value is boom  # the object raised, not a copy
        assert got == list(range(700))
        # A tiny function runs many items per task: far fewer tasks than items.
        done_before = sum(s["tasks_done"] for s in pool.stats()["threads"])
        assert sum(pool.map(abs, range(2_000))) == sum(range(2_000))
        tasks = sum(s["tasks_done"] for s in pool.stats()["threads"]) - done_before
        assert tasks < 200, tasks
        assert list(pool.map(f, range(10), chunksize=3)) == list(range(10))
        assert threading.active_count() <= before + 2


def test_map_is_lazy_and_imap_unordered_yields_all() -> None:
    numbers = Counting()

    with corral.ThreadPoolExecutor(2) as pool:
        assert list(itertools.islice(pool.map(t.square, iter(numbers)), 50)) == [i * i for i in range(50)]
        # Bounded read-ahead: 4 chunks per thread in flight, each of at most
        # the thread pool's chunk cap.
        assert numbers.pulled <= 50 + 4 * 2 * corral.ThreadPoolExecutor._chunk_cap + 1
        assert sorted(pool.imap_unordered(t.square, range(200))) == sorted(i * i for i in range(200))
        gate = threading.Event()
        with pytest.raises(TimeoutError):
            list(pool.map(gate.wait, [30], timeout=0.1))  # runs until the gate opens
        gate.set()


def test_max_workers_bounds_concurrency_and_names_threads() -> None:
    with corral.ThreadPoolExecutor(3, thread_name_prefix="feeder") as pool:
        peaks = list(pool.map(t.track_concurrency, [0.05] * 12))
        assert max(peaks) <= 3
        assert pool.submit(t.thread_name).result(timeout=10).startswith("feeder")
        # A thread books its tasks when its burst ends, just after it set
        # the last future: the count may lag the results a moment.
        deadline = time.monotonic() + 10
        while True:
            stats = pool.stats()
            done = sum(s["tasks_done"] for s in stats["threads"])
            if done >= 13 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert 1 <= len(stats["threads"]) <= 3
        assert done == 13


def test_initializer_state_is_per_thread_and_a_failing_one_breaks_the_pool() -> None:
    made = []

    def init() -> dict[str, int]:
        made.append(threading.get_ident())
        return {"thread": threading.get_ident()}

    with corral.ThreadPoolExecutor(2, initializer=init) as pool:
        states = list(pool.map(lambda _: t.thread_state()["thread"], range(20)))
    assert set(states) <= set(made)

    def bad() -> None:
        raise OSError("no GPU")

    with corral.ThreadPoolExecutor(1, initializer=bad) as pool:
        f = pool.submit(t.square, 2)
        with pytest.raises(BrokenThreadPool):
            f.result(timeout=10)
        with pytest.raises(BrokenThreadPool):
            pool.submit(t.square, 2)


def test_a_thread_runs_its_initializer_once_and_keeps_its_locals_between_tasks() -> None:
    # One task at a time: each runs in a burst of its own. The core keeps
    # the thread's Python thread state between bursts, so the initializer
    # runs once and a threading.local set by one task is there for the next
    # (before, each burst made a new thread state: the initializer ran again
    # for every task and the locals were gone).
    runs = []
    local = threading.local()

    def count_visits() -> int:
        local.visits = getattr(local, "visits", 0) + 1
        return int(local.visits)

    with corral.ThreadPoolExecutor(1, initializer=lambda: runs.append(1)) as pool:
        visits = [pool.submit(count_visits).result(timeout=10) for _ in range(50)]
        ident = {pool.submit(threading.get_ident).result(timeout=10) for _ in range(10)}
    assert len(runs) == 1
    assert visits == list(range(1, 51))
    assert len(ident) == 1


def test_per_task_timeout_fails_the_future_only() -> None:
    gate = threading.Event()
    with corral.ThreadPoolExecutor(2) as pool:
        late = pool.options(timeout=0.2).submit(gate.wait, 30)  # runs until the gate opens
        fine = pool.options(timeout=5).submit(t.square, 3)
        with pytest.raises(TimeoutError, match="timeout"):
            late.result(timeout=10)
        gate.set()
        assert fine.result(timeout=10) == 9
        with pytest.raises(ValueError):
            pool.options(timeout=0)


def test_shutdown_semantics_and_bad_arguments() -> None:
    pool = corral.ThreadPoolExecutor(1)
    gate, started = threading.Event(), threading.Event()
    first = pool.submit(lambda: (started.set(), gate.wait(10))[1])
    rest = [pool.submit(t.square, i) for i in range(5)]
    assert started.wait(10)  # first runs: shutdown cannot cancel it
    assert rest[0].cancel()
    gate.set()
    pool.shutdown(wait=True, cancel_futures=True)
    assert first.result(timeout=1) is True
    assert all(f.done() for f in rest)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(t.square, 1)
    with pytest.raises(ValueError):
        corral.ThreadPoolExecutor(0)
    with pytest.raises(TypeError):
        corral.ThreadPoolExecutor(1, initializer=5)


def test_tasks_cancelled_by_shutdown_are_done_for_wait_and_as_completed_at_once() -> None:
    # They are CANCELLED_AND_NOTIFIED at once: wait() and as_completed()
    # count a merely CANCELLED future as not done until a thread takes it,
    # and no thread takes these (the stdlib's pool leaves them so).
    pool = corral.ThreadPoolExecutor(1)
    gate, started = threading.Event(), threading.Event()
    first = pool.submit(lambda: (started.set(), gate.wait(30))[1])
    rest = [pool.submit(t.square, i) for i in range(5)]
    try:
        assert started.wait(30)
        pool.shutdown(wait=False, cancel_futures=True)
        done, not_done = cf.wait(rest, timeout=0)
        assert not not_done and all(f.cancelled() for f in rest)
        assert set(cf.as_completed(rest, timeout=5)) == set(rest)
    finally:
        gate.set()
        pool.shutdown(wait=True)
    assert first.result(timeout=30) is True


def test_a_task_cancelled_while_queued_is_done_for_wait_once_a_thread_reaches_it() -> None:
    # A cancelled task drops its function and pool at once; the thread that
    # takes it must still make it CANCELLED_AND_NOTIFIED (wait/as_completed
    # count a merely CANCELLED future as not done: they hung).
    with corral.ThreadPoolExecutor(1) as pool:
        gate, started = threading.Event(), threading.Event()
        first = pool.submit(lambda: (started.set(), gate.wait(30))[1])
        assert started.wait(30)
        queued = pool.submit(t.square, 3)
        assert queued.cancel()
        after = pool.submit(t.square, 4)
        gate.set()
        assert after.result(timeout=30) == 16  # the thread took the cancelled one before it
        done, not_done = cf.wait([queued], timeout=30)
        assert done == {queued} and not not_done
        assert list(cf.as_completed([queued], timeout=30)) == [queued]
        assert first.result(timeout=30) is True


def test_submit_of_something_not_callable_gives_a_future_failing_with_type_error() -> None:
    # As the stdlib's: the future raises TypeError (None was taken for "the
    # task ended already", and the future stayed pending for ever).
    with corral.ThreadPoolExecutor(1) as pool:
        for fn in (None, 5):
            with pytest.raises(TypeError):
                pool.submit(fn).result(timeout=30)  # type: ignore[arg-type]


def test_futures_work_with_wait_callbacks_and_asyncio() -> None:
    with corral.ThreadPoolExecutor(4) as pool:
        fs = [pool.submit(t.square, i) for i in range(10)]
        done, _ = cf.wait(fs, timeout=10)
        assert len(done) == 10
        assert sorted(f.result() for f in cf.as_completed(fs)) == [i * i for i in range(10)]

        async def main() -> list[int]:
            loop = asyncio.get_running_loop()
            a = await pool.submit(t.square, 2)
            b = await pool.arun(t.add, 1, b=2)
            c = await loop.run_in_executor(pool, t.square, 4)
            d = [r async for r in pool.amap(t.square, range(5), limit=2)]
            e = await asyncio.gather(*[pool.arun(t.square, i) for i in range(300)])
            with pytest.raises(ValueError):
                await pool.arun(t.raise_value_error, "async boom")
            return [a, b, c, sum(d), sum(e)]

        assert asyncio.run(main()) == [4, 3, 16, 30, sum(i * i for i in range(300))]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_thread_result_returns_value_or_raises() -> None:
    th = corral.Thread(target=t.add, args=(1, 2), kwargs={"scale": 3})
    with pytest.raises(RuntimeError):
        th.result()
    th.start()
    assert th.result(timeout=10) == 9
    bad = corral.Thread(target=t.raise_value_error, args=("in thread",))
    bad.start()
    with pytest.raises(ValueError, match="in thread") as info:
        bad.result(timeout=10)
    assert "raise_value_error" in "".join(traceback.format_tb(info.value.__traceback__))
    gate = threading.Event()
    slow = corral.Thread(target=gate.wait, args=(30,))
    slow.start()
    with pytest.raises(TimeoutError):
        slow.result(timeout=0.05)
    gate.set()
    assert slow.result(timeout=10) is True


def test_channels_have_async_forms() -> None:
    async def main() -> list[object]:
        q: corral.Queue[int] = corral.Queue()
        a, b = corral.Pipe()
        loop = asyncio.get_running_loop()
        waiter = asyncio.ensure_future(q.aget(timeout=10))
        reader = asyncio.ensure_future(a.arecv())
        await asyncio.sleep(0.05)  # both wait; the loop is free
        assert not waiter.done() and not reader.done()
        await q.aput(7)
        loop.call_later(0.05, b.send, {"x": 1})
        got = [await waiter, await reader]
        await b.asend("again")
        got.append(await a.arecv())
        return got

    assert asyncio.run(main()) == [7, {"x": 1}, "again"]


# -- regressions found in review -------------------------------------------


def test_a_cancelled_aget_loses_no_item_and_simple_queues_have_async_forms() -> None:
    async def main() -> list[object]:
        q: corral.Queue[str] = corral.Queue()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.aget(), 0.05)
        q.put("first")
        q.put("second")
        got = [await q.aget(timeout=5), await q.aget(timeout=5)]
        sq: corral.SimpleQueue[int] = corral.SimpleQueue()
        await sq.aput(3)
        got.append(await sq.aget(timeout=5))
        with pytest.raises(__import__("queue").Empty):
            await sq.aget(timeout=0.05)
        return got

    assert asyncio.run(main()) == ["first", "second", 3]


def test_pipe_async_large_messages_and_one_reader_at_a_time() -> None:
    async def main() -> int:
        a, b = corral.Pipe()
        big = b"x" * (8 << 20)
        got, _ = await asyncio.wait_for(asyncio.gather(a.arecv(), b.asend(big)), 30)
        first = asyncio.ensure_future(a.arecv())
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="already waiting"):
            await a.arecv()
        b.send(1)
        assert await asyncio.wait_for(first, 10) == 1
        return len(got)

    assert asyncio.run(main()) == 8 << 20


def test_thread_map_results_after_the_with_block_and_shutdown_edges() -> None:
    with corral.ThreadPoolExecutor(2) as pool:
        lazy = pool.map(t.square, range(100))
        unordered = pool.imap_unordered(t.square, range(30))
    assert list(lazy) == [i * i for i in range(100)]
    assert sorted(unordered) == sorted(i * i for i in range(30))

    pool = corral.ThreadPoolExecutor(1)
    slow = pool.submit(time.sleep, 0.3)
    pool.shutdown(wait=False)
    pool.shutdown(wait=True)  # still joins the thread
    assert slow.done()

    inner = corral.ThreadPoolExecutor(1)
    f = inner.submit(lambda: inner.shutdown(wait=True))
    with pytest.raises(RuntimeError, match="cannot join current thread"):
        f.result(timeout=10)
    inner.shutdown(wait=False)


def test_asyncio_bridges_do_not_leak_loops_or_descriptors() -> None:
    import gc
    import os as _os

    with corral.ThreadPoolExecutor(2) as pool:
        asyncio.run(pool.arun(t.square, 1))
        gc.collect()
        before = len(_os.listdir("/proc/self/fd"))
        for _ in range(30):
            asyncio.run(pool.arun(t.square, 2))
        gc.collect()
        after = len(_os.listdir("/proc/self/fd"))
    assert after - before < 5, (before, after)


def test_timeout_watchdog_does_not_keep_finished_results() -> None:
    import gc
    import weakref

    class Big:
        pass

    with corral.ThreadPoolExecutor(1) as pool:
        f = pool.options(timeout=3600).submit(Big)
        ref = weakref.ref(f.result(timeout=10))
        del f
        gc.collect()
        assert ref() is None


def test_shutdown_wait_is_interrupted_by_a_signal_like_ctrl_c_and_a_later_shutdown_joins() -> None:
    # It joined the threads with the GIL released and never looked at
    # signals: Ctrl-C only arrived once the running task ended (8 s here).
    pool = corral.ThreadPoolExecutor(1)
    started, release = threading.Event(), threading.Event()
    fut = pool.submit(lambda: (started.set(), release.wait(30))[1])
    assert started.wait(10)
    try:
        with pytest.raises(Interrupted):
            with interrupt_after(0.2) as it:
                pool.shutdown(wait=True)
        # Generous for a loaded machine; a wait deaf to signals takes 30 s.
        assert it.elapsed < 10, f"shutdown(wait=True) ignored the signal for {it.elapsed:.1f} s"
        assert not fut.done(), "interrupting the wait does not touch the task"
        with pytest.raises(RuntimeError, match="after shutdown"):
            pool.submit(t.square, 1)
    finally:
        release.set()
    pool.shutdown(wait=True)  # the thread handed over before is joined now
    assert fut.result(timeout=0) is True
    assert not any(th.name.startswith(pool._name) for th in threading.enumerate())


def test_thread_join_and_result_and_a_pool_future_are_interrupted_by_a_signal_like_ctrl_c() -> None:
    release = threading.Event()
    th = corral.Thread(target=release.wait, args=(30,))
    th.start()
    pool = corral.ThreadPoolExecutor(1)
    fut = pool.submit(release.wait, 30)
    try:
        for wait in (th.join, th.result, fut.result):
            with pytest.raises(Interrupted):
                with interrupt_after(0.2) as it:
                    wait()
            # Generous for a loaded machine; a wait deaf to signals takes 30 s.
            assert it.elapsed < 10, f"{wait} ignored the signal for {it.elapsed:.1f} s"
    finally:
        release.set()
    assert th.result(timeout=10) is True
    assert fut.result(timeout=10) is True
    pool.shutdown(wait=True)


def test_the_pool_thread_wakes_the_sleepers_a_job_returns_and_runs_the_jobs_queued_after_it() -> None:
    # A job returns the sleepers of the future it ended: its thread wakes
    # them once it has released the GIL (the burst ends there) and goes on
    # with the jobs still queued.
    _core = corral._core
    quiet = _core.Sleeper()
    assert quiet.wait(0) is False
    quiet.wake()
    assert quiet.wait(0) is True and quiet.wait(None) is True

    core = _core.ThreadPoolCore(1, "sleepers")
    gate, ran = threading.Event(), []
    sleepers = [_core.Sleeper(), _core.Sleeper()]
    try:
        core.submit(lambda: gate.wait(30))  # holds the thread while the others queue
        core.submit(lambda: sleepers)
        core.submit(lambda: ran.append("after"))
        gate.set()
        assert all(s.wait(30) for s in sleepers)
        last = _core.Sleeper()
        core.submit(lambda: [last, "not a sleeper"])
        assert last.wait(30)
        assert ran == ["after"]
    finally:
        core.shutdown(True)
