"""Exceptions raised by corral beyond the standard library's own."""

__all__ = [
    "ChannelClosed",
    "CorruptDataError",
    "DeadlockError",
    "ItemLostError",
    "OwnerDiedError",
    "RemoteTraceback",
    "WorkerLostError",
]


class ChannelClosed(EOFError):
    """No more data can arrive on a queue.

    Raised by ``Queue.get`` once the queue is empty and every other process
    that holds the queue has called ``close()`` or died: a consumer waiting
    on a dead producer gets this instead of blocking for ever. It subclasses
    ``EOFError``, which ``Connection.recv`` raises in the same situation.
    """


class ItemLostError(TimeoutError):
    """An item was taken from its queue (or pipe) but could not be loaded in
    time, and is lost.

    An item that holds a corral object (a Queue, Lock, Pipe end) sent
    through a queue or pipe is loaded by fetching that object's descriptor
    from the process that sent it. ``Queue.get(timeout=...)`` fetches within
    its timeout (at least 1 s); when the sender, alive, is stalled for
    longer (stopped, overloaded, in a debugger), the message holding the
    item has already left the queue and cannot be put back in its place:
    ``get`` raises this instead of ``queue.Empty``. A ``get`` without a
    timeout waits for a stalled sender as long as it lives. It subclasses
    ``TimeoutError``, what the wait ran into.
    """


class CorruptDataError(RuntimeError):
    """Bytes in shared memory or on a pipe were not a valid corral frame.

    A peer wrote garbage (a bug, or a foreign writer on the descriptor).
    The channel refuses the data instead of misreading it.
    """


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process.

    Attached as ``__cause__`` of the re-raised exception, as
    ``concurrent.futures`` does, so the original stack is printed.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class WorkerLostError(RuntimeError):
    """A process died before it could return its result.

    ``exitcode`` follows ``multiprocessing``: the exit status, or minus the
    signal number (``-9`` for SIGKILL, as the OOM killer sends).
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class OwnerDiedError(RuntimeError):
    """The process (or, for an RLock, the thread) that held a corral lock
    died holding it.

    Raised by the ``acquire`` that noticed it; that waiter does not get the
    lock, but the lock is free again, so the next ``acquire`` succeeds. The
    data the lock guarded may be half-updated: check it before going on.
    """


class DeadlockError(RuntimeError):
    """An ``acquire`` would have closed a cycle of threads waiting for each
    other's corral locks (raised only with ``corral.detect_deadlocks(True)``).

    ``locks`` describes the locks of the cycle, starting with the one being
    acquired; ``threads`` holds the thread idents holding them, the last
    being the caller. The caller does not get the lock; releasing one of its
    own locks breaks the cycle.
    """

    def __init__(self, message: str, locks: list[str] | None = None, threads: list[int] | None = None) -> None:
        super().__init__(message)
        self.locks = locks or []
        self.threads = threads or []


def missing_extra(what: str, extra: str, error: ImportError) -> ImportError:
    """The ImportError of an optional dependency: it says which ``pip
    install`` brings it (``error``, the original, is its ``__cause__``)."""
    err = ImportError(f"{what} needs {error.name or 'an optional dependency'}: pip install 'corral[{extra}]'")
    err.__cause__ = error
    return err
