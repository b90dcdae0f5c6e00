"""``corral.Pool``: ``multiprocessing.Pool``'s API on corral's process pool
(several cases follow CPython's ``_test_multiprocessing`` ``_TestPool``)."""

from __future__ import annotations

import builtins
import concurrent.futures as cf
import gc
import itertools
import multiprocessing
import threading
from typing import Any

import pytest

import _mp_tasks
import _pool_tasks
import corral

TIMEOUT = 60


@pytest.fixture(scope="module")
def mp_pool() -> Any:
    p = corral.Pool(2)
    yield p
    p.terminate()


def test_apply_and_apply_async(mp_pool: corral.Pool) -> None:
    assert mp_pool.apply(_pool_tasks.add, (2, 3), {"scale": 2}) == 10
    res = mp_pool.apply_async(_pool_tasks.square, (7,))
    assert res.get(TIMEOUT) == 49
    assert res.ready() and res.successful()


def test_callbacks_run_before_get_returns(mp_pool: corral.Pool) -> None:
    got: list[Any] = []
    ok = mp_pool.apply_async(_pool_tasks.square, (5,), callback=got.append)
    assert ok.get(TIMEOUT) == 25
    assert got == [25]
    errors: list[BaseException] = []
    bad = mp_pool.apply_async(_pool_tasks.raise_value_error, ("no",), error_callback=errors.append)
    with pytest.raises(ValueError, match="no"):
        bad.get(TIMEOUT)
    assert not bad.successful()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_map_starmap_and_async_forms(mp_pool: corral.Pool) -> None:
    assert mp_pool.map(_pool_tasks.square, range(100)) == [x * x for x in range(100)]
    assert mp_pool.map(_pool_tasks.square, range(100), chunksize=7) == [x * x for x in range(100)]
    assert mp_pool.map(_pool_tasks.square, []) == []
    pairs = list(zip(range(10), range(10, 20), strict=True))
    assert mp_pool.starmap(_pool_tasks.add, pairs) == [a + b for a, b in pairs]
    seen: list[Any] = []
    res = mp_pool.map_async(_pool_tasks.square, range(50), callback=seen.append)
    assert res.get(TIMEOUT) == [x * x for x in range(50)]
    assert seen == [[x * x for x in range(50)]]
    assert mp_pool.starmap_async(_pool_tasks.add, pairs, chunksize=3).get(TIMEOUT) == [a + b for a, b in pairs]
    assert mp_pool.map_async(_pool_tasks.square, []).get(TIMEOUT) == []


