"""corral.Pool against multiprocessing.Pool, two workers each, in one run,
the calls written as a user of ``multiprocessing.Pool`` writes them
(default arguments), reported as ratios.

    python benches/bench_mp_pool.py [--rounds N] [--markdown FILE]

1. ``apply_async`` of many tiny tasks (square), then every ``get()``: tasks/s.
2. ``map`` of a tiny function (default chunksize): items/s.
3. ``map_async(...).get()`` (default chunksize): items/s.
4. ``imap`` consumed in a loop (default chunksize: 1 for the stdlib): items/s.
5. ``imap`` read by ``next(timeout=10)`` calls (default chunksize): items/s.

Each pool is started once and warmed up; the rounds alternate corral and
the stdlib, and the report gives the median and the range over the rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import square
from _report import emit, heading, table

CASES: list[tuple[str, int, Callable[[Any, int], object]]] = [
    (
        "apply_async + get, tiny task",
        20_000,
        lambda p, n: [r.get() for r in [p.apply_async(square, (i,)) for i in range(n)]],
    ),
    ("map, tiny function", 400_000, lambda p, n: p.map(square, range(n))),
    ("map_async().get(), tiny function", 400_000, lambda p, n: p.map_async(square, range(n)).get()),
    ("imap in a loop, tiny function", 50_000, lambda p, n: [None for _ in p.imap(square, range(n))]),
    ("imap read by next(timeout), tiny function", 20_000, lambda p, n: _timed_next(p.imap(square, range(n)), n)),
]


def _timed_next(it: Any, n: int) -> None:
    for _ in range(n):
        it.next(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--markdown")
    args = ap.parse_args()
    pools = {"corral.Pool": corral.Pool(2), "multiprocessing.Pool": mp.Pool(2)}
    for p in pools.values():
        p.map(square, range(1000))  # warm: workers up, functions loaded
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for case, n, run in CASES:
            for name, p in pools.items():
                t0 = time.perf_counter()
                run(p, n)
                rates.setdefault((case, name), []).append(n / (time.perf_counter() - t0))
    for p in pools.values():
        p.terminate()
    rows = []
    for case, _, _ in CASES:
        ours = statistics.median(rates[(case, "corral.Pool")])
        for name in pools:
            r = rates[(case, name)]
            result = f"{statistics.median(r) / 1e3:,.1f} k/s ({min(r) / 1e3:,.1f}-{max(r) / 1e3:,.1f})"
            vs = "" if name == "corral.Pool" else f"{ours / statistics.median(r):.2f}x"
            rows.append((case, name, result, vs))
    emit(
        [heading(f"corral.Pool vs multiprocessing.Pool, 2 workers, median of {args.rounds} rounds")] + table(rows),
        args.markdown,
    )


if __name__ == "__main__":
    main()
