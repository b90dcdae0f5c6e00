"""The demo's feature-extraction stage, on this machine or on a cluster:
the only line that changes is the one that makes the executor.

    python examples/features_anywhere.py            # corral.ProcessPoolExecutor
    python examples/features_anywhere.py ray        # a local Ray (or address="auto")
    python examples/features_anywhere.py dask       # a Dask LocalCluster (or a scheduler address)
"""

from __future__ import annotations

import sys
import time

import numpy as np

import corral
from corral.demo import features


def main(where: str) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    work = features.tasks(x, variants=2)

    if where == "ray":
        pool = corral.RayExecutor(num_cpus=2)  # on a cluster: corral.RayExecutor(address="auto")
    elif where == "dask":
        pool = corral.DaskExecutor()  # on a cluster: corral.DaskExecutor("tcp://scheduler:8786")
    else:
        pool = corral.ProcessPoolExecutor()

    t0 = time.perf_counter()
    with pool:
        feats = np.concatenate(list(pool.map(features.featurize, work, progress=True)))
    print(f"{where}: {len(feats)} feature vectors of {feats.shape[1]} values in {time.perf_counter() - t0:.2f} s")
    print(f"accuracy of a linear classifier on them: {features.accuracy(feats, np.concatenate([d.target] * 2)):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "local")
