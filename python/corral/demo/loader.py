"""Stage 3: a training epoch fed by a data loader.

A map-style dataset (``__getitem__``/``__len__``) of the training digits,
each sample upscaled to 32x32 with noise and a random shift (seeded per
sample), in batches of 64 into ``SGDClassifier.partial_fit``. corral's
``DataLoader`` against torch's with the same arguments when torch is
installed; otherwise against a loader written with ``multiprocessing`` as a
user writes one (a ``Pool`` whose initializer receives the dataset,
``imap`` over batches of shuffled indices). Each epoch makes its loader,
so worker start-up is in the time, as in a script that does not keep its
workers.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import corral

from .data import Digits, corral_label, method_label
from .report import Outcome, Row

SIDE = 32
BATCH = 64
#: Classes of the digits.
CLASSES = np.arange(10)


class DigitsDataset:
    """Map-style dataset: sample ``i`` is (an augmented SIDE x SIDE float32
    image, its label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
        self.images = images
        self.labels = labels
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng((self.seed, int(i)))
        big = upscale(self.images[i][None])[0]
        big = big + rng.normal(0.0, 0.1, big.shape).astype(np.float32)
        shift = rng.integers(-2, 3, size=2)
        return np.roll(big, (int(shift[0]), int(shift[1])), axis=(0, 1)), int(self.labels[i])


def upscale(images: np.ndarray) -> np.ndarray:
    """8x8 images -> SIDE x SIDE by pixel repetition."""
    scale = SIDE // 8
    return images.repeat(scale, axis=1).repeat(scale, axis=2)


# -- the multiprocessing loader, as a user writes one ---------------------------

_dataset: Any = None


def _keep(dataset: Any) -> None:
    """Pool initializer: the dataset, for the worker's batches."""
    global _dataset
    _dataset = dataset


def _batch(indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One batch: the samples stacked, the labels as an array."""
    samples = [_dataset[i] for i in indices]
    return np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])


def mp_loader(dataset: Any, batch_size: int, num_workers: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled batches of ``dataset`` from a ``multiprocessing.Pool``."""
    order = np.random.default_rng(seed).permutation(len(dataset)).tolist()
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with mp.Pool(num_workers, initializer=_keep, initargs=(dataset,)) as pool:
        yield from pool.imap(_batch, chunks)


# -- the stage ------------------------------------------------------------------

#: The note of a run where corral's loader is not clearly quicker.
_EVEN = (
    f"; the samples' numpy work on these cores bounds both, and batches of {BATCH * SIDE * SIDE * 4 // 1024} KB"
    " cost little to move: corral's loader is built for batches of 1 MB and more (born in shared memory)"
    " and for a dead worker (retries)"
)


def _train(batches: Any, clf: Any, total: int, desc: str, tqdm: Any) -> int:
    """One epoch of ``partial_fit`` over ``batches``; returns the batches seen."""
    seen = 0
    for xb, yb in tqdm(batches, total=total, desc=desc, leave=False):
        x = np.asarray(xb)
        clf.partial_fit(x.reshape(len(x), -1), np.asarray(yb), classes=CLASSES)
        seen += 1
    return seen


def peer() -> tuple[str, Any]:
    """The loader corral is compared with: torch's if torch is importable,
    else ``mp_loader``; (its name for the table, a factory taking the
    dataset, batch size, workers and a seed for the shuffle)."""
    try:
        from torch.utils.data import DataLoader as TorchLoader
    except ImportError:
        return "multiprocessing.Pool + imap (torch is not installed)", mp_loader

    def make(ds: Any, bs: int, nw: int, seed: int) -> Any:
        return TorchLoader(ds, batch_size=bs, shuffle=True, num_workers=nw)

    return "torch.utils.data.DataLoader", make


def run(d: Digits, epochs: int, workers: int, tqdm: Any) -> tuple[Row, str]:
    """Runs the stage; returns its row and a note with both sides' test
    accuracy."""
    from sklearn.linear_model import SGDClassifier

    name = (
        f"3. training: {epochs} epoch{'s' if epochs > 1 else ''} of {len(d.train_x):,} samples, batches of"
        f" {BATCH}, {workers} loader workers, into SGDClassifier.partial_fit"
    )
    ds = DigitsDataset(d.train_x, d.train_y)
    test_x = upscale(d.test_x).reshape(len(d.test_x), -1)
    n_batches = -(-len(ds) // BATCH)
    peer_name, make_peer = peer()
    times: dict[str, float] = {}
    scores: dict[str, float] = {}
    ours_as = ""
    for side in ("corral", "peer"):
        clf = SGDClassifier(loss="log_loss", random_state=0)
        t0 = time.perf_counter()
        for ep in range(epochs):
            if side == "corral":
                loader = corral.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
                # Its default start method is this platform's, as torch's.
                ours_as = corral_label("corral.DataLoader", loader._start_method or "in-process", mp.get_start_method())
            else:
                loader = make_peer(ds, BATCH, workers, ep)
            seen = _train(loader, clf, n_batches, f"3. {side} epoch {ep + 1}", tqdm)
            assert seen == n_batches, (side, seen, n_batches)
        times[side] = time.perf_counter() - t0
        scores[side] = float(clf.score(test_x, d.test_y))
    row = Row(
        "3. training epochs from a data loader",
        name,
        Outcome(times["corral"]),
        Outcome(times["peer"]),
        ours_as,
        f"{peer_name}, {method_label(mp.get_start_method())}",
        "loaders made per epoch (worker start-up counted)" + ("" if times["peer"] > 1.1 * times["corral"] else _EVEN),
    )
    peer_short = peer_name.split(" ")[0]
    note = f"stage 3: test accuracy {scores['corral']:.3f} (corral's loader), {scores['peer']:.3f} ({peer_short})"
    return row, note
