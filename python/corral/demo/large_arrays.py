"""Stage 2: large arrays to the workers and back.

The training images, upscaled to 128x128 float32, in batches of 64 (4 MB):
each worker flips a batch and scales it to [0, 1] (one cheap pass, as data
augmentation is) and returns it. corral's pool moves numpy arrays through
shared memory; ``concurrent.futures`` pickles them through a pipe, both
ways. Both pools have run the function before the clock starts; the same ``map`` call on both
sides.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from typing import Any

import numpy as np

import corral

from .data import Digits, corral_label, method_label
from .report import Outcome, Row

SIDE = 128
BATCH = 64


def flip_and_scale(batch: np.ndarray) -> np.ndarray:
    """A batch of images mirrored left-right and scaled from [0, 255] to [0, 1]."""
    return batch[:, :, ::-1] * np.float32(1.0 / 255.0)


def batches(d: Digits, copies: int) -> list[np.ndarray]:
    """The training digits upscaled to SIDE x SIDE in [0, 255], in batches
    of BATCH (a fresh array each)."""
    scale = SIDE // 8
    out = []
    for _ in range(copies):
        for start in range(0, len(d.train_x), BATCH):
            small = d.train_x[start : start + BATCH] * np.float32(255.0)
            out.append(small.repeat(scale, axis=1).repeat(scale, axis=2))
    return out


def run(d: Digits, copies: int, tqdm: Any) -> Row:
    """Runs the stage; returns its row."""
    work = batches(d, copies)
    mb = sum(b.nbytes for b in work) / 1e6
    with corral.ProcessPoolExecutor() as pool:
        list(pool.map(flip_and_scale, work[:2]))  # started, as a pool that has worked already
        t0 = time.perf_counter()
        ours = list(pool.map(flip_and_scale, work, progress={"desc": "2. corral map", "leave": False}))
        c = time.perf_counter() - t0
        ours_as = corral_label("corral.ProcessPoolExecutor", pool._start_method, "forkserver")
    checksum = float(sum(float(b[:, 0, -1].sum()) for b in ours))
    del ours
    with cf.ProcessPoolExecutor() as spool:
        list(spool.map(flip_and_scale, work[:2]))
        t0 = time.perf_counter()
        theirs = list(tqdm(spool.map(flip_and_scale, work), total=len(work), desc="2. stdlib map", leave=False))
        s = time.perf_counter() - t0
    assert checksum == float(sum(float(b[:, 0, -1].sum()) for b in theirs))
    return Row(
        "2. large arrays to workers and back",
        f"2. {len(work)} batches of {BATCH} digits at {SIDE}x{SIDE} ({mb:.0f} MB) to workers and back, map",
        Outcome(c),
        Outcome(s),
        ours_as,
        f"concurrent.futures, {method_label(mp.get_start_method())}",
        f"{2 * mb / c / 1e3:.1f} GB/s vs {2 * mb / s / 1e3:.1f} GB/s, both ways counted;"
        " shared memory vs pickles through a pipe",
    )
