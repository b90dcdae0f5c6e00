"""A/B of the waits: the rows the spin policy (``sys/backoff.rs``) touches,
idle and under load (a busy process per core), for one corral build. Run it
with the old and the new build's interpreter, alternating:

    python benches/ab_waits.py TAG [--rounds N]

Prints one line per row: TAG, idle/load, row, figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _load import busy_machine
from _sync_workers import pong
from bench_channels import _roundtrip, _start_corral, _start_echo_corral, _throughput
from bench_sync import counter_seconds, pingpong_us


def _start_pong(*a: object) -> corral.Process:
    p = corral.Process(target=pong, args=a)
    p.start()
    return p


def rows() -> dict[str, tuple[str, object]]:
    """Row name -> (unit, measuring function)."""
    return {
        "Event ping-pong (median)": ("µs", lambda: pingpong_us(corral.Event, _start_pong, 2000)),
        "Pipe round trip (median)": ("µs", lambda: _roundtrip(corral.Pipe, _start_echo_corral, 3000)),
        "Queue 100 B put/get": (
            "k msg/s",
            lambda: _throughput(corral.Queue, _start_corral, 50_000, "bytes", 100, lambda q: q.get()) / 1e3,
        ),
        "2 x 20000 locked increments": ("s", lambda: counter_seconds("corral", 20_000)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("tag")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    for _ in range(args.rounds):
        for load in (False, True):
            with busy_machine() if load else contextlib.nullcontext():
                for name, (unit, fn) in rows().items():
                    v = fn()  # type: ignore[operator]
                    print(f"{args.tag} {'load' if load else 'idle'} {name:30s} {v:9.3f} {unit}", flush=True)


if __name__ == "__main__":
    main()
