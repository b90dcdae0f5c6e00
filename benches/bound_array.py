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

The script times each piece on its own (the median of many calls; thread
CPU time, which a busy machine blurs less): the thread call; ``arr * 2`` on
shared memory repeated in one process (caches warm) and in another process
right after this one wrote the input (as a worker does it: the input's
cache lines are elsewhere); the copy in. Then, in wall time, the least any
process design can do (copy in, one byte on a pipe to a forked process
that computes on the shared memory, eight bytes back; the result stays
in shared memory, as corral's does) and a real corral round trip, and
prints each as a share of the thread call.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import struct
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


def other_process(src: np.ndarray, dst: np.ndarray) -> tuple[Callable[[], float], Callable[[], None]]:
    """A forked process that, each time it is asked (a byte on a pipe),
    computes ``dst = src * 2`` on the shared mapping and answers with the
    thread CPU time it took: a worker's compute right after another process
    wrote the input (its cache lines elsewhere), with the least signalling
    (two pipe messages). Returns (ask, stop)."""
    child_reads, parent_writes = os.pipe()
    parent_reads, child_writes = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only numpy and os calls
        os.close(parent_writes)
        os.close(parent_reads)
        try:
            while os.read(child_reads, 1) == b"x":
                t0 = time.thread_time()
                np.multiply(src, 2, out=dst)
                os.write(child_writes, struct.pack("d", time.thread_time() - t0))
        finally:
            os._exit(0)
    os.close(child_reads)
    os.close(child_writes)

    def ask() -> float:
        os.write(parent_writes, b"x")
        return float(struct.unpack("d", os.read(parent_reads, 8))[0])

    def stop() -> None:
        os.write(parent_writes, b"q")
        os.waitpid(pid, 0)
        os.close(parent_writes)
        os.close(parent_reads)

    return ask, stop


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
    ask, stop = other_process(src_sh, dst_sh)

    def hand_over() -> float:
        np.copyto(src_sh, arr)  # this process writes the input...
        return ask()  # ...another computes on it at once

    with corral.ProcessPoolExecutor(2) as pool:
        pool.submit(double, arr).result()
        for r in range(args.rounds):
            thread = median_ms(lambda: arr * 2, args.calls, time.thread_time)
            shared_op = median_ms(lambda: np.multiply(src_sh, 2, out=dst_sh), args.calls, time.thread_time)
            copy_in = median_ms(lambda: np.copyto(src_sh, arr), args.calls, time.thread_time)
            handed = statistics.median(hand_over() for _ in range(args.calls)) * 1e3
            floor_wall = median_ms(hand_over, args.calls, time.perf_counter)
            trip = median_ms(lambda: pool.submit(double, arr).result(), args.calls, time.perf_counter)
            print(
                f"round {r + 1}: thread call (arr * 2, private memory) {thread:.2f} ms; "
                f"arr * 2 on shared memory, repeated in one process {shared_op:.2f} ms, in another process "
                f"right after this one wrote the input {handed:.2f} ms; copy into shared memory {copy_in:.2f} ms; "
                f"copy + hand-over + compute by pipe {floor_wall:.2f} ms; corral round trip {trip:.2f} ms. "
                f"Reachable: {thread / floor_wall:.0%} of the thread call (pipe), "
                f"{thread / (copy_in + shared_op):.0%} (no hand-over cost at all); corral: {thread / trip:.0%}"
            )
    stop()
    # The arrays view the mapping: the process exit unmaps it.


if __name__ == "__main__":
    main()
