"""The parent's descriptors, threads, shared memory and resident memory stay
flat while pool workers are recycled (retired by ``max_tasks_per_child`` or
``max_memory_per_child``, SIGKILLed, killed at their timeout) and while
pools are created and shut down.

Each scenario runs in a fresh interpreter whose descriptor limit is 256
(``RLIMIT_NOFILE``), so a descriptor leaked per worker or per pool fails
loudly long before the end. The script measures after a warm-up and at the
end, both times with the pool idle (a plain task has just come back from
the current worker):

- descriptors (``/proc/self/fd``), at most ``FDS`` more;
- threads: OS threads (``/proc/self/task``) and ``threading.active_count()``,
  at most ``THREADS`` more each;
- shared memory: memfd descriptors and memfd mappings (``/proc/self/maps``),
  at most ``MEMFDS`` more each, and the mapped memfd bytes, at most one
  task queue's mapping more (``QUEUE_MAP``, measured in the script);
- resident memory, at most ``RSS_MB`` more.

Costs per recycle measured on the 2-core VM (the machine shared with other
builds): fork 8 ms, forkserver 28 ms, spawn 270 ms (a fresh interpreter per
worker); per pool created and shut down: fork 19 ms, forkserver and spawn
280 ms. So 1,000 recycles and 500 pools run with ``fork`` and fewer with
the two other start methods; the code that lets a dead worker go is the
same for the three.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# Room for a loaded machine: 1,000 fork recycles took more than 55 s with
# four busy loops on the two cores.
pytestmark = pytest.mark.timeout(300)

FDS = 3
THREADS = 1
MEMFDS = 1
RSS_MB = 8

_SCRIPT = textwrap.dedent(
    """
    import gc, json, os, resource, sys, threading, time

    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    import corral
    import _pool_tasks as t


    def snapshot():
        fds = os.listdir("/proc/self/fd")
        memfds = 0
        for fd in fds:
            try:
                memfds += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
            except OSError:
                pass  # the descriptor listdir itself used, now closed
        maps = mapped = 0
        with open("/proc/self/maps") as f:
            for line in f:
                if "/memfd:" in line:
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    maps += 1
                    mapped += hi - lo
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {
            "fds": len(fds),
            "os_threads": len(os.listdir("/proc/self/task")),
            "py_threads": threading.active_count(),
            "memfds": memfds,
            "memfd_maps": maps,
            "memfd_mapped": mapped,
            "rss": rss,
        }


    def queue_mapping():
        before = snapshot()["memfd_mapped"]
        q = corral.Queue()
        size = snapshot()["memfd_mapped"] - before
        del q
        return size


    def recycle(pool, how, n):
        for _ in range(n):
            if how == "sigkill":
                f = pool.submit(t.sigkill_self)
                expected = corral.WorkerLostError
            elif how == "timeout":
                f = pool.options(timeout=0.001).submit(t.sleep_then, 60)
                expected = TimeoutError
            else:  # retired by max_tasks_per_child or max_memory_per_child
                f = pool.submit(t.pid)
                expected = None
            try:
                f.result(timeout=60)
            except BaseException as e:
                if expected is None or not isinstance(e, expected):
                    raise
            else:
                assert expected is None, f"{how}: the task returned"
        # Idle, with a worker that has finished starting (the parent's
        # descriptors for a worker it is starting are closed by then).
        last = pool.submit(t.pid).result(timeout=60)
        if how in ("max_tasks", "max_memory"):  # that task retired its worker too
            deadline = time.monotonic() + 60
            while pool.stats()["workers"][0]["pid"] in (0, last) and time.monotonic() < deadline:
                time.sleep(0.005)


    def threads_ended(at_most):
        # Waits (30 s at most) until this process runs at most `at_most` OS
        # threads: the threads of a dropped thread pool end on their own,
        # just after the pool is collected.
        deadline = time.monotonic() + 30
        while len(os.listdir("/proc/self/task")) > at_most and time.monotonic() < deadline:
            time.sleep(0.005)


    def children_exited():
        # Waits (30 s at most) until every child of this process has exited
        # (a zombie until it is reaped, or gone).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kids = []
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/children") as f:
                        kids += f.read().split()
                except OSError:
                    pass  # the thread ended meanwhile
            states = []
            for kid in kids:
                try:
                    with open(f"/proc/{kid}/stat") as f:
                        text = f.read()
                    states.append(text[text.rfind(")") + 2])
                except OSError:
                    pass  # reaped meanwhile
            if all(s == "Z" for s in states):
                return
            time.sleep(0.005)


    def pools_wound_down():
        # Waits (30 s at most) until the process pools dropped without
        # shutdown have let their workers go and their threads have ended
        # (the results thread ends last). The fork server's reader is the
        # program's (the server stays up for later pools), not a pool's.
        deadline = time.monotonic() + 30
        names = ("corral-pool-results",)
        while time.monotonic() < deadline and any(th.name in names for th in threading.enumerate()):
            gc.collect()  # a pool in a reference cycle goes at a collection
            time.sleep(0.005)


    def measure(step, n, settle=lambda: None):
        step(max(5, n // 20))  # warm-up: imports, caches, lazily started threads
        gc.collect()
        settle()
        before = snapshot()
        step(n)
        gc.collect()
        settle()
        return before, snapshot()


    def main(scenario, method, n):
        if scenario in ("max_tasks", "max_memory", "sigkill", "timeout"):
            pool = corral.ProcessPoolExecutor(
                1,
                start_method=method,
                max_tasks_per_child=1 if scenario == "max_tasks" else None,
                max_memory_per_child=1 if scenario == "max_memory" else None,
            )
            restarts = lambda: pool.stats()["workers"][0]["restarts"]
            first = restarts()
            before, after = measure(lambda k: recycle(pool, scenario, k), n)
            recycled = restarts() - first
            pool.shutdown()
        elif scenario == "process_pools":
            def pools(k):
                for _ in range(k):
                    with corral.ProcessPoolExecutor(2, start_method=method) as p:
                        assert p.submit(t.square, 4).result(timeout=60) == 16
            before, after = measure(pools, n)
            recycled = n
        elif scenario == "process_pools_dropped":
            def pools(k):
                for _ in range(k):
                    p = corral.ProcessPoolExecutor(2, start_method=method)
                    assert p.submit(t.square, 4).result(timeout=60) == 16
                    del p  # no shutdown
                gc.collect()
                pools_wound_down()
            before, after = measure(pools, n)
            recycled = n
        elif scenario == "processes_dropped":
            def processes(k):
                # Started, never joined, dropped (as with multiprocessing,
                # the next start forgets the children that have exited).
                for _ in range(k):
                    corral.Process(target=t.pid, start_method=method).start()
                children_exited()
                last = corral.Process(target=t.pid, start_method=method)
                last.start()
                assert last.result(timeout=60) == last.pid
            before, after = measure(processes, n)
            recycled = n
        elif scenario in ("thread_pools", "thread_pools_dropped"):
            def pools(k):
                for _ in range(k):
                    p = corral.ThreadPoolExecutor(4)
                    assert list(p.map(t.square, range(16))) == [i * i for i in range(16)]
                    assert p.options(timeout=30).submit(t.square, 5).result(timeout=60) == 25
                    if scenario == "thread_pools":
                        p.shutdown(wait=True)
                    del p
            # Only the main thread is left once the pools' threads ended.
            before, after = measure(pools, n, settle=lambda: threads_ended(1))
            recycled = n
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        print(json.dumps({"before": before, "after": after, "recycled": recycled, "queue_map": queue_mapping()}))


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


def run_scenario(tmp_path, scenario: str, method: str, n: int) -> dict:
    script = tmp_path / "leaks.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(script), scenario, method, str(n)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_flat(r: dict, what: str) -> None:
    b, a = r["before"], r["after"]
    grew = {k: a[k] - b[k] for k in b}
    msg = f"{what}: before {b}, after {a}"
    assert grew["fds"] <= FDS, msg
    assert grew["os_threads"] <= THREADS, msg
    assert grew["py_threads"] <= THREADS, msg
    assert grew["memfds"] <= MEMFDS, msg
    assert grew["memfd_maps"] <= MEMFDS, msg
    assert grew["memfd_mapped"] <= r["queue_map"], msg
    assert grew["rss"] <= RSS_MB << 20, msg


@pytest.mark.parametrize(
    "scenario, method, n",
    [
        ("max_tasks", "fork", 1000),
        ("max_tasks", "forkserver", 100),
        ("max_tasks", "spawn", 10),
        ("max_memory", "fork", 200),
        ("sigkill", "fork", 500),
        ("sigkill", "forkserver", 50),
        ("sigkill", "spawn", 5),
        ("timeout", "fork", 200),
        ("timeout", "forkserver", 30),
        ("timeout", "spawn", 5),
    ],
)
def test_parent_stays_flat_across_worker_recycles(tmp_path, scenario, method, n):
    r = run_scenario(tmp_path, scenario, method, n)
    # Every task of the measured run and of the warm-up replaced its worker.
    assert r["recycled"] >= n + max(5, n // 20), r
    assert_flat(r, f"{n} recycles by {scenario} with {method}")


@pytest.mark.parametrize("method, n", [("fork", 500), ("forkserver", 10), ("spawn", 10)])
def test_parent_stays_flat_across_process_pools_created_and_shut_down(tmp_path, method, n):
    assert_flat(run_scenario(tmp_path, "process_pools", method, n), f"{n} process pools with {method}")


@pytest.mark.parametrize("method, n", [("fork", 200), ("forkserver", 10), ("spawn", 10)])
def test_parent_stays_flat_across_process_pools_dropped_without_shutdown(tmp_path, method, n):
    assert_flat(run_scenario(tmp_path, "process_pools_dropped", method, n), f"{n} dropped process pools with {method}")


@pytest.mark.parametrize("method, n", [("fork", 300), ("spawn", 10)])
def test_parent_stays_flat_across_processes_started_and_dropped_without_join(tmp_path, method, n):
    assert_flat(run_scenario(tmp_path, "processes_dropped", method, n), f"{n} processes with {method}")


@pytest.mark.parametrize("scenario", ["thread_pools", "thread_pools_dropped"])
def test_parent_stays_flat_across_thread_pools_shut_down_or_dropped(tmp_path, scenario):
    assert_flat(run_scenario(tmp_path, scenario, "-", 500), f"500 {scenario}")
