"""Fixtures shared by the corral suites.

Every child a test starts is stopped at the end of the test, whatever the
outcome, so that one failing test cannot leave processes behind that slow
down or confuse the next ones.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

# tests/ has no __init__.py: make its helper modules importable by name in
# this process (pytest's rootdir-relative insertion does it too); corral
# children inherit sys.path from the parent.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import corral  # noqa: E402
import corral.process  # noqa: E402


def _stop(p: corral.Process) -> None:
    try:
        if p.is_alive():
            p.kill()
        p.join(10)
    except ValueError:  # closed by the test
        pass


@pytest.fixture(scope="module")
def pool() -> Any:
    """One process pool per test module, shared by the tests that do not
    break or reshape it."""
    p = corral.ProcessPoolExecutor(2)
    yield p
    p.shutdown(wait=True)


@pytest.fixture
def start() -> Any:
    """``start(target, *args, **kwargs)``: a started corral.Process
    (spawn), killed and joined at the end of the test if still running."""
    procs: list[corral.Process] = []

    def _start(target: Callable[..., Any], *args: Any, start_method: str = "spawn", **kwargs: Any) -> corral.Process:
        p = corral.Process(target=target, args=args, kwargs=kwargs, start_method=start_method)
        p.start()
        procs.append(p)
        return p

    yield _start
    for p in procs:
        _stop(p)


@pytest.fixture(autouse=True)
def _reap_leftover_children() -> Any:
    """Backstop: kills corral children a test forgot (or could not) stop.
    Process-pool workers are left to their pool (a module-scoped pool lives
    across tests; its shutdown stops them)."""
    yield
    with corral.process._children_lock:
        leftovers = [p for p in corral.process._children if not p.name.startswith("corral-pool-worker-")]
    for p in leftovers:
        _stop(p)
