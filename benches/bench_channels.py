"""Channels side by side: corral.Queue / corral.Pipe against
multiprocessing, faster_fifo. One producer process, one consumer (this
process), on the same machine, in one run; reported as ratios.

    python benches/bench_channels.py [--quick] [--markdown FILE] [--under-load] [--case TEXT] [--impl TEXT]

Each case is repeated and the best run is kept (the least disturbed by the
other tenants of a shared VM). The clock starts when the producer,
already running, begins to put (its timestamp is the first message), and
stops at the consumer's last get: process start-up is not counted, a
backlog built before the consumer woke up is.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _load import UNDER_LOAD, UNDER_LOAD_HELP, busy_machine
from _producers import echo, produce
from _report import emit, heading, table

try:
    import faster_fifo
except ImportError:  # optional peer
    faster_fifo = None


def _throughput(
    make_queue: Callable[[], Any], start: Callable[..., Any], n: int, kind: str, size: int, get: Callable[[Any], Any]
) -> float:
    """Messages per second from one producer process to this process,
    from the producer's first put to the consumer's last get."""
    q = make_queue()
    p = start(q, n, kind, size)
    t0 = get(q)
    count = 0
    while True:
        m = get(q)
        if m is None:
            break
        count += 1
    elapsed = time.perf_counter() - t0
    p.join()
    assert count == n, (count, n)
    return n / elapsed


def _start_mp(q: Any, *args: Any) -> Any:
    p = mp.Process(target=produce, args=(q, *args))
    p.start()
    return p


def _start_corral(q: Any, *args: Any) -> Any:
    p = corral.Process(target=produce, args=(q, *args))
    p.start()
    return p


def _start_thread(q: Any, *args: Any) -> Any:
    """The producer as a thread of this process (the queue shared by two
    threads, as in a pipeline stage that also serves processes)."""
    t = threading.Thread(target=produce, args=(q, *args))
    t.start()
    return t


def queue_peers(
    impl: str | None = None,
) -> dict[str, tuple[Callable[[], Any], Callable[..., Any], Callable[[Any], Any]]]:
    """The queues compared, by name (those whose name contains ``impl``)."""
    peers = {
        "corral.Queue": (lambda: corral.Queue(), _start_corral, lambda q: q.get()),
        "multiprocessing.Queue": (lambda: mp.Queue(), _start_mp, lambda q: q.get()),
        "multiprocessing.SimpleQueue": (lambda: mp.SimpleQueue(), _start_mp, lambda q: q.get()),
    }
    if faster_fifo is not None:
        peers["faster_fifo.Queue"] = (
            lambda: faster_fifo.Queue(max_size_bytes=64 << 20),
            _start_mp,
            lambda q: q.get(timeout=60),
        )
    return {name: peer for name, peer in peers.items() if not impl or impl in name}


def _roundtrip(make_pipe: Callable[[], tuple[Any, Any]], start: Callable[..., Any], n: int) -> float:
    """Median round trip of a small message, in microseconds."""
    a, b = make_pipe()
    p = start(b, n)
    msg = b"x" * 64
    for _ in range(20):  # warm-up
        a.send(msg)
        a.recv()
    samples = []
    for _ in range(n - 20):
        t0 = time.perf_counter()
        a.send(msg)
        a.recv()
        samples.append(time.perf_counter() - t0)
    p.join()
    return statistics.median(samples) * 1e6


def _start_echo_mp(conn: Any, n: int) -> Any:
    p = mp.Process(target=echo, args=(conn, n))
    p.start()
    return p


def _start_echo_corral(conn: Any, n: int) -> Any:
    p = corral.Process(target=echo, args=(conn, n))
    p.start()
    return p


def best(fn: Callable[[], float], repeat: int, higher_is_better: bool = True) -> float:
    runs = [fn() for _ in range(repeat)]
    return max(runs) if higher_is_better else min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    ap.add_argument("--markdown", metavar="FILE", help="append the results to FILE")
    ap.add_argument("--under-load", action="store_true", help=UNDER_LOAD_HELP)
    ap.add_argument("--case", metavar="TEXT", help="only the cases whose name contains TEXT")
    ap.add_argument("--impl", metavar="TEXT", help="only the implementations whose name contains TEXT (A/B runs)")
    args = ap.parse_args()
    with busy_machine() if args.under_load else contextlib.nullcontext():
        run(args)


def run(args: argparse.Namespace) -> None:
    repeat = 2 if args.quick else 3
    n_small = 50_000 if args.quick else 200_000
    n_big = 300 if args.quick else 1000
    n_rt = 2_000 if args.quick else 10_000
    n_huge = 20 if args.quick else 60

    rows: list[tuple[str, str, float, str]] = []

    def wanted(case: str) -> bool:
        return not args.case or args.case in case

    case = "100 B messages, put/get"
    if wanted(case):
        print(f"100-byte messages, {n_small} per run, best of {repeat}")
        for name, (mk, st, get) in queue_peers(args.impl).items():
            v = best(lambda mk=mk, st=st, get=get: _throughput(mk, st, n_small, "bytes", 100, get), repeat)
            print(f"  {name:30s} {v / 1e3:10.0f} thousand msg/s")
            rows.append((case, name, v, f"{v / 1e3:.0f} k msg/s"))

    # (case, messages per run, size, kind, start the producer as a process
    # or as a thread of this one)
    sized = [
        ("1 MB numpy arrays", n_big, 1 << 20, "numpy", None),
        ("1 MiB fresh bytes objects", n_big, 1 << 20, "fresh bytes", None),
        ("1 MiB fresh bytearray objects", n_big, 1 << 20, "fresh bytearray", None),
        ("48 MiB numpy arrays", n_huge, 48 << 20, "numpy", None),
        ("48 MiB numpy arrays, two threads of one process", n_huge, 48 << 20, "numpy", _start_thread),
    ]
    for case, n, size, kind, start in sized:
        if not wanted(case):
            continue
        print(f"{case}, {n} per run, best of {repeat}")
        for name, (mk, st, get) in queue_peers(args.impl).items():
            st = start or st
            v = (
                best(lambda mk=mk, st=st, get=get, n=n, k=kind, z=size: _throughput(mk, st, n, k, z, get), repeat)
                * size
            )
            print(f"  {name:30s} {v / 1e9:10.2f} GB/s")
            rows.append((case, name, v, f"{v / 1e9:.2f} GB/s"))

    case = "Pipe round trip (median)"
    if wanted(case):
        print(f"Pipe round trip of a 64-byte message, median of {n_rt}, best of {repeat}")
        pipes = {"corral.Pipe": (corral.Pipe, _start_echo_corral), "multiprocessing.Pipe": (mp.Pipe, _start_echo_mp)}
        for name, (make, start) in pipes.items():
            if args.impl and args.impl not in name:
                continue
            v = best(lambda make=make, start=start: _roundtrip(make, start, n_rt), repeat, False)
            print(f"  {name:30s} {v:10.1f} µs")
            rows.append((case, name, v, f"{v:.1f} µs"))

    by_case: dict[str, dict[str, float]] = {}
    for case, name, v, _ in rows:
        by_case.setdefault(case, {})[name] = v
    cells = []
    for case, name, v, text in rows:
        ours = next((val for nm, val in by_case[case].items() if nm.startswith("corral")), None)
        if ours is None or name.startswith("corral"):
            cells.append((case, name, text, "—"))
            continue
        ratio = (v / ours) if "round trip" in case else (ours / v)
        cells.append((case, name, text, f"{ratio:.1f}x"))
    emit([heading("Channels" + (UNDER_LOAD if args.under_load else "")), "", *table(cells)], args.markdown)


if __name__ == "__main__":
    main()
