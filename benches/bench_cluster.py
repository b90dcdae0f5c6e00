"""What corral adds on top of Ray and Dask, and where each backend pays.

    python benches/bench_cluster.py [--quick] [--markdown FILE]

0. One at a time: a tiny task submitted and its result awaited before the
   next (``ray.get(f.remote(x))``; ``client.submit(f, x).result()``) against
   ``ex.submit(f, x).result()`` on the same engine.
1. Per task: N tiny tasks submitted, then all results (tasks/s), the engine
   used directly (ray.get of .remote calls; client.submit + gather) against
   corral's executor on the same engine; and corral's local process pool.
2. map: N tiny items, the engine's own map against corral's map.
3. The crossover: each backend's cost per task in this run, and the task
   length at which that cost falls under 10% of the work, i.e. from which
   more machines pay off for that backend.

The engine and corral take turns within each repeat (the best of the
repeats is kept for each): a machine busy with other work slows both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import square
from _report import emit, heading, table


def best(fn: Callable[[], float], repeats: int) -> float:
    fn()
    return min(fn() for _ in range(repeats))


def duel(direct: Callable[[], float], ours: Callable[[], float], repeats: int) -> tuple[float, float]:
    """The best time of each, the two run in turns (after one warm-up each)."""
    direct(), ours()
    times = [(direct(), ours()) for _ in range(repeats)]
    return min(d for d, _ in times), min(o for _, o in times)


def pair(case: str, peer: str, ours_name: str, n: int, direct: float, ours: float) -> list[tuple[str, str, str, str]]:
    """The two table rows of one case: the engine used directly, then corral."""
    return [
        (case, peer, f"{n / direct / 1e3:.2f} k/s", f"{direct / ours:.2f}x"),
        (case, ours_name, f"{n / ours / 1e3:.2f} k/s", "—"),
    ]


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--markdown", metavar="FILE")
    a = ap.parse_args()
    n, one, rep = (500, 100, 2) if a.quick else (3000, 300, 5)
    rows: list[tuple[str, str, str, str]] = []
    per_task: dict[str, float] = {}
    case0, case1, case2 = (
        f"0. {one} tiny tasks, one at a time",
        f"1. {n} tiny tasks, submit then results",
        f"2. map over {n} tiny items",
    )

    with corral.ProcessPoolExecutor(2) as local:
        s = best(timed(lambda: [f.result() for f in [local.submit(square, i) for i in range(n)]]), rep)
        per_task["corral.ProcessPoolExecutor(2), this machine"] = s / n

    try:
        import ray

        with corral.RayExecutor(num_cpus=2, include_dashboard=False, log_to_driver=False) as ex:
            remote = ray.remote(square)
            d0, o0 = duel(
                timed(lambda: [ray.get(remote.remote(i)) for i in range(one)]),
                timed(lambda: [ex.submit(square, i).result() for i in range(one)]),
                rep,
            )
            rows += pair(case0, "Ray directly (ray.get(f.remote(x)))", "corral.RayExecutor", one, d0, o0)
            direct, ours = duel(
                timed(lambda: ray.get([remote.remote(i) for i in range(n)])),
                timed(lambda: [f.result() for f in [ex.submit(square, i) for i in range(n)]]),
                rep,
            )
            rows += pair(case1, "Ray directly (ray.get of .remote)", "corral.RayExecutor", n, direct, ours)
            m_ours = best(timed(lambda: list(ex.map(square, range(n)))), rep)
            rows += pair(case2, "Ray directly (same as 1.)", "corral.RayExecutor.map", n, direct, m_ours)
            per_task["Ray (local, 2 CPUs)"] = direct / n
    except ImportError:
        print("ray is not installed: its rows are skipped")

    try:
        import distributed  # noqa: F401

        with corral.DaskExecutor() as ex:
            c = ex._client
            d0, o0 = duel(
                timed(lambda: [c.submit(square, i, pure=False).result() for i in range(one)]),
                timed(lambda: [ex.submit(square, i).result() for i in range(one)]),
                rep,
            )
            rows += pair(case0, "Dask directly (client.submit(f, x).result())", "corral.DaskExecutor", one, d0, o0)
            direct, ours = duel(
                timed(lambda: c.gather([c.submit(square, i, pure=False) for i in range(n)])),
                timed(lambda: [f.result() for f in [ex.submit(square, i) for i in range(n)]]),
                rep,
            )
            rows += pair(case1, "Dask directly (client.submit + gather)", "corral.DaskExecutor", n, direct, ours)
            d_map, m_ours = duel(
                timed(lambda: c.gather(c.map(square, range(n), pure=False))),
                timed(lambda: list(ex.map(square, range(n)))),
                rep,
            )
            rows += pair(case2, "Dask directly (client.map + gather)", "corral.DaskExecutor.map", n, d_map, m_ours)
            per_task["Dask (LocalCluster, 2 workers)"] = direct / n
    except ImportError:
        print("dask[distributed] is not installed: its rows are skipped")

    lines = [
        heading("Ray and Dask backends"),
        "",
        *table(rows),
        "",
        "| backend | cost per task | tasks longer than this keep that cost under 10% |",
        "|---|---|---|",
    ]
    for name, cost in per_task.items():
        lines.append(f"| {name} | {cost * 1e6:.0f} µs | {cost * 10 * 1e3:.1f} ms |")
    emit(lines, a.markdown)


if __name__ == "__main__":
    main()
