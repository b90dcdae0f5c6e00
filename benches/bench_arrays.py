"""Large NumPy arrays to a process-pool worker and back, side by side:
corral.ProcessPoolExecutor, concurrent.futures.ProcessPoolExecutor and Ray
tasks, beside the same call in a thread of this process (no transfer).

    python benches/bench_arrays.py [--quick] [--markdown FILE] [--only NAME ...] [--skip NAME ...]

Written as a user writes it: every call gets a fresh 16 MB float64 array
(``np.random.rand(2_000_000)``), the worker returns ``arr * 2``
(``ex.submit(double, arr).result()``, pools with their default arguments;
Ray: ``ray.get(double_remote.remote(arr))`` after ``ray.init(num_cpus=2)``),
and the result is dropped and garbage collected before the next call.
Timed: the call and the drop of its result (freeing is part of the cost),
not the making of the array nor the collection. GB/s is 2 x 16 MB (there
and back) / seconds per call; the implementations take turns, round after
round, in one run, and each reports the median of its rounds (range after).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import faulthandler
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import double
from _report import emit, heading, table

N = 2_000_000  # float64: 16 MB
CASE = "16 MB float64 array to a worker and back (arr * 2)"


def one_call(call: Callable[[Any], Any], np: Any) -> float:
    """Seconds of one call on a fresh array, result dropped."""
    arr = np.random.rand(N)
    t0 = time.perf_counter()
    out = call(arr)
    assert out.shape == arr.shape
    del out
    t1 = time.perf_counter()
    del arr
    gc.collect()
    return t1 - t0


Calls = dict[str, Callable[[Any], Any]]


def implementations(only: list[str], skip: list[str]) -> tuple[Calls, list[Any], list[str]]:
    """The calls to compare, the executors to shut down, and notes."""
    calls: Calls = {}
    closers: list[Any] = []
    notes: list[str] = []

    def wanted(name: str) -> bool:
        return (not only or any(k.lower() in name.lower() for k in only)) and not any(
            k.lower() in name.lower() for k in skip
        )

    if wanted("corral.ProcessPoolExecutor"):
        ex = corral.ProcessPoolExecutor()
        closers.append(ex)
        calls["corral.ProcessPoolExecutor"] = lambda a, ex=ex: ex.submit(double, a).result()
    if wanted("concurrent.futures.ProcessPoolExecutor"):
        px = cf.ProcessPoolExecutor()
        closers.append(px)
        calls["concurrent.futures.ProcessPoolExecutor"] = lambda a, px=px: px.submit(double, a).result()
    if wanted("ray"):
        try:
            import ray
        except ImportError:
            notes.append("Ray is not installed: its row is skipped.")
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            remote = ray.remote(double)
            closers.append(ray)
            calls["Ray tasks"] = lambda a: ray.get(remote.remote(a))
    if wanted("thread"):
        tx = cf.ThreadPoolExecutor()
        closers.append(tx)
        calls["concurrent.futures.ThreadPoolExecutor: same call in this process, no transfer"] = lambda a, tx=tx: (
            tx.submit(double, a).result()
        )
    return calls, closers, notes


def main() -> None:
    """Runs the rounds and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--markdown", metavar="FILE", help="append the results to FILE")
    ap.add_argument("--only", metavar="NAME", action="append", default=[], help="only implementations naming NAME")
    ap.add_argument("--skip", metavar="NAME", action="append", default=[], help="leave out implementations naming NAME")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(600, exit=True)
    try:
        import numpy as np
    except ImportError:
        print("numpy is not installed: nothing to measure")
        return
    rounds, per_round = (3, 5) if args.quick else (5, 10)
    calls, closers, notes = implementations(args.only, args.skip)
    for call in calls.values():  # warm-up: workers started, functions loaded
        for _ in range(2):
            one_call(call, np)
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times = sorted(one_call(call, np) for _ in range(per_round))
            medians[name].append(times[len(times) // 2])
    for c in closers:
        if c.__class__.__name__ == "module":
            c.shutdown()
        else:
            c.shutdown(wait=True)
    rate = {n: 2 * N * 8 / sorted(m)[len(m) // 2] for n, m in medians.items()}
    ranges = {n: (2 * N * 8 / max(m), 2 * N * 8 / min(m)) for n, m in medians.items()}
    mine = rate.get("corral.ProcessPoolExecutor")
    rows = []
    for name in calls:
        lo, hi = ranges[name]
        ms = 2 * N * 8 / rate[name] * 1e3
        result = f"{rate[name] / 1e9:.2f} GB/s ({lo / 1e9:.2f}-{hi / 1e9:.2f}; {ms:.1f} ms per call)"
        vs = f"{mine / rate[name]:.2f}x" if mine is not None else "-"
        rows.append((CASE, name, result, vs))
    lines = [
        heading("Large arrays to pool workers"),
        "",
        f"- Default pool arguments, {os.cpu_count()} cores; {rounds} rounds of {per_round} calls, taking turns; "
        "GB/s = 2 x 16 MB / median seconds per call (range of the rounds' medians in brackets).",
        "- 'corral vs this' is how many times faster corral is (above 1: corral is faster).",
        *[f"- {n}" for n in notes],
        "",
        *table(rows),
    ]
    emit(lines, args.markdown)


if __name__ == "__main__":
    main()
