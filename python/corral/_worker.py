"""The loop of a process-pool worker, started by ``ProcessPoolExecutor`` as
the target of a ``corral.Process``.

It runs the pool's initializer once, then takes tasks from its own queue:
marks the task as started on the shared board (a task the parent cancelled
first is skipped), runs it, sends the outcome to the pool's result queue
and marks itself idle. A function arrives pickled with the first task that
uses it and is cached by id afterwards.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from typing import Any

from . import _core, _fds, _pickle
from . import _pool_wire as wire
from .errors import ChannelClosed

__all__ = ["worker_state"]

_NO_STATE = object()
_state: Any = _NO_STATE
#: Per-thread state of a corral.ThreadPoolExecutor's initializer.
_tls = threading.local()


def worker_state() -> Any:
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
    """
    state = getattr(_tls, "state", _NO_STATE)
    if state is not _NO_STATE:
        return state
    if _state is _NO_STATE:
        raise RuntimeError("corral.worker_state() is only available in a process-pool worker with an initializer")
    return _state


class BoardHandle:
    """The pool's shared board as passed to a worker (its descriptor is
    inherited at spawn)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_open_board, (_fds.export_fd(self.fd),))


def _open_board(handle: _fds.FdHandle) -> _core.PoolBoard:
    return _core.PoolBoard.from_fd(_fds.import_fd(handle))


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run_chunk(fn: Any, payload: tuple[bool, list[Any]]) -> tuple[list[Any], bytes | None]:
    """Calls ``fn`` on each item; on an exception, returns the results
    before it and the packed exception (``map`` raises it at that place)."""
    star, items = payload
    out: list[Any] = []
    try:
        # list.extend keeps what was appended before an exception.
        out.extend(itertools.starmap(fn, items) if star else map(fn, items))
    except BaseException as e:
        return out, _pickle.pack_exception(e)
    return out, None


def main(
    slot: int,
    tasks: Any,
    results: Any,
    board: Any,
    initializer: Any,
    initargs: tuple[Any, ...],
    max_tasks: int | None,
    max_memory: int | None,
) -> None:
    """The worker's life: initializer, then tasks until the queue closes
    or a bound (tasks, memory) is reached."""
    global _state
    if isinstance(board, BoardHandle):  # forked: the parent's object as is
        board = _core.PoolBoard.from_fd(os.dup(board.fd))
    # Ctrl-C reaches the whole process group; the parent decides what
    # stops (it kills the workers whose tasks it abandons).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tq, rq = tasks._q, results._q
    header = wire.RESULT.pack
    magic = wire.RESULT_MAGIC

    def send(task: int, status: int, busy: int, value: Any = None) -> None:
        try:
            inband, buffers = _pickle.dumps(value)
        except Exception as e:
            status = wire.RAISED
            inband, buffers = _pickle.dumps(_pickle.pack_exception(TypeError(f"cannot pickle the task's result: {e}")))
        rq.put(header(magic, status, slot, task, busy) + inband, buffers, True, None)

    if initializer is not None:
        try:
            _state = initializer(*initargs)
        except BaseException as e:
            board.set_state(slot, "init_failed")
            send(0, wire.INIT_FAILED, 0, _pickle.pack_exception(e))
            raise SystemExit(3)
    board.ready(slot, os.getpid())
    send(0, wire.READY, 0)
    fns: dict[int, Any] = {}
    done = 0
    unpack = wire.TASK.unpack_from
    hsize = wire.TASK.size
    now = time.monotonic_ns
    while True:
        try:
            inband, buffers = tq.get(True, None)
        except ChannelClosed:
            board.set_state(slot, "stopped")
            return
        _, kind, flags, task, fn_id, fn_len, timeout_ms = unpack(inband)
        if flags & wire.RESET_FNS:
            fns.clear()
        fn = fns.get(fn_id)
        if fn is None:
            fn = fns[fn_id] = _pickle.loads(memoryview(inband)[hsize : hsize + fn_len])
        if not board.begin(slot, task, timeout_ms * 1_000_000):
            send(task, wire.CANCELLED, 0)
            continue
        t0 = now()
        args: Any = None
        try:
            args = _pickle.loads(memoryview(inband)[hsize + fn_len :], buffers)
            if kind == wire.CHUNK:
                value: Any = _run_chunk(fn, args)
            else:
                value = fn(*args[0], **args[1])
            status = wire.OK
        except BaseException as e:
            value, status = _pickle.pack_exception(e), wire.RAISED
        del args
        send(task, status, now() - t0, value)
        del value
        board.end(slot)
        done += 1
        if (max_tasks is not None and done >= max_tasks) or (max_memory is not None and _rss_bytes() > max_memory):
            board.set_state(slot, "retiring")
            return
