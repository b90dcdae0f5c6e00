"""Synchronization primitives side by side: corral against threading and
multiprocessing, in one run, reported as ratios.

    python benches/bench_sync.py [--quick] [--markdown FILE] [--under-load]

- Uncontended acquire/release pairs of a lock and a semaphore (ns per pair,
  including the Python loop).
- Event ping-pong between two processes (median round trip).
- Two processes incrementing a shared counter under a lock.
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
from _report import emit, heading, table
from _sync_workers import CorralCounter, corral_increment, mp_increment, pong


def pair_ns(lock: Any, n: int) -> float:
    """Nanoseconds per uncontended acquire + release."""
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter_ns()
    for _ in range(n):
        acquire()
        release()
    return (time.perf_counter_ns() - t0) / n


def pingpong_us(make_event: Callable[[], Any], start: Callable[..., Any], n: int) -> float:
    """Median round trip in microseconds: set ping, wait for pong."""
    ping, pong_ev = make_event(), make_event()
    p = start(ping, pong_ev, n)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        ping.set()
        pong_ev.wait(30)
        pong_ev.clear()
        samples.append(time.perf_counter() - t0)
    p.join(30)
    return statistics.median(samples[10:]) * 1e6


def counter_seconds(kind: str, n: int) -> float:
    """Two processes each add 1 to a shared counter n times under a lock;
    the clock starts when both are running and meet the parent at a barrier
    (so process start-up, slower for corral's fresh interpreters, is not counted)."""
    if kind == "corral":
        lock, counter, start = corral.Lock(), CorralCounter(), corral.Barrier(3)
        procs: list[Any] = [corral.Process(target=corral_increment, args=(lock, counter, n, start)) for _ in range(2)]
    else:
        value, start = mp.Value("q", 0), mp.Barrier(3)  # a Value with its own mp.RLock
        procs = [mp.Process(target=mp_increment, args=(value, n, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join(120)
    elapsed = time.perf_counter() - t0
    total = counter.get() if kind == "corral" else value.value
    assert total == 2 * n, total
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--markdown", metavar="FILE")
    ap.add_argument("--under-load", action="store_true", help=UNDER_LOAD_HELP)
    args = ap.parse_args()
    with busy_machine() if args.under_load else contextlib.nullcontext():
        run(args)


def run(args: argparse.Namespace) -> None:
    n_pairs = 200_000 if args.quick else 1_000_000
    n_pp = 500 if args.quick else 3000
    n_inc = 20_000 if args.quick else 50_000
    rows: list[tuple[str, str, str, str]] = []

    locks = {
        "corral.Lock": corral.Lock(),
        "threading.Lock": threading.Lock(),
        "multiprocessing.Lock": mp.Lock(),
        "corral.Semaphore": corral.Semaphore(1),
        "threading.Semaphore": threading.Semaphore(1),
        "multiprocessing.Semaphore": mp.Semaphore(1),
    }
    loop = min(
        pair_ns(type("Nop", (), {"acquire": lambda s: None, "release": lambda s: None})(), n_pairs) for _ in range(3)
    )
    res = {name: min(pair_ns(lock, n_pairs) for _ in range(3)) for name, lock in locks.items()}
    for name, v in res.items():
        ours = res["corral.Lock"] if "Lock" in name else res["corral.Semaphore"]
        case = "uncontended acquire+release (lock)" if "Lock" in name else "uncontended acquire+release (semaphore)"
        ratio = "—" if name.startswith("corral") else f"{v / ours:.2f}x"
        rows.append((case, name, f"{v:.0f} ns", ratio))
    print(f"(a Python loop calling two no-op methods costs {loop:.0f} ns per pair)")

    def start_mp(*a: Any) -> Any:
        p = mp.Process(target=pong, args=a)
        p.start()
        return p

    def start_corral(*a: Any) -> Any:
        p = corral.Process(target=pong, args=a)
        p.start()
        return p

    pp = {
        "corral.Event": min(pingpong_us(corral.Event, start_corral, n_pp) for _ in range(2)),
        "multiprocessing.Event": min(pingpong_us(mp.Event, start_mp, n_pp) for _ in range(2)),
    }
    for name, v in pp.items():
        ratio = "—" if name.startswith("corral") else f"{v / pp['corral.Event']:.1f}x"
        rows.append(("Event ping-pong between processes (median)", name, f"{v:.1f} µs", ratio))

    cnt = {
        "corral.Lock + shared counter": min(counter_seconds("corral", n_inc) for _ in range(2)),
        "multiprocessing.Value (its lock)": min(counter_seconds("mp", n_inc) for _ in range(2)),
    }
    for name, v in cnt.items():
        ours = cnt["corral.Lock + shared counter"]
        ratio = "—" if name.startswith("corral") else f"{v / ours:.1f}x"
        rows.append((f"2 processes x {n_inc} locked increments", name, f"{v:.3f} s", ratio))

    note = f"A Python loop calling two no-op methods costs {loop:.0f} ns per pair; it is included in every pair figure."
    title = "Synchronization" + (UNDER_LOAD if args.under_load else "")
    emit([heading(title), "", note, "", *table(rows)], args.markdown)


if __name__ == "__main__":
    main()
