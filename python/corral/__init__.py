"""corral: concurrency for Python AI/ML work, built in Rust.

Drop-in replacements for ``multiprocessing``'s ``Queue``, ``SimpleQueue``,
``Pipe`` and ``Process``, and for ``threading``'s locks, conditions, events,
semaphores and barriers (shared between processes too), over shared memory
and a Rust core: faster, and a dead peer raises instead of hanging.

``import corral`` loads only the extension and the exceptions; each public
name's module is imported when the name is first used (``__getattr__``), so
a program, and every worker process that imports its ``__main__``, pays
only for what it uses. ``dir(corral)`` and ``from corral import X`` see
every name of ``__all__``.
"""

import importlib
import os
from typing import TYPE_CHECKING, Any

from . import _core
from .errors import (
    ChannelClosed,
    CorruptDataError,
    DeadlockError,
    ItemLostError,
    OwnerDiedError,
    RemoteTraceback,
    WorkerLostError,
)

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from ._executor import Future, Options
    from ._state import worker_id, worker_state
    from .cluster import DaskExecutor, RayExecutor
    from .connection import Connection, Pipe
    from .context import (
        active_children,
        cpu_count,
        current_process,
        get_all_start_methods,
        get_context,
        get_start_method,
        set_start_method,
    )
    from .dataloader import DataLoader, WorkerInfo, default_collate, get_worker_info
    from .deadlock import detect_deadlocks
    from .joinable import JoinableQueue
    from .mp_pool import AsyncResult, Pool
    from .mp_pool import TimeoutError as TimeoutError
    from .pool import ProcessPool, ProcessPoolExecutor
    from .process import Process
    from .queues import Queue, SimpleQueue
    from .shared import SharedArray, share
    from .sharedctypes import Array, RawArray, RawValue, Value
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

#: Each lazily imported public name -> the module that defines it.
_LAZY: dict[str, str] = {
    "Future": "_executor",
    "Options": "_executor",
    "worker_id": "_state",
    "worker_state": "_state",
    "DaskExecutor": "cluster",
    "RayExecutor": "cluster",
    "Connection": "connection",
    "Pipe": "connection",
    "detect_deadlocks": "deadlock",
    "DataLoader": "dataloader",
    "WorkerInfo": "dataloader",
    "default_collate": "dataloader",
    "get_worker_info": "dataloader",
    "ProcessPool": "pool",
    "ProcessPoolExecutor": "pool",
    "Process": "process",
    "Queue": "queues",
    "SimpleQueue": "queues",
    "SharedArray": "shared",
    "share": "shared",
    "Barrier": "synchronize",
    "BoundedSemaphore": "synchronize",
    "BrokenBarrierError": "synchronize",
    "Condition": "synchronize",
    "Event": "synchronize",
    "Lock": "synchronize",
    "RLock": "synchronize",
    "Semaphore": "synchronize",
    "Thread": "threads",
    "ThreadFuture": "threads",
    "ThreadPool": "threads",
    "ThreadPoolExecutor": "threads",
    "AsyncResult": "mp_pool",
    "Pool": "mp_pool",
    # corral.TimeoutError is not in __all__: a star import must not shadow
    # the builtin (a subclass of it: `except TimeoutError` would miss other
    # raisers).
    "TimeoutError": "mp_pool",
    "JoinableQueue": "joinable",
    "Array": "sharedctypes",
    "RawArray": "sharedctypes",
    "RawValue": "sharedctypes",
    "Value": "sharedctypes",
    "active_children": "context",
    "cpu_count": "context",
    "current_process": "context",
    "get_all_start_methods": "context",
    "get_context": "context",
    "get_start_method": "context",
    "set_start_method": "context",
}


def __getattr__(name: str) -> Any:
    """Imports the module of a public name on its first use (then the name
    is a plain attribute of the package)."""
    module = _LAZY.get(name)
    if module is None:
        # A submodule (``corral.pool``) that nothing has imported yet, as
        # the package's eager imports used to make every one of them.
        if not name.startswith("__"):
            try:
                return importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError as e:
                if e.name != f"{__name__}.{name}":
                    raise  # the submodule is there, an import of its failed
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Every public name, imported or not yet (tab completion sees them)."""
    return sorted(set(globals()) | set(__all__) | set(_LAZY))


if os.environ.get("CORRAL_DETECT_DEADLOCKS", "") not in ("", "0"):
    from .deadlock import detect_deadlocks

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
    "worker_id",
    "worker_state",
    "AsyncResult",
    "Pool",
    "JoinableQueue",
    "Array",
    "RawArray",
    "RawValue",
    "Value",
    "active_children",
    "cpu_count",
    "current_process",
    "get_all_start_methods",
    "get_context",
    "get_start_method",
    "set_start_method",
    "DataLoader",
    "WorkerInfo",
    "default_collate",
    "get_worker_info",
]
