"""What bounds issue 13's 16 MiB row against "the same call in a thread".

    python benches/bound_array.py [--rounds N]

bench_pool's case 4 sends a 16 MiB float64 array to a worker, which
returns ``arr * 2``; its limit row is the same call in a thread of this
process. A process pool cannot skip two pieces of work the thread call
does not have, whatever its design:

- the input is copied once into shared memory (the caller may change its
  array after ``submit``: a worker cannot read the caller's private pages);
- the worker's ``arr * 2`` reads and writes shared memory. NumPy gives its
  own large arrays transparent huge pages (``madvise(MADV_HUGEPAGE)``); a
  shared mapping gets them only where ``shmem_enabled`` allows, which this
  script prints, and on a VM the page walks of 4 KiB pages cost.

The script times, in one process, each piece on its own (the median of
many calls, thread CPU time so that a busy machine blurs it less), then a
real corral round trip, and prints the best ratio any design that copies
once could reach: thread call / (copy in + shared compute).
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import double

NBYTES = 16 << 20


def median_ms(fn: Callable[[], object], n: int, clock: Callable[[], float]) -> float:
    """Median time of ``fn`` in ms by ``clock`` (``time.thread_time``: thread
    CPU, which a busy machine blurs less; ``time.perf_counter``: wall)."""
    times = []
    for _ in range(n):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times) * 1e3


def shmem_policy() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=41)
    args = ap.parse_args()
    n = NBYTES // 8
    fd = os.memfd_create("bound-array")
    os.ftruncate(fd, 2 * NBYTES)
    shared = mmap.mmap(fd, 2 * NBYTES)
    os.close(fd)
    src_sh = np.frombuffer(shared, dtype=np.float64, count=n)
    dst_sh = np.frombuffer(shared, dtype=np.float64, count=n, offset=NBYTES)
    arr = np.arange(n, dtype=np.float64)
    src_sh[:] = arr
    dst_sh[:] = 0
    print(f"shmem_enabled: {shmem_policy()}")
    with corral.ProcessPoolExecutor(2) as pool:
        pool.submit(double, arr).result()
        for r in range(args.rounds):
            thread = median_ms(lambda: arr * 2, args.calls, time.thread_time)
            shared_op = median_ms(lambda: np.multiply(src_sh, 2, out=dst_sh), args.calls, time.thread_time)
            copy_in = median_ms(lambda: np.copyto(src_sh, arr), args.calls, time.thread_time)
            trip = median_ms(lambda: pool.submit(double, arr).result(), args.calls, time.perf_counter)
            floor = copy_in + shared_op
            print(
                f"round {r + 1}: thread call (arr * 2, private memory) {thread:.2f} ms; "
                f"arr * 2 on shared memory {shared_op:.2f} ms ({shared_op / thread:.2f}x); "
                f"copy into shared memory {copy_in:.2f} ms; corral round trip {trip:.2f} ms. "
                f"Best ratio a copy-once design can reach: {thread / floor:.0%}; corral: {thread / trip:.0%}"
            )
    # The arrays view the mapping: the process exit unmaps it.


if __name__ == "__main__":
    main()
