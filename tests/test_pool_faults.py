"""The process pool's three faults of the outside review (stop 21), each
across real processes: a result message that cannot be read (it must end
only its own task, the rest of its batch arrives, the results thread
lives), Ctrl-C while workers of a spawn or fork-server pool hang importing
``__main__`` (the user gets KeyboardInterrupt at once, nothing is left
running, no replacement is started), and a fork server killed from outside
(relaunched, the task it cost retried, nothing leaked)."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

import _pool_tasks as t
import corral
from _helpers import _current_syscall, pid_gone, proc_state, wait_until
from corral import _forkserver

HERE = os.path.dirname(os.path.abspath(__file__))

# -- 1. a result message that cannot be read ----------------------------------


def init_raises_when(go: Any) -> None:
    """A pool initializer that raises once ``go`` (a corral.Event) is set."""
    go.wait(60)
    raise ValueError("init boom")


def test_a_result_that_cannot_be_read_fails_only_its_task_and_its_batch_arrives() -> None:
    # The pump is held in a done-callback while six results come: the next
    # next_events takes them in one batch, one of them corrupt. Before the
    # fix the conversion's error dropped the batch's other events (their
    # futures pending for ever) and killed the results thread.
    go = corral.Event()
    release, holding = threading.Event(), threading.Event()

    def hold(_: object) -> None:
        holding.set()
        release.wait(60)

    with corral.ProcessPoolExecutor(2, start_method="fork") as pool:
        first = pool.submit(t.wait_for, go, 0)
        first.add_done_callback(hold)  # not done yet: runs on the results thread
        go.set()
        assert holding.wait(60), "the results thread never ran the callback"
        futs = [pool.submit(t.square, i) for i in range(1, 7)]
        bad = futs[2]
        pool._core._corrupt_outcomes([bad._task])
        assert wait_until(lambda: pool.stats()["completed"] == 7, 60), "the results never came"
        release.set()
        with pytest.raises(corral.CorruptDataError, match="arena") as info:
            bad.result(timeout=60)
        assert any(f"task {bad._task}" in note for note in info.value.__notes__)
        assert [f.result(timeout=60) for f in futs if f is not bad] == [1, 4, 16, 25, 36]
        assert pool._pump_thread.is_alive()
        assert pool.submit(t.square, 9).result(timeout=60) == 81


def test_an_initializer_exception_that_cannot_be_read_breaks_the_pool_saying_so() -> None:
    # A non-task event must not vanish either: the pool breaks (it would
    # anyway) with a reason saying the initializer's exception was lost.
    go = corral.Event()
    pool = corral.ProcessPoolExecutor(1, start_method="fork", initializer=init_raises_when, initargs=(go,))
    try:
        pool._core._corrupt_outcomes([], init_failed=True)
        fut = pool.submit(t.square, 2)
        go.set()
        with pytest.raises(BrokenProcessPool, match="initializer raised, and its exception could not be read"):
            fut.result(timeout=60)
        with pytest.raises(BrokenProcessPool, match="could not be read: CorruptDataError"):
            pool.submit(t.square, 3)
    finally:
        pool.shutdown(wait=True)
    assert not pool._pump_thread.is_alive()


# -- what a failed result holds (stop 23) ---------------------------------------


def parts_when(go: Any, text: int, n: int, size: int, arrays: bool) -> Any:
    """Once ``go`` (a corral.Event) is set: a string of ``text`` bytes (in
    the pickle stream) and ``n`` out-of-band buffers of ``size`` bytes
    (numpy arrays, or raw ``PickleBuffer``s)."""
    if not go.wait(60):
        raise TimeoutError("never told to finish")
    if arrays:
        import numpy as np

        return "x" * text, [np.full(size, i, np.uint8) for i in range(n)]
    return "x" * text, [pickle.PickleBuffer(bytearray([i]) * size) for i in range(n)]


@pytest.mark.parametrize("stream", ["inline", "block"])
@pytest.mark.parametrize("buffers", ["raw", "numpy"])
def test_results_that_cannot_be_read_give_back_every_arena_block_of_their_message(stream: str, buffers: str) -> None:
    # Reading a result failed at its first part; the blocks of the parts
    # after it stayed held by the parent until the pool ended: arena space
    # lost per failed task. The pickle stream is inline (small) or a block
    # itself (past the ring's 64 KiB inline share), which must go back too.
    if buffers == "numpy":
        pytest.importorskip("numpy")
    go = corral.Event()
    text = 100 << 10 if stream == "block" else 10
    with corral.ProcessPoolExecutor(2, start_method="fork") as pool:
        used = pool._results._q.arena_used
        baseline = used()
        futs = [pool.submit(parts_when, go, text, 3, 256 << 10, buffers == "numpy") for _ in range(12)]
        bad = futs[::2]
        armed = pool._core._corrupt_outcomes([f._task for f in bad])
        go.set()
        assert armed
        for f in bad:
            with pytest.raises(corral.CorruptDataError, match="arena"):
                f.result(timeout=60)
        for f in futs[1::2]:
            got, bufs = f.result(timeout=60)
            assert len(got) == text and [bytes(memoryview(b)[-1:]) for b in bufs] == [b"\0", b"\1", b"\2"]
        # Every message it named has come: the hook is off again (results
        # cost one atomic load for it, no lock).
        assert not pool._core._corrupt_outcomes([])
        del futs, bad, f, got, bufs
        gc.collect()
        assert wait_until(lambda: used() == baseline, 30), f"{used() - baseline} bytes of the arena still held"
        assert pool.submit(t.square, 4).result(timeout=60) == 16


def test_a_result_for_a_task_the_pool_no_longer_books_gives_back_its_blocks() -> None:
    # A result that comes after its task was abandoned (the pool broke or
    # was stopped as the worker sent it) is dropped by the completion
    # thread: its blocks stayed held until the pool ended. Put here as a
    # worker would, for a task id the pool never made.
    with corral.ProcessPoolExecutor(1, start_method="fork") as pool:
        assert pool.submit(t.square, 3).result(timeout=60) == 9
        q = pool._results._q
        baseline = q.arena_used()
        header = corral._core.encode_result(1 << 40, "ok", 0, 0, pickle.dumps(None))
        for _ in range(4):
            q.put(header, [bytearray(256 << 10)] * 3)
        assert wait_until(lambda: q.empty() and q.arena_used() == baseline, 30), q.arena_used() - baseline
        assert pool.submit(t.square, 4).result(timeout=60) == 16


def init_fails_once_set(fail: Any) -> None:
    """A pool initializer that raises once ``fail`` (a corral.Event) is set."""
    if fail.is_set():
        raise ValueError("init boom")


def test_a_stop_after_the_pool_broke_reports_the_break_not_a_cancel() -> None:
    # The pool breaks (a replacement worker's initializer raises) while the
    # results thread is busy elsewhere; then Pool.terminate / Ctrl-C stops
    # it (_stop_now) before that thread has handled the break. The task the
    # break cut off said CancelledError; it must say BrokenProcessPool,
    # with the initializer's exception as its cause.
    fail, go = corral.Event(), corral.Event()
    holding, release = threading.Event(), threading.Event()
    pool = corral.ProcessPoolExecutor(
        1, start_method="fork", initializer=init_fails_once_set, initargs=(fail,), max_tasks_per_child=1
    )
    spawn = pool._workers.spawn

    def held_spawn(slot: int) -> None:  # runs on the results thread
        spawn(slot)
        holding.set()
        release.wait(60)

    pool._workers.spawn = held_spawn  # type: ignore[method-assign]
    try:
        first = pool.submit(t.wait_for, go, 1)
        cut = pool.submit(t.square, 3)
        assert wait_until(first.running, 60), "the first worker never started"  # its initializer ran
        fail.set()
        go.set()  # the worker retires after `first`; its replacement fails to start
        assert holding.wait(60), "no replacement was started"
        assert wait_until(lambda: pool.stats()["outstanding"] == 0, 60), "the pool never broke"
        pool._stop_now()
        release.set()
        with pytest.raises(BrokenProcessPool, match="initializer init_fails_once_set raised") as info:
            cut.result(timeout=60)
        assert isinstance(info.value.__cause__, ValueError)
        assert first.result(timeout=60) == 1
    finally:
        release.set()
        pool.shutdown(wait=True)


def test_a_stop_cancels_only_the_tasks_it_cut_off() -> None:
    # A task whose result came just before the stop (not yet handled by the
    # results thread) keeps it; the task the stop killed ends cancelled.
    # Before, every task not yet handled ended cancelled.
    go, never = corral.Event(), corral.Event()
    holding, release = threading.Event(), threading.Event()

    def hold(_: object) -> None:
        holding.set()
        release.wait(60)

    pool = corral.ProcessPoolExecutor(2, start_method="fork")
    try:
        first = pool.submit(t.wait_for, go, 0)
        first.add_done_callback(hold)  # runs on the results thread
        go.set()
        assert holding.wait(60), "the results thread never ran the callback"
        done = pool.submit(t.square, 5)
        running = pool.submit(t.wait_for, never, 1)
        assert wait_until(lambda: pool.stats()["completed"] == 2 and running.running(), 60)
        pool._stop_now()
        assert running.cancelled()  # at once, by the stop
        release.set()
        assert done.result(timeout=60) == 25
        with pytest.raises(cf.CancelledError):
            running.result(timeout=60)
    finally:
        release.set()
        never.set()
        pool.shutdown(wait=True)


# -- 2. Ctrl-C while workers hang importing __main__ --------------------------

HANGING_MAIN = """
import os, sys, time
import corral

