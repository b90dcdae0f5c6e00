"""Channels side by side: corral.Queue / corral.Pipe against
multiprocessing, faster_fifo. One producer process, one consumer (this
process), on the same machine, in one run; reported as ratios.

    python benches/bench_channels.py [--quick] [--markdown FILE] [--under-load]

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


def queue_peers() -> dict[str, tuple[Callable[[], Any], Callable[..., Any], Callable[[Any], Any]]]:
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
    return peers


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
    args = ap.parse_args()
    with busy_machine() if args.under_load else contextlib.nullcontext():
        run(args)


def run(args: argparse.Namespace) -> None:
    repeat = 2 if args.quick else 3
    n_small = 50_000 if args.quick else 200_000
    n_big = 300 if args.quick else 1000
    n_rt = 2_000 if args.quick else 10_000

    rows: list[tuple[str, str, float, str]] = []

    print(f"100-byte messages, {n_small} per run, best of {repeat}")
    small = {}
    for name, (mk, st, get) in queue_peers().items():
        small[name] = best(lambda mk=mk, st=st, get=get: _throughput(mk, st, n_small, "bytes", 100, get), repeat)
        print(f"  {name:30s} {small[name] / 1e3:10.0f} thousand msg/s")
    for name, v in small.items():
        rows.append(("100 B messages, put/get", name, v, f"{v / 1e3:.0f} k msg/s"))

    print(f"1 MB numpy arrays, {n_big} per run, best of {repeat}")
    big = {}
    for name, (mk, st, get) in queue_peers().items():
        big[name] = best(lambda mk=mk, st=st, get=get: _throughput(mk, st, n_big, "numpy", 1 << 20, get), repeat) * (
            1 << 20
        )
        print(f"  {name:30s} {big[name] / 1e9:10.2f} GB/s")
    for name, v in big.items():
        rows.append(("1 MB numpy arrays", name, v, f"{v / 1e9:.2f} GB/s"))

    for kind in ("fresh bytes", "fresh bytearray"):
        case = f"1 MiB {kind} objects"
        print(f"{case}, {n_big} per run, best of {repeat}")
        for name, (mk, st, get) in queue_peers().items():
            v = best(lambda mk=mk, st=st, get=get, k=kind: _throughput(mk, st, n_big, k, 1 << 20, get), repeat) * (
                1 << 20
            )
            print(f"  {name:30s} {v / 1e9:10.2f} GB/s")
            rows.append((case, name, v, f"{v / 1e9:.2f} GB/s"))

    print(f"Pipe round trip of a 64-byte message, median of {n_rt}, best of {repeat}")
    rt = {
        "corral.Pipe": best(lambda: _roundtrip(corral.Pipe, _start_echo_corral, n_rt), repeat, False),
        "multiprocessing.Pipe": best(lambda: _roundtrip(mp.Pipe, _start_echo_mp, n_rt), repeat, False),
    }
    for name, v in rt.items():
        print(f"  {name:30s} {v:10.1f} µs")
        rows.append(("Pipe round trip (median)", name, v, f"{v:.1f} µs"))

    by_case: dict[str, dict[str, float]] = {}
    for case, name, v, _ in rows:
        by_case.setdefault(case, {})[name] = v
    cells = []
    for case, name, v, text in rows:
        ours = next(val for nm, val in by_case[case].items() if nm.startswith("corral"))
        ratio = (v / ours) if "round trip" in case else (ours / v)
        cells.append((case, name, text, "—" if name.startswith("corral") else f"{ratio:.1f}x"))
    emit([heading("Channels" + (UNDER_LOAD if args.under_load else "")), "", *table(cells)], args.markdown)


if __name__ == "__main__":
    main()
