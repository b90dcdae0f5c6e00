"""``corral.Future`` against the stdlib's contract: CPython's
``test_concurrent_futures/test_future.py`` (FutureTests) ported to pytest
and run on ``corral.Future`` and on ``concurrent.futures.Future`` side by
side, then a race stress test: futures ended by one thread while others wait
on them with every API (``result``, ``exception``, ``wait``,
``as_completed``, callbacks, ``asyncio.wrap_future``); no wake-up may be
lost, every wait is bounded."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any

import pytest

import corral
from _helpers import wait_until

KINDS = [corral.Future, cf.Future]


@pytest.fixture(params=KINDS, ids=["corral", "stdlib"])
def Future(request: pytest.FixtureRequest) -> Any:  # the class under test
    return request.param


def create(kind: Any, state: str = PENDING, exception: BaseException | None = None, result: Any = None) -> Any:
    """As CPython's ``create_future``: a future put in a state directly."""
    f = kind()
    f._state = state
    f._exception = exception
    f._result = result
    return f


def wait_sleeping(f: Any) -> None:
    """Until a thread blocks in ``f.result``/``f.exception`` (corral's
    future records its sleepers; the stdlib's its Condition's waiters)."""
    deadline = time.monotonic() + 10
    while not (getattr(f, "_sleepers", None) or getattr(f._condition, "_waiters", None)):
        assert time.monotonic() < deadline, "the waiter never blocked"
        time.sleep(0.001)


# -- CPython's FutureTests ------------------------------------------------------


def test_done_callbacks_with_result_exception_and_cancel(Future: Any) -> None:
    seen: list[Any] = []
    f = Future()
    f.add_done_callback(lambda g: seen.append(g.result()))
    f.set_result(5)
    f = Future()
    f.add_done_callback(lambda g: seen.append(g.exception().args))
    f.set_exception(Exception("test"))
    f = Future()
    f.add_done_callback(lambda g: seen.append(g.cancelled()))
    assert f.cancel()
    assert seen == [5, ("test",), True]


def test_done_callbacks_on_a_done_future_run_at_once(Future: Any) -> None:
    seen: list[Any] = []
    f = Future()
    f.set_result(5)
    f.add_done_callback(lambda g: seen.append(g.result()))
    f = Future()
    f.set_exception(Exception("test"))
    f.add_done_callback(lambda g: seen.append(g.exception().args))
    f = Future()
    assert f.cancel()
    f.add_done_callback(lambda g: seen.append(g.cancelled()))
    assert seen == [5, ("test",), True]


