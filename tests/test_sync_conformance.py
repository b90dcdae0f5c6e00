"""CPython's own conformance suite for threading's primitives
(`test.lock_tests`), run against corral's process-shared primitives.

One test is skipped: `EventTests.test_at_fork_reinit` inspects
`threading.Event`'s private `_cond`; a corral Event is one futex word.
"""

from __future__ import annotations

import unittest

import pytest
from test import lock_tests

import corral

pytestmark = pytest.mark.timeout(120)


class LockTests(lock_tests.LockTests):
    locktype = staticmethod(corral.Lock)


class RLockTests(lock_tests.RLockTests):
    locktype = staticmethod(corral.RLock)


class EventTests(lock_tests.EventTests):
    eventtype = staticmethod(corral.Event)

    @unittest.skip("threading internals: corral.Event has no _cond, it is one futex word")
    def test_at_fork_reinit(self) -> None:
        pass


class ConditionAsRLockTests(lock_tests.RLockTests):
    # A Condition with its default lock behaves as an RLock.
    locktype = staticmethod(corral.Condition)


class ConditionTests(lock_tests.ConditionTests):
    condtype = staticmethod(corral.Condition)


class SemaphoreTests(lock_tests.SemaphoreTests):
    semtype = staticmethod(corral.Semaphore)


class BoundedSemaphoreTests(lock_tests.BoundedSemaphoreTests):
    semtype = staticmethod(corral.BoundedSemaphore)


class BarrierTests(lock_tests.BarrierTests):
    barriertype = staticmethod(corral.Barrier)
