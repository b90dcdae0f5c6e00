"""A/B of the process pool's per-task and per-item cost, for one corral
build (or ``multiprocessing.Pool``), in CPU time as well as wall time: on
a shared machine whose load swings between runs, the wall-clock ratios of
bench_pool.py move 2-3x from one minute to the next, while the CPU spent
per task or item by the parent (all its threads) and by the workers
moves little. Run it with the old and the new build's interpreter,
alternating:

    python benches/ab_pool.py TAG MODE [--rounds N]

TAG names the line (``mp`` runs ``multiprocessing.Pool(2)`` instead of
corral); MODE is ``1`` (20,000 submits, then every result), ``1b`` (2,000
``submit(...).result()`` one at a time), ``2`` (default ``map`` over
``range(1_000_000)``) or ``2l`` (the same over a list). Prints one line:
wall rate (range and median), and the medians of the parent's and the
workers' CPU per task or item, then the parent's CPU per thread.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import square

TICK = os.sysconf("SC_CLK_TCK")
ITEMS = list(range(1_000_000))


def _cpu_seconds(stat_path: str) -> tuple[str, float]:
    with open(stat_path) as f:
        text = f.read()
    fields = text.rsplit(")", 1)[1].split()
    return text[text.index("(") + 1 : text.rindex(")")], (int(fields[11]) + int(fields[12])) / TICK


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
    total = 0.0
    for p in pids:
        try:
            total += _cpu_seconds(f"/proc/{p}/stat")[1]
        except OSError:
            pass
    return total


def threads_cpu(names: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            comm, cpu = _cpu_seconds(f"/proc/self/task/{tid}/stat")
        except OSError:
            continue
        name = names.get(int(tid), comm)
        out[name] = out.get(name, 0.0) + cpu
    return out


class _Async:
    """An ``AsyncResult`` with ``result()``."""

    __slots__ = ("r",)

    def __init__(self, r: Any) -> None:
        self.r = r

    def result(self) -> Any:
        return self.r.get()


class _MpPool:
    """``multiprocessing.Pool`` with the calls the modes make."""

    def __init__(self) -> None:
        self.pool = mp.Pool(2)

    def submit(self, fn: Any, x: Any) -> Any:
        return _Async(self.pool.apply_async(fn, (x,)))

    def map(self, fn: Any, items: Any) -> Any:
        return self.pool.map(fn, items)


def one_round(pool: Any, mode: str) -> int:
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
    ap.add_argument("mode", choices=["1", "1b", "2", "2l"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pool: Any = _MpPool() if args.tag == "mp" else corral.ProcessPoolExecutor(2)
    one_round(pool, args.mode)  # warm-up: workers up, functions loaded
    pids = descendants(os.getpid())
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    rates, parent, workers = [], [], []
    per_thread: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        th0, w0, c0, t0 = threads_cpu(names), workers_cpu(pids), time.process_time(), time.perf_counter()
        n = one_round(pool, args.mode)
        t1, c1, w1, th1 = time.perf_counter(), time.process_time(), workers_cpu(pids), threads_cpu(names)
        rates.append(n / (t1 - t0))
        parent.append((c1 - c0) / n * 1e6)
        workers.append((w1 - w0) / n * 1e6)
        for k, v in th1.items():
            per_thread.setdefault(k, []).append((v - th0.get(k, 0.0)) / n * 1e6)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(
        f"{args.tag} mode {args.mode}: {min(rates) / 1e3:.1f}-{max(rates) / 1e3:.1f} k/s"
        f" (median {med(rates) / 1e3:.1f});"
        f" CPU us per task/item, median: parent {med(parent):.3f}, workers {med(workers):.3f}",
        flush=True,
    )
    busy = {k: med(v) for k, v in per_thread.items() if med(v) > 0.005}
    print("  parent threads:", ", ".join(f"{k} {v:.2f}" for k, v in busy.items()), flush=True)
    if isinstance(pool, _MpPool):
        pool.pool.close()
        pool.pool.join()
    else:
        pool.shutdown()


if __name__ == "__main__":
    main()
