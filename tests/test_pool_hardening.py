"""The process pool where the audit broke it: tasks a worker cannot load,
Ctrl-C inside ``with``, maps nobody reads or that never end, a forked child
holding the parent's pool, boot failures, results that cannot be loaded,
and the initializer's globals of ``__main__``."""

from __future__ import annotations

import errno
import gc
import itertools
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import _pool_tasks as t
import corral
from _helpers import Interrupted, interrupt_after, pid_gone, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_script(code: str, tmp_path: str, timeout: float = 60, **popen: object) -> subprocess.CompletedProcess[str]:
    path = os.path.join(tmp_path, "script.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, path], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path, **popen
    )


def write_module(folder: str, name: str, body: str) -> str:
    path = os.path.join(folder, f"{name}.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(body))
    return path


def test_a_function_the_worker_cannot_import_fails_its_future_and_the_pool_lives_on(tmp_path: object) -> None:
    folder = str(tmp_path)
    # Loaded by file path: the parent has it, a worker cannot import it.
    import importlib.util

    path = write_module(folder, "corral_oddmod", "def f(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location("corral_oddmod", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["corral_oddmod"] = mod
    spec.loader.exec_module(mod)
    try:
        with corral.ProcessPoolExecutor(2) as pool:
            fut = pool.submit(mod.f, 1)
            with pytest.raises(ModuleNotFoundError, match="corral_oddmod"):
                fut.result(timeout=60)
            assert "corral_oddmod" in str(fut.exception().__cause__)  # the worker's traceback
            assert pool.submit(t.square, 7).result(timeout=60) == 49
            assert pool.stats()["workers"][0]["restarts"] + pool.stats()["workers"][1]["restarts"] == 0
    finally:
        del sys.modules["corral_oddmod"]


def test_a_module_that_refuses_to_import_in_a_child_fails_the_task(tmp_path: object) -> None:
    folder = str(tmp_path)
    write_module(
        folder,
        "corral_parent_only",
        f"""
        import os
        if os.getpid() != {os.getpid()}:
            raise ImportError("this module only imports in the parent")
        def f(x):
            return x
        """,
    )
    sys.path.insert(0, folder)
    try:
        import corral_parent_only  # type: ignore[import-not-found]

        with corral.ProcessPoolExecutor(1) as pool:
            with pytest.raises(ImportError, match="only imports in the parent"):
                pool.submit(corral_parent_only.f, 1).result(timeout=60)
            assert list(pool.map(t.square, range(5))) == [0, 1, 4, 9, 16]
    finally:
        sys.path.remove(folder)
        sys.modules.pop("corral_parent_only", None)


def test_a_module_that_kills_the_worker_while_loading_ends_in_worker_lost(tmp_path: object) -> None:
    folder = str(tmp_path)
    write_module(
        folder,
        "corral_exits_in_child",
        f"""
        import os
        if os.getpid() != {os.getpid()}:
            os._exit(7)
        def f(x):
            return x
        """,
    )
    sys.path.insert(0, folder)
    try:
        import corral_exits_in_child  # type: ignore[import-not-found]

        with corral.ProcessPoolExecutor(1, retries=2) as pool:
            fut = pool.submit(corral_exits_in_child.f, 1)
            with pytest.raises(corral.WorkerLostError) as info:
                fut.result(timeout=60)
            assert info.value.exitcode == 7
            assert pool.stats()["workers"][0]["restarts"] == 3  # the run and its 2 retries
            assert pool.submit(t.square, 3).result(timeout=60) == 9
    finally:
        sys.path.remove(folder)
        sys.modules.pop("corral_exits_in_child", None)


def test_ctrl_c_in_a_with_block_cancels_the_queue_and_stops_the_workers(tmp_path: object) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time, corral
                import _pool_tasks as t
                if __name__ == "__main__":
                    try:
                        with corral.ProcessPoolExecutor(2) as pool:
                            futs = [pool.submit(t.sleep_then, 30, i) for i in range(20)]
                            deadline = time.monotonic() + 60
                            while not all(f.running() for f in futs[:2]):
                                assert time.monotonic() < deadline, "the first two tasks never ran"
                                time.sleep(0.01)
                            print("running", flush=True)
                            futs[-1].result()
                    except KeyboardInterrupt:
                        print("interrupted", sum(f.cancelled() for f in futs), flush=True)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
        env=dict(os.environ, PYTHONPATH=HERE),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert out.split()[0] == "interrupted", err
    assert int(out.split()[1]) == 20, "every task ends cancelled: 18 never started, 2 were killed"
    # Without the fix the script ran on for ~300 s (every queued task);
    # generous for a loaded machine.
    assert took < 20, f"took {took:.1f} s to stop"


def test_leaving_with_while_a_map_over_an_endless_input_is_referenced(tmp_path: object) -> None:
    with corral.ProcessPoolExecutor(2) as pool:
        it = pool.map(t.square, itertools.count())
        first = [next(it) for _ in range(10)]
    assert first == [x * x for x in range(10)]
    # What was read still comes, in order; then the cut is reported.
    got = []
    with pytest.raises(RuntimeError, match="shut down before this map's input was read"):
        for x in it:
            got.append(x)
    assert got == [x * x for x in range(10, 10 + len(got))]


def test_an_unread_map_still_runs_all_its_work(tmp_path: object) -> None:
    paths = [os.path.join(str(tmp_path), f"p{i}") for i in range(10)]
    gen_paths = [os.path.join(str(tmp_path), f"g{i}") for i in range(300)]
    with corral.ProcessPoolExecutor(2) as pool:
        pool.map(t.touch, paths)  # a list, the iterator dropped at once
        pool.map(t.touch, (p for p in gen_paths))  # a generator, dropped too
    assert all(os.path.exists(p) for p in paths)
    assert all(os.path.exists(p) for p in gen_paths)
    with corral.ThreadPoolExecutor(2) as tpool:
        tpool.map(os.remove, paths)
        tpool.map(os.remove, (p for p in gen_paths))
    assert not any(os.path.exists(p) for p in paths + gen_paths)


def test_a_forked_child_cannot_submit_to_its_parents_pool() -> None:
    with corral.ProcessPoolExecutor(1, start_method="fork") as pool:
        assert pool.submit(t.square, 2).result(timeout=60) == 4
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(r)
                try:
                    pool.submit(t.square, 3)
                    os.write(w, b"accepted")
                except RuntimeError as e:
                    os.write(w, str(e).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            said = f.read().decode()
        os.waitpid(pid, 0)
        assert "forked child cannot submit" in said
        assert pool.submit(t.square, 5).result(timeout=60) == 25


def test_external_kills_of_booting_workers_spread_over_time_do_not_break_the_pool(tmp_path: object) -> None:
    folder = str(tmp_path)

    def booting() -> set[int]:
        return {int(n[5:]) for n in os.listdir(folder) if n.startswith("boot-")}

    def wait_for(cond: object, what: str) -> None:
        deadline = time.monotonic() + 60
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    seen: set[int] = set()
    with corral.ProcessPoolExecutor(3, initializer=t.gated_init, initargs=(folder,)) as pool:
        wait_for(lambda: len(booting()) == 3, "3 workers booting")
        seen = booting()
        for victim in sorted(seen):
            os.kill(victim, signal.SIGKILL)  # killed while booting
            wait_for(lambda: len(booting() - seen) == 1, "its replacement booting")
            (new,) = booting() - seen
            seen.add(new)
            open(os.path.join(folder, f"go-{new}"), "w").close()  # this one boots
            wait_for(lambda new=new: any(w["pid"] == new for w in pool.stats()["workers"]), "the replacement ready")
        for pid in seen:
            open(os.path.join(folder, f"go-{pid}"), "a").close()
        assert pool.submit(t.square, 6).result(timeout=60) == 36


def test_submit_to_a_pool_that_broke_raises_broken_process_pool(tmp_path: object) -> None:
    pool = corral.ProcessPoolExecutor(1, initializer=t.raise_value_error, initargs=("boom",))
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(t.square, 1).result(timeout=60)
        for _ in range(3):
            with pytest.raises(BrokenProcessPool):
                pool.submit(t.square, 1)
    finally:
        pool.shutdown()


@pytest.mark.parametrize("bad", [2**40, -1, 2**32])
def test_retries_out_of_range_are_refused_at_construction(bad: int) -> None:
    with pytest.raises(ValueError, match="retries"):
        corral.ProcessPoolExecutor(1, retries=bad)


def test_a_result_whose_loading_raises_system_exit_fails_only_its_future() -> None:
    with corral.ProcessPoolExecutor(1) as pool:
        fut = pool.submit(t.returns_exit_bomb)
        assert isinstance(fut.exception(timeout=60), SystemExit)
        assert pool.submit(t.square, 4).result(timeout=60) == 16


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_the_initializer_and_the_tasks_share_main_globals(tmp_path: object, method: str) -> None:
    r = run_script(
        f"""
        import corral

        MODEL = None
        CALLS = 0

        def load(value):
            global MODEL
            MODEL = value

        def helper():
            return MODEL

        def predict(x):
            global CALLS
            CALLS += 1
            return (helper(), x, CALLS > 0)

        if __name__ == "__main__":
            with corral.ProcessPoolExecutor(2, initializer=load, initargs=(42,), start_method={method!r}) as pool:
                got = list(pool.map(predict, range(20)))
                assert all(m == 42 for m, _, _ in got), got
                assert [x for _, x, _ in got] == list(range(20))
                print("ok")
        """,
        str(tmp_path),
    )
    assert r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_a_container_the_initializer_fills_is_what_the_tasks_see(tmp_path: object, method: str) -> None:
    # multiprocessing.Pool's most common idiom: a module-level dict filled
    # by the initializer. Each task's function arrives with its own copy of
    # the (empty) dict; the worker's filled one must be kept (it was
    # replaced: every task saw None). A global the parent rebinds between
    # submits still arrives (the notebook test below).
    r = run_script(
        f"""
        import corral

        CACHE = {{}}
        SEEN = []

        def init(v):
            CACHE["v"] = v
            SEEN.append(v)

        def task(x):
            return CACHE.get("v"), len(SEEN), x

        if __name__ == "__main__":
            with corral.ProcessPoolExecutor(2, initializer=init, initargs=(5,), start_method={method!r}) as pool:
                got = list(pool.map(task, range(20)))
                assert got == [(5, 1, x) for x in range(20)], got
                print("ok")
        """,
        str(tmp_path),
    )
    assert r.stdout.strip() == "ok", r.stderr


def test_a_notebook_global_changed_between_submits_reaches_the_workers(tmp_path: object) -> None:
    # Run from standard input: no file for the workers to import, as in a notebook.
    code = textwrap.dedent(
        """
        import corral
        threshold = 5
        def over(x):
            return x > threshold
        if __name__ == "__main__":
            with corral.ProcessPoolExecutor(1, start_method="fork") as pool:
                a = pool.submit(over, 7).result(timeout=60)
                threshold = 10
                def over(x):
                    return x > threshold
                b = pool.submit(over, 7).result(timeout=60)
            print(a, b)
        """
    )
    r = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    # The worker's __main__ started as a copy of the parent's (fork); the
    # value the parent set since comes with the redefined function (the
    # stdlib's fork pool would run the stale definition: True True).
    assert r.stdout.split() == ["True", "False"], r.stderr


def test_a_fork_server_worker_with_stdio_none_or_closed_exits_when_it_retires():
    # Its flush before os._exit raised: the worker went back into the fork
    # server's loop instead (and read the server's requests). The "fork"
    # start method goes through corral.Process, tested in test_process.py.
    pool = corral.ProcessPoolExecutor(1, start_method="forkserver", max_tasks_per_child=1)
    first = None
    try:
        first = pool.submit(t.break_stdio_then_pid).result(timeout=30)
        assert wait_until(lambda: pid_gone(first), 10), "the retired worker did not exit"
        assert pool.submit(t.pid).result(timeout=30) != first
    finally:
        if first is not None and not pid_gone(first):
            os.kill(first, signal.SIGKILL)
        pool.shutdown(wait=True)


def test_a_shutdown_interrupted_by_ctrl_c_leaves_a_later_shutdown_that_waits():
    # The interrupted join of the results thread marked it stopped (CPython
    # 3.11), so the second shutdown(wait=True) returned at once while the
    # task still ran.
    pool = corral.ProcessPoolExecutor(1, start_method="fork")
    go = corral.Event()
    f = pool.submit(t.wait_for, go, "done", 1.0)  # runs until go, then 1 s more
    try:
        assert wait_until(f.running, 30)
        with pytest.raises(Interrupted):
            with interrupt_after(0.2):
                pool.shutdown(wait=True)
        assert not f.done()
    finally:
        go.set()
    pool.shutdown(wait=True)
    assert f.done() and f.result(timeout=0) == "done"


def test_a_forked_worker_without_a_pidfd_fails_the_pool_start_with_the_os_error(monkeypatch):
    # Out of descriptors, pidfd_open fails after the fork: the pool passed
    # the missing handle on and raised TypeError ('None' is not an instance
    # of 'ChildProcess').
    forked = []

    def no_pidfd(pid):
        forked.append(pid)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(corral.process._core, "adopt_child", no_pidfd)
    with pytest.raises(OSError, match="cannot watch the new worker process: .*Too many open files"):
        corral.ProcessPoolExecutor(1, start_method="fork")
    assert len(forked) == 1
    assert wait_until(lambda: pid_gone(forked[0]), 10), "the worker the pool could not watch runs on"


def test_a_pool_dropped_without_shutdown_runs_its_tasks_then_lets_its_workers_go(tmp_path):
    # Its results thread held it for ever: each dropped pool kept its worker
    # process, 3 threads and 6 descriptors until the interpreter exited.
    pool = corral.ProcessPoolExecutor(1, start_method="fork")
    worker = pool.submit(t.pid).result(timeout=30)
    for i in range(3):
        pool.submit(t.touch, str(tmp_path / f"done{i}"))  # futures dropped too
    results_thread = pool._pump_thread
    del pool

    def gone() -> bool:
        gc.collect()  # the submitted futures and the pool hold each other
        return pid_gone(worker)

    assert wait_until(gone, 20), "the dropped pool's worker runs on"
    assert all((tmp_path / f"done{i}").exists() for i in range(3)), "a submitted task did not run"
    results_thread.join(20)
    assert not results_thread.is_alive()


def killing_spawns(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Makes the next ``times`` spawned children die before their parent
    writes their bootstrap: each is SIGKILLed right after it is created and
    is a zombie (its end of the boot socket closed) when ``_core.spawn``
    returns, so the parent's first send meets a closed socket. Returns the
    list the killed pids are appended to."""
    real = corral.process._core.spawn
    killed: list[int] = []

    def spawn_then_kill(*args: object) -> object:
        child = real(*args)
        if len(killed) < times:
            child.signal(signal.SIGKILL)
            assert wait_until(lambda: pid_gone(child.pid), 10), "the SIGKILLed child runs on"
            killed.append(child.pid)
        return child

    monkeypatch.setattr(corral.process._core, "spawn", spawn_then_kill)
    return killed


@pytest.mark.parametrize("kills", [1, 2])
def test_spawn_workers_dead_before_their_bootstrap_count_as_boot_failures(monkeypatch, kills):
    # The parent's bootstrap send raised BrokenPipeError: in the constructor
    # the pool failed to start, in a respawn the pool broke for good ("could
    # not start a worker: BrokenPipeError"), skipping the budget of 3 boot
    # failures in a row. kills=1 dies in the constructor's start, kills=2
    # also in the respawn on the results thread.
    killed = killing_spawns(monkeypatch, kills)
    with corral.ProcessPoolExecutor(1, start_method="spawn") as pool:
        assert pool.submit(t.square, 7).result(timeout=60) == 49
    assert len(killed) == kills


def test_three_spawn_workers_dead_before_their_bootstrap_break_the_pool_by_the_boot_budget(monkeypatch):
    killing_spawns(monkeypatch, 3)
    with corral.ProcessPoolExecutor(1, start_method="spawn") as pool:
        with pytest.raises(BrokenProcessPool, match="3 worker processes in a row died while starting"):
            pool.submit(t.square, 7).result(timeout=60)


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_a_worker_killed_while_it_boots_is_replaced(tmp_path, method):
    # The reviewer's probe (p19): kill the idle worker, then its replacement
    # as soon as it exists; the pool must go on.
    folder = str(tmp_path)

    def booting() -> set[int]:
        return {int(n[5:]) for n in os.listdir(folder) if n.startswith("boot-")}

    with corral.ProcessPoolExecutor(1, start_method=method, initializer=t.gated_init, initargs=(folder,)) as pool:
        for _ in range(2):
            assert wait_until(lambda: len(booting()) == 1, 30), "no worker booting"
            (victim,) = booting()
            os.remove(os.path.join(folder, f"boot-{victim}"))
            os.kill(victim, signal.SIGKILL)  # killed while booting
        assert wait_until(lambda: len(booting()) == 1, 30), "no replacement booting"
        (worker,) = booting()
        open(os.path.join(folder, f"go-{worker}"), "w").close()
        assert pool.submit(t.square, 6).result(timeout=60) == 36


def test_every_broken_process_pool_after_an_initializer_raised_has_it_as_cause():
    # The futures failed at the break had it, later submits had
    # __cause__=None (the README promises the initializer's exception).
    pool = corral.ProcessPoolExecutor(1, initializer=t.raise_value_error, initargs=("init boom",))
    try:
        # A forked worker can fail its initializer before the first submit:
        # the break then reaches that submit instead of its future.
        try:
            err = pool.submit(t.square, 1).exception(timeout=60)
        except BrokenProcessPool as e:
            err = e
        assert isinstance(err, BrokenProcessPool)
        assert isinstance(err.__cause__, ValueError) and err.__cause__.args == ("init boom",)
        for _ in range(2):
            with pytest.raises(BrokenProcessPool, match="raise_value_error") as info:
                pool.submit(t.square, 1)
            assert isinstance(info.value.__cause__, ValueError) and info.value.__cause__.args == ("init boom",)
    finally:
        pool.shutdown()


def test_a_submit_refused_before_the_results_thread_saw_the_break_has_the_initializer_error_as_cause(tmp_path):
    # The core refuses tasks as soon as it breaks; the initializer's
    # exception reaches the pool only when its results thread handles the
    # events. Here that thread is held in a done-callback while the break
    # happens, so the submit sees the core's refusal first.
    folder = str(tmp_path)
    release, holding = threading.Event(), threading.Event()

    class ReleasingEvent(threading.Event):
        """The pool's "broken handled" event: waiting on it lets the held
        results thread go first (without the fix nobody waits on it)."""

        def wait(self, timeout: float | None = None) -> bool:
            release.set()
            return super().wait(timeout)

    def hold(_: object) -> None:
        holding.set()
        release.wait(30)

    pool = corral.ProcessPoolExecutor(2, initializer=t.second_init_fails, initargs=(folder,))
    try:
        pool._broken_seen = ReleasingEvent()
        gate = os.path.join(folder, "task-go")
        fut = pool.submit(t.wait_for_file, gate)
        fut.add_done_callback(hold)
        open(gate, "w").close()
        assert holding.wait(30), "the results thread never ran the callback"
        open(os.path.join(folder, "go"), "w").close()  # the second worker's initializer raises
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the pool never broke"
            try:
                pool.submit(t.square, 1)
            except BrokenProcessPool as e:
                err = e
                break
        assert isinstance(err.__cause__, ValueError) and err.__cause__.args == ("init boom",)
    finally:
        release.set()
        pool.shutdown()


def test_a_forked_child_drops_its_copy_of_the_parents_pool_and_makes_its_own():
    # Dropping the inherited pool joined the parent's thread ids in the
    # child (a hang, or a panic with spawn) and could close the parent's
    # queues; the parent's pool must keep working after the child is gone.
    pool = corral.ProcessPoolExecutor(1)
    try:
        assert pool.submit(t.square, 3).result(timeout=60) == 9
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                pool = corral.ProcessPoolExecutor(1)  # drops the inherited one
                code = 0 if pool.submit(t.square, 4).result(timeout=60) == 16 else 2
                pool.shutdown()
            finally:
                os.write(w, bytes([code]))
                os._exit(code)
        os.close(w)
        ready, _, _ = select.select([r], [], [], 120)
        assert ready, "the forked child never reported"
        assert os.read(r, 1) == b"\x00"
        os.close(r)
        assert os.waitpid(child, 0)[1] == 0
        assert pool.submit(t.square, 5).result(timeout=60) == 25
    finally:
        pool.shutdown()
