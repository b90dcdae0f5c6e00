"""corral.detect_deadlocks: an acquire that would close a cycle of threads
waiting for each other's locks raises DeadlockError instead of hanging."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from test import lock_tests

import corral


@pytest.fixture
def detecting():
    corral.detect_deadlocks(True)
    yield
    corral.detect_deadlocks(False)


@pytest.mark.parametrize("kind", [corral.Lock, corral.RLock])
def test_two_threads_taking_two_locks_in_opposite_order(detecting, kind) -> None:
    a, b = kind(), kind()
    both_hold = threading.Barrier(2)
    errors: list[BaseException] = []
    done: list[str] = []

    def worker(first, second, name):
        with first:
            both_hold.wait(10)
            try:
                if second.acquire():  # no timeout: only the detector can end this wait
                    second.release()
                    done.append(name)
            except corral.DeadlockError as e:
                errors.append(e)

    t1 = threading.Thread(target=worker, args=(a, b, "t1"), name="t1", daemon=True)
    t2 = threading.Thread(target=worker, args=(b, a, "t2"), name="t2", daemon=True)
    t1.start(), t2.start()
    t1.join(20), t2.join(20)
    assert not t1.is_alive() and not t2.is_alive()
    assert len(errors) == 1 and len(done) == 1, (errors, done)
    e = errors[0]
    assert "would deadlock" in str(e) and "this thread" in str(e)
    assert len(e.locks) == 2 and len(e.threads) == 2


def test_no_false_alarm_for_reentrancy_conditions_and_handover(detecting) -> None:
    r = corral.RLock()
    with r:
        with r:
            assert r.acquire(timeout=1)
            r.release()
    cond = corral.Condition()
    ready = []

    def waiter():
        with cond:
            cond.wait_for(lambda: ready, timeout=10)

    t = threading.Thread(target=waiter)
    t.start()
    with cond:
        ready.append(1)
        cond.notify_all()
    t.join(10)
    lock = corral.Lock()
    lock.acquire()
    other = threading.Thread(target=lock.release)  # any thread may release a Lock
    other.start()
    other.join(10)
    assert lock.acquire(timeout=5)
    lock.release()


def test_disabled_by_default_and_switchable() -> None:
    assert not corral.deadlock.deadlock_detection_enabled()
    assert "acquire" not in corral.Lock.__dict__
    corral.detect_deadlocks(True)
    try:
        assert "acquire" in corral.Lock.__dict__
    finally:
        corral.detect_deadlocks(False)
    assert "acquire" not in corral.Lock.__dict__


def test_environment_variable_enables_it() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import corral; print(corral.deadlock.deadlock_detection_enabled())"],
        env={**__import__("os").environ, "CORRAL_DETECT_DEADLOCKS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "True", out.stderr


class _Detecting:
    """Runs a CPython lock_tests suite with detection on: semantics unchanged."""

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        corral.detect_deadlocks(True)

    def tearDown(self) -> None:
        corral.detect_deadlocks(False)
        super().tearDown()  # type: ignore[misc]


class DetectingLockTests(_Detecting, lock_tests.LockTests):
    locktype = staticmethod(corral.Lock)


class DetectingRLockTests(_Detecting, lock_tests.RLockTests):
    locktype = staticmethod(corral.RLock)


class DetectingConditionTests(_Detecting, lock_tests.ConditionTests):
    condtype = staticmethod(corral.Condition)