def test_map_async_cuts_a_range_into_ranges(mp_pool: corral.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not read into a list first: each chunk travels as three numbers.
    chunks: list[Any] = []
    submit = mp_pool._executor.submit

    def recording_submit(fn: Any, *args: Any, **kwargs: Any) -> Any:
        chunks.append(args[1])
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(mp_pool._executor, "submit", recording_submit)
    assert mp_pool.map_async(_pool_tasks.square, range(100)).get(TIMEOUT) == [i * i for i in range(100)]
    assert chunks and all(type(c) is range for c in chunks), chunks
    assert [i for c in chunks for i in c] == list(range(100))


def test_map_async_fails_with_the_first_failure(mp_pool: corral.Pool) -> None:
    errors: list[BaseException] = []
    res = mp_pool.map_async(_pool_tasks.fail_at, list(range(20)), error_callback=errors.append)
    # fail_at takes two arguments: every chunk fails with a TypeError
    with pytest.raises(TypeError):
        res.get(TIMEOUT)
    assert len(errors) == 1
    res = mp_pool.starmap_async(_pool_tasks.fail_at, [(i, 13) for i in range(20)])
    with pytest.raises(KeyError):
        res.get(TIMEOUT)


def test_map_raises_the_item_error(mp_pool: corral.Pool) -> None:
    with pytest.raises(KeyError):
        mp_pool.starmap(_pool_tasks.fail_at, [(i, 3) for i in range(10)])


def test_imap_is_ordered_and_lazy(mp_pool: corral.Pool) -> None:
    it = mp_pool.imap(_pool_tasks.square, itertools.count())  # endless input
    assert [next(it) for _ in range(200)] == [x * x for x in range(200)]
    assert list(mp_pool.imap(_pool_tasks.square, range(30), chunksize=4)) == [x * x for x in range(30)]
    assert sorted(mp_pool.imap_unordered(_pool_tasks.square, range(30))) == sorted(x * x for x in range(30))


def test_imap_raises_the_item_error_in_place(mp_pool: corral.Pool) -> None:
    it = mp_pool.imap(_pool_tasks.raise_value_error, ["a", "b"], 1)
    with pytest.raises(ValueError, match="a"):
        next(it)
    it = mp_pool.imap(_pool_tasks.square, iter([1, 2, "x"]), 1)
    assert next(it) == 1 and next(it) == 4
    with pytest.raises(TypeError):
        next(it)


def test_get_timeout_raises_both_timeout_errors(mp_pool: corral.Pool) -> None:
    go = corral.Event()
    res = mp_pool.apply_async(_pool_tasks.wait_for, (go, 1))
    with pytest.raises(multiprocessing.TimeoutError):
        res.get(0.05)
    with pytest.raises(builtins.TimeoutError):
        res.get(0.05)
    assert not res.ready()
    with pytest.raises(ValueError):
        res.successful()
    res.wait(0.01)
    go.set()
    assert res.get(TIMEOUT) == 1


def test_a_dead_worker_fails_its_task_and_the_pool_goes_on() -> None:
    # multiprocessing.Pool waits for ever on such a task.
    with corral.Pool(2) as p:
        errors: list[BaseException] = []
        res = p.apply_async(_mp_tasks.die, error_callback=errors.append)
        with pytest.raises(corral.WorkerLostError):
            res.get(TIMEOUT)
        assert isinstance(errors[0], corral.WorkerLostError)
        assert p.map(_pool_tasks.square, range(10)) == [x * x for x in range(10)]
        with pytest.raises(corral.WorkerLostError):
            p.map_async(_mp_tasks.die, range(3)).get(TIMEOUT)


def test_initializer_initargs_and_processes() -> None:
    with corral.Pool(processes=2, initializer=_mp_tasks.tag_init, initargs=("tagged",)) as p:
        assert p._processes == 2
        assert p.map(_mp_tasks.get_tag, range(8)) == ["tagged"] * 8


def test_maxtasksperchild_replaces_workers() -> None:
    with corral.Pool(1, maxtasksperchild=1) as p:
        pids = {p.apply(_mp_tasks.worker_pid) for _ in range(3)}
    assert len(pids) == 3


def test_argument_errors() -> None:
    with pytest.raises(ValueError):
        corral.Pool(0)
    with pytest.raises(ValueError):
        corral.Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError):
        corral.Pool(1, initializer=3)  # type: ignore[arg-type]


def test_close_join_and_running_checks() -> None:
    p = corral.Pool(2)
    res = p.map_async(_pool_tasks.square, range(20))
    with pytest.raises(ValueError, match="still running"):
        p.join()
    p.close()
    with pytest.raises(ValueError, match="not running"):
        p.apply_async(_pool_tasks.square, (1,))
    with pytest.raises(ValueError, match="not running"):
        p.map(_pool_tasks.square, [1])
    p.join()
    # Work submitted before close is done.
    assert res.get(TIMEOUT) == [x * x for x in range(20)]
    with pytest.raises(NotImplementedError):
        import pickle

        pickle.dumps(p)


def test_terminate_stops_running_and_pending_work() -> None:
    started = corral.Event()
    p = corral.Pool(1)
    running = p.apply_async(_pool_tasks.set_then_sleep, (started, 600))
    pending = p.apply_async(_pool_tasks.square, (3,))
    assert started.wait(TIMEOUT)
    done = threading.Event()

    def stop() -> None:
        p.terminate()
        done.set()

    threading.Thread(target=stop, daemon=True).start()
    assert done.wait(TIMEOUT), "terminate did not return"
    for res in (running, pending):
        with pytest.raises(cf.CancelledError):
            res.get(TIMEOUT)


