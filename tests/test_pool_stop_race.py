"""A task the core accepted must end (result, exception or cancelled)
whatever interleaving of its submit with a stop or a break (stop 23 review,
finding 1): ``_enqueue`` holds ``_registering`` from the core's ``submit``
until the task's handler is registered; a stop or break that ends the
registered handlers without waiting for that lock missed the task, and its
``result()`` blocked for ever. And the results thread must not let every
future hang when it cannot read the core's events (finding 7b), nor may a
bad timeout reach the core (7c)."""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

import _pool_tasks as t
import corral
from _helpers import wait_until
from corral import _core
from corral import pool as pool_mod

#: How long a future of the race may take to end; past it, it is taken as
#: pending for ever (the bug). Well under the tests' 60 s timeout.
END_WITHIN = 20


class PausedAfterSubmit:
    """The pool's real core, whose ``submit`` pauses once the core has
    accepted the task, until ``go`` is set: the preemption a loaded machine
    can give the submitting thread between the core's ``submit`` and the
    registration. Everything else goes straight to the core."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.accepted = threading.Event()
        self.go = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def submit(self, *args: Any, **kwargs: Any) -> int:
        task = self._core.submit(*args, **kwargs)
        self.accepted.set()
        self.go.wait(60)
        return task


def _top_frame(thread: threading.Thread) -> str | None:
    """The name of the function ``thread`` runs now (None once it ended)."""
    frame = sys._current_frames().get(thread.ident or -1)
    return None if frame is None else frame.f_code.co_name


def _paused_submit(
    pool: corral.ProcessPoolExecutor,
) -> tuple[PausedAfterSubmit, list[cf.Future[Any]], threading.Thread]:
    """Starts a submit on another thread and returns once the core accepted
    its task (its future not yet registered)."""
    paused = PausedAfterSubmit(pool._core)
    pool._core = paused
    box: list[cf.Future[Any]] = []
    submitter = threading.Thread(target=lambda: box.append(pool.submit(int, 2)))
    submitter.start()
    assert paused.accepted.wait(60), "the submit never reached the core"
    return paused, box, submitter


def _ended(fut: cf.Future[Any]) -> bool:
    return fut in cf.wait([fut], timeout=END_WITHIN).done


@pytest.mark.parametrize("stop", ["shutdown_cancel_futures", "stop_now"])
def test_a_task_accepted_while_a_stop_withdraws_pending_tasks_ends_cancelled(stop: str) -> None:
    # The one worker is busy: the paused task is pending in the core, so the
    # stop's close(cancel_pending) withdraws it. Before the fix the stop
    # popped the withdrawn id from _handlers before its submitter had
    # registered it: nothing was cancelled and no event ever came for it.
    hold = corral.Event()
    pool = corral.ProcessPoolExecutor(1)
    try:
        assert pool.submit(int, 1).result(timeout=60) == 1  # the worker is up
        busy = pool.submit(t.wait_for, hold, 0)
        paused, box, submitter = _paused_submit(pool)
        if stop == "stop_now":  # what Pool.terminate() and Ctrl-C in a with block do
            stopper = threading.Thread(target=pool._stop_now)
        else:
            stopper = threading.Thread(target=pool.shutdown, kwargs={"wait": False, "cancel_futures": True})
        stopper.start()
        # The stop has run as far as it goes before the submitter registers
        # the task: it ended (the old code), or it waits for the
        # registration (the fix).
        assert wait_until(lambda: _top_frame(stopper) in (None, "_all_registered"), 60)
        paused.go.set()
        submitter.join(60)
        stopper.join(60)
        (fut,) = box
        assert _ended(fut), f"the future of task {fut._task} stayed pending after the stop"
        assert fut.cancelled()
        hold.set()
        assert _ended(busy)
    finally:
        hold.set()
        pool.shutdown(wait=True, cancel_futures=True)


def test_a_task_accepted_as_the_pool_breaks_fails_with_broken_process_pool() -> None:
    # The core breaks (as when no replacement worker can be started) while
    # the submitter of an accepted task is paused: the results thread's
    # PoolBroken handling ended only the registered futures before the fix.
    # The one worker is busy, so no result of the paused task comes first.
    hold = corral.Event()
    pool = corral.ProcessPoolExecutor(1)
    try:
        assert pool.submit(int, 1).result(timeout=60) == 1
        busy = pool.submit(t.wait_for, hold, 0)
        paused, box, submitter = _paused_submit(pool)
        pool._core.terminate("broken on purpose by the test")
        pump = pool._pump_thread
        # The results thread has handled the break (the old code: back to
        # waiting for events) or waits for the registration (the fix).
        assert wait_until(
            lambda: (
                _top_frame(pump) == "_all_registered"
                or (pool._broken_seen.is_set() and _top_frame(pump) == "_pump_events")
            ),
            40,
        )
        paused.go.set()
        submitter.join(60)
        (fut,) = box
        assert _ended(fut), f"the future of task {fut._task} stayed pending after the break"
        for f in (fut, busy):
            with pytest.raises(BrokenProcessPool, match="broken on purpose"):
                f.result(timeout=END_WITHIN)
    finally:
        hold.set()
        pool.shutdown(wait=True)


def test_shutdown_cancel_futures_racing_submits_ends_every_future() -> None:
    # Without the injected pause: submitters race a shutdown(cancel_futures)
    # of a pool whose one worker is busy; every future the pool returned ends.
    hold = corral.Event()
    pool = corral.ProcessPoolExecutor(1)
    futs: list[cf.Future[Any]] = []
    start = threading.Barrier(5)

    def submit_many() -> None:
        start.wait(60)
        for i in range(200):
            try:
                futs.append(pool.submit(int, i))
            except RuntimeError:  # shut down
                return

    try:
        assert pool.submit(int, 1).result(timeout=60) == 1
        busy = pool.submit(t.wait_for, hold, 0)
        submitters = [threading.Thread(target=submit_many) for _ in range(4)]
        for s in submitters:
            s.start()
        start.wait(60)
        pool.shutdown(wait=False, cancel_futures=True)
        for s in submitters:
            s.join(60)
        hold.set()
        done, pending = cf.wait([busy, *futs], timeout=END_WITHIN)
        assert not pending, f"{len(pending)} of {len(futs) + 1} futures stayed pending"
    finally:
        hold.set()
        pool.shutdown(wait=True)


# -- 7b: the results thread cannot read the core's events ------------------------


@pytest.mark.parametrize("panic", [False, True])
def test_a_persistent_error_reading_events_breaks_the_pool_with_it_as_the_cause(panic: bool) -> None:
    # Before the fix an Exception was retried for ever (every future pending,
    # silently) and a PanicException (a BaseException) ended the results
    # thread: the same hang.
    hold = corral.Event()
    pool = corral.ProcessPoolExecutor(1)
    try:
        assert pool.submit(int, 1).result(timeout=60) == 1
        running = pool.submit(t.wait_for, hold, 0)
        pool._core._fail_next_events(1 if panic else pool_mod._PUMP_FAILURES, panic)
        assert _ended(running), "the pool did not break"
        with pytest.raises(BrokenProcessPool, match="could not read the pool's events") as info:
            running.result(timeout=0)
        cause = info.value.__cause__
        assert isinstance(cause, BaseException) and "_fail_next_events" in str(cause)
        assert isinstance(cause, Exception) is not panic  # PanicException is a BaseException
        pool._pump_thread.join(60)
        assert not pool._pump_thread.is_alive(), "the results thread did not end"
        with pytest.raises(BrokenProcessPool):
            pool.submit(int, 2)
    finally:
        hold.set()
        pool.shutdown(wait=True)


def test_a_few_failed_reads_of_events_do_not_break_the_pool() -> None:
    # One short of the bound: a transient failure (no memory for the list
    # of events) is retried, no event is lost.
    with corral.ProcessPoolExecutor(1) as pool:
        assert pool.submit(int, 1).result(timeout=60) == 1
        pool._core._fail_next_events(pool_mod._PUMP_FAILURES - 1)
        assert pool.submit(int, 2).result(timeout=60) == 2
        assert [f.result(timeout=60) for f in [pool.submit(int, i) for i in range(20)]] == list(range(20))


# -- 7c: next_events' timeout ----------------------------------------------------


@pytest.mark.parametrize("timeout", [float("nan"), -1.0, float("-inf")])
def test_next_events_refuses_a_timeout_that_is_not_a_non_negative_number(timeout: float) -> None:
    # NaN passed the clamp and panicked in Duration::from_secs_f64 (a
    # PanicException across the FFI); a negative one was clamped to 0.
    core = _core.PoolCore(1, _core.SharedQueue())
    with pytest.raises(ValueError, match="non-negative"):
        core.next_events(timeout)


def test_next_events_clamps_an_infinite_timeout_to_its_wait_slice() -> None:
    core = _core.PoolCore(1, _core.SharedQueue())
    assert core.next_events(float("inf")) == []  # returns after one slice, no event
    assert core.next_events(0.0) == []
