"""A/B of a pool worker's kept arenas (``_core.keep_arenas``) in one build:
the workers' CPU and minor page faults per ``map`` of a tiny function over
a list of 1,000,000 items, with the arenas kept (the default, 16 MiB) and
with none kept (an initializer sets the limit to 0), in alternating pools.

    python benches/ab_worker_arenas.py [--rounds N]

CPU is read from ``/proc/PID/task/*/schedstat`` (nanoseconds on a CPU,
summed over the workers' threads), so a busy machine inflates the wall time
but much less the CPU per item.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import square

N = 1_000_000


def _keep(limit: int) -> None:
    corral._core.keep_arenas(limit)


def _usage(pid: int) -> tuple[int, int]:
    """Minor faults and CPU nanoseconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        faults = int(f.read().rsplit(")", 1)[1].split()[7])
    cpu = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu += int(f.read().split()[0])
        except OSError:  # a thread that ended meanwhile
            pass
    return faults, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    items = list(range(N))
    limits = {"kept (16 MiB)": corral._worker.ARENA_CACHE, "none kept": 0}
    pools = {name: corral.ProcessPoolExecutor(2, initializer=_keep, initargs=(n,)) for name, n in limits.items()}
    for pool in pools.values():
        list(pool.map(square, items))  # warm: workers up, chunk size learned
    pids = {name: [w["pid"] for w in pool.stats()["workers"]] for name, pool in pools.items()}
    got: dict[str, list[tuple[int, float]]] = {name: [] for name in pools}
    for r in range(args.rounds):
        for name in list(pools)[r % 2 :] + list(pools)[: r % 2]:
            before = [_usage(p) for p in pids[name]]
            out = list(pools[name].map(square, items))
            after = [_usage(p) for p in pids[name]]
            assert len(out) == N and out[-1] == (N - 1) ** 2
            faults = sum(b[0] - a[0] for a, b in zip(before, after, strict=True))
            cpu_ns = sum(b[1] - a[1] for a, b in zip(before, after, strict=True))
            got[name].append((faults, cpu_ns / N))
    for pool in pools.values():
        pool.shutdown()
    print(f"map(square, list of {N:,}), 2 workers, {args.rounds} rounds interleaved: median (min-max)")
    for name, rows in got.items():
        faults = [f for f, _ in rows]
        cpu = [c for _, c in rows]
        print(
            f"  {name:14s} workers' minor faults {statistics.median(faults):,.0f} ({min(faults):,}-{max(faults):,});"
            f" workers' CPU per item {statistics.median(cpu):.0f} ns ({min(cpu):.0f}-{max(cpu):.0f})"
        )


if __name__ == "__main__":
    main()
