"""The executor skeleton (``corral._executor``): one awaitable, generic
``corral.Future`` for every executor, one options object with the same
methods everywhere, one exit hook, and the thread pool's timeouts kept by
the core's timer thread instead of a Python one."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import _pool_tasks as t
import corral
from corral import _executor


def _os_thread_names() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass  # ended meanwhile
    return names


def test_every_executor_returns_the_one_generic_awaitable_future() -> None:
    assert corral.Future[int] is not None  # generic
    assert corral.ThreadFuture is corral.Future
    with corral.ThreadPoolExecutor(2) as threads, corral.ProcessPoolExecutor(1) as procs:
        fs = [threads.submit(t.square, 3), procs.submit(t.square, 4)]
        for f in fs:
            assert isinstance(f, corral.Future) and isinstance(f, cf.Future)
        done, _ = cf.wait(fs, timeout=60)
        assert len(done) == 2
        assert sorted(f.result() for f in cf.as_completed(fs, timeout=60)) == [9, 16]
        seen: list[int] = []
        fs[0].add_done_callback(lambda f: seen.append(f.result()))
        assert seen == [9]

        async def main() -> list[int]:
            a = await threads.submit(t.square, 5)
            b = await procs.submit(t.square, 6)
            c = await asyncio.wrap_future(threads.submit(t.square, 7))
            return [a, b, c]

        assert asyncio.run(main()) == [25, 36, 49]


def test_options_have_submit_map_and_imap_unordered_on_every_executor() -> None:
    with corral.ThreadPoolExecutor(2) as threads, corral.ProcessPoolExecutor(1) as procs:
        for ex, opts in ((threads, threads.options(timeout=30)), (procs, procs.options(timeout=30, retries=1))):
            assert isinstance(opts, corral.Options)
            assert opts.submit(t.square, 2).result(timeout=60) == 4
            assert list(opts.map(t.add, range(4), range(4))) == [0, 2, 4, 6]
            assert sorted(opts.imap_unordered(t.square, range(5), progress=False)) == [0, 1, 4, 9, 16]
            with pytest.raises(ValueError):
                ex.options(timeout=0)


def test_a_thread_pool_map_with_a_timeout_fails_the_late_item_only() -> None:
    gate = threading.Event()
    with corral.ThreadPoolExecutor(2) as pool:
        it = pool.options(timeout=0.2).map(lambda x: gate.wait(30) if x == 1 else x, range(3))
        assert next(it) == 0
        with pytest.raises(TimeoutError, match="timeout of 0.2 s"):
            next(it)
        gate.set()
        assert list(it) == []  # as the stdlib's map: an exception ends it
        ok = pool.options(timeout=0.2).map(t.square, range(3))
        assert list(ok) == [0, 1, 4]


def test_thread_pool_timeout_counts_from_when_a_thread_takes_the_task() -> None:
    gate = threading.Event()
    with corral.ThreadPoolExecutor(1) as pool:
        first = pool.submit(gate.wait, 30)
        # Queued behind ``first`` for longer than its timeout: it has not
        # started, so it has not timed out.
        quick = pool.options(timeout=0.2).submit(t.square, 3)
        time.sleep(0.4)
        assert not quick.done()
        gate.set()
        assert first.result(timeout=30) is True
        assert quick.result(timeout=30) == 9
        assert pool._core.armed == 0


def test_thread_pool_kill_is_cancel_a_running_task_runs_on() -> None:
    gate, started = threading.Event(), threading.Event()

    def block() -> str:
        started.set()
        gate.wait(30)
        return "ran"

    with corral.ThreadPoolExecutor(1) as pool:
        running = pool.submit(block)
        queued = pool.submit(t.square, 2)
        assert started.wait(30)
        assert queued.kill() is True and queued.cancelled()
        assert running.kill(timeout=0.1) is False
        gate.set()
        assert running.result(timeout=30) == "ran"
        assert running.kill() is False


def test_the_timer_thread_is_the_cores_and_ends_at_shutdown() -> None:
    pool = corral.ThreadPoolExecutor(1, thread_name_prefix="tmr")
    assert pool.options(timeout=60).submit(t.square, 2).result(timeout=30) == 4
    # A new thread names itself once it runs (until then it has its
    # parent's name).
    deadline = time.monotonic() + 30
    while "tmr-timeouts" not in _os_thread_names() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "tmr-timeouts" in _os_thread_names()
    assert not any(th.name == "corral-thread-timeouts" for th in threading.enumerate())
    pool.shutdown(wait=True)
    assert "tmr-timeouts" not in _os_thread_names()


def test_run_async_and_map_async_with_their_older_names() -> None:
    assert corral.ThreadPoolExecutor.arun is corral.ThreadPoolExecutor.run_async
    assert corral.ThreadPoolExecutor.amap is corral.ThreadPoolExecutor.map_async
    with corral.ThreadPoolExecutor(2) as pool:

        async def main() -> list[Any]:
            a = await pool.run_async(t.add, 1, b=2)
            b = [r async for r in pool.map_async(t.square, range(4), limit=2)]
            with pytest.raises(ValueError, match="boom"):
                await pool.run_async(t.raise_value_error, "boom")
            return [a, b]

        assert asyncio.run(main()) == [3, [0, 1, 4, 9]]


def test_one_loop_bridge_serves_threads_and_primitives() -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        with corral.ThreadPoolExecutor(1) as pool:
            ev = corral.Event()
            waiter = asyncio.ensure_future(ev.wait_async(timeout=30))
            got = await pool.run_async(ev.set)
            assert await waiter is True
        return got, len([b for b in [corral.aio._bridges.get(loop)] if b is not None])

    assert asyncio.run(main()) == (None, 1)


def test_every_executor_is_shut_down_by_the_one_exit_hook() -> None:
    # The tasks still queued at exit run before the interpreter finalizes.
    code = (
        "import corral, time\n"
        "import _pool_tasks as t\n"
        "tp = corral.ThreadPoolExecutor(1)\n"
        "pp = corral.ProcessPoolExecutor(1)\n"
        "tp.submit(time.sleep, 0.2)\n"
        "tp.submit(print, 'thread task ran', flush=True)\n"
        "pp.submit(t.square, 3).add_done_callback(lambda f: print('process task', f.result(), flush=True))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "thread task ran" in out.stdout
    assert "process task 9" in out.stdout
    assert _executor._exiting is False  # only the child's hook ran


def test_shutdown_is_the_skeletons_and_a_second_one_still_waits() -> None:
    pool = corral.ThreadPoolExecutor(1)
    slow = pool.submit(time.sleep, 0.3)
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.options(timeout=1).submit(t.square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.map(t.square, range(3))
    pool.shutdown(wait=True)
    assert slow.done()
    assert pool not in _executor._live


# ---- found by the outside review of the redesign (each failed before its fix) ----


def _run_script(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_a_done_callback_of_a_timed_out_task_can_shut_the_thread_pool_down() -> None:
    # The callback runs on the core's timer thread; shutdown(wait=True) there
    # used to try to join that very thread (a Rust panic, a thread leaked).
    pool = corral.ThreadPoolExecutor(2)
    release, seen, done = threading.Event(), [], threading.Event()

    def cb(f: cf.Future[Any]) -> None:
        try:
            release.set()  # the task may end: shutdown waits for it
            pool.shutdown(wait=True)
            seen.append("returned")
        except BaseException as e:  # a PanicException is a BaseException
            seen.append(repr(e))
        done.set()

    f = pool.options(timeout=0.1).submit(release.wait, 60)
    f.add_done_callback(cb)
    with pytest.raises(TimeoutError):
        f.result(timeout=60)
    assert done.wait(60)
    assert seen == ["returned"]


def test_a_task_that_times_out_during_the_initializer_is_not_run_and_logs_nothing() -> None:
    out = _run_script(
        """
