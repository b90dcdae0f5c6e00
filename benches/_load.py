"""A busy machine for the "under load" rows: one process per core running
``while True: pass``, started by the benchmark itself and killed at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from corral._bench import busy_load

#: What a report heading says of a run under load.
UNDER_LOAD = ", under load (a busy process per core)"
#: The help of the benchmarks' ``--under-load`` option.
UNDER_LOAD_HELP = (
    "run every case with a busy process (`while True: pass`) per core, started and killed by the benchmark"
)


@contextmanager
def busy_machine(processes: int | None = None) -> Iterator[int]:
    """Runs ``processes`` (default: one per CPU) busy loops for the length of
    the ``with`` block (``corral._bench.busy_load``: the driver's own load);
    yields how many."""
    with busy_load(processes if processes is not None else (os.cpu_count() or 1)) as pids:
        yield len(pids)
