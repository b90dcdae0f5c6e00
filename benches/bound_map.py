"""What bounds issue 13's default-``map`` row (>= 1.2x multiprocessing.Pool.map).

    python benches/bound_map.py [--rounds N] [--items N]

bench_pool's case 2 maps ``square`` over ``list(range(1_000_000))`` on two
workers of a 2-core machine. Whatever a pool's design, each item costs
CPU that no design avoids:

- the parent encodes the input (a list is not inherited by a worker that
  already runs), decodes the result and the caller iterates it;
- a worker decodes the input, calls the function and encodes the result.

Two encodings: pickled lists (what multiprocessing.Pool sends, and corral
did before stop 24), and ints packed 8 bytes each (``_core.pack_scalars``:
what corral sends now for exact 64-bit ints). The script first times each
piece in this process (per item, thread CPU, the median of several runs)
and prints the ceiling they allow: the machine's CPUs / (parent + worker
CPU per item).

Then, in wall time, in interleaved rounds beside a corral pool and a
``multiprocessing.Pool`` (all up at once, as bench_pool's case 2), the
least any process design does: two forked processes, the parent sending
each its chunks round-robin (a window of two per worker) through a pipe,
the workers decoding, mapping, encoding and writing the result back
through a pipe, the parent reading the chunks in order, decoding and
yielding. No scheduling beyond that, no futures, no threads. It prints the
best run of each round as the floor (with the CPU per item of the parent
and of the workers), corral's and multiprocessing.Pool's share of it, and
the floor's own ratio to multiprocessing.Pool: what a 1.2x target can
expect on this machine at that moment.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import multiprocessing as mp
import os
import pickle
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import square
from corral import _core

WORKERS = 2
#: Chunk sizes the floor design tries (items): the best one is the floor.
CHUNKS = (5_000, 40_000)
PICKLED, PACKED = "pickled", "packed"
CORRAL, MP = "corral.ProcessPoolExecutor.map", "multiprocessing.Pool.map"
_LEN = struct.Struct("<I")
_PIPE_BYTES = 1 << 20
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def per_item_ns(fn: Callable[[], object], n: int, runs: int = 7) -> float:
    """Median thread CPU of ``fn()`` over ``runs`` calls, in ns per item of ``n``."""
    times = []
    for _ in range(runs):
        t0 = time.thread_time_ns()
        fn()
        times.append(time.thread_time_ns() - t0)
    return statistics.median(times) / n


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid``, all its threads (``schedstat``: ns on a
    CPU, finer than ``stat``'s ticks); 0 if it is gone."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        pass
    return total / 1e9


def _read_exact(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        b = os.read(fd, left)
        if not b:
            raise EOFError
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def _send(fd: int, data: bytes) -> None:
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _recv(fd: int) -> bytes:
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size))
    return _read_exact(fd, n)


class Floor:
    """The floor design: two forked workers, one pipe each way per worker."""

    def __init__(self) -> None:
        self.workers: list[tuple[int, int, int]] = []  # (pid, to_worker, from_worker)
        for _ in range(WORKERS):
            down_r, down_w = os.pipe()
            up_r, up_w = os.pipe()
            for fd in (down_w, up_w):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            pid = os.fork()
            if pid == 0:
                os.close(down_w)
                os.close(up_r)
                try:
                    while True:
                        data = _recv(down_r)
                        if not data:
                            break
                        if data[:1] == b"p":  # packed ints both ways
                            values = list(map(square, memoryview(data)[1:].cast("q")))
                            out = _core.pack_scalars(values)
                            assert type(out) is bytes
                            _send(up_w, out)
                        else:
                            _send(up_w, pickle.dumps(list(map(square, pickle.loads(data[1:]))), _PROTOCOL))
                finally:
                    os._exit(0)
            os.close(down_r)
            os.close(up_w)
            self.workers.append((pid, down_w, up_r))

    def map(self, items: list[int], chunk: int, packed: bool) -> Iterator[int]:
        """The results, in order: chunk k goes to worker k % WORKERS, two
        in flight per worker; flattened in C (``chain``), as corral does.
        ``packed``: items and results travel as 8-byte ints (corral's
        ``_core.pack_scalars``), else pickled."""
        return itertools.chain.from_iterable(self._chunks(items, chunk, packed))

    def _chunks(self, items: list[int], chunk: int, packed: bool) -> Iterator[list[int]]:
        n = (len(items) + chunk - 1) // chunk
        window = 2 * WORKERS

        def send(k: int) -> None:
            part = items[k * chunk : (k + 1) * chunk]
            data = b"p" + _core.pack_scalars(part) if packed else b"l" + pickle.dumps(part, _PROTOCOL)  # type: ignore[operator]
            _send(self.workers[k % WORKERS][1], data)

        for k in range(min(window, n)):
            send(k)
        for k in range(n):
            data = _recv(self.workers[k % WORKERS][2])
            values = _core.unpack_ints(data) if packed else pickle.loads(data)
            if k + window < n:
                send(k + window)
            yield values

    def close(self) -> None:
        for pid, down, up in self.workers:
            _send(down, b"")
            os.waitpid(pid, 0)
            os.close(down)
            os.close(up)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--items", type=int, default=1_000_000)
    args = ap.parse_args()
    items = list(range(args.items))
    cpus = len(os.sched_getaffinity(0))

    # The pieces, in this process: a chunk of 20,000 items from the middle
    # of the input (their squares need 40 bits: pickled as LONG1).
    chunk = items[len(items) // 2 : len(items) // 2 + 20_000]
    n = len(chunk)
    results = list(map(square, chunk))
    in_bytes = pickle.dumps(chunk, _PROTOCOL)
    out_bytes = pickle.dumps(results, _PROTOCOL)
    in_packed, out_packed = _core.pack_scalars(chunk), _core.pack_scalars(results)
    assert type(in_packed) is bytes and type(out_packed) is bytes
    pieces = {
        PICKLED: (
            {
                "pickle the input": per_item_ns(lambda: pickle.dumps(chunk, _PROTOCOL), n),
                "unpickle the results": per_item_ns(lambda: pickle.loads(out_bytes), n),
            },
            {
                "unpickle the input, map": per_item_ns(lambda: list(map(square, pickle.loads(in_bytes))), n),
                "pickle the results": per_item_ns(lambda: pickle.dumps(results, _PROTOCOL), n),
            },
        ),
        PACKED: (
            {
                "pack the input": per_item_ns(lambda: _core.pack_scalars(chunk), n),
                "unpack the results": per_item_ns(lambda: _core.unpack_ints(out_packed), n),
            },
            {
                "map over the packed input": per_item_ns(lambda: list(map(square, memoryview(in_packed).cast("q"))), n),
                "pack the results": per_item_ns(lambda: _core.pack_scalars(results), n),
            },
        ),
    }
    iterate = per_item_ns(lambda: list(itertools.chain.from_iterable([results])), n)
    compute = per_item_ns(lambda: list(map(square, chunk)), n)
    print(
        f"CPU per item, this process (ns, median of 7): map(square) {compute:.1f}, iterating the results {iterate:.1f}"
    )
    ceilings = {}
    for enc, (parent, worker) in pieces.items():
        # The worker's map runs inside its "unpickle"/"map over" piece.
        p_ns = sum(parent.values()) + iterate
        w_ns = sum(worker.values())
        ceilings[enc] = cpus / (p_ns + w_ns) * 1e9
        print(
            f"  {enc}: parent "
            + ", ".join(f"{k} {v:.1f}" for k, v in parent.items())
            + f" (+ iterating: {p_ns:.1f}); worker "
            + ", ".join(f"{k} {v:.1f}" for k, v in worker.items())
            + f" ({w_ns:.1f}); ceiling {cpus} CPUs / {p_ns + w_ns:.0f} ns = {ceilings[enc] / 1e6:.2f} M items/s"
        )

    floor = Floor()
    ours = corral.ProcessPoolExecutor(WORKERS)
    theirs = mp.Pool(WORKERS)
    runs: dict[str, Callable[[], list[int]]] = {}
    for enc in (PICKLED, PACKED):
        for c in CHUNKS:
            runs[f"floor, {enc}, chunks of {c}"] = lambda c=c, enc=enc: list(floor.map(items, c, enc == PACKED))
    runs[CORRAL] = lambda: list(ours.map(square, items))
    runs[MP] = lambda: theirs.map(square, items)
    pids = {name: [w[0] for w in floor.workers] for name in runs}
    pids[CORRAL] = [w["pid"] for w in ours.stats()["workers"]]
    pids[MP] = [p.pid for p in theirs._pool]  # type: ignore[attr-defined]
    rates: dict[str, list[float]] = {name: [] for name in runs}
    #: CPU ns per item of this process and of the workers, per round.
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}

    def floor_of(r: int, enc: str | None = None) -> float:
        """Round ``r``'s best floor run (of encoding ``enc``, or of both)."""
        return max(v[r] for k, v in rates.items() if k.startswith("floor") and (enc is None or f", {enc}," in k))

    try:
        for fn in runs.values():  # warm-up
            out = fn()
            assert len(out) == len(items) and out[-1] == items[-1] ** 2
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                me0, ws0 = cpu_seconds(os.getpid()), sum(map(cpu_seconds, pids[name]))
                t0 = time.perf_counter()
                out = runs[name]()
                rates[name].append(len(items) / (time.perf_counter() - t0))
                me1, ws1 = cpu_seconds(os.getpid()), sum(map(cpu_seconds, pids[name]))
                cpu[name].append(((me1 - me0) / len(items) * 1e9, (ws1 - ws0) / len(items) * 1e9))
                assert len(out) == len(items)
            best, c_rate, m_rate = floor_of(r), rates[CORRAL][-1], rates[MP][-1]
            print(
                f"round {r + 1}: floor {best / 1e6:.2f} M/s (pickled {floor_of(r, PICKLED) / 1e6:.2f}); "
                f"corral {c_rate / 1e6:.2f} M/s ({c_rate / best:.0%} of the floor), multiprocessing.Pool "
                f"{m_rate / 1e6:.2f} M/s ({m_rate / best:.0%}); corral vs multiprocessing.Pool {c_rate / m_rate:.2f}x"
            )
    finally:
        floor.close()
        ours.shutdown()
        theirs.terminate()
    print(f"median (min-max) of {args.rounds} rounds, {len(items)} items, {WORKERS} workers:")
    for name, r in rates.items():
        p_cpu = statistics.median(c[0] for c in cpu[name])
        w_cpu = statistics.median(c[1] for c in cpu[name])
        print(
            f"  {name:40s} {statistics.median(r) / 1e6:.2f} M/s ({min(r) / 1e6:.2f}-{max(r) / 1e6:.2f}); "
            f"CPU ns per item: parent {p_cpu:.0f}, workers {w_cpu:.0f}"
        )
    floors = [floor_of(r) for r in range(args.rounds)]
    for name in (CORRAL, MP):
        shares = [a / b for a, b in zip(rates[name], floors, strict=True)]
        print(f"  {name:40s} {statistics.median(shares):.0%} of the floor ({min(shares):.0%}-{max(shares):.0%})")
    ratios = [a / b for a, b in zip(rates[CORRAL], rates[MP], strict=True)]
    print(
        f"  corral vs multiprocessing.Pool {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}); "
        f"the floor vs multiprocessing.Pool: "
        + " ".join(f"{a / b:.2f}" for a, b in zip(floors, rates[MP], strict=True))
    )
    print(
        f"  floor (best run per round) {statistics.median(floors) / 1e6:.2f} M/s = "
        f"{statistics.median(floors) / ceilings[PACKED]:.0%} of the CPU ceiling {ceilings[PACKED] / 1e6:.2f} M/s "
        f"(the machine's other load takes the rest)"
    )


if __name__ == "__main__":
    main()
