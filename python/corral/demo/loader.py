"""Demo stage 3: a data loader feeding a training loop.

Producer processes turn scikit-learn's bundled digits images (no download)
into augmented batches (noised, upscaled to 64x64, shifted: 512 images, 8 MB
of float32 per batch) and put them into a queue; the main process pools
each batch back to 8x8 and trains an ``SGDClassifier`` with ``partial_fit``,
and ends with the test accuracy. Batches are large and the training step is
cheap, as when a GPU consumes what CPU workers prepare: moving the batches
is the cost that the queue decides. The same job runs twice, with ``corral.Process`` + ``corral.Queue``
and with ``multiprocessing.Process`` + ``multiprocessing.Queue``, and the
table compares them.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any, cast

import numpy as np

import corral

BATCH = 512
SIDE = 64
SCALE = SIDE // 8


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits images scaled to [0, 1], split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * 0.8)
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr], x[te], y[te]


def upscale(images: np.ndarray) -> np.ndarray:
    """8x8 -> 64x64 by pixel repetition."""
    return images.repeat(SCALE, axis=1).repeat(SCALE, axis=2)


def pool(batch: np.ndarray) -> np.ndarray:
    """64x64 -> 8x8 features by averaging blocks, flattened."""
    n = len(batch)
    # A mean over two of five axes is an array (numpy's stubs say Any).
    blocks = cast(np.ndarray, batch.reshape(n, 8, SCALE, 8, SCALE).mean(axis=(2, 4)))
    return blocks.reshape(n, 64)


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise, upscaling, and a random shift per group of 64."""
    noisy = images + rng.normal(0.0, 0.1, size=images.shape).astype(np.float32)
    big = upscale(noisy)
    for start in range(0, len(big), 64):
        dx, dy = rng.integers(-SCALE // 2, SCALE // 2 + 1, size=2)
        big[start : start + 64] = np.roll(big[start : start + 64], (dx, dy), axis=(1, 2))
    return big


def producer(q: Any, seed: int, n_batches: int) -> None:
    """Puts ``n_batches`` (images, labels) batches, then None."""
    x, y, _, _ = load_digits_split()
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        idx = rng.integers(0, len(x), size=BATCH)
        q.put((augment(x[idx], rng), y[idx]))
    q.put(None)


def train(q: Any, producers: int) -> tuple[Any, int]:
    """Consumes batches until every producer is done."""
    from sklearn.linear_model import SGDClassifier

    clf = SGDClassifier(loss="log_loss", random_state=0)
    classes = np.arange(10)
    done = batches = 0
    while done < producers:
        item = q.get(timeout=120)
        if item is None:
            done += 1
            continue
        xb, yb = item
        clf.partial_fit(pool(xb), yb, classes=classes)
        batches += 1
    return clf, batches


def run_job(kind: str, producers: int, n_batches: int) -> tuple[float, float, float, int]:
    """One run; returns (start-up seconds, streaming seconds, accuracy,
    batches). Start-up ends when the first batch arrives."""
    if kind == "corral":
        q: Any = corral.Queue(maxsize=8)
        procs: list[Any] = [corral.Process(target=producer, args=(q, s, n_batches)) for s in range(producers)]
    else:
        q = mp.Queue(maxsize=8)
        procs = [mp.Process(target=producer, args=(q, s, n_batches)) for s in range(producers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    first = q.get(timeout=120)
    t1 = time.perf_counter()
    q_with_first = _Prepend(first, q)
    clf, batches = train(q_with_first, producers)
    t2 = time.perf_counter()
    for p in procs:
        p.join(60)
    _, _, xt, yt = load_digits_split()
    acc = float(clf.score(xt.reshape(len(xt), -1), yt))
    return t1 - t0, t2 - t1, acc, batches


class _Prepend:
    """A queue view that yields one item already taken, then the queue's."""

    def __init__(self, first: Any, q: Any) -> None:
        self._first: list[Any] = [first]
        self._q = q

    def get(self, timeout: float | None = None) -> Any:
        if self._first:
            return self._first.pop()
        return self._q.get(timeout=timeout)
