"""corral: concurrency for Python AI/ML work, built in Rust.

Drop-in replacements for ``multiprocessing``'s ``Queue``, ``SimpleQueue``,
``Pipe`` and ``Process``, and for ``threading``'s locks, conditions, events,
semaphores and barriers (shared between processes too), over shared memory
and a Rust core: faster, and a dead peer raises instead of hanging.
"""

import os

from . import _core
from ._executor import Future, Options
from ._state import worker_state
from .cluster import DaskExecutor, RayExecutor  # Ray or Dask is imported when one is made
from .connection import Connection, Pipe
from .errors import (
    ChannelClosed,
    CorruptDataError,
    DeadlockError,
    ItemLostError,
    OwnerDiedError,
    RemoteTraceback,
    WorkerLostError,
)
from .pool import ProcessPool, ProcessPoolExecutor
from .process import Process
from .queues import Queue, SimpleQueue
from .shared import SharedArray, share
from .synchronize import (
    Barrier,
    BoundedSemaphore,
    BrokenBarrierError,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
)
from .threads import Thread, ThreadFuture, ThreadPool, ThreadPoolExecutor

__version__: str = _core.__version__


from .deadlock import detect_deadlocks

if os.environ.get("CORRAL_DETECT_DEADLOCKS", "") not in ("", "0"):
    detect_deadlocks(True)

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "ChannelClosed",
    "ItemLostError",
    "DaskExecutor",
    "RayExecutor",
    "Condition",
    "Event",
    "Lock",
    "OwnerDiedError",
    "RLock",
    "Semaphore",
    "Connection",
    "CorruptDataError",
    "DeadlockError",
    "detect_deadlocks",
    "Pipe",
    "ProcessPool",
    "ProcessPoolExecutor",
    "Future",
    "Options",
    "Process",
    "Queue",
    "RemoteTraceback",
    "SharedArray",
    "SimpleQueue",
    "Thread",
    "ThreadFuture",
    "ThreadPool",
    "ThreadPoolExecutor",
    "share",
    "WorkerLostError",
    "__version__",
    "worker_state",
]
