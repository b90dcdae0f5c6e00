"""A busy machine for the "under load" rows: one process per core running
``while True: pass``, started by the benchmark itself and killed at the end."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from contextlib import contextmanager

#: What a report heading says of a run under load.
UNDER_LOAD = ", under load (a busy process per core)"
#: The help of the benchmarks' ``--under-load`` option.
UNDER_LOAD_HELP = (
    "run every case with a busy process (`while True: pass`) per core, started and killed by the benchmark"
)


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_machine(processes: int | None = None) -> Iterator[int]:
    """Runs ``processes`` (default: one per CPU) busy loops for the length of
    the ``with`` block; yields how many."""
    n = processes if processes is not None else (os.cpu_count() or 1)
    procs = [mp.get_context("fork").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield n
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.join(10)
