"""The fork server's relaunch (``ForkServer.revive``) when the server dies
from outside (the OOM killer, a kill): while a pool's workers boot, between
a worker's fork and the parent's pidfd on it, with a process a task left
behind, and when the replacement's boot hangs. Each runs in a fresh
interpreter (``_run_script``): the program's shared server is killed there,
and its constants changed, without touching this process's."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
from typing import Any

from corral import _forkserver
from test_startup import _run_script

_PRELUDE = """
import os, signal, sys, threading, time
sys.path.insert(0, {here!r})
sys.path.insert(0, {mods!r})
import corral
from corral import _core, _forkserver
from _helpers import pid_gone, wait_until

def children(pid):  # the pids of pid's children
    try:
        with open(f"/proc/{{pid}}/task/{{pid}}/children") as f:
            return f.read().split()
    except OSError:
        return []
"""

_KILLED_WHILE_BOOTING = textwrap.dedent(
    _PRELUDE
    + """
DIR = {mods!r}

def boot(dir):
    # The initializer: says it runs, then waits for "go" (60 s at most).
    open(os.path.join(dir, f"booting-{{os.getpid()}}"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(dir, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)

def booting():
    return [int(n.split("-")[1]) for n in os.listdir(DIR) if n.startswith("booting-")]

if __name__ == "__main__":
    pool = corral.ProcessPoolExecutor(3, initializer=boot, initargs=(DIR,))
    server = pool._forkserver
    assert wait_until(lambda: len(booting()) == 3, 60), "the workers never ran their initializer"
    first = booting()
    os.kill(server._proc.pid, signal.SIGKILL)
    # The 3 workers die with the server while booting.
    assert wait_until(lambda: all(pid_gone(p) for p in first), 60), "the workers outlived their server"
    open(os.path.join(DIR, "go"), "w").close()
    print(pool.submit(abs, -2).result(timeout=60), server.relaunches)
    pool.shutdown(wait=True)
"""
)


def test_a_server_killed_while_its_workers_boot_is_relaunched_not_the_pool_broken(tmp_path: Any) -> None:
    # Each worker booting when the server died counted as a failed boot:
    # with 3 workers the pool broke at once ("3 worker processes in a row
    # died while starting").
    out = _run_script(tmp_path, _KILLED_WHILE_BOOTING)
    assert out[0] == "2 1", out


#: A reaping init (tini, ``docker --init``): a subreaper that reaps every
#: orphan at once; runs the program after it.
_REAPING_INIT = textwrap.dedent(
    """
    import ctypes, os, sys
    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    main = os.fork()
    if main == 0:
        os.execv(sys.argv[1], sys.argv[1:])
    while True:
        pid, status = os.wait()
        if pid == main:
            sys.exit(os.waitstatus_to_exitcode(status))
    """
)

_KILLED_BEFORE_PIDFD = textwrap.dedent(
    _PRELUDE
    + """
if __name__ == "__main__":
    pool = corral.ProcessPoolExecutor(1)
    assert pool.submit(abs, -1).result(timeout=60) == 1
    server = pool._forkserver
    real = _core.watch_external
    seen = []

    def late_watch(pid):
        # The server dies right after its "spawned" reply; the worker dies
        # with it, and the init reaps it before the parent opens its pidfd.
        _core.watch_external = real
        os.kill(server._proc.pid, signal.SIGKILL)
        assert wait_until(lambda: not os.path.exists(f"/proc/{{pid}}"), 60), "the worker was not reaped"
        try:
            return real(pid)
        except OSError as e:
            seen.append(type(e).__name__)
            raise

    _core.watch_external = late_watch
    # The worker dies: the pool asks the server for its replacement.
    os.kill(pool.stats()["workers"][0]["pid"], signal.SIGKILL)
    assert wait_until(lambda: bool(seen), 60), "the replacement was never watched"
    print(seen, pool.submit(abs, -2).result(timeout=60), server.relaunches)
    pool.shutdown(wait=True)
"""
)


def test_a_worker_reaped_before_its_pidfd_opens_is_asked_of_the_relaunched_server(tmp_path: Any) -> None:
    # pidfd_open's ESRCH (the server died between its reply and the
    # parent's watch; a reaping init reaped the worker) terminated the
    # pool: "could not start a worker process: ProcessLookupError".
    runner = tmp_path / "reaping_init.py"
    runner.write_text(_REAPING_INIT)
    out = _run_script(tmp_path, _KILLED_BEFORE_PIDFD, runner=(sys.executable, str(runner)))
    assert out[0] == "['ProcessLookupError'] 2 1", out


_KILLED_WITH_A_GRANDCHILD = textwrap.dedent(
    _PRELUDE
    + """
import _pool_tasks

def leave_child():
    # A task leaves a process behind (os.fork, a subprocess left running).
    pid = os.fork()
    if pid == 0:
        os.setsid()
        time.sleep(120)
        os._exit(0)
    return pid

def readers():
    return [t for t in threading.enumerate() if t.name == "corral-forkserver-reader"]

def fds():
    return len(os.listdir("/proc/self/fd"))

if __name__ == "__main__":
    pool = corral.ProcessPoolExecutor(2)
    assert pool.submit(abs, -1).result(timeout=60) == 1
    grandchild = pool.submit(leave_child).result(timeout=60)
    server = pool._forkserver
    old = server._server
    workers = [w["pid"] for w in pool.stats()["workers"] if w["pid"]]
    before = fds()
    os.kill(server._proc.pid, signal.SIGKILL)
    assert wait_until(lambda: all(pid_gone(p) for p in workers), 60), "the workers outlived their server"
    try:
        print(pool.submit(abs, -2).result(timeout=60), server.relaunches)
        # The old server's reader ended and its pipe is closed: no thread
        # nor descriptor left behind while the task's child lives on.
        print(wait_until(lambda: len(readers()) == 1, 30), old.conn.closed, pid_gone(grandchild))
        del old  # its process handle
        # The pool replaced both workers: as many descriptors as before
        # (once it let go of the dead workers' handles).
        assert wait_until(lambda: len([w for w in pool.stats()["workers"] if w["pid"]]) == 2, 60)
        print(wait_until(lambda: fds() <= before, 30))
    finally:
        os.kill(grandchild, signal.SIGKILL)
    pool.shutdown(wait=True)
"""
)


def test_a_process_a_task_left_behind_does_not_hold_up_the_relaunch(tmp_path: Any) -> None:
    # The task's child held the worker's inherited copy of the server's
    # pipe end: EOF never came, the relaunch (on the pool's results thread)
    # waited out two joins of the reader (17 s), and left the old reader
    # thread and the old pipe open.
    out = _run_script(tmp_path, _KILLED_WITH_A_GRANDCHILD)
    assert out[:3] == ["2 1", "True True False", "True"], out


_HANGING_BOOT = textwrap.dedent(
    _PRELUDE
    + """
from concurrent.futures.process import BrokenProcessPool

if __name__ == "__main__":
    _forkserver.RELAUNCH_BOOT_SECONDS = 1.0
    marker = os.path.join({mods!r}, "hang")
    pool = corral.ProcessPoolExecutor(1, preload=["hangs_if_marked"])
    assert pool.submit(abs, -1).result(timeout=60) == 1
    server = pool._forkserver
    worker = pool.stats()["workers"][0]["pid"]
    open(marker, "w").close()  # the next server's import of the preload hangs
    os.kill(server._proc.pid, signal.SIGKILL)
    assert wait_until(lambda: pid_gone(worker), 60), "the worker outlived its server"
    try:
        pool.submit(abs, -2).result(timeout=60)
        print("ran")
    except BrokenProcessPool as e:
        print("broken", "did not finish importing" in str(e))
    except TimeoutError:
        print("hung")
        sys.stdout.flush()
        os._exit(0)
    done = threading.Event()
    threading.Thread(target=lambda: (pool.shutdown(wait=True), done.set()), daemon=True).start()
    print(done.wait(60))
    sys.stdout.flush()
    os._exit(0)  # the hanging server was killed; nothing else to wait for
"""
)

_HANGS_IF_MARKED = """
import os, time
marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hang")
while os.path.exists(marker):
    time.sleep(0.05)
"""


def test_a_replacement_server_whose_boot_hangs_breaks_the_pool_not_hangs_it(tmp_path: Any) -> None:
    # The relaunched server's boot had no timeout: the pool's results
    # thread waited for it for ever, and shutdown(wait=True) with it.
    out = _run_script(tmp_path, _HANGING_BOOT, probes={"hangs_if_marked": _HANGS_IF_MARKED})
    assert out[:2] == ["broken True", "True"], out


class _Inserting:
    """A stand-in for a worker's ``ChildProcess``: its exit is readable at
    once; reporting it adds another child to the server's, as a
    ``start_workers`` running meanwhile does."""

    def __init__(self, server: Any, pid: int, more: int) -> None:
        self.server, self.pid, self.more = server, pid, more
        self.r, w = os.pipe()
        os.write(w, b"x")
        os.close(w)
        self.exits: list[tuple[int, bool]] = []

    def pidfd(self) -> int:
        return self.r

    def set_exit(self, code: int, server_died: bool = False) -> None:
        self.exits.append((code, server_died))
        if self.more:
            self.server.children[self.pid + 1] = _Inserting(self.server, self.pid + 1, self.more - 1)


def test_the_reader_reports_a_dead_servers_workers_while_others_are_added() -> None:
    # The reader walked ``children.values()`` while start_workers could add
    # one: "dictionary changed size during iteration" ended it without
    # waking a caller waiting for the server's reply.
    server = _forkserver._Server([], [], wait=True)
    first = _Inserting(server, 1, 1)
    second = _Inserting(server, 10, 0)
    try:
        server.children.update({1: first, 10: second})
        os.kill(server.proc.pid, signal.SIGKILL)
        assert server.replies.get(timeout=30) == ("gone",)
        done = threading.Event()
        threading.Thread(target=lambda: (server.reader.join(), done.set()), daemon=True).start()
        assert done.wait(30)
        assert first.exits == [(-signal.SIGKILL, True)] and second.exits == [(-signal.SIGKILL, True)]
    finally:
        server.stop()
        for r in {c.r for c in (first, second, *server.children.values())}:
            os.close(r)


_KILL_LOOP = textwrap.dedent(
    _PRELUDE
    + """
from concurrent.futures.process import BrokenProcessPool

DIR = {mods!r}

def boot(dir):
    # The initializer: never done before "go" (60 s at most): no worker boots.
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(dir, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)

if __name__ == "__main__":
    pool = corral.ProcessPoolExecutor(1, initializer=boot, initargs=(DIR,))
    server = pool._forkserver
    kills = []
    stop = threading.Event()

    def killer():
        # The OOM killer, a user's pkill: each server dies once it forked
        # its worker, which dies with it before it booted. After 6 kills,
        # the next server's worker may boot.
        while not stop.is_set() and len(kills) < 6:
            proc = server._proc
            if proc.pid not in kills and proc.is_alive() and children(proc.pid):
                os.kill(proc.pid, signal.SIGKILL)
                kills.append(proc.pid)
            time.sleep(0.002)
        open(os.path.join(DIR, "go"), "w").close()

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        print("ran", pool.submit(abs, -2).result(timeout=120))
    except BrokenProcessPool as e:
        print("broken", len(kills), "SIGKILL (exit code -9)" in str(e), type(e.__cause__).__name__)
    stop.set()
    th.join(30)
    pool.shutdown(wait=True)
"""
)


def test_a_fork_server_killed_after_every_relaunch_breaks_the_pool_saying_how_it_died(tmp_path: Any) -> None:
    # Each server was relaunched by the replacement of the worker that died
    # with the last one (a new start_workers call, its count back at 0):
    # the pool relaunched servers for as long as something killed them.
    out = _run_script(tmp_path, _KILL_LOOP)
    assert out[0] == f"broken {_forkserver.RELAUNCH_LIMIT} True RuntimeError", out


_KILLED_AFTER_BOOTS = textwrap.dedent(
    _PRELUDE
    + """
import _pool_tasks as t

if __name__ == "__main__":
    pool = corral.ProcessPoolExecutor(1)
    server = pool._forkserver
    worker = pool.submit(t.pid).result(timeout=60)
    workers = [worker]
    for _ in range(_forkserver.RELAUNCH_LIMIT + 1):
        # The worker booted (it ran a task): its server's death is not a
        # fruitless relaunch.
        os.kill(server._proc.pid, signal.SIGKILL)
        assert wait_until(lambda: pid_gone(worker), 60), "the worker outlived its server"
        worker = pool.submit(t.pid).result(timeout=60)
        workers.append(worker)
    print(len(set(workers)), server.relaunches, server.fruitless)
    pool.shutdown(wait=True)
"""
)


def test_fork_server_deaths_after_its_workers_booted_do_not_count_towards_the_bound(tmp_path: Any) -> None:
    out = _run_script(tmp_path, _KILLED_AFTER_BOOTS)
    limit = _forkserver.RELAUNCH_LIMIT
    assert out[0] == f"{limit + 2} {limit + 1} 0", out


#: A replacement worker is asked of a server that was stopped: the
#: parent kills it past ``REPLY_SECONDS`` ("deadline"), or someone else
#: does while the request waits ("outside"). Prints the task's result,
#: the relaunches, whether the stopped server is gone; then how many
#: requests it was sent, whether ``shutdown(wait=True)`` returned, and the
#: broker registrations left behind by the parent.
_STOPPED_SERVER = textwrap.dedent(
    _PRELUDE
    + """
if __name__ == "__main__":
    how = sys.argv[1]
    if how == "deadline":
        _forkserver.REPLY_SECONDS = 1.0
    pool = corral.ProcessPoolExecutor(2)
    server = pool._forkserver
    assert pool.submit(abs, -1).result(timeout=60) == 1
    assert wait_until(lambda: all(w["pid"] for w in pool.stats()["workers"]), 60), "the workers never booted"
    victim = pool.stats()["workers"][0]["pid"]
    others = [w["pid"] for w in pool.stats()["workers"][1:]]
    stopped, old = server._proc.pid, server._server
    asked, registered = old.requests, _core.shared_fd_count()
    os.kill(stopped, signal.SIGSTOP)  # alive, but it answers nothing
    try:
        os.kill(victim, signal.SIGKILL)  # the pool's results thread asks the server for a replacement
        assert wait_until(lambda: old.requests > asked, 60), "no replacement was asked for"
        if how == "outside":
            os.kill(stopped, signal.SIGKILL)  # its request pending
            # Its other workers die with it: the task below must not start
            # in one of them (it would be lost with it, WorkerLostError).
            assert wait_until(lambda: all(pid_gone(p) for p in others), 60), "the workers outlived their server"
        f = pool.submit(abs, -2)  # its result waits behind the results thread
        try:
            print(f.result(timeout=30), server.relaunches, pid_gone(stopped))
        except TimeoutError:
            print("hung")
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass
    stop = threading.Thread(target=pool.shutdown, kwargs={{"wait": True}}, daemon=True)
    stop.start()
    stop.join(20)
    ended = "shut down" if not stop.is_alive() else "shutdown hung"
    print(old.requests - asked, ended, _core.shared_fd_count() - registered)
    sys.stdout.flush()
    if stop.is_alive():
        os._exit(0)  # not stuck at exit too
"""
)


def test_a_server_alive_but_silent_is_replaced_not_waited_for(tmp_path: Any) -> None:
    # The pool's results thread waited for a replacement worker's reply
    # with no bound: a stopped (or stuck) server held every task's result
    # of the pool, healthy workers' included, and shutdown(wait=True).
    # Then the request the killed server never loaded kept the
    # replacement's task queue counted as lent by the parent (a one-shot
    # broker registration nobody fetched): the worker never saw it end and
    # shutdown(wait=True) hung; and the request was sent again to the
    # killed server before it was gone.
    out = _run_script(tmp_path, _STOPPED_SERVER, "deadline")
    assert out[:2] == ["2 1 True", "1 shut down 0"], out


def test_a_server_killed_from_outside_with_a_request_pending_leaves_nothing_lent(tmp_path: Any) -> None:
    # The same request, to a server killed by someone else: its
    # registrations are withdrawn when its pipe ends, and the replacement
    # asked of the next server.
    out = _run_script(tmp_path, _STOPPED_SERVER, "outside")
    assert out[:2] == ["2 1 True", "1 shut down 0"], out