import threading, corral
timed_out, ran = threading.Event(), []
pool = corral.ThreadPoolExecutor(1, initializer=lambda: timed_out.wait(60))
fut = pool.options(timeout=0.1).submit(ran.append, 1)
fut.add_done_callback(lambda f: timed_out.set())
try:
    fut.result(60)
except TimeoutError:
    print("timed out")
pool.shutdown(wait=True)
print("ran", ran)
"""
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["timed out", "ran []"]
    assert "CRITICAL" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


def test_a_non_daemon_thread_can_use_a_process_pool_after_the_main_thread_returns() -> None:
    # The executors' exit hook runs at atexit, after non-daemon threads end
    # (before: threading's exit hook shut the pool down under the thread).
    out = _run_script(
        """
import threading, corral, _pool_tasks as t
started = threading.Event()
def worker(pool):
    started.set()
    print([pool.submit(t.square, i).result(60) for i in range(10)], flush=True)
if __name__ == "__main__":
    pool = corral.ProcessPoolExecutor(2)
    threading.Thread(target=worker, args=(pool,)).start()
    started.wait(60)
"""
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([i * i for i in range(10)])


@pytest.mark.parametrize("kind", ["threads", "timed", "blocking"])
def test_a_fork_child_exits_although_its_parent_has_a_thread_pool(kind: str) -> None:
    # The exit hooks inherited by the child waited for the parent's threads,
    # which do not exist in the child: it hung at exit.
    out = _run_script(
        f"""
import asyncio, os, corral
from corral import aio
kind = {kind!r}
pool = corral.ThreadPoolExecutor(2)
if kind == "threads":
    pool.submit(abs, -1).result(60)
elif kind == "timed":
    pool.options(timeout=30).submit(abs, -1).result(60)
else:
    asyncio.run(aio.run_blocking(abs, -1))
pid = os.fork()
if pid == 0:
    if kind == "blocking":
        assert asyncio.run(aio.run_blocking(abs, -2)) == 2  # a pool of its own
    raise SystemExit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
pool.shutdown()
""",
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child 0"


def test_run_blocking_is_a_coroutine_that_needs_no_running_loop_to_be_made() -> None:
    from corral import aio

    assert asyncio.run(aio.run_blocking(sum, [1, 2, 3])) == 6
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(aio.run_blocking(len, "four")) == 4
    finally:
        loop.close()
