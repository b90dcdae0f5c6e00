"""Feature extraction in a process pool, the work of
``examples/features_anywhere.py`` (the same code on corral's pool, Ray or
Dask).

Each task takes a batch of 8x8 digits, makes augmented 32x32 copies (shift,
noise) and computes histogram-of-gradients features (8x8 cells, 9
orientation bins): about 0.25 ms of numpy per image, seconds of work in
all.
"""

from __future__ import annotations

import numpy as np

CELLS = 8
BINS = 9
BATCH = 64


def hog(img: np.ndarray) -> np.ndarray:
    """Histogram-of-gradients features of one image, L2-normalized."""
    gy, gx = np.gradient(img)
    mag = np.hypot(gx, gy)
    ang = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    b = np.minimum((ang / (180.0 / BINS)).astype(np.int64), BINS - 1)
    h, w = img.shape
    ch, cw = h // CELLS, w // CELLS
    out = np.zeros((CELLS, CELLS, BINS), np.float32)
    for i in range(CELLS):
        for j in range(CELLS):
            cell = (slice(i * ch, (i + 1) * ch), slice(j * cw, (j + 1) * cw))
            out[i, j] = np.bincount(b[cell].ravel(), weights=mag[cell].ravel(), minlength=BINS)
    out /= np.linalg.norm(out) + 1e-6
    return out.ravel()


def featurize(task: tuple[np.ndarray, int]) -> np.ndarray:
    """Augments a batch of 8x8 images (seeded) and returns their features."""
    images, seed = task
    rng = np.random.default_rng(seed)
    out = np.empty((len(images), CELLS * CELLS * BINS), np.float32)
    for k, img in enumerate(images):
        big = img.repeat(4, 0).repeat(4, 1)
        big = np.roll(big, tuple(rng.integers(-3, 4, 2)), (0, 1))
        out[k] = hog(big + rng.normal(0.0, 0.05, big.shape).astype(np.float32))
    return out


def tasks(x: np.ndarray, variants: int) -> list[tuple[np.ndarray, int]]:
    """Batches of images with a seed each."""
    return [(x[start : start + BATCH], v * 1000 + start) for v in range(variants) for start in range(0, len(x), BATCH)]


def accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy of a linear classifier on the features (80/20 split)."""
    from sklearn.linear_model import LogisticRegression

    order = np.random.default_rng(0).permutation(len(features))
    cut = int(len(order) * 0.8)
    clf = LogisticRegression(max_iter=300)
    clf.fit(features[order[:cut]], labels[order[:cut]])
    return float(clf.score(features[order[cut:]], labels[order[cut:]]))
