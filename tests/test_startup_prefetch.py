"""A pool worker with an initializer imports cloudpickle in a thread of its
own while that initializer leaves the CPU idle (``_worker._Prefetch``): the
first task's function of ``__main__`` (sent by value) then loads without
importing it after the initializer. Not while the initializer computes;
and a fork the initializer makes meanwhile waits for that import.

Each scenario runs in a fresh interpreter: a fork server of its own,
started before the program imported cloudpickle (a server that has
imported it, ``_forkserver.EAGER``, forks workers that need no prefetch)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from test_startup import _run_script

_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, {here!r})
    import corral
    from corral import _worker
    from _helpers import wait_until

    def imported(name):
        mod = sys.modules.get(name)
        return mod is not None and not getattr(mod.__spec__, "_initializing", False)

    def idle():
        # Sleeps (the CPU idle, as a model load reading files) until the
        # prefetch has imported cloudpickle.
        return wait_until(lambda: imported("cloudpickle"), 20)

    def computing():
        # Computes until the prefetch thread has made its one decision.
        deadline = time.monotonic() + 20
        while _worker._prefetch is not None and _worker._prefetch.thread.is_alive():
            if time.monotonic() > deadline:
                return "the prefetch thread did not end"
        return "cloudpickle" in sys.modules

    def forking():
        # Forks as soon as the prefetch's import has begun; the child
        # imports cloudpickle: it must not find its import lock held by a
        # thread it does not have.
        if not wait_until(lambda: "cloudpickle" in sys.modules, 20, 0.0002):
            return "no prefetch"
        pid = os.fork()
        if pid == 0:
            import cloudpickle
            os._exit(0 if cloudpickle.dumps is not None else 1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "the child hung importing cloudpickle"

    if __name__ == "__main__":
        init = {{"idle": idle, "computing": computing, "forking": forking}}[sys.argv[1]]
        print("cloudpickle" in sys.modules)
        with corral.ProcessPoolExecutor(1, initializer=init, start_method=sys.argv[2]) as pool:
            print(pool.submit(corral.worker_state).result(timeout=60))
    """
)


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_a_worker_whose_initializer_sleeps_imports_cloudpickle_meanwhile(tmp_path: Any, method: str) -> None:
    # Old code: the worker imported cloudpickle only to load its first
    # task's function of __main__, after its initializer ('True False').
    assert _run_script(tmp_path, _SCRIPT, "idle", method)[:2] == ["False", "True"]


def test_a_worker_whose_initializer_computes_does_not_import_cloudpickle_then(tmp_path: Any) -> None:
    # The import would take CPU from that initializer, and a pool of named
    # functions never needs it.
    assert _run_script(tmp_path, _SCRIPT, "computing", "forkserver")[:2] == ["False", "False"]


def test_a_fork_in_the_initializer_waits_for_the_prefetch_import(tmp_path: Any) -> None:
    assert _run_script(tmp_path, _SCRIPT, "forking", "forkserver")[:2] == ["False", "0"]
