"""A/B of the process pool's per-task and per-item cost, for one corral
build (or ``multiprocessing.Pool``), in CPU time as well as wall time: on
a shared machine whose load swings between runs, the wall-clock ratios of
bench_pool.py move 2-3x from one minute to the next, while the CPU spent
per task or item by the parent (all its threads) and by the workers
moves little. Run it with the old and the new build's interpreter,
alternating:

    python benches/ab_pool.py TAG MODE [--rounds N]

TAG names the line (``mp`` runs ``multiprocessing.Pool(2)`` instead of
corral, ``cf`` ``concurrent.futures.ProcessPoolExecutor(2)``); MODE is
``1`` (20,000 submits, then every result), ``1b`` (2,000
``submit(...).result()`` one at a time), ``2`` (default ``map`` over
``range(1_000_000)``) or ``2l`` (the same over a list); ``t1`` and ``t1b``
are ``1`` and ``1b`` on a thread pool of 4 threads (``bench_threads.py``
cases 1b and 1; ``mp``: ``multiprocessing.pool.ThreadPool(4)``, ``cf``:
``concurrent.futures.ThreadPoolExecutor(4)``). Prints one line:
wall rate (range and median), and the medians of the parent's and the
workers' CPU per task or item, then the parent's CPU per thread (to the
nanosecond: ``schedstat``), then the wake-ups per task or item
(voluntary context switches: each is a sleep the thread or process woke
from, a futex wake-up of ~5-100 us on this VM) per parent thread and of the workers, and the parent's garbage
collection CPU per task or item, by generation (collections, us).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.pool import ThreadPool
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import square

TICK = os.sysconf("SC_CLK_TCK")
ITEMS = list(range(1_000_000))


def _cpu(proc: str) -> float:
    """User + system CPU seconds of the process or thread at ``proc``
    (a /proc directory)."""
    with open(f"{proc}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _sleeps(proc: str) -> int:
    """Voluntary context switches of the process or thread at ``proc``."""
    with open(f"{proc}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    return 0


def _per_process(pids: list[int], read: Callable[[str], float]) -> float:
    """``read`` summed over the processes ``pids`` (gone ones count 0)."""
    total = 0.0
    for p in pids:
        try:
            total += read(f"/proc/{p}")
        except OSError:
            pass
    return total


def _per_thread(names: dict[int, str], read: Callable[[str], float]) -> dict[str, float]:
    """``read`` per thread of this process, summed by name (``names``, or
    the thread's comm)."""
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        task = f"/proc/self/task/{tid}"
        try:
            with open(f"{task}/comm") as f:
                comm = f.read().strip()
            value = read(task)
        except OSError:
            continue
        name = names.get(int(tid), comm)
        out[name] = out.get(name, 0.0) + value
    return out


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (fork server and workers)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def workers_cpu(pids: list[int]) -> float:
    return _per_process(pids, _cpu)


def workers_sleeps(pids: list[int]) -> float:
    return _per_process(pids, _sleeps)


def threads_sleeps(names: dict[int, str]) -> dict[str, float]:
    """Voluntary context switches per parent thread (named as
    ``threads_cpu`` names them)."""
    return _per_thread(names, _sleeps)


class GcClock:
    """CPU time spent in garbage collection, by generation (gc.callbacks;
    a collection runs in one thread and is never interleaved with another)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.cpu = [0.0, 0.0, 0.0]
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
        else:
            g = info["generation"]
            self.count[g] += 1
            self.cpu[g] += time.thread_time() - self._t0

    def snapshot(self) -> tuple[list[int], list[float]]:
        return list(self.count), list(self.cpu)


def _run_time(task: str) -> float:
    """Seconds the thread at ``task`` ran (``schedstat``: nanoseconds, where
    ``stat`` counts clock ticks of 10 ms, 0.5 us per task over 20,000)."""
    with open(f"{task}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def threads_cpu(names: dict[int, str]) -> dict[str, float]:
    return _per_thread(names, _run_time)


class _Async:
    """An ``AsyncResult`` with ``result()``."""

    __slots__ = ("r",)

    def __init__(self, r: Any) -> None:
        self.r = r

    def result(self) -> Any:
        return self.r.get()


class _MpPool:
    """``multiprocessing.Pool`` (or its ``ThreadPool``) with the calls the
    modes make."""

    def __init__(self, threads: bool = False) -> None:
        self.pool = ThreadPool(4) if threads else mp.Pool(2)

    def submit(self, fn: Any, x: Any) -> Any:
        return _Async(self.pool.apply_async(fn, (x,)))

    def map(self, fn: Any, items: Any) -> Any:
        return self.pool.map(fn, items)


def one_round(pool: Any, mode: str) -> int:
    mode = mode.removeprefix("t")
    if mode == "1":
        fs = [pool.submit(square, i) for i in range(20_000)]
        for f in fs:
            f.result()
        return 20_000
    if mode == "1b":
        for i in range(2_000):
            pool.submit(square, i).result()
        return 2_000
    items = range(1_000_000) if mode == "2" else ITEMS
    list(pool.map(square, items))
    return 1_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tag")
    ap.add_argument("mode", choices=["1", "1b", "2", "2l", "t1", "t1b"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pool: Any
    threads = args.mode.startswith("t")
    if args.tag == "mp":
        pool = _MpPool(threads)
    elif args.tag == "cf":
        pool = cf.ThreadPoolExecutor(4) if threads else cf.ProcessPoolExecutor(2)
    else:
        pool = corral.ThreadPoolExecutor(4) if threads else corral.ProcessPoolExecutor(2)
    one_round(pool, args.mode)  # warm-up: workers up, functions loaded
    pids = descendants(os.getpid())
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    rates, parent, workers = [], [], []
    per_thread: dict[str, list[float]] = {}
    sleeps: dict[str, list[float]] = {}
    gcs: list[tuple[list[int], list[float]]] = []
    clock = GcClock()
    for _ in range(args.rounds):
        s0, ws0, g0 = threads_sleeps(names), workers_sleeps(pids), clock.snapshot()
        th0, w0, c0, t0 = threads_cpu(names), workers_cpu(pids), time.process_time(), time.perf_counter()
        n = one_round(pool, args.mode)
        t1, c1, w1, th1 = time.perf_counter(), time.process_time(), workers_cpu(pids), threads_cpu(names)
        s1, ws1, g1 = threads_sleeps(names), workers_sleeps(pids), clock.snapshot()
        rates.append(n / (t1 - t0))
        parent.append((c1 - c0) / n * 1e6)
        workers.append((w1 - w0) / n * 1e6)
        for k, v in th1.items():
            per_thread.setdefault(k, []).append((v - th0.get(k, 0.0)) / n * 1e6)
        for k, m in s1.items():
            sleeps.setdefault(k, []).append((m - s0.get(k, 0)) / n)
        sleeps.setdefault("workers", []).append((ws1 - ws0) / n)
        counts = [b - a for a, b in zip(g0[0], g1[0], strict=True)]
        gcs.append((counts, [(b - a) / n * 1e6 for a, b in zip(g0[1], g1[1], strict=True)]))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(
        f"{args.tag} mode {args.mode}: {min(rates) / 1e3:.1f}-{max(rates) / 1e3:.1f} k/s"
        f" (median {med(rates) / 1e3:.1f});"
        f" CPU us per task/item, median: parent {med(parent):.3f}, workers {med(workers):.3f}",
        flush=True,
    )
    busy = {k: med(v) for k, v in per_thread.items() if med(v) > 0.005}
    print("  parent threads:", ", ".join(f"{k} {v:.2f}" for k, v in busy.items()), flush=True)
    woke = {k: med(v) for k, v in sleeps.items() if med(v) >= 0.005}
    print("  wake-ups per task/item:", ", ".join(f"{k} {v:.2f}" for k, v in woke.items()), flush=True)
    mid = sorted(gcs, key=lambda g: sum(g[1]))[len(gcs) // 2]
    print(
        f"  GC: {sum(mid[1]):.3f} us per task/item;",
        ", ".join(f"gen{g} {mid[0][g]}x {mid[1][g]:.3f}" for g in range(3)),
        flush=True,
    )
    if isinstance(pool, _MpPool):
        pool.pool.close()
        pool.pool.join()
    else:
        pool.shutdown()


if __name__ == "__main__":
    main()
