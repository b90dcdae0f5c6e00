"""``python -m corral demo``: the main job, stage by stage, each compared
with the standard library in the same run.

1. ``features``: augment scikit-learn's bundled digits and compute
   histogram-of-gradients features in a process pool (arrays through
   shared memory, a progress bar), then fit a classifier on them.
2. ``service``: many concurrent calls to a stand-in model service (a call
   that waits), limited by a semaphore, from a thread pool and from asyncio.
3. ``loader``: producer processes feed augmented batches through a queue
   into ``SGDClassifier.partial_fit``.
4. ``fault``: stage 1 again with a worker killed on purpose midway.
"""

from .run import run

__all__ = ["run"]
