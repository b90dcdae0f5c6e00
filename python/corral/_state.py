"""What a task may ask of the executor running it, in any kind of worker
(a process-pool worker process, a thread-pool thread, a Ray or Dask
worker): :func:`worker_state`, and ``run_chunk``, the loop that runs one
chunk of a ``map`` (a process-pool worker sends its results as
``_core.pack_scalars`` makes them).

It sits below the executors (``pool``, ``threads``, ``cluster``) and the
worker loop (``_worker``), which all use it; it imports nothing of corral
but ``_pickle``.
"""

import itertools
import os
import threading
from typing import Any, TypeVar, overload

from . import _pickle

__all__ = [
    "NO_STATE",
    "run_chunk",
    "set_process_state",
    "set_thread_state",
    "set_worker_id",
    "worker_id",
    "worker_state",
]

#: Marks "no initializer ran here".
NO_STATE = object()
_state: Any = NO_STATE
#: Per-thread state of a corral.ThreadPoolExecutor's initializer.
_tls = threading.local()


S = TypeVar("S")


@overload
def worker_state() -> Any: ...
@overload
def worker_state(kind: type[S]) -> S: ...
def worker_state(kind: type[S] | None = None) -> Any:
    """What the pool's initializer returned, in this worker process.

    Lets a task use a model loaded once per worker without a global::

        def load():
            return torch.load("model.pt")

        def predict(x):
            return corral.worker_state()(x)

        with corral.ProcessPoolExecutor(initializer=load) as pool:
            ...

    In a ``corral.ThreadPoolExecutor`` thread, it is what the initializer
    returned in that thread. Raises RuntimeError outside a pool worker, or
    when the pool has no initializer.

    ``worker_state(Model)`` is typed as a ``Model`` (for type checkers) and
    raises TypeError if the state is not one.
    """
    state = getattr(_tls, "state", NO_STATE)
    if state is NO_STATE:
        state = _state
    if state is NO_STATE:
        raise RuntimeError("corral.worker_state() is only available in a process-pool worker with an initializer")
    if kind is not None and not isinstance(state, kind):
        raise TypeError(f"the worker state is a {type(state).__name__}, not a {kind.__name__}")
    return state


#: (pid, slot) of this process-pool worker; the pid tells a child this
#: worker forked (which inherits the value) that it is not the worker.
_slot: tuple[int, int] | None = None


def worker_id() -> int | None:
    """This process-pool worker's slot: 0 to ``max_workers - 1``, stable
    for the pool's life (a worker that replaces one that exited takes its
    slot), set before the initializer runs. Lets each worker pin its own
    device::

        def load():
            torch.cuda.set_device(corral.worker_id() % torch.cuda.device_count())
            ...

    None outside a process-pool worker (the main process, a
    ``corral.Process``, a thread-pool thread, a child a worker started), as
    ``torch.utils.data.get_worker_info()`` is outside a DataLoader worker.
    """
    slot = _slot
    if slot is None or slot[0] != os.getpid():
        return None
    return slot[1]


def set_worker_id(slot: int) -> None:
    """Records this process-pool worker's slot (``worker_id``)."""
    global _slot
    _slot = (os.getpid(), slot)


def set_process_state(value: Any) -> None:
    """Records what a process-pool worker's initializer returned."""
    global _state
    _state = value


def set_thread_state(value: Any) -> None:
    """Records what a thread-pool initializer returned, for this thread."""
    _tls.state = value


def run_chunk(fn: Any, payload: tuple[bool, list[Any]]) -> tuple[list[Any], bytes | None]:
    """Calls ``fn`` on each item (``fn(*item)`` if ``payload[0]``); on an
    exception, returns the results before it and the packed exception
    (``map`` raises it at that place)."""
    star, items = payload
    out: list[Any] = []
    try:
        # list.extend keeps what was appended before an exception.
        out.extend(itertools.starmap(fn, items) if star else map(fn, items))
    except BaseException as e:
        return out, _pickle.pack_exception(e)
    return out, None
