"""Stage 4: stage 1 again with a worker killed midway (SIGKILL, as the OOM
killer does).

corral, with ``retries=1``, re-runs the items the dead worker held on a
replacement and finishes; ``concurrent.futures`` breaks the pool and every
pending item fails with ``BrokenProcessPool``. The same ``map`` call
otherwise; the item in the middle kills its worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

import corral

from .data import Digits, corral_label, features_or_die, method_label
from .report import Outcome, Row


def run(d: Digits, copies: int, tqdm: Any) -> Row:
    """Runs the stage; returns its row."""
    images = list(d.train_x) * copies
    n = len(images)
    with tempfile.TemporaryDirectory() as tmp:
        marks = ["" for _ in range(n)]
        marks[n // 2] = os.path.join(tmp, "corral")
        t0 = time.perf_counter()
        with corral.ProcessPoolExecutor(retries=1) as pool:
            ours = list(pool.map(features_or_die, images, marks, progress={"desc": "4. corral", "leave": False}))
            ours_as = corral_label("corral.ProcessPoolExecutor(retries=1)", pool._start_method, "forkserver")
        c = Outcome(time.perf_counter() - t0)
        assert len(ours) == n and os.path.exists(marks[n // 2]), "a worker was killed, and every item came back"
        marks[n // 2] = os.path.join(tmp, "stdlib")
        before = set(mp.active_children())
        t0 = time.perf_counter()
        try:
            with cf.ProcessPoolExecutor() as spool:
                theirs = list(tqdm(spool.map(features_or_die, images, marks), total=n, desc="4. stdlib", leave=False))
            s = Outcome(time.perf_counter() - t0)
            assert np.array_equal(np.stack(ours), np.stack(theirs))
        except BrokenProcessPool:
            s = Outcome(time.perf_counter() - t0, "BrokenProcessPool")
        finally:
            # A broken stdlib pool can leave a worker it started while
            # breaking blocked on its call queue for good (CPython 3.11),
            # and multiprocessing joins it at exit: the demo would never end.
            for p in set(mp.active_children()) - before:
                p.terminate()
                p.join(10)
    return Row(
        "4. a worker killed midway",
        "4. stage 1 with a worker SIGKILLed midway (corral: retries=1), pools started in the time",
        c,
        s,
        ours_as,
        f"concurrent.futures, {method_label(mp.get_start_method())}",
        f"corral re-ran the dead worker's items and finished all {n:,}"
        + ("; the stdlib's pool broke: every pending item failed" if s.error else ", and so did the stdlib"),
    )