def test_with_block_terminates() -> None:
    started = corral.Event()
    with corral.Pool(1) as p:
        res = p.apply_async(_pool_tasks.set_then_sleep, (started, 600))
        assert started.wait(TIMEOUT)
    with pytest.raises(cf.CancelledError):
        res.get(TIMEOUT)
    with pytest.raises(ValueError):
        p.apply(_pool_tasks.square, (1,))


def test_context_and_start_method() -> None:
    with corral.Pool(1, context=corral.get_context("fork")) as p:
        assert p._executor._start_method == "fork"
        assert p.apply(_pool_tasks.square, (4,)) == 16
    with corral.get_context("spawn").Pool(1) as p:
        assert p._executor._start_method == "spawn"
        assert p.apply(_pool_tasks.square, (5,)) == 25


def test_a_task_raising_timeout_error_is_not_a_get_timeout(mp_pool: corral.Pool) -> None:
    res = mp_pool.apply_async(_mp_tasks.raise_timeout)
    with pytest.raises(builtins.TimeoutError, match="from the task") as info:
        res.get(TIMEOUT)
    assert not isinstance(info.value, multiprocessing.TimeoutError)
    assert res.ready() and not res.successful()


def test_an_unclosed_running_pool_warns_when_collected() -> None:
    p = corral.Pool(1)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del p
        gc.collect()


def test_a_map_stopped_by_terminate_raises_cancelled_error() -> None:
    # As terminate's AsyncResults: the chunk the pool killed ends the map
    # with CancelledError (it raised WorkerLostError, as if the worker had
    # died by itself).
    import functools

    started = corral.Event()
    with corral.Pool(1) as p:
        it = p.imap(functools.partial(_pool_tasks.set_then_sleep, started), [600, 600], chunksize=1)
        assert started.wait(TIMEOUT)
    with pytest.raises(cf.CancelledError):
        next(it)


def test_a_map_read_after_the_with_block_raises_cancelled_error() -> None:
    # Chunks queued to a live worker when the block terminated the pool
    # are skipped by it: the map raised TypeError unpacking their empty
    # outcome.
    with corral.Pool(2) as p:
        it = p.imap(_pool_tasks.sleep_then, [0.01] * 10, chunksize=1)
    with pytest.raises(cf.CancelledError):
        list(it)


def test_a_pool_whose_constructor_raised_is_collected_quietly(monkeypatch: Any) -> None:
    # Its __del__ raised AttributeError (no _processes for the warning's
    # repr), printed as "Exception ignored in Pool.__del__".
    import sys
    import warnings

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError):
            corral.Pool(1, start_method="bogus")
        gc.collect()
    assert unraisable == []
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_an_iterator_dropped_while_its_timed_next_waits_ends_its_reader_and_map(method: str) -> None:
    # The reader thread of next(timeout) held the iterator while it waited
    # for the next result: a dropped iterator, its map (handlers, function,
    # input) and the thread stayed until a result came, here never.
    import functools
    import weakref

    go = corral.Event()
    with corral.Pool(1) as p:
        before = set(threading.enumerate())
        fn = functools.partial(_pool_tasks.wait_for, go)
        it = getattr(p, method)(fn, [1, 2, 3], chunksize=1)
        with pytest.raises(corral.TimeoutError):
            it.next(timeout=0.2)  # every task waits for go: no result can come
        (reader,) = [t for t in set(threading.enumerate()) - before if t.name == "corral-imap-next"]
        handlers = p._executor._handlers
        assert handlers  # the map's chunks
        it_ref, fn_ref = weakref.ref(it), weakref.ref(fn)
        del it, fn
        gc.collect()
        assert it_ref() is None
        reader.join(TIMEOUT)
        assert not reader.is_alive()
        assert not handlers  # the map let go of its chunks
        gc.collect()
        assert fn_ref() is None
        go.set()
        assert p.apply(_pool_tasks.square, (3,)) == 9  # the pool goes on
