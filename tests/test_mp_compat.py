"""The rest of ``multiprocessing`` on corral: JoinableQueue, Value/Array,
contexts and module functions, ``multiprocessing`` objects passed to
corral's processes where the stdlib allows it, Manager proxies, pickling
errors, and the differences CPython's ``_test_multiprocessing`` and
``lock_tests`` found (Process references, threads and ids of a forked
child, the Event repr)."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import pickle
import re
import threading
import weakref
from typing import Any

import pytest

import _mp_tasks
import _pool_tasks
import corral

TIMEOUT = 60
SPAWN_MP = multiprocessing.get_context("spawn")


def _in_thread(fn: Any) -> threading.Event:
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


# -- JoinableQueue ---------------------------------------------------------------


def test_joinable_queue_join_waits_for_task_done_in_a_child() -> None:
    q: corral.JoinableQueue[int] = corral.JoinableQueue()
    for i in range(5):
        q.put(i)
    joined = _in_thread(q.join)
    assert not joined.wait(0.05)  # five tasks unfinished
    p = corral.Process(target=_mp_tasks.consume_and_ack, args=(q, 5))
    p.start()
    assert p.result(TIMEOUT) == 10
    assert joined.wait(TIMEOUT)


def test_joinable_queue_task_done_too_many_times() -> None:
    q: corral.JoinableQueue[int] = corral.JoinableQueue()
    q.put(1)
    q.get()
    q.task_done()
    with pytest.raises(ValueError, match="too many"):
        q.task_done()
    q.join()  # nothing unfinished: returns at once


def test_joinable_queue_counts_put_many_and_failed_puts() -> None:
    q: corral.JoinableQueue[Any] = corral.JoinableQueue(maxsize=1)
    assert q.put_many([1]) == 1
    with pytest.raises(corral.queues.Full):
        q.put(2, timeout=0.01)
    with pytest.raises(pickle.PicklingError):
        q.put(threading.Lock())
    assert q._unfinished.value == 1  # failed puts are not tasks
    q.get()
    q.task_done()
    q.join()


# -- Value and Array ---------------------------------------------------------------


def test_value_is_shared_and_locked_across_processes() -> None:
    v = corral.Value("i", 0)
    procs = [corral.Process(target=_mp_tasks.add_under_lock, args=(v, 200)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.result(TIMEOUT)
    assert v.value == 400
    assert isinstance(v.get_lock(), corral.RLock)
    assert v.get_obj().value == 400
    with v:
        v.value = 5
    assert v.value == 5


def test_array_and_string_are_shared() -> None:
    a = corral.Array("d", 4)
    assert a[:] == [0.0] * 4 and len(a) == 4
    p = corral.Process(target=_mp_tasks.fill_array, args=(a, 2.5))
    p.start()
    p.result(TIMEOUT)
    assert a[:] == [2.5] * 4
    s = corral.Array("c", b"hello")
    assert s.value == b"hello"
    s.value = b"hi"
    assert s.raw[:2] == b"hi"
    b = corral.Array("i", range(5), lock=corral.Lock())
    assert list(b) == list(range(5))
    assert isinstance(b.get_lock(), corral.Lock)


def test_raw_value_lock_false_and_sent_after_start() -> None:
    raw = corral.Value("q", 1, lock=False)
    assert not hasattr(raw, "get_lock")
    raw.value = 3
    # Sent through a queue to a pool worker started long before: the same memory.
    with corral.ProcessPoolExecutor(1) as pool:
        pool.submit(_mp_tasks.set_raw, raw, 42).result(TIMEOUT)
    assert raw.value == 42
    copy = pickle.loads(pickle.dumps(corral.RawArray("b", 3)))
    assert list(copy) == [0, 0, 0]


def test_value_bad_arguments() -> None:
    with pytest.raises(TypeError):
        corral.Value("no such typecode")
    with pytest.raises(AttributeError):
        corral.Value("i", lock=object())
    with pytest.raises(ValueError):
        corral.RawArray("i", -1)


# -- contexts and module functions ---------------------------------------------------


def test_get_context_applies_its_start_method() -> None:
    fork = corral.get_context("fork")
    assert fork.get_start_method() == "fork"
    p = fork.Process(target=_pool_tasks.square, args=(3,))
    assert p._start_method == "fork"
    p.start()
    assert p.result(TIMEOUT) == 9
    assert corral.get_context("spawn").Process(target=print)._start_method == "spawn"
    assert corral.get_context("forkserver").Process(target=print)._start_method == "spawn"
    with pytest.raises(ValueError):
        corral.get_context("thread")
    ctx = corral.get_context("spawn")
    assert ctx.Queue is corral.Queue and ctx.Lock is corral.Lock
    assert ctx.Value("i", 2).value == 2


def test_set_start_method() -> None:
    assert corral.get_start_method() == "forkserver"
    assert corral.get_start_method(allow_none=True) is None
    corral.set_start_method("fork")
    try:
        with pytest.raises(RuntimeError):
            corral.set_start_method("spawn")
        assert corral.Process(target=print)._start_method == "fork"
        assert corral.get_context().get_start_method() == "fork"
    finally:
        corral.set_start_method(None, force=True)
    assert corral.Process(target=print)._start_method == "spawn"


def test_cpu_count_current_process_active_children() -> None:
    assert corral.cpu_count() >= 1
    assert corral.current_process() is multiprocessing.current_process()
    go = corral.Event()
    p = corral.Process(target=_pool_tasks.wait_for, args=(go,), name="waiter-1")
    p.start()
    assert p in corral.active_children()
    go.set()
    p.join(TIMEOUT)
    assert p not in corral.active_children()
    for method in ("spawn", "fork"):
        c = corral.Process(target=_mp_tasks.my_process_name, name=f"named-{method}", start_method=method)
        c.start()
        name, pid = c.result(TIMEOUT)
        assert (name, pid) == (f"named-{method}", c.pid)


# -- multiprocessing objects in process starts -----------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_mp_queue_in_initargs_for_a_queue_handler(method: str) -> None:
    log_q = SPAWN_MP.Queue()
    collect = _Collect()
    listener = logging.handlers.QueueListener(log_q, collect)
    listener.start()
    try:
        with corral.Pool(
            2, initializer=_mp_tasks.install_queue_handler, initargs=(log_q,), start_method=method
        ) as pool:
            assert pool.map(_mp_tasks.log_and_return, range(6)) == list(range(6))
            # close + join: the workers leave through their exit finalizers,
            # which flush the queue's feeder thread. The with block's exit
            # alone terminates them (multiprocessing.Pool's semantics, which
            # corral's stop 22 applies to idle workers too): records still in
            # a feeder may be lost then, as with the stdlib's pool.
            pool.close()
            pool.join()
    finally:
        listener.stop()
    assert sorted(r.getMessage() for r in collect.records) == [f"record {i}" for i in range(6)]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_mp_event_and_semaphore_in_process_args(method: str) -> None:
    ev = SPAWN_MP.Event()
    sem = SPAWN_MP.Semaphore(0)
    p = corral.Process(target=_mp_tasks.set_mp_event, args=(ev,), start_method=method)
    p.start()
    assert p.result(TIMEOUT) is True
    assert ev.is_set()
    p = corral.Process(target=_mp_tasks.release_mp_semaphore, args=(sem,), start_method=method)
    p.start()
    assert p.result(TIMEOUT) is True
    assert sem.acquire(timeout=TIMEOUT)


def test_mp_objects_in_task_arguments_are_refused_as_by_the_stdlib() -> None:
    with corral.ProcessPoolExecutor(1) as pool:
        with pytest.raises(RuntimeError, match="inheritance"):
            pool.submit(_mp_tasks.set_mp_event, SPAWN_MP.Event())


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_manager_proxies_authenticate_in_spawned_children(method: str) -> None:
    with SPAWN_MP.Manager() as manager:
        d = manager.dict()
        if method == "spawn":
            p = corral.Process(target=_mp_tasks.use_proxy, args=(d, "a", 1))
            p.start()
            assert p.result(TIMEOUT) == 1
        else:
            with corral.ProcessPoolExecutor(1) as pool:
                assert pool.submit(_mp_tasks.use_proxy, d, "b", 2).result(TIMEOUT) == 1
        assert len(d) == 1


# -- pickling errors ----------------------------------------------------------------------


def test_unpicklable_arguments_and_results_raise_pickling_error() -> None:
    lock = threading.Lock()
    with corral.ProcessPoolExecutor(1) as pool:
        with pytest.raises(pickle.PicklingError):
            pool.submit(_pool_tasks.square, lock)
    with pytest.raises(pickle.PicklingError):
        corral.Queue().put(lock)
    with pytest.raises(TypeError):  # still a TypeError, as before
        corral.Queue().put(lock)
    p = corral.Process(target=_pool_tasks.square, args=(lock,))
    with pytest.raises(pickle.PicklingError):
        p.start()
    p = corral.Process(target=_pool_tasks.unpicklable_result)
    p.start()
    with pytest.raises(pickle.PicklingError):
        p.result(TIMEOUT)
    with corral.ProcessPoolExecutor(1) as pool:  # a pool worker's result too
        with pytest.raises(pickle.PicklingError, match="cannot pickle the task's result"):
            pool.submit(_pool_tasks.unpicklable_result).result(TIMEOUT)


# -- Process and forked children (CPython's _test_multiprocessing) -------------------------


class _Callable:
    def __call__(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_process_lets_go_of_its_target(method: str) -> None:
    c = _Callable()
    wr = weakref.ref(c)
    p = corral.Process(target=c, args=(c,), kwargs={"c": c}, start_method=method)
    del c
    p.start()
    p.join(TIMEOUT)
    gc.collect()
    assert wr() is None


def test_forked_child_waits_for_its_non_daemon_threads() -> None:
    ev, go = corral.Event(), corral.Event()
    p = corral.Process(target=_mp_tasks.start_thread_setting, args=(ev, go), start_method="fork")
    p.start()
    p.join(0.05)
    assert p.is_alive()  # its thread still runs
    go.set()
    p.join(TIMEOUT)
    assert p.exitcode == 0
    assert ev.is_set()


def test_forked_child_main_thread_native_id_is_its_own() -> None:
    p = corral.Process(target=_mp_tasks.main_thread_native_id, start_method="fork")
    p.start()
    child = p.result(TIMEOUT)
    assert child is not None and child != threading.main_thread().native_id


def test_event_repr_as_threading() -> None:
    # lock_tests.EventTests.test_repr
    evt = corral.Event()
    assert re.search(r"<\w+\.Event at .*: unset>", repr(evt))
    evt.set()
    assert re.search(r"<\w+\.Event at .*: set>", repr(evt))


def test_every_public_name_has_a_docstring() -> None:
    classes = [corral.Pool, corral.AsyncResult, corral.JoinableQueue, corral.get_context("spawn")]
    missing = [
        f"{type(cls).__name__}.{name}"
        for cls in classes
        for name in dir(cls)
        if not name.startswith("_")
        and callable(getattr(cls, name))
        and not isinstance(getattr(cls, name), type)
        and not (getattr(getattr(cls, name), "__doc__", None) or "").strip()
    ]
    assert not missing, missing
    for name in ("Value", "Array", "RawValue", "RawArray", "get_context", "set_start_method", "cpu_count"):
        assert (getattr(corral, name).__doc__ or "").strip(), name


def test_process_authkey_is_the_parents_unless_set() -> None:
    p = corral.Process(target=_mp_tasks.my_authkey)
    assert p.authkey == multiprocessing.current_process().authkey
    p.start()
    assert p.result(TIMEOUT) == bytes(multiprocessing.current_process().authkey)
    for method in ("spawn", "fork"):
        p = corral.Process(target=_mp_tasks.my_authkey, start_method=method)
        p.authkey = b"another key"
        p.start()
        assert p.result(TIMEOUT) == b"another key"
