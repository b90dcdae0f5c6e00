"""Stage 1: the features of every digit, one digit per item, through
``map`` with default arguments.

corral's ``map`` sizes its chunks from the measured time per item;
``concurrent.futures``' sends each item alone unless the user tunes
``chunksize``. Both pools have run the function on a few items before the clock starts (stage 5
times start-up), and both show a progress bar.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from typing import Any

import numpy as np

import corral

from .data import Digits, corral_label, features_of, method_label
from .report import Outcome, Row


def run(d: Digits, copies: int, tqdm: Any) -> tuple[Row, np.ndarray, np.ndarray]:
    """Runs the stage; returns its row and the training features and labels
    (``copies`` passes over the training images)."""
    images = list(d.train_x) * copies
    labels = np.concatenate([d.train_y] * copies)
    n = len(images)
    with corral.ProcessPoolExecutor() as pool:
        list(pool.map(features_of, images[:8]))  # started, as a pool that has worked already
        t0 = time.perf_counter()
        ours = np.stack(list(pool.map(features_of, images, progress={"desc": "1. corral map", "leave": False})))
        c = time.perf_counter() - t0
        ours_as = corral_label("corral.ProcessPoolExecutor", pool._start_method, "forkserver")
    with cf.ProcessPoolExecutor() as spool:
        list(spool.map(features_of, images[:8]))
        t0 = time.perf_counter()
        theirs = np.stack(list(tqdm(spool.map(features_of, images), total=n, desc="1. stdlib map", leave=False)))
        s = time.perf_counter() - t0
    assert np.array_equal(ours, theirs)
    row = Row(
        "1. small items through map",
        f"1. features of {n:,} digits, one digit per item, map (pools started)",
        Outcome(c),
        Outcome(s),
        ours_as,
        f"concurrent.futures, {method_label(mp.get_start_method())}",
        "the stdlib sends each item alone (chunksize=1 unless tuned); corral sizes chunks from the time per item",
    )
    return row, ours, labels