def test_a_raising_done_callback_is_logged_and_the_next_still_runs(
    Future: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    called: list[str] = []

    def raising(_: Any) -> None:
        called.append("raising")
        raise Exception("doh!")

    f = Future()
    f.add_done_callback(raising)
    f.add_done_callback(lambda _: called.append("next"))
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        f.set_result(5)
        g = Future()
        g.set_result(5)
        g.add_done_callback(raising)
    assert called == ["raising", "next", "raising"]
    assert sum("exception calling callback for" in r.getMessage() for r in caplog.records) == 2


def test_repr(Future: Any) -> None:
    name = Future.__name__
    cases = [
        (create(Future, PENDING), "pending"),
        (create(Future, RUNNING), "running"),
        (create(Future, CANCELLED), "cancelled"),
        (create(Future, CANCELLED_AND_NOTIFIED), "cancelled"),
        (create(Future, FINISHED, exception=OSError()), "finished raised OSError"),
        (create(Future, FINISHED, result=42), "finished returned int"),
    ]
    for f, text in cases:
        assert repr(f).startswith(f"<{name} at 0x") and repr(f).endswith(f" state={text}>"), repr(f)


def test_cancel_cancelled_done_running(Future: Any) -> None:
    states = [PENDING, RUNNING, CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, FINISHED]
    fs = [create(Future, s) for s in states]
    fs[4]._exception = OSError()
    fs[5]._result = 5
    assert [f.cancelled() for f in fs] == [False, False, True, True, False, False]
    assert [f.done() for f in fs] == [False, False, True, True, True, True]
    assert [f.running() for f in fs] == [False, True, False, False, False, False]
    assert [f.cancel() for f in fs] == [True, False, True, True, False, False]
    assert [f._state for f in fs] == [CANCELLED, RUNNING, CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, FINISHED]


def test_result_and_exception_with_a_zero_timeout(Future: Any) -> None:
    for get in ("result", "exception"):
        for state in (PENDING, RUNNING):
            with pytest.raises(TimeoutError):
                getattr(create(Future, state), get)(timeout=0)
        for state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            with pytest.raises(cf.CancelledError):
                getattr(create(Future, state), get)(timeout=0)
    with pytest.raises(OSError):
        create(Future, FINISHED, exception=OSError()).result(timeout=0)
    assert isinstance(create(Future, FINISHED, exception=OSError()).exception(timeout=0), OSError)
    assert create(Future, FINISHED, result=42).result(timeout=0) == 42
    assert create(Future, FINISHED, result=42).exception(timeout=0) is None
    assert create(Future, FINISHED, result=42).result(timeout=-1) == 42
    with pytest.raises(TimeoutError):
        create(Future, PENDING).result(timeout=-1)


def test_a_blocked_result_wakes_on_set_result_and_on_cancel(Future: Any) -> None:
    for end, check in ((lambda f: f.set_result(42), 42), (lambda f: f.cancel(), cf.CancelledError)):
        f = Future()
        t = threading.Thread(target=lambda: (wait_sleeping(f), end(f)))  # noqa: B023
        t.start()
        if check is cf.CancelledError:
            with pytest.raises(cf.CancelledError):
                f.result(timeout=30)
        else:
            assert f.result(timeout=30) == check
        t.join(10)


def test_a_blocked_exception_wakes_on_state_set_under_the_condition(Future: Any) -> None:
    # CPython's test_exception_with_success: code written for the stdlib's
    # future sets _state itself under _condition and notifies it.
    f = Future()

    def notification() -> None:
        wait_sleeping(f)
        with f._condition:
            f._state = FINISHED
            f._exception = OSError()
            f._condition.notify_all()

    t = threading.Thread(target=notification)
    t.start()
    assert isinstance(f.exception(timeout=30), OSError)
    t.join(10)


def test_a_second_set_result_or_set_exception_raises_invalid_state(Future: Any) -> None:
    f = Future()
    f.set_result(1)
    with pytest.raises(cf.InvalidStateError, match=r"FINISHED: <\w+ at 0x[0-9a-f]+ state=finished returned int>"):
        f.set_result(2)
    assert f.done() and f.result() == 1
    f = Future()
    e = ValueError()
    f.set_exception(e)
    with pytest.raises(cf.InvalidStateError, match=r"FINISHED: <\w+ at 0x[0-9a-f]+ state=finished raised ValueError>"):
        f.set_exception(Exception())
    assert f.exception() is e


def test_set_running_or_notify_cancel(Future: Any) -> None:
    f = Future()
    assert f.set_running_or_notify_cancel() and f.running()
    with pytest.raises(RuntimeError, match="unexpected state"):
        f.set_running_or_notify_cancel()
    f = Future()
    assert f.cancel()
    done, _ = cf.wait([f], timeout=0)  # installs and removes a waiter
    assert not f.set_running_or_notify_cancel()
    assert f._state == CANCELLED_AND_NOTIFIED
    assert cf.wait([f], timeout=0).done == {f}


def test_wait_and_as_completed_on_futures_in_every_state(Future: Any) -> None:
    fs = [create(Future, s) for s in (PENDING, RUNNING, CANCELLED, CANCELLED_AND_NOTIFIED)]
    fs += [create(Future, FINISHED, exception=OSError()), create(Future, FINISHED, result=1)]
    done, not_done = cf.wait(fs, timeout=0)
    assert done == set(fs[3:]) and not_done == set(fs[:3])
    done, _ = cf.wait(fs, timeout=0, return_when=cf.FIRST_EXCEPTION)
    assert fs[4] in done
    got = []
    with pytest.raises(TimeoutError):
        for f in cf.as_completed(fs, timeout=0.05):
            got.append(f)
    assert set(got) == set(fs[3:])
    for f in fs:
        assert f._waiters == []


# -- thread safety: resolving vs waiting with every API -------------------------


def _racers(fs: list[Any], values: list[Any]) -> list[tuple[str, Callable[[], Any], Any]]:
    """(name, work, what it must return) for threads that each wait on every
    future of ``fs`` through one API while they are being ended."""

    def outcome(f: Any) -> Any:
        try:
            return ("ok", f.result(timeout=30))
        except cf.CancelledError:
            return ("cancelled", None)
        except ValueError as e:
            return ("raised", e.args[0])

    expected = [outcome_of(v) for v in values]

    def by_result() -> Any:
        return [outcome(f) for f in fs]

    def by_exception() -> Any:
        out = []
        for f in fs:
            try:
                e = f.exception(timeout=30)
                out.append(("raised", e.args[0]) if e is not None else ("ok", f.result()))
            except cf.CancelledError:
                out.append(("cancelled", None))
        return out

    def by_wait_all() -> Any:
        done, not_done = cf.wait(fs, timeout=30)
        assert not not_done, f"{len(not_done)} futures not done"
        return [outcome(f) for f in fs]

    def by_wait_first() -> Any:
        for f in fs:
            done, _ = cf.wait([f], timeout=30, return_when=cf.FIRST_COMPLETED)
            assert done == {f}
        return [outcome(f) for f in fs]

    def by_as_completed() -> Any:
        seen = list(cf.as_completed(fs, timeout=30))
        assert len(seen) == len(fs) and len(set(seen)) == len(fs), "a future came twice or never"
        return [outcome(f) for f in fs]

    def by_callbacks() -> Any:
        left = [len(fs)]
        lock, all_in = threading.Lock(), threading.Event()

        def one(_: Any) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    all_in.set()

        for f in fs:
            f.add_done_callback(one)
        assert all_in.wait(30), f"{left[0]} callbacks never ran"
        return [outcome(f) for f in fs]

    def by_asyncio() -> Any:
        async def main() -> Any:
            out = []
            for f in fs:
                try:
                    out.append(("ok", await asyncio.wait_for(asyncio.wrap_future(f), 30)))
                except asyncio.CancelledError:
                    out.append(("cancelled", None))
                except ValueError as e:
                    out.append(("raised", e.args[0]))
            return out

        return asyncio.run(main())

    return [
        (fn.__name__, fn, expected)
        for fn in (by_result, by_exception, by_wait_all, by_wait_first, by_as_completed, by_callbacks, by_asyncio)
    ]


def outcome_of(v: Any) -> tuple[str, Any]:
    if v == "cancel":
        return ("cancelled", None)
    if isinstance(v, ValueError):
        return ("raised", v.args[0])
    return ("ok", v)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """The GIL changes hands every microsecond: races show up in a short run."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _end_all(fs: list[Any], values: list[Any], ixs: list[int], rng: random.Random) -> None:
    """Ends ``fs[i]`` as ``values[i]`` says (a value, a ValueError to raise,
    or "cancel"), for each ``i`` of ``ixs`` in turn."""
    for i in ixs:
        for _ in range(rng.randrange(40)):  # a little Python work: the waiters catch up
            pass
        f, v = fs[i], values[i]
        if v == "cancel":
            if f.cancel():
                f.set_running_or_notify_cancel()
        elif f.set_running_or_notify_cancel():
            if isinstance(v, ValueError):
                f.set_exception(v)
            else:
                f.set_result(v)


def _race_once(n: int, rng: random.Random, in_order: bool) -> None:
    fs: list[Any] = [corral.Future() for _ in range(n)]
    values: list[Any] = [
        i if r < 0.7 else ValueError(i) if r < 0.85 else "cancel" for i, r in ((i, rng.random()) for i in range(n))
    ]
    racers = _racers(fs, values)
    start = threading.Barrier(len(racers) + 1, timeout=30)
    results: dict[str, Any] = {}

    def run(name: str, work: Callable[[], Any]) -> None:
        start.wait()
        try:
            results[name] = work()
        except BaseException as e:  # reported below
            results[name] = e

    threads = [threading.Thread(target=run, args=(name, work), daemon=True) for name, work, _ in racers]
    for t in threads:
        t.start()
    start.wait()
    # Ended in order (the waiters, in order too, are blocked on the future
    # being ended: each end races a registration) or shuffled, half of them
    # from a second thread.
    order = list(range(n))
    if not in_order:
        rng.shuffle(order)
    helper = threading.Thread(target=_end_all, args=(fs, values, order[::2], random.Random(rng.random())), daemon=True)
    helper.start()
    _end_all(fs, values, order[1::2], rng)
    helper.join(30)
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a waiter is still blocked: a wake-up was lost"
    for name, _, expected in racers:
        got = results[name]
        if isinstance(got, BaseException):
            raise AssertionError(f"{name} failed") from got
        assert got == expected, name


def test_no_wake_up_is_lost_when_futures_end_while_threads_wait_with_every_api(fast_switching: None) -> None:
    rng = random.Random(13)
    for round_ in range(6):
        _race_once(1000, rng, in_order=round_ % 2 == 0)


def test_a_thread_pool_future_waited_with_every_api_while_the_pool_runs_it(fast_switching: None) -> None:
    values = list(range(400))
    with corral.ThreadPoolExecutor(4) as pool:
        fs = [pool.submit(lambda x: x, v) for v in values]
        racers = _racers(fs, values)
        with cf.ThreadPoolExecutor(len(racers)) as waiters:
            got = {name: waiters.submit(work) for name, work, _ in racers}
            for name, _, expected in racers:
                assert got[name].result(timeout=60) == expected, name


# -- waiters before callbacks ---------------------------------------------------


def test_threads_blocked_in_result_wake_before_the_done_callbacks_run() -> None:
    # The pools end a future with _settle and wake what it returns after
    # releasing the GIL; the stdlib notifies waiters before running the
    # callbacks. A callback that waits for a waiter must not deadlock.
    f: corral.Future[int] = corral.Future()
    got: list[int] = []
    waiter_done = threading.Event()

    def wait_result() -> None:
        got.append(f.result(timeout=30))
        waiter_done.set()

    seen: list[bool] = []
    f.add_done_callback(lambda _: seen.append(waiter_done.wait(10)))
    t = threading.Thread(target=wait_result)
    t.start()
    wait_sleeping(f)
    for s in f._settle(True, 7) or []:
        s.wake()
    t.join(30)
    assert got == [7] and seen == [True]


def test_a_callback_raising_system_exit_does_not_lose_the_waiters_wake_up() -> None:
    f: corral.Future[int] = corral.Future()
    got: list[int] = []
    # Without its wake-up the waiter would only return at its own 120 s
    # timeout (the future is FINISHED by then); it must be woken well before.
    t = threading.Thread(target=lambda: got.append(f.result(timeout=120)))
    t.start()
    wait_sleeping(f)

    def leave(_: Any) -> None:
        raise SystemExit(3)

    f.add_done_callback(leave)
    with pytest.raises(SystemExit):
        f._settle(True, 8)
    t.join(20)
    assert not t.is_alive() and got == [8]


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's inline instance attributes")
def test_futures_ended_after_a_burst_keep_their_attributes_inline() -> None:
    # 3,000 futures made before the first one ends (submit N, then gather):
    # ending one sets names the earlier instances never set. None of them
    # may get a dict of its own (one more object per future for the
    # garbage collector); a subclass's own class defaults neither.
    import gc

    from corral.pool import Future as ProcessFuture

    class WithDefault(corral.Future[Any]):
        _extra: int = 0

    def fresh_process_future() -> Any:
        return ProcessFuture(None, 0)  # type: ignore[arg-type]  # no pool: it is only ended

    for make in (corral.Future, WithDefault, fresh_process_future):
        futures = [make() for _ in range(3_000)]
        for i, f in enumerate(futures):
            if i % 2:
                f.set_result(i)
            else:
                f.set_exception(ValueError(i))
            if isinstance(f, WithDefault):
                f._extra = i
        own_dicts = sum(1 for f in futures if any(type(o) is dict for o in gc.get_referents(f)))
        assert own_dicts == 0, make


def test_an_abstract_future_subclass_and_a_read_only_annotated_name_can_be_defined() -> None:
    import abc

    class Abstract(corral.Future[Any], metaclass=abc.ABCMeta):
        @abc.abstractmethod
        def extra(self) -> int: ...

    class Concrete(Abstract):
        @property
        def _extra(self) -> int:  # a read-only name, annotated below in a subclass
            return 1

        def extra(self) -> int:
            return self._extra

    class Annotated(Concrete):
        _extra: int  # type: ignore[misc]  # names the property: no instance key

    f = Annotated()
    f.set_result(2)
    assert (f.result(timeout=0), f.extra()) == (2, 1)


def test_a_future_subclass_runs_no_user_code_when_it_is_made() -> None:
    # Priming the attribute keys (_share_attribute_names) made a throw-away
    # instance: a subclass's __del__ ran on it at class creation, and a
    # property on an annotated name had its setter called with None.
    calls: list[str] = []

    class WithDel(corral.Future[int]):
        extra: int = 0

        def __del__(self) -> None:
            calls.append(f"del {self.extra}")

    class WithProperty(corral.Future[int]):
        tag: int

        @property
        def tag(self) -> int:  # type: ignore[no-redef]
            return 1

        @tag.setter
        def tag(self, value: int) -> None:
            calls.append(f"set {value}")

    assert calls == []
    f = WithProperty()
    f.set_result(3)
    assert f.result(timeout=10) == 3 and f.tag == 1
    g = WithDel()
    g.set_result(4)
    assert g.result(timeout=10) == 4


# -- one object per pending future ----------------------------------------------


def _tracked_growth(make: Callable[[], Any], n: int) -> float:
    """Objects the garbage collector tracks per ``make()`` result kept
    alive (after a collection, which untracks tuples of plain values)."""
    import gc

    gc.collect()
    before = len(gc.get_objects())
    kept = [make() for _ in range(n)]
    gc.collect()
    growth = (len(gc.get_objects()) - before - 1) / n  # - 1: the list
    del kept
    return growth


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's garbage collector")
def test_a_pending_future_is_one_object_for_the_garbage_collector() -> None:
    # A lock per future (an RLock is tracked since CPython 3.10) doubled
    # what each collection walks with a burst of futures pending.
    assert _tracked_growth(corral.Future, 2000) < 1.2


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's garbage collector")
def test_a_queued_thread_pool_task_is_one_object_for_the_garbage_collector() -> None:
    # Its future is its own job: no work item beside it, no lock in it.
    gate = threading.Event()
    with corral.ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(gate.wait, 30)
        try:
            growth = _tracked_growth(lambda: pool.submit(abs, -1), 2000)
        finally:
            gate.set()
        assert blocker.result(timeout=30)
    assert growth < 1.2


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's garbage collector")
def test_a_process_pool_future_keeps_no_plain_arguments() -> None:
    # Arguments with no corral object in them need not outlive their
    # pickling: the future is the task's one object.
    with corral.ProcessPoolExecutor(1) as pool:
        assert pool.submit(abs, -1).result(timeout=60) == 1
        futures: list[Any] = []
        growth = _tracked_growth(lambda: futures.append(pool.submit(abs, -1)), 2000)
        assert [f.result(timeout=60) for f in futures] == [1] * 2000
    assert growth < 1.2


def test_a_thread_pool_future_is_not_callable() -> None:
    # The core runs it through its _run method: code that calls whatever
    # is callable must not run the task a second time.
    with corral.ThreadPoolExecutor(1) as pool:
        f = pool.submit(abs, -2)
        assert f.result(timeout=30) == 2
        assert not callable(f)


def test_a_submit_racing_shutdown_with_cancel_futures_ends_cancelled() -> None:
    # A submit that read the open flags before shutdown set them queues its
    # task while shutdown drains the core: it must be cancelled, not run.
    started, gate = threading.Event(), threading.Event()
    pool = corral.ThreadPoolExecutor(1)
    blocker = pool.submit(lambda: (started.set(), gate.wait(30))[1])
    assert started.wait(30)
    raced: list[Any] = []
    core = pool._core

    class Racing:
        def drain(self) -> list[Any]:
            jobs = core.drain()
            if not raced:
                raced.append(pool._enqueue(abs, (-3,), {}, None))
            return jobs

        def __getattr__(self, name: str) -> Any:
            return getattr(core, name)

    pool._core = Racing()  # type: ignore[assignment]
    try:
        pool.shutdown(wait=False, cancel_futures=True)
    finally:
        gate.set()
        pool._core = core
    pool.shutdown(wait=True)
    assert blocker.result(timeout=30)
    assert raced[0].cancelled()


@pytest.mark.parametrize("kind", ["plain", "process"])
def test_a_done_callback_run_by_cancel_can_wait_for_another_thread_ending_a_future(kind: str) -> None:
    # Every future shares one lock: a callback run while it was held would
    # deadlock with a thread ending any other future.
    other: corral.Future[int] = corral.Future()

    def end_other_in_a_thread(_: Any) -> None:
        t = threading.Thread(target=other.set_result, args=(5,))
        t.start()
        t.join(30)

    if kind == "plain":
        f: Any = corral.Future()
        f.add_done_callback(end_other_in_a_thread)
        assert f.cancel()
    else:
        with corral.ProcessPoolExecutor(1) as pool:
            gate = corral.Event()
            blocker = pool.submit(gate.wait, 60)
            f = pool.submit(abs, -1)
            f.add_done_callback(end_other_in_a_thread)
            try:
                assert f.cancel()
            finally:
                gate.set()
            assert blocker.result(timeout=60)
    assert other.result(timeout=30) == 5


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_thread_holding_a_futures_condition_blocks_no_other_future(kind: str) -> None:
    # concurrent.futures.wait/as_completed hold the _condition of every
    # future they are given while they allocate: a garbage collection there
    # can run a finalizer that waits for another thread's future (an object
    # shutting its pool down in __del__). With one lock for every future's
    # condition, no other future could end meanwhile: a deadlock the
    # stdlib's per-future conditions do not have.
    waited: corral.Future[int] = corral.Future()
    make = corral.ThreadPoolExecutor if kind == "thread" else corral.ProcessPoolExecutor
    with make(1) as pool:
        assert pool.submit(abs, -1).result(timeout=60) == 1  # the worker is up
        with waited._condition:  # as wait() holds it
            other = pool.submit(abs, -2)
            assert other.result(timeout=30) == 2
            done, _ = cf.wait([other], timeout=30)
            assert done == {other}
    waited.set_result(3)
    assert waited.result(timeout=1) == 3


def test_a_future_ends_and_tells_its_waiters_under_its_condition() -> None:
    # The stdlib's order: a thread holding a future's _condition sees its
    # state unchanged, and its waiters are told under it (wait() checks the
    # state and installs its waiter under the same lock: no lost wake-up).
    f: corral.Future[int] = corral.Future()
    entered, ended = threading.Event(), threading.Event()

    def end() -> None:
        entered.set()
        f.set_result(7)
        ended.set()

    with f._condition:
        t = threading.Thread(target=end)
        t.start()
        assert entered.wait(30)
        assert not ended.wait(0.2)  # blocked on the condition (a wrong pass is a slow machine, never a false failure)
        assert f._state == PENDING
    assert ended.wait(30)
    t.join(30)
    assert f.result(timeout=1) == 7
    g: corral.Future[int] = corral.Future()
    g.cancel()
    with g._condition:
        assert g.set_running_or_notify_cancel() is False
    assert g._state == CANCELLED_AND_NOTIFIED


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_forked_child_can_end_futures_while_a_parent_thread_held_their_lock() -> None:
    from corral._executor import _futures_lock

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _futures_lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(30)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                f: corral.Future[int] = corral.Future()
                f.set_result(4)
                code = 0 if f.result(timeout=5) == 4 else 1
            finally:
                os._exit(code)
        ended: list[int] = []

        def child_ended() -> bool:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ended.append(os.waitstatus_to_exitcode(status))
            return bool(done)

        if not wait_until(child_ended, 30):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the child deadlocked on the futures' lock")
        assert ended == [0]
    finally:
        release.set()
        t.join(30)


@pytest.mark.parametrize("kind", ["plain", "thread"])
def test_a_future_cannot_be_pickled(kind: str) -> None:
    # As the stdlib's (its lock cannot be): a copy in another process would
    # never end. A corral future holds no lock, so it says so itself.
    import pickle

    if kind == "plain":
        f: Any = corral.Future()
        f.set_result(1)
        with pytest.raises(TypeError, match="cannot pickle 'Future' object"):
            pickle.dumps(f)
        return
    with corral.ThreadPoolExecutor(1) as pool:
        f = pool.submit(abs, -1)
        assert f.result(timeout=30) == 1
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(f)
