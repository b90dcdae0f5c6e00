"""The demo's data and the per-item work its stages share.

scikit-learn's bundled digits (1,797 8x8 images, no download), split 80/20
with a fixed seed, and ``features_of``: the features of one digit (its
pixels and the magnitude of its gradient), the small item that stage 1
maps and stage 4 kills a worker in.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Digits:
    """The digits, split: images scaled to [0, 1] and their labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def digits() -> Digits:
    """scikit-learn's digits, split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * 0.8)
    tr, te = order[:cut], order[cut:]
    return Digits(x[tr], y[tr], x[te], y[te])


def features_of(image: np.ndarray) -> np.ndarray:
    """The features of one 8x8 digit: its 64 pixels and the 64 magnitudes
    of its gradient (tens of microseconds of numpy)."""
    gy, gx = np.gradient(image)
    return np.concatenate([image.ravel(), np.hypot(gx, gy).ravel()])


def features_or_die(image: np.ndarray, marker: str) -> np.ndarray:
    """``features_of``, except that an item with a ``marker`` path kills its
    own worker (SIGKILL, as the OOM killer would) if it is the first to
    create that file: once, so that a re-run of the item finishes."""
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return features_of(image)


def stdlib_methods() -> list[str]:
    """The start methods the stdlib runs with where the method matters:
    this platform's default, and forkserver (Python 3.14's default on
    Linux) when that is not the default already."""
    default = mp.get_start_method()
    return [default] if default == "forkserver" else [default, "forkserver"]


def corral_label(api: str, method: str, default: str) -> str:
    """How the table names the way corral ran: ``api`` (``"corral.ProcessPoolExecutor"``)
    and the start method it used, said to be its default when it is
    (``default``: what that API starts with when not told)."""
    return f"{api}, {method}" + (" (its default)" if method == default else "")


def method_label(method: str) -> str:
    """How the table names a start method of the stdlib's."""
    if method == mp.get_start_method():
        return f"{method} (the default here)"
    return f"{method} (3.14's default)" if method == "forkserver" else method
