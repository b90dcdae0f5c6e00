"""Runs the demo's stages, prints the table and saves it with a chart
(see ``corral.demo``)."""

from __future__ import annotations

import os
import time

import numpy as np
from tqdm.auto import tqdm

from . import data, fault, large_arrays, loader, small_items, startup
from .report import Row, save, table

#: Where the table and the chart go unless ``--out`` says otherwise.
DEFAULT_OUT = "corral-demo"


def process_seconds() -> float:
    """Wall time since this process started (``/proc``: the kernel's
    record, so the interpreter's start and the imports before ``run``, 2-8 s
    of a quick demo on the loaded 2-core VM, count too)."""
    with open("/proc/self/stat") as f:
        # Field 22, counted after the command name's closing parenthesis
        # (a name may hold spaces): start time in clock ticks since boot.
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - started


def run(quick: bool = False, out: str | None = None) -> int:
    """Runs every stage, prints the table and writes it with a chart into
    ``out`` (default ``./corral-demo``); returns the exit code."""
    from sklearn.linear_model import SGDClassifier

    title = f"corral demo{' (quick)' if quick else ''}: an ML training job on the digits, corral vs the stdlib"
    print(title + "\n", flush=True)
    t0 = time.perf_counter()
    d = data.digits()
    workers = min(4, os.cpu_count() or 2)
    rows: list[Row] = []
    notes: list[str] = []

    row, feats, labels = small_items.run(d, 1 if quick else 6, tqdm)
    rows.append(row)
    model = SGDClassifier(random_state=0).fit(feats, labels)
    rows.append(large_arrays.run(d, 1 if quick else 3, tqdm))
    loader_row, loader_note = loader.run(d, 1 if quick else 3, workers, tqdm)
    rows.append(loader_row)
    notes.append(loader_note)
    rows.append(fault.run(d, 1 if quick else 4, tqdm))
    test = [data.features_of(img) for img in d.test_x]
    start_rows, acc = startup.run(model, np.stack(test), d.test_y, tqdm)
    rows += start_rows
    notes.insert(
        0, f"stages 1 and 5: a linear classifier (SGD) on stage 1's features scores {acc:.3f} on held-out digits"
    )

    for line in table(rows):
        print(line)
    print()
    for n in notes:
        print(n)
    md, png = save(rows, notes, out or DEFAULT_OUT, title)
    print(f"\ntable: {md}\nchart: {png}")
    print(
        f"demo ran in {time.perf_counter() - t0:.1f} s ({process_seconds():.1f} s since the process started,"
        " imports included)",
        flush=True,
    )
    return 0
