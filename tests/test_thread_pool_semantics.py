"""corral.ThreadPoolExecutor against the stdlib executor's semantics that
CPython's test_concurrent_futures checks (issue 14): ``map(timeout=)``
cancels what has not started, ``map`` lets go of each result once
yielded (``test_free_reference``), the pool keeps no reference to a
finished task (``test_no_stale_references``), and ``imap_unordered`` takes
``chunksize``."""

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import corral


class Dummy:
    """An object that can be referenced weakly (an int cannot)."""

    def method(self, arg: object, *, key: object) -> "Dummy":
        return Dummy()


def make_dummy(_: int) -> Dummy:
    return Dummy()


@pytest.mark.parametrize("chunksize", [None, 1, 8])
def test_map_timeout_cancels_the_items_not_started(chunksize: int | None) -> None:
    release = threading.Event()
    started: list[int] = []

    def task(i: int) -> int:
        started.append(i)
        if i == 0:
            release.wait(30)
        return i

    pool = corral.ThreadPoolExecutor(1)
    try:
        with pytest.raises(TimeoutError):
            for _ in pool.map(task, range(40), timeout=0.2, chunksize=chunksize):
                pass
    finally:
        release.set()
        pool.shutdown(wait=True)
    # Item 0 had started (it ran on); no other item did, even those of the
    # running chunk after it.
    assert started == [0]


def test_a_stopped_map_cancels_the_rest_of_chunks_running_in_other_threads() -> None:
    # Chunks of 10 over 2 threads: item 0 raises once the chunk of items
    # 10-19 runs in the other thread; every item i % 10 == 0 but 0 waits
    # for the end of the test. The consumer stops at item 0's exception, so
    # no item after 10 (or 20, if the first thread took the third chunk
    # before the consumer stopped) may start.
    release = threading.Event()
    second_runs = threading.Event()
    started: list[int] = []

    def task(i: int) -> int:
        started.append(i)
        if i == 0:
            assert second_runs.wait(30)
            raise ValueError("stop")
        if i % 10 == 0:
            second_runs.set()
            release.wait(30)
        return i

    pool = corral.ThreadPoolExecutor(2)
    try:
        with pytest.raises(ValueError, match="stop"):
            for _ in pool.map(task, range(40), chunksize=10):
                pass
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert sorted(started) in ([0, 10], [0, 10, 20])


@pytest.mark.parametrize(
    "iterate",
    [
        lambda pool: pool.map(make_dummy, range(300)),
        lambda pool: pool.map(make_dummy, range(300), chunksize=50),
        lambda pool: pool.imap_unordered(make_dummy, range(300)),
        lambda pool: pool.options(timeout=60).map(make_dummy, range(300)),
    ],
    ids=["map", "map-chunksize", "imap_unordered", "options-map"],
)
def test_map_lets_go_of_each_result_once_yielded(iterate: Callable[[Any], Any]) -> None:
    # CPython's test_free_reference (issue #14406), over whole chunks.
    with corral.ThreadPoolExecutor(4) as pool:
        count = 0
        for obj in iterate(pool):
            ref = weakref.ref(obj)
            del obj  # nothing else holds it: freed here, without a gc pass
            assert ref() is None, f"result {count} still referenced after it was yielded"
            count += 1
        assert count == 300


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_a_finished_task_keeps_no_reference(timeout: float | None) -> None:
    with corral.ThreadPoolExecutor(2) as pool:
        submit = pool.submit if timeout is None else pool.options(timeout=timeout).submit
        target, arg, key = Dummy(), Dummy(), Dummy()
        refs = [weakref.ref(x) for x in (target, arg, key)]
        fut = submit(target.method, arg, key=key)
        result = fut.result(timeout=30)
        refs.append(weakref.ref(result))
        del target, arg, key, result, fut
        gc.collect()
        assert [r() for r in refs] == [None] * 4


def test_a_discarded_future_keeps_nothing_alive() -> None:
    # CPython's test_no_stale_references (issue #16284).
    collected = threading.Event()
    with corral.ThreadPoolExecutor(2) as pool:
        target = Dummy()
        ref = weakref.ref(target, lambda _: collected.set())
        pool.submit(target.method, 1, key=2)
        del target
        assert collected.wait(30), "the callable of a finished task is still referenced"
        assert ref() is None


def test_imap_unordered_takes_chunksize() -> None:
    with corral.ThreadPoolExecutor(2) as pool:
        tasks = 0
        enqueue = pool._enqueue

        def counting(*args: Any) -> Any:
            nonlocal tasks
            tasks += 1
            return enqueue(*args)

        pool._enqueue = counting  # type: ignore[method-assign]
        assert sorted(pool.imap_unordered(abs, range(-50, 50), chunksize=10)) == sorted(map(abs, range(-50, 50)))
        assert tasks == 10
        with pytest.raises(ValueError, match="chunksize"):
            pool.imap_unordered(abs, range(3), chunksize=0)
