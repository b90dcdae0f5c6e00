"""Thread pools and asyncio side by side: corral against
concurrent.futures.ThreadPoolExecutor and multiprocessing.pool.ThreadPool,
in one run, reported as ratios.

    python benches/bench_threads.py [--quick] [--markdown FILE] [--cases 1,1b,1c,2,3]

1. One submit + result per tiny task, each result read before the next
   submit (``ex.submit(f, i).result()``), pools with their defaults: tasks/s.
1b. The same tasks all submitted, then the results read (4 threads).
1c. ``map`` and ``imap_unordered`` of a tiny function (defaults).
2. 2,000 tasks that sleep 5 ms on 64 threads: makespan against the ideal
   2000 x 5 ms / 64 = 156 ms.
3. asyncio: 10,000 tiny calls gathered, `await pool.arun(f, x)` against
   `loop.run_in_executor(stdlib_pool, f, x)`.
Each case keeps the best of 3 runs. ``--cases`` runs only those cases.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import os
import sys
import time
from collections.abc import Callable
from multiprocessing.pool import ThreadPool as MpThreadPool
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _report import emit, heading, table


def square(x: int) -> int:
    return x * x


def best(fn: Callable[[], float], repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def one_by_one_rate(make: Callable[[], Any], n: int, repeats: int) -> float:
    """``pool.submit(f, i).result()`` in a loop (``apply_async(...).get()``
    for multiprocessing's pool): the round trip of one task."""
    with make() as pool:
        if isinstance(pool, MpThreadPool):

            def once() -> float:
                t0 = time.perf_counter()
                for i in range(n):
                    pool.apply_async(square, (i,)).get()
                return time.perf_counter() - t0
        else:

            def once() -> float:
                t0 = time.perf_counter()
                for i in range(n):
                    pool.submit(square, i).result()
                return time.perf_counter() - t0

        once()
        return n / best(once, repeats)


def map_rate(make: Callable[[], Any], n: int, repeats: int, unordered: bool) -> float:
    """``list(pool.map(f, range(n)))`` (or ``imap_unordered``), defaults."""
    with make() as pool:
        run = pool.imap_unordered if unordered else pool.map

        def once() -> float:
            t0 = time.perf_counter()
            list(run(square, range(n)))
            return time.perf_counter() - t0

        once()
        return n / best(once, repeats)


def submit_rate(make: Callable[[], Any], n: int, repeats: int) -> float:
    with make() as pool:
        submit = pool.apply_async if isinstance(pool, MpThreadPool) else pool.submit

        def once() -> float:
            t0 = time.perf_counter()
            futs = [submit(square, (i,)) if isinstance(pool, MpThreadPool) else submit(square, i) for i in range(n)]
            for f in futs:
                f.get() if isinstance(pool, MpThreadPool) else f.result()
            return time.perf_counter() - t0

        once()
        return n / best(once, repeats)


def sleep_makespan(make: Callable[[], Any], n: int, repeats: int) -> float:
    with make() as pool:
        run = pool.map
        list(run(time.sleep, [0.005] * 128))  # start the threads

        def once() -> float:
            t0 = time.perf_counter()
            list(run(time.sleep, [0.005] * n))
            return time.perf_counter() - t0

        return best(once, repeats)


def gather_seconds(use_corral: bool, n: int, repeats: int) -> float:
    pool: Any = corral.ThreadPoolExecutor(4) if use_corral else cf.ThreadPoolExecutor(4)

    async def once() -> float:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if use_corral:
            await asyncio.gather(*[pool.arun(square, i) for i in range(n)])
        else:
            await asyncio.gather(*[loop.run_in_executor(pool, square, i) for i in range(n)])
        return time.perf_counter() - t0

    try:
        return best(lambda: asyncio.run(once()), repeats)
    finally:
        pool.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tasks")
    ap.add_argument("--markdown", metavar="FILE", help="append the results to FILE")
    ap.add_argument("--cases", help="comma-separated cases to run (default: all)")
    a = ap.parse_args()
    cases = set(a.cases.split(",")) if a.cases else {"1", "1b", "1c", "2", "3"}
    n_submit, n_sleep, n_async, rep = (2000, 500, 2000, 2) if a.quick else (20000, 2000, 10000, 3)
    n_map = 10 * n_submit
    rows: list[tuple[str, str, str, str]] = []

    def ratios(case: str, rates: dict[str, float], unit: str) -> None:
        """Rows of ``rates`` (the first is corral's), higher is better."""
        ours = next(iter(rates.values()))
        for name, r in rates.items():
            rows.append((case, name, f"{r / 1e3:.1f} k {unit}/s", "—" if r == ours else f"{ours / r:.2f}x"))

    if "1" in cases:
        case = f"1. one submit + result per tiny task, {n_submit} tasks, default pools"
        rates = {
            "corral.ThreadPoolExecutor()": one_by_one_rate(corral.ThreadPoolExecutor, n_submit, rep),
            "concurrent.futures.ThreadPoolExecutor()": one_by_one_rate(cf.ThreadPoolExecutor, n_submit, rep),
            "multiprocessing.pool.ThreadPool().apply_async": one_by_one_rate(MpThreadPool, n_submit, rep),
        }
        ratios(case, rates, "tasks")

    if "1b" in cases:
        case = f"1b. {n_submit} tiny tasks submitted, then their results read, 4 threads"
        rates = {
            "corral.ThreadPoolExecutor(4)": submit_rate(lambda: corral.ThreadPoolExecutor(4), n_submit, rep),
            "concurrent.futures.ThreadPoolExecutor(4)": submit_rate(lambda: cf.ThreadPoolExecutor(4), n_submit, rep),
            "multiprocessing.pool.ThreadPool(4).apply_async": submit_rate(lambda: MpThreadPool(4), n_submit, rep),
        }
        ratios(case, rates, "tasks")

    for unordered in (False, True) if "1c" in cases else ():
        how = "imap_unordered" if unordered else "map"
        case = f"1c. {how} of a tiny function, {n_map} items, default pools"
        rates = {
            f"corral.ThreadPoolExecutor().{how}": map_rate(corral.ThreadPoolExecutor, n_map, rep, unordered),
            f"multiprocessing.pool.ThreadPool().{how}": map_rate(MpThreadPool, n_map, rep, unordered),
        }
        if not unordered:
            rates["concurrent.futures.ThreadPoolExecutor().map"] = map_rate(cf.ThreadPoolExecutor, n_map, rep, False)
        ratios(case, rates, "items")

    if "2" in cases:
        ideal = n_sleep * 0.005 / 64
        case = f"2. {n_sleep} tasks sleeping 5 ms, 64 threads (ideal {ideal * 1e3:.0f} ms)"
        spans = {
            "corral.ThreadPoolExecutor(64)": sleep_makespan(lambda: corral.ThreadPoolExecutor(64), n_sleep, rep),
            "concurrent.futures.ThreadPoolExecutor(64)": sleep_makespan(
                lambda: cf.ThreadPoolExecutor(64), n_sleep, rep
            ),
            "multiprocessing.pool.ThreadPool(64)": sleep_makespan(lambda: MpThreadPool(64), n_sleep, rep),
        }
        ours = spans["corral.ThreadPoolExecutor(64)"]
        for name, s in spans.items():
            rows.append(
                (case, name, f"{s * 1e3:.0f} ms ({s / ideal:.2f}x ideal)", "—" if s == ours else f"{s / ours:.2f}x")
            )

    if "3" in cases:
        case = f"3. asyncio: {n_async} tiny calls gathered"
        ours = gather_seconds(True, n_async, rep)
        theirs = gather_seconds(False, n_async, rep)
        rows.append((case, "await corral pool.arun(f, x)", f"{ours:.3f} s", "—"))
        rows.append(
            (case, "loop.run_in_executor(concurrent.futures pool, f, x)", f"{theirs:.3f} s", f"{theirs / ours:.1f}x")
        )

    emit([heading("Thread pools and asyncio"), "", *table(rows)], a.markdown)


if __name__ == "__main__":
    main()