if __name__ != "__main__":
    # A spawned worker (or the fork server) imports this file as
    # __mp_main__: no guard, and its top level never ends.
    with open(os.environ["BOOT_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(1)

pool = corral.ProcessPoolExecutor(2, start_method=sys.argv[1])
if sys.argv[2] == "result":  # Ctrl-C in the block, waiting for a result
    with pool:
        pool.submit(abs, -1).result()
elif sys.argv[2] == "exit":  # Ctrl-C while the block's exit waits for the task
    with pool:
        pool.submit(abs, -1)
else:  # Ctrl-C in a plain shutdown(wait=True) with nothing to run
    pool.shutdown(wait=True)
"""


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` that still run (not zombies)."""
    left = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and not pid_gone(int(name)):
            left.append(int(name))
    return left


def _in_futex_wait(pid: int) -> bool:
    """The main thread of ``pid`` sleeps in futex (a lock, a join, a
    result): the script reached its blocking call."""
    call = _current_syscall(pid, pid)
    return call is not None and call[0] in (202, 98)


@pytest.mark.parametrize(
    "method, where, group",
    [
        ("spawn", "result", False),
        ("spawn", "result", True),
        ("spawn", "exit", False),
        ("spawn", "shutdown", False),
        ("forkserver", "result", False),
        ("forkserver", "result", True),
    ],
)
def test_ctrl_c_while_workers_hang_importing_main_stops_everything_at_once(
    tmp_path: Any, method: str, where: str, group: bool
) -> None:
    # Before the fix: the with block's exit (or the exit hook) waited for
    # the booting workers for ever, replacements were started after the
    # interrupt (group), and a fork server stuck booting cost 10 s.
    script = os.path.join(str(tmp_path), "hangs.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(HANGING_MAIN))
    log = os.path.join(str(tmp_path), "boot.log")
    open(log, "w").close()

    def booted() -> list[str]:
        with open(log) as f:
            return f.read().split()

    booting = 2 if method == "spawn" else 1  # the fork server hangs, not its workers
    proc = subprocess.Popen(
        [sys.executable, script, method, where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, BOOT_LOG=log),
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: len(booted()) == booting, 60), "the workers never began to boot"
        assert wait_until(lambda: _in_futex_wait(proc.pid), 60), "the script never blocked"
        sent = time.monotonic()
        if group:  # as a terminal's Ctrl-C: the workers get it too
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert wait_until(lambda: not _session(proc.pid), 30), f"left running: {_session(proc.pid)}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err
    # Generous for a loaded machine: it is milliseconds when idle.
    assert took < 8, f"took {took:.1f} s to stop"
    if not group:
        assert len(booted()) == booting, "a worker was started after the interrupt"


# -- 3. a fork server killed from outside --------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _kill_server_then_finish_a_task(pool: corral.ProcessPoolExecutor, go: Any, value: int) -> None:
    """Kills the pool's fork server while a task waits on ``go``: the
    workers die with it, a new server is started, the task runs again on
    one of its workers; no descriptor is left behind, the old server is
    reaped."""
    server = pool._forkserver
    assert server is not None
    old = server._proc.pid
    workers = [w["pid"] for w in pool.stats()["workers"]]
    fut = pool.submit(t.wait_for, go, value)
    assert wait_until(fut.running, 60)
    fds = _fds()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: all(pid_gone(w) for w in workers), 30), "the workers outlived their server"
    assert wait_until(lambda: server._proc.pid != old and server.alive(), 60), "no new server"
    go.set()
    assert fut.result(timeout=60) == value  # retried on a worker of the new server
    go.clear()
    assert proc_state(old) is None, "the old server was not reaped"
    assert sorted(pool.map(t.square, range(4))) == [0, 1, 4, 9]
    assert not {w["pid"] for w in pool.stats()["workers"]} & set(workers)
    assert _fds() <= fds, "descriptors leaked"


def test_a_killed_fork_server_is_relaunched_and_the_task_it_cost_is_retried() -> None:
    go = corral.Event()
    with corral.ProcessPoolExecutor(2, start_method="forkserver", retries=1) as pool:
        assert sorted(pool.map(t.square, range(4))) == [0, 1, 4, 9]  # both workers up
        for death in range(2):  # once per death
            _kill_server_then_finish_a_task(pool, go, death)
        assert pool._forkserver is not None and pool._forkserver.relaunches >= 2


def test_a_fork_server_that_dies_each_time_it_boots_again_breaks_the_pool_saying_why(tmp_path: Any) -> None:
    # The bound: a relaunched server that dies while it boots is not
    # relaunched again; the pool breaks with the reason.
    folder = str(tmp_path)
    flag = os.path.join(folder, "die")
    with open(os.path.join(folder, "corral_dies_on_relaunch.py"), "w") as f:
        f.write(f"import os\nif os.path.exists({flag!r}):\n    os._exit(7)\n")
    sys.path.insert(0, folder)
    try:
        with corral.ProcessPoolExecutor(1, start_method="forkserver", preload=["corral_dies_on_relaunch"]) as pool:
            assert pool.submit(t.square, 2).result(timeout=60) == 4
            server = pool._forkserver
            assert server is not None
            open(flag, "w").close()
            os.kill(server._proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, "the pool never broke"
                try:
                    err = pool.submit(t.square, 2).exception(timeout=60)
                except BrokenProcessPool as e:
                    err = e
                if isinstance(err, BrokenProcessPool):
                    break
            assert "fork server died (exit code -9), and its replacement failed" in str(err)
            assert "exit code 7" in str(err)
    finally:
        sys.path.remove(folder)


class _Pids:
    """A map-style dataset whose samples are ``[index, worker pid]``."""

    def __len__(self) -> int:
        return 200

    def __getitem__(self, i: int) -> Any:
        import numpy as np

        return np.array([i, os.getpid()])


def test_a_data_loader_whose_fork_server_is_killed_finishes_its_epoch() -> None:
    # The reviewer's reproducer (F4), synchronised on pids: the epoch had
    # failed with BrokenProcessPool at the next worker death.
    np = pytest.importorskip("numpy")
    dl = corral.DataLoader(_Pids(), batch_size=4, num_workers=2, multiprocessing_context="forkserver", timeout=60)
    it = iter(dl)
    first = np.asarray(next(it))
    workers = {int(p) for p in first[:, 1]}
    server = _forkserver.shared([])  # the loader's pool's (no preload)
    os.kill(server._proc.pid, signal.SIGKILL)
    assert wait_until(lambda: all(pid_gone(w) for w in workers), 30), "the workers outlived their server"
    rest = [np.asarray(b) for b in it]
    assert 1 + len(rest) == 50
    assert sorted(int(i) for b in [first, *rest] for i in b[:, 0]) == list(range(200))


def test_a_break_ends_every_task_even_if_ending_one_of_them_raises() -> None:
    # The break takes every handler off the pool's tables, then ends each:
    # one that raised (no memory for its exception, say) stopped the loop,
    # and the tasks after it stayed pending for ever.
    pool = corral.ProcessPoolExecutor(1)
    gate = corral.Event()
    fs = [pool.submit(gate.wait, 60) for _ in range(4)]
    real, calls = pool._fail_handler, []

    def fails_once(h: Any, task: int, exc: BaseException) -> None:
        calls.append(task)
        if len(calls) == 1:
            raise MemoryError("ending this task failed (test)")
        real(h, task, exc)

    pool._fail_handler = fails_once  # type: ignore[method-assign]
    try:
        pool._core.terminate("broken on purpose (test)")
        assert wait_until(lambda: sum(f.done() for f in fs) == 3, 30), [f._state for f in fs]
        done = [f for f in fs if f.done()]
        assert len(calls) == 4, calls
        for f in done:
            with pytest.raises(BrokenProcessPool, match="broken on purpose"):
                f.result(timeout=0)
    finally:
        gate.set()
        pool.shutdown(wait=True)
