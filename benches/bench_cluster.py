"""What corral adds on top of Ray and Dask, and where each backend pays.

    python benches/bench_cluster.py [--quick] [--markdown FILE]

1. Per task: N tiny tasks submitted, then all results (tasks/s), the engine
   used directly (ray.get of .remote calls; client.submit + gather) against
   corral's executor on the same engine; and corral's local process pool.
2. map: N tiny items, the engine's own map against corral's map.
3. The crossover: each backend's cost per task in this run, and the task
   length at which that cost falls under 10% of the work, i.e. from which
   more machines pay off for that backend.
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
    n, rep = (500, 2) if a.quick else (3000, 3)
    rows: list[tuple[str, str, str, str]] = []
    per_task: dict[str, float] = {}

    with corral.ProcessPoolExecutor(2) as local:
        s = best(timed(lambda: [f.result() for f in [local.submit(square, i) for i in range(n)]]), rep)
        per_task["corral.ProcessPoolExecutor(2), this machine"] = s / n

    try:
        import ray

        with corral.RayExecutor(num_cpus=2, include_dashboard=False, log_to_driver=False) as ex:
            remote = ray.remote(square)
            direct = best(timed(lambda: ray.get([remote.remote(i) for i in range(n)])), rep)
            ours = best(timed(lambda: [f.result() for f in [ex.submit(square, i) for i in range(n)]]), rep)
            rows.append(
                (
                    f"1. {n} tiny tasks, submit then results",
                    "Ray directly (ray.get of .remote)",
                    f"{n / direct / 1e3:.2f} k/s",
                    f"{direct / ours:.2f}x",
                )
            )
            rows.append(
                (f"1. {n} tiny tasks, submit then results", "corral.RayExecutor", f"{n / ours / 1e3:.2f} k/s", "—")
            )
            m_ours = best(timed(lambda: list(ex.map(square, range(n)))), rep)
            rows.append(
                (
                    f"2. map over {n} tiny items",
                    "Ray directly (same as 1.)",
                    f"{n / direct / 1e3:.2f} k/s",
                    f"{direct / m_ours:.2f}x",
                )
            )
            rows.append((f"2. map over {n} tiny items", "corral.RayExecutor.map", f"{n / m_ours / 1e3:.2f} k/s", "—"))
            per_task["Ray (local, 2 CPUs)"] = direct / n
    except ImportError:
        print("ray is not installed: its rows are skipped")

    try:
        import distributed  # noqa: F401

        with corral.DaskExecutor() as ex:
            c = ex._client
            direct = best(timed(lambda: c.gather([c.submit(square, i, pure=False) for i in range(n)])), rep)
            ours = best(timed(lambda: [f.result() for f in [ex.submit(square, i) for i in range(n)]]), rep)
            rows.append(
                (
                    f"1. {n} tiny tasks, submit then results",
                    "Dask directly (client.submit + gather)",
                    f"{n / direct / 1e3:.2f} k/s",
                    f"{direct / ours:.2f}x",
                )
            )
            rows.append(
                (f"1. {n} tiny tasks, submit then results", "corral.DaskExecutor", f"{n / ours / 1e3:.2f} k/s", "—")
            )
            d_map = best(timed(lambda: c.gather(c.map(square, range(n), pure=False))), rep)
            m_ours = best(timed(lambda: list(ex.map(square, range(n)))), rep)
            rows.append(
                (
                    f"2. map over {n} tiny items",
                    "Dask directly (client.map + gather)",
                    f"{n / d_map / 1e3:.2f} k/s",
                    f"{d_map / m_ours:.2f}x",
                )
            )
            rows.append((f"2. map over {n} tiny items", "corral.DaskExecutor.map", f"{n / m_ours / 1e3:.2f} k/s", "—"))
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
