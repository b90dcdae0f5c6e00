"""A finished thread-pool task holds none of its arguments (as the stdlib's,
whose work item is dropped), on every way a task ends: it returned, it
raised, it was cancelled before it ran, ``shutdown(cancel_futures=True)``
cancelled it, it timed out while it ran or before it started. The future
is kept alive by each test: only what it holds is checked."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import threading
import weakref
from typing import Any

import pytest

import corral

TIMEOUT = 60


class Arg:
    """A weakly referenceable argument."""


def _gone(ref: weakref.ref[Arg]) -> bool:
    gc.collect()
    return ref() is None


def _wait_for(gate: threading.Event, _arg: Any = None, started: threading.Event | None = None) -> None:
    if started is not None:
        started.set()
    assert gate.wait(TIMEOUT)


def _drained(pool: corral.ThreadPoolExecutor) -> None:
    """Returns once the pool's one thread is done with the task before
    (it runs one task at a time, in order)."""
    pool.submit(int).result(TIMEOUT)


# int(Arg()) raises TypeError in C: no frame of the function holds the
# argument, only the task's, which the exception's traceback keeps.
@pytest.mark.parametrize("fn, raises", [(id, False), (int, True)], ids=["returned", "raised"])
def test_a_task_that_ran(fn: Any, raises: bool) -> None:
    with corral.ThreadPoolExecutor(1) as pool:
        arg = Arg()
        ref = weakref.ref(arg)
        fut = pool.submit(fn, arg)
        del arg
        assert isinstance(fut.exception(TIMEOUT), TypeError) == raises
        assert _gone(ref)


def test_a_task_cancelled_before_it_ran() -> None:
    gate = threading.Event()
    with corral.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(_wait_for, gate)
        arg = Arg()
        ref = weakref.ref(arg)
        try:
            fut = pool.submit(id, arg)  # queued behind busy
            del arg
            assert fut.cancel()
            assert _gone(ref)  # the task is still in the pool's queue
        finally:
            gate.set()
        busy.result(TIMEOUT)
    assert fut.cancelled()


def test_a_task_cancelled_by_shutdown() -> None:
    gate, started = threading.Event(), threading.Event()
    pool = corral.ThreadPoolExecutor(1)
    busy = pool.submit(_wait_for, gate, started=started)
    assert started.wait(TIMEOUT)  # not cancelled by the shutdown
    arg = Arg()
    ref = weakref.ref(arg)
    try:
        fut = pool.submit(id, arg)
        del arg
        pool.shutdown(wait=False, cancel_futures=True)
        assert fut.cancelled()
        assert _gone(ref)
    finally:
        gate.set()
    busy.result(TIMEOUT)
    pool.shutdown(wait=True)


def test_a_task_that_timed_out_while_it_ran() -> None:
    gate = threading.Event()
    with corral.ThreadPoolExecutor(1) as pool:
        arg = Arg()
        ref = weakref.ref(arg)
        try:
            fut = pool.options(timeout=0.05).submit(_wait_for, gate, arg)
            del arg
            assert isinstance(fut.exception(TIMEOUT), TimeoutError)
        finally:
            gate.set()  # the function returns (a thread cannot be stopped)
        _drained(pool)
        assert _gone(ref)


def test_a_task_that_timed_out_before_it_started() -> None:
    # The thread's initializer outlasts the task's timeout: it never runs.
    gate = threading.Event()
    with corral.ThreadPoolExecutor(1, initializer=_wait_for, initargs=(gate,)) as pool:
        arg = Arg()
        ref = weakref.ref(arg)
        try:
            fut = pool.options(timeout=0.05).submit(id, arg)
            del arg
            assert isinstance(fut.exception(TIMEOUT), TimeoutError)
        finally:
            gate.set()
        _drained(pool)
        assert _gone(ref)


def test_a_task_failed_by_a_broken_pool() -> None:
    # The first thread's initializer raises: the queued tasks fail with
    # BrokenThreadPool without running.
    gate = threading.Event()

    def init() -> None:
        assert gate.wait(TIMEOUT)
        raise RuntimeError("init")

    with corral.ThreadPoolExecutor(1, initializer=init) as pool:
        first = pool.submit(int)
        arg = Arg()
        ref = weakref.ref(arg)
        fut = pool.submit(id, arg)
        del arg
        gate.set()
        assert isinstance(first.exception(TIMEOUT), cf.BrokenExecutor)
        assert isinstance(fut.exception(TIMEOUT), cf.BrokenExecutor)
        assert _gone(ref)
