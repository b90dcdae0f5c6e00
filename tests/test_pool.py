"""corral.ProcessPoolExecutor: the concurrent.futures API, and what kills
other pools (a worker killed mid-task, a timeout, a broken initializer,
Ctrl-C, the parent killed) failing only what it must."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import gc
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

import _pool_tasks as t
import _workers
import corral
from _helpers import Counting, wait_until
from corral import _fds

HERE = os.path.dirname(os.path.abspath(__file__))


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- the stdlib API ----------------------------------------------------------


def test_submit_returns_results_and_keeps_kwargs(pool: corral.ProcessPoolExecutor) -> None:
    assert pool.submit(t.square, 12).result(timeout=30) == 144
    assert pool.submit(t.add, 1, b=2, scale=10).result(timeout=30) == 30


def test_exception_keeps_type_and_remote_traceback(pool: corral.ProcessPoolExecutor) -> None:
    f = pool.submit(t.raise_value_error, "bad row 7")
    with pytest.raises(ValueError, match="bad row 7") as info:
        f.result(timeout=30)
    assert isinstance(info.value.__cause__, corral.RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__)


def test_map_is_ordered_and_accepts_several_iterables(pool: corral.ProcessPoolExecutor) -> None:
    assert list(pool.map(t.square, range(500))) == [x * x for x in range(500)]
    assert list(pool.map(t.add, range(5), range(10, 15))) == [10, 12, 14, 16, 18]
    assert list(pool.map(t.square, range(100), chunksize=7)) == [x * x for x in range(100)]
    assert list(pool.map(t.square, [])) == []


def test_map_raises_at_the_failing_item_after_earlier_results(pool: corral.ProcessPoolExecutor) -> None:
    got = []
    with pytest.raises(KeyError):
        for v in pool.map(t.fail_at, range(50), itertools.repeat(30), chunksize=4):
            got.append(v)
    assert got == list(range(30))


def test_map_reads_an_infinite_input_lazily(pool: corral.ProcessPoolExecutor) -> None:
    numbers = Counting()

    out = list(itertools.islice(pool.map(t.square, iter(numbers)), 2000))
    assert out == [i * i for i in range(2000)]
    # A bounded read-ahead: the chunk being yielded, a window of chunks in
    # flight and at most another arrived but unread or held back behind an
    # earlier one, each at most the sizer's largest chunk. (Before the
    # unread and held-back chunks counted, a consumer slower than the
    # workers let the map read 14 chunks ahead, and a stalled chunk without
    # bound.)
    largest = 1 << 16
    window = corral._core.chunks_in_flight(largest, pool._max_workers)
    assert numbers.pulled < 2000 + (2 * window + 1) * largest


class _RecordingSizer:
    """A ChunkSizer of fixed chunks of 100 that records what it is asked."""

    made: list[_RecordingSizer] = []

    def __init__(self) -> None:
        self.asked: list[tuple[int, int] | None] = []
        _RecordingSizer.made.append(self)

    def next(self) -> int:
        self.asked.append(None)
        return 100

    def next_of(self, left: int, workers: int) -> int:
        self.asked.append((left, workers))
        return min(100, max(1, left))

    def observe(self, items: int, busy_ns: int) -> None:
        pass

    def in_flight(self, workers: int) -> int:
        return 4


@pytest.mark.parametrize("how", ["range", "list", "zip", "generator"])
def test_a_map_of_known_length_sizes_chunks_by_the_items_left(
    pool: corral.ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # The sizer caps chunks at a share of what is left (ChunkSizer.next_of):
    # the map tells it how many items are left whenever it knows.
    monkeypatch.setattr(corral._core, "ChunkSizer", _RecordingSizer)
    monkeypatch.setattr(pool, "_sizers", {})  # no sizer remembered from an earlier map
    _RecordingSizer.made.clear()
    if how == "zip":
        out = list(pool.map(t.add, range(450), [0] * 450))
        assert out == list(range(450))
    else:
        items = {"range": range(450), "list": list(range(450)), "generator": iter(range(450))}[how]
        assert list(pool.map(t.square, items)) == [i * i for i in range(450)]
    (sizer,) = _RecordingSizer.made
    asked = [a for a in sizer.asked if a is None or a[0] > 0]
    if how == "generator":
        assert set(asked) == {None}
    else:
        assert asked == [(450 - 100 * i, pool._max_workers) for i in range(5)]


class _NoWeakref:
    """A callable that cannot be weakly referenced."""

    __slots__ = ()

    def __call__(self, x: int) -> int:
        return x


def test_a_map_starts_from_what_the_last_map_of_its_function_measured() -> None:
    # The pool keeps a function's chunk sizer between maps (weakly): the
    # next map starts at the measured chunk, not at an unmeasured one.
    def local_square(x: int) -> int:
        return x * x

    with corral.ProcessPoolExecutor(2) as p:
        assert list(p.map(local_square, range(20_000))) == [x * x for x in range(20_000)]
        sizer = p._sizer(local_square)
        expected = sizer.next_of(100_000, p._max_workers)
        it = p.map(local_square, range(100_000))
        (st,) = list(p._streams)
        assert st.sizer is sizer
        with st.lock:
            first = min(st.inflight.values())  # (sequence number, items, chunk)
        assert first[0] == 0 and first[1] == expected, (first[:2], expected)
        assert sum(it) == sum(x * x for x in range(100_000))
        # A callable made per call, or one that cannot be weakly referenced,
        # starts afresh; a function's sizer goes with it.
        unreferenceable = _NoWeakref()
        made = [p._sizer(lambda x: x), p._sizer(lambda x: x), p._sizer(unreferenceable), p._sizer(unreferenceable)]
        assert len({id(s) for s in made}) == 4
        ref = weakref.ref(local_square)
        del local_square
        gc.collect()
        assert ref() is None


def _release_the_head(go: Any, reader: threading.Thread, first: list[int], it: Iterator[int]) -> None:
    """Ends a stalled head (item 0 of a ``t.hold_zero`` map, waiting on
    ``go``): the ``reader`` thread gets it, and the map goes on in order."""
    go.set()
    reader.join(60)
    assert first == [0]
    assert list(itertools.islice(it, 5)) == [1, 2, 3, 4, 5]


def test_a_sequence_map_behind_a_stalled_chunk_keeps_the_other_worker_busy(pool: corral.ProcessPoolExecutor) -> None:
    # Item 0 runs until told (a worker preempted on a busy machine); the
    # other worker must go on with the later chunks past two windows of
    # them done and held back (one in room, one in flight: it stopped
    # there, idle while the head ran), up to a bound: a range's results
    # are not all made behind the head.
    go = corral.Event()
    it = pool.map(functools.partial(t.hold_zero, go=go), range(100_000), chunksize=1)
    first: list[int] = []
    reader = threading.Thread(target=lambda: first.append(next(it)), daemon=True)
    reader.start()
    (st,) = list(pool._streams)
    window = corral._core.chunks_in_flight(1, pool._max_workers)
    assert wait_until(lambda: st.held > 2 * window + 1, timeout=60), (st.held, st.items_sent)

    def read_ahead_full() -> bool:
        with st.lock:
            return st.inbox.qsize() == 0 and not st._room()

    assert wait_until(read_ahead_full, timeout=60), (st.held, st.items_sent)
    bound = (corral.pool._HELD_WINDOWS + 2) * window + 2  # in flight, held back, unread
    assert st.items_sent <= bound
    assert not wait_until(lambda: st.items_sent > bound, timeout=2), st.items_sent
    _release_the_head(go, reader, first, it)
    it = iter(())  # the map is let go: its unread chunks are cancelled


def test_an_ordered_map_behind_a_stalled_chunk_stops_reading_its_input(pool: corral.ProcessPoolExecutor) -> None:
    # Item 0 runs until told; the other worker finishes every later chunk.
    # The map holds those back (ordered) and must stop reading the endless
    # input: in flight, unread and held-back chunks count against its
    # read-ahead (they did not: it read on for as long as the head ran).
    numbers = Counting()

    go = corral.Event()
    it = pool.map(t.hold_zero, iter(numbers), itertools.repeat(go))
    first: list[int] = []
    reader = threading.Thread(target=lambda: first.append(next(it)), daemon=True)
    reader.start()
    (st,) = list(pool._streams)
    largest = 1 << 16
    bound = (2 * corral._core.chunks_in_flight(largest, pool._max_workers) + 1) * largest

    def read_ahead_full() -> bool:
        # Nothing unread, and the map would send no more: in flight (some
        # queued behind the head on its worker) and held back fill its room.
        with st.lock:
            return st.inbox.qsize() == 0 and not st._room()

    assert wait_until(lambda: numbers.pulled > bound or read_ahead_full(), timeout=60), (
        numbers.pulled,
        len(st.inflight),
    )
    # And it stays full while the head runs: a map that kept reading passed
    # the bound within a fraction of this (a negative check needs a span).
    assert not wait_until(lambda: numbers.pulled > bound, timeout=2), numbers.pulled
    _release_the_head(go, reader, first, it)
    it = iter(())  # the map is let go: its unread chunks are cancelled


def test_imap_unordered_yields_every_result(pool: corral.ProcessPoolExecutor) -> None:
    assert sorted(pool.imap_unordered(t.square, range(300))) == sorted(x * x for x in range(300))


def test_map_timeout_raises_timeout_error(pool: corral.ProcessPoolExecutor) -> None:
    go = corral.Event()
    with pytest.raises(TimeoutError):
        list(pool.map(t.wait_for, [go], timeout=0.2))  # runs until go
    go.set()


def test_lambdas_and_closures_run(pool: corral.ProcessPoolExecutor) -> None:
    k = 5
    assert pool.submit(lambda x: x + k, 1).result(timeout=30) == 6
    assert list(pool.map(lambda x: -x, range(3))) == [0, -1, -2]


def test_unpicklable_argument_raises_in_submit(pool: corral.ProcessPoolExecutor) -> None:
    with pytest.raises(TypeError):
        pool.submit(t.square, threading.Lock())
    assert pool.submit(t.square, 3).result(timeout=30) == 9


def test_unpicklable_result_fails_only_its_future(pool: corral.ProcessPoolExecutor) -> None:
    bad = pool.submit(t.unpicklable_result)
    good = pool.submit(t.square, 4)
    with pytest.raises(TypeError, match="pickle"):
        bad.result(timeout=30)
    assert good.result(timeout=30) == 16


def test_futures_work_with_wait_as_completed_callbacks_and_asyncio(pool: corral.ProcessPoolExecutor) -> None:
    fs = [pool.submit(t.square, i) for i in range(20)]
    done, not_done = cf.wait(fs, timeout=30)
    assert len(done) == 20 and not not_done
    assert sorted(f.result() for f in cf.as_completed([pool.submit(t.square, i) for i in range(5)], timeout=30)) == [
        0,
        1,
        4,
        9,
        16,
    ]
    seen = threading.Event()
    pool.submit(t.square, 2).add_done_callback(lambda f: seen.set())
    assert seen.wait(30)

    async def main() -> list[int]:
        a = await pool.submit(t.square, 6)
        b = await asyncio.wrap_future(pool.submit(t.square, 7))
        c = await asyncio.get_running_loop().run_in_executor(pool, t.square, 8)
        return [a, b, c]

    assert asyncio.run(main()) == [36, 49, 64]


def test_numpy_arrays_travel_both_ways(pool: corral.ProcessPoolExecutor) -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(2_000_000, dtype=np.float64)  # 16 MB: through shared memory
    out = pool.submit(t.double, arr).result(timeout=30)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr * 2)
    small = pool.submit(t.double, np.ones(3)).result(timeout=30)
    assert small.tolist() == [2.0, 2.0, 2.0]


def test_cancel_of_a_queued_task_stops_it_from_running(tmp_path) -> None:
    marker = str(tmp_path / "ran")
    with corral.ProcessPoolExecutor(1) as p:
        p.submit(t.square, 1).result(timeout=30)  # the worker is up
        go = corral.Event()
        blocker = p.submit(t.wait_for, go, "done")
        queued = p.submit(t.touch, marker)  # behind it: the only worker is busy until go
        assert wait_until(blocker.running, 30)
        assert queued.cancel()
        assert queued.cancelled()
        with pytest.raises(cf.CancelledError):
            queued.result(timeout=1)
        assert blocker.cancel() is False  # running
        go.set()
        assert blocker.result(timeout=30) == "done"
        p.submit(t.square, 1).result(timeout=30)
    assert not os.path.exists(marker)


def test_stats_report_workers_and_latency(pool: corral.ProcessPoolExecutor) -> None:
    list(pool.map(t.square, range(200), chunksize=1))
    s = pool.stats()
    assert len(s["workers"]) == 2
    assert sum(w["tasks_done"] for w in s["workers"]) >= 1
    assert all(w["busy_s"] >= 0 and w["idle_s"] >= 0 for w in s["workers"])
    assert s["completed"] >= 200
    assert 0 < s["latency_s"]["p50"] <= s["latency_s"]["p99"]


def test_shutdown_semantics() -> None:
    p = corral.ProcessPoolExecutor(1)
    p.submit(t.square, 1).result(timeout=30)
    go = corral.Event()
    first = p.submit(t.wait_for, go, "first")
    assert wait_until(first.running, 30)  # running: not cancelled by shutdown
    rest = [p.submit(t.square, i) for i in range(5)]  # wait behind it until go
    # first ends once shutdown has cancelled (ended) the rest; shutdown waits for it.
    releaser = threading.Thread(target=lambda: (cf.wait(rest, timeout=30), go.set()))
    releaser.start()
    p.shutdown(wait=True, cancel_futures=True)
    releaser.join(30)
    assert first.result(timeout=1) == "first"
    assert all(f.cancelled() or f.done() for f in rest)
    assert any(f.cancelled() for f in rest)
    with pytest.raises(RuntimeError, match="after shutdown"):
        p.submit(t.square, 1)
    p.shutdown()  # twice is fine
    with corral.ProcessPoolExecutor(2) as p2:
        fs = [p2.submit(t.sleep_then, 0.1, i) for i in range(4)]
    assert [f.result(timeout=0) for f in fs] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"max_workers": 0}, ValueError),
        ({"initializer": 3}, TypeError),
        ({"max_tasks_per_child": 0}, ValueError),
        ({"start_method": "threads"}, ValueError),
        ({"preload": ["numpy"], "start_method": "spawn"}, ValueError),
        ({"retries": -1}, ValueError),
    ],
)
def test_bad_arguments_raise(kwargs, error) -> None:
    with pytest.raises(error):
        corral.ProcessPoolExecutor(**kwargs)


def test_bad_call_arguments_raise(pool: corral.ProcessPoolExecutor) -> None:
    with pytest.raises(ValueError):
        pool.map(t.square, range(3), chunksize=0)
    with pytest.raises(ValueError):
        pool.options(timeout=-1)
    with pytest.raises(TypeError):
        pool.submit(42)


# -- per-worker state and recycling ------------------------------------------


def test_initializer_result_is_worker_state() -> None:
    with corral.ProcessPoolExecutor(2, initializer=t.model_init, initargs=(100,)) as p:
        assert list(p.map(t.use_model, range(5))) == [100, 101, 102, 103, 104]
    with corral.ProcessPoolExecutor(1) as p:
        with pytest.raises(RuntimeError, match="worker_state"):
            p.submit(t.no_state).result(timeout=30)
    with pytest.raises(RuntimeError):
        corral.worker_state()


def test_fork_start_method_runs_tasks_and_survives_a_crash() -> None:
    with corral.ProcessPoolExecutor(2, start_method="fork", initializer=t.model_init, initargs=(1,)) as p:
        assert list(p.map(t.use_model, range(4))) == [1, 2, 3, 4]
        with pytest.raises(corral.WorkerLostError):
            p.submit(t.sigkill_self).result(timeout=30)
        assert p.submit(lambda: 5).result(timeout=30) == 5


def test_forkserver_preloads_and_reports_exit_codes() -> None:
    with corral.ProcessPoolExecutor(
        2, start_method="forkserver", preload=["json"], initializer=t.model_init, initargs=(7,)
    ) as p:
        assert list(p.map(t.use_model, range(3))) == [7, 8, 9]
        with pytest.raises(corral.WorkerLostError) as info:
            p.submit(t.sigkill_self).result(timeout=30)
        assert info.value.exitcode == -signal.SIGKILL
        with pytest.raises(corral.WorkerLostError) as info:
            p.submit(t.exit_now, 4).result(timeout=30)
        assert info.value.exitcode == 4
        assert p.submit(lambda: "fine").result(timeout=30) == "fine"
    with corral.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as p:
        assert p.submit(t.square, 5).result(timeout=30) == 25


def test_failing_initializer_breaks_the_pool_clearly() -> None:
    start = time.monotonic()
    with corral.ProcessPoolExecutor(2, initializer=t.bad_init) as p:
        # Workers forked by the fork server may all have failed before the
        # submit: it raises then, else its future does.
        with pytest.raises(BrokenProcessPool, match="bad_init") as info:
            p.submit(t.square, 2).result(timeout=30)
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(BrokenProcessPool):
            p.submit(t.square, 3)
    assert time.monotonic() - start < 60  # generous: spawns on a loaded machine


def test_max_tasks_per_child_replaces_workers() -> None:
    with corral.ProcessPoolExecutor(1, max_tasks_per_child=2) as p:
        pids = [p.submit(t.pid).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3


def test_max_memory_per_child_replaces_a_grown_worker() -> None:
    with corral.ProcessPoolExecutor(1, max_memory_per_child=150 << 20) as p:
        a = p.submit(t.grow_memory, 200).result(timeout=30)
        b = p.submit(t.pid).result(timeout=30)
    assert a != b


# -- what kills other pools --------------------------------------------------


def test_sigkilled_worker_fails_only_its_task_and_is_replaced() -> None:
    with corral.ProcessPoolExecutor(2) as p:
        others = [p.submit(t.sleep_then, 0.05, i) for i in range(10)]
        bad = p.submit(t.sigkill_self)
        with pytest.raises(corral.WorkerLostError) as info:
            bad.result(timeout=30)
        assert info.value.exitcode == -signal.SIGKILL
        assert [f.result(timeout=30) for f in others] == list(range(10))
        assert p.submit(t.square, 5).result(timeout=30) == 25
        assert sum(w["restarts"] for w in p.stats()["workers"]) >= 1


@pytest.mark.parametrize("fn, args, code", [(t.exit_now, (3,), 3), (t.segfault, (), -signal.SIGSEGV)])
def test_exit_and_segfault_surface_as_worker_lost(fn, args, code) -> None:
    with corral.ProcessPoolExecutor(1) as p:
        with pytest.raises(corral.WorkerLostError) as info:
            p.submit(fn, *args).result(timeout=30)
        assert info.value.exitcode == code
        assert p.submit(t.square, 3).result(timeout=30) == 9


def test_a_worker_killed_from_outside_loses_at_most_its_running_task() -> None:
    with corral.ProcessPoolExecutor(2) as p:
        victim = p.submit(t.pid).result(timeout=30)
        fs = [p.submit(t.sleep_then, 0.02, i) for i in range(100)]
        assert wait_until(lambda: any(f.done() for f in fs), 30)  # the work flows
        os.kill(victim, signal.SIGKILL)
        done, _ = cf.wait(fs, timeout=30)
        lost = [f for f in fs if f.exception() is not None]
        assert len(done) == 100
        assert len(lost) <= 1
        assert all(isinstance(f.exception(), corral.WorkerLostError) for f in lost)
        assert [f.result() for f in fs if f not in lost] == [i for i, f in enumerate(fs) if f not in lost]


def test_map_with_retries_survives_a_worker_killed_mid_map() -> None:
    with corral.ProcessPoolExecutor(2) as p:
        victim = p.submit(t.pid).result(timeout=30)
        results = p.options(retries=1).map(t.sleep_then, [0.02] * 100, range(100), chunksize=1)
        got = [next(results)]
        os.kill(victim, signal.SIGKILL)
        got.extend(results)
        assert got == list(range(100))


def test_retries_rerun_a_task_whose_worker_died(tmp_path) -> None:
    marker = str(tmp_path / "died-once")
    with corral.ProcessPoolExecutor(1) as p:
        assert p.options(retries=1).submit(t.die_once, marker).result(timeout=30) == "second try"
    with corral.ProcessPoolExecutor(1, retries=0) as p:
        with pytest.raises(corral.WorkerLostError):
            p.submit(t.die_once, str(tmp_path / "other")).result(timeout=30)


def test_timeout_kills_only_the_late_task() -> None:
    with corral.ProcessPoolExecutor(2) as p:
        late = p.options(timeout=0.3).submit(t.sleep_then, 30)
        fine = p.submit(t.sleep_then, 0.5, "fine")
        assert wait_until(lambda: late.running() or late.done(), 30)  # its 0.3 s count from here
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            late.result(timeout=30)
        assert time.monotonic() - start < 10  # generous: the task sleeps 30 s
        assert fine.result(timeout=30) == "fine"
        assert p.submit(t.square, 2).result(timeout=30) == 4


def test_kill_stops_a_running_task() -> None:
    with corral.ProcessPoolExecutor(1) as p:
        f = p.submit(t.sleep_then, 30)
        assert wait_until(f.running, 30)
        assert f.cancel() is False
        assert f.kill()
        assert f.cancelled()
        assert p.submit(t.square, 3).result(timeout=30) == 9
        done = p.submit(t.square, 1)
        done.result(timeout=30)
        assert done.kill() is False


def test_two_hundred_thousand_tasks_keep_parent_memory_flat() -> None:
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    with corral.ProcessPoolExecutor(2) as p:
        for _ in p.imap_unordered(t.square, range(20_000), chunksize=1):
            pass
        before = rss()
        n = 0
        for _ in p.imap_unordered(t.square, range(200_000), chunksize=1):
            n += 1
        grown = rss() - before
    assert n == 200_000
    assert grown < 40 << 20, f"parent grew by {grown >> 20} MiB"


def _script(body: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {HERE!r})\n" + textwrap.dedent(body)
    return [sys.executable, "-c", code]


def test_ctrl_c_during_map_stops_the_work_promptly() -> None:
    proc = subprocess.Popen(
        _script(
            """
            import threading, corral, _pool_tasks as t
            if __name__ == "__main__":
                with corral.ProcessPoolExecutor(2) as p:
                    p.submit(t.square, 1).result(30)
                    started = corral.Event()
                    # Says "mapping" once a task of the map runs (the main thread is in the map).
                    threading.Thread(target=lambda: started.wait(60) and print("mapping", flush=True)).start()
                    try:
                        for _ in p.map(t.set_then_sleep, [started] * 20, [30.0] * 20, chunksize=1):
                            pass
                    except KeyboardInterrupt:
                        print("interrupted", flush=True)
                print("left", flush=True)
            """
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "mapping"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert out.split() == ["interrupted", "left"], out
    # Generous for a loaded machine; without the stop the tasks run 30 s.
    assert took < 10, f"took {took:.1f} s to leave the with block"


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_parent_sigkilled_leaves_no_worker_behind(method: str) -> None:
    proc = subprocess.Popen(
        _script(
            f"""
            import time, corral, _pool_tasks as t
            if __name__ == "__main__":
                p = corral.ProcessPoolExecutor(2, start_method={method!r})
                pids = set(p.map(t.pid, range(50), chunksize=1))
                while len(pids) < 2:
                    pids |= set(p.map(t.pid, range(50), chunksize=1))
                print(*pids, flush=True)
                p.submit(t.sleep_then, 60)
                time.sleep(60)
            """
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(pid_alive(x) for x in pids)
    proc.kill()
    proc.wait(10)
    assert wait_until(lambda: not any(pid_alive(x) for x in pids), 30), "a worker outlived its SIGKILLed parent"


def test_progress_bar_counts_every_item(pool: corral.ProcessPoolExecutor, capsys) -> None:
    pytest.importorskip("tqdm")
    assert list(pool.map(t.square, range(300), progress=True)) == [x * x for x in range(300)]
    assert "300/300" in capsys.readouterr().err
    assert sorted(pool.imap_unordered(t.square, iter(range(50)), progress=True)) == [x * x for x in range(50)]
    assert "50" in capsys.readouterr().err


# -- regressions found in review -------------------------------------------


def test_a_result_the_parent_cannot_load_fails_only_its_future(monkeypatch) -> None:
    monkeypatch.setenv("CORRAL_TEST_PARENT", str(os.getpid()))
    with corral.ProcessPoolExecutor(1) as p:
        bad = p.submit(t.raise_parent_cannot_load)
        with pytest.raises(RuntimeError, match="cannot be loaded in the parent"):
            bad.result(timeout=30)
        assert p.submit(t.square, 6).result(timeout=30) == 36


def test_map_results_can_be_read_after_the_with_block() -> None:
    with corral.ProcessPoolExecutor(2) as p:
        lazy = p.map(t.square, range(300), chunksize=3)
        unordered = p.imap_unordered(t.square, range(50))
    assert list(lazy) == [x * x for x in range(300)]
    assert sorted(unordered) == [x * x for x in range(50)]


def test_map_ends_after_shutdown_with_cancel_futures() -> None:
    p = corral.ProcessPoolExecutor(1)
    p.submit(t.square, 1).result(timeout=30)
    it = p.map(t.sleep_then, [0.2] * 50, range(50), chunksize=1)
    assert next(it) == 0
    p.shutdown(wait=False, cancel_futures=True)
    got = []
    with pytest.raises((cf.CancelledError, RuntimeError)):
        for v in it:
            got.append(v)
    p.shutdown(wait=True)
    assert got == list(range(1, 1 + len(got)))


def test_a_callable_object_is_pickled_with_its_current_state() -> None:
    s = t.Scaler(10)
    with corral.ProcessPoolExecutor(1) as p:
        assert p.submit(s, 2).result(timeout=30) == 20
        s.k = 100
        assert p.submit(s, 2).result(timeout=30) == 200


def test_a_shared_array_passed_as_a_temporary_reaches_the_worker() -> None:
    np = pytest.importorskip("numpy")
    with corral.ProcessPoolExecutor(1) as p:
        f = p.submit(t.total, corral.share(np.ones(1000)))
        assert f.result(timeout=30) == 1000.0
        assert list(p.map(t.total, [corral.share(np.ones(10)) for _ in range(3)])) == [10.0] * 3


def test_held_results_are_copied_out_of_shared_memory_under_pressure(monkeypatch) -> None:
    pytest.importorskip("numpy")
    monkeypatch.setattr(corral._shm_arrays, "PRESSURE", 40 << 20)
    with corral.ProcessPoolExecutor(1) as p:
        kept = [p.submit(t.big_array, 8).result(timeout=30) for _ in range(12)]  # 96 MiB held
        assert all(a.sum() == (8 << 17) for a in kept)
        assert p._results._q.arena_used() <= (40 << 20) + (16 << 20)


def test_out_of_range_options_are_clear_errors(pool: corral.ProcessPoolExecutor) -> None:
    with pytest.raises(ValueError, match="timeout"):
        pool.options(timeout=5e6)
    assert pool.submit(t.square, 2).result(timeout=30) == 4


def test_a_worker_dying_with_cancelled_tasks_queued_does_not_deadlock_the_parent() -> None:
    # The dead worker's cancelled tasks are released by the event reader,
    # not under the pool's lock while another thread holds the GIL.
    with corral.ProcessPoolExecutor(1) as p:
        p.submit(t.square, 1).result(timeout=30)
        go = corral.Event()
        crash = p.submit(t.exit_when, go, 1)
        behind = [p.submit(t.square, i) for i in range(10)]
        assert wait_until(crash.running, 30)
        assert all(b.cancel() for b in behind)
        go.set()  # the worker dies now: hammer the pool while its death is handled
        deadline = time.monotonic() + 30
        rounds = 0
        while (not crash.done() or rounds < 200) and time.monotonic() < deadline:
            p.stats()
            p.submit(t.square, 2)
            rounds += 1
        assert isinstance(crash.exception(timeout=30), corral.WorkerLostError)


def test_forkserver_with_a_bad_preload_raises_the_import_error_and_leaves_nothing() -> None:
    with pytest.raises(RuntimeError, match="No module named 'no_such_module_corral'"):
        corral.ProcessPoolExecutor(1, start_method="forkserver", preload=["no_such_module_corral"])


# -- memory: the result arena gives memory back; address-space limits ---------

#: Free memory a giant block leaves warm (arena.rs WARM_AFTER_GIANT), plus the
#: result queue's ring (4 MiB) and a little slack for block headers.
_WARM_BOUND = (64 << 20) + (4 << 20) + (1 << 20)


def test_a_large_result_gives_its_shared_memory_back_once_dropped() -> None:
    with corral.ProcessPoolExecutor(1) as p:
        fd = p._results._q.fileno()

        def allocated() -> int:
            return os.fstat(fd).st_blocks * 512

        r = p.submit(t.big_array, 256).result(timeout=30)
        assert r.nbytes == 256 << 20 and allocated() >= 256 << 20
        del r
        assert allocated() <= _WARM_BOUND, f"{allocated() >> 20} MiB still allocated"
        assert p.submit(t.big_array, 1).result(timeout=30).sum() == 1 << 17


@pytest.mark.parametrize("gib", [2, 8, 16])
def test_a_pool_and_queues_start_under_an_address_space_limit(gib: int) -> None:
    out = subprocess.run(
        _script(
            f"""
            import resource, corral, _pool_tasks as t
            if __name__ == "__main__":
                limit = {gib} << 30
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                with corral.ProcessPoolExecutor(2) as p:
                    assert p.submit(abs, -3).result(timeout=30) == 3
                    assert p.submit(t.big_array, 8).result(timeout=30).sum() == 1 << 20
                qs = [corral.Queue() for _ in range(8)]
                qs[-1].put(b"x" * 200_000)
                assert qs[-1].get(timeout=10) == b"x" * 200_000
                try:
                    corral.Queue(arena_bytes=limit)
                except MemoryError as e:
                    print("refused:", e)
                print("ok")
            """
        ),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "ok"
    # Asked for more than the limit: a clear error naming the limit.
    assert "address-space limit (RLIMIT_AS, `ulimit -v`)" in out.stdout, out.stdout


def test_a_submit_lends_descriptors_only_when_its_arguments_may_hold_some(monkeypatch):
    # A task of scalars with a memoized function skips ``_fds.lending`` (the
    # fast path of a tiny task); one whose arguments hold a corral Queue
    # lends the queue's descriptor for the task's life, as before.
    entered: list[int] = []

    class CountingLending(_fds.lending):
        __slots__ = ()

        def __enter__(self) -> _fds.lending:
            entered.append(1)
            return super().__enter__()

    monkeypatch.setattr(_fds, "lending", CountingLending)
    with corral.ProcessPoolExecutor(1) as pool:
        assert pool.submit(t.square, 3).result(timeout=60) == 9  # the function's first pickle: lent
        before = len(entered)
        assert [pool.submit(t.square, i).result(timeout=60) for i in range(3)] == [0, 1, 4]
        assert pool.submit(t.add, 1, 2).result(timeout=60) == 3
        assert len(entered) == before + 1, "add's first pickle is lent, the scalar calls are not"
        q = corral.Queue()
        assert pool.submit(_workers.produce, q, 3).result(timeout=60) == 3
        assert len(entered) == before + 2
        assert [q.get(timeout=60) for _ in range(3)] == [0, 1, 2]
        assert pool.submit(t.add, 1, scale=3).result(timeout=60) == 3  # keywords: lent
        assert len(entered) == before + 3
