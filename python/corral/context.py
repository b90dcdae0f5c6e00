"""``multiprocessing``'s contexts and module functions on corral's classes:
``get_context``, ``set_start_method``/``get_start_method``,
``cpu_count``, ``current_process``, ``active_children``.

A context (``corral.get_context("spawn")``) has the names of
``multiprocessing``'s: its ``Process`` and ``Pool`` start their processes
with its method, the rest (queues, locks, ``Value``...) are corral's, which
work with every start method. Methods: "spawn", "fork", "forkserver" (for
a ``Pool``, workers forked by the program's fork server; a ``Process``
starts a fresh interpreter, as it inherits no thread either way).
"""

import multiprocessing
import os
from collections.abc import Callable, Iterable
from typing import Any

from . import connection, joinable, mp_pool, process, queues, sharedctypes, synchronize

__all__ = [
    "Context",
    "ForkProcess",
    "SpawnProcess",
    "active_children",
    "cpu_count",
    "current_process",
    "get_all_start_methods",
    "get_context",
    "get_start_method",
    "set_start_method",
]

_METHODS = ("forkserver", "spawn", "fork")


class SpawnProcess(process.Process):
    """A :class:`corral.Process` that starts a fresh interpreter by default
    (the ``Process`` of a "spawn" or "forkserver" context)."""

    _default_start_method = "spawn"


class ForkProcess(process.Process):
    """A :class:`corral.Process` that forks by default (a "fork" context's)."""

    _default_start_method = "fork"


def cpu_count() -> int:
    """The number of CPUs in the system (``multiprocessing.cpu_count``);
    NotImplementedError if it cannot be told."""
    n = os.cpu_count()
    if n is None:
        raise NotImplementedError("cannot determine number of cpus")
    return n


def current_process() -> Any:
    """This process's ``multiprocessing`` process object: in a
    ``corral.Process`` child it has the child's name, the parent's
    ``authkey`` and this process's pid."""
    return multiprocessing.current_process()


def active_children() -> list[process.Process]:
    """The ``corral.Process`` children still running (those that ended
    are reaped)."""
    return process.active_children()


def get_all_start_methods() -> list[str]:
    """The start methods corral supports, the default first."""
    return list(_METHODS)


def get_start_method(allow_none: bool = False) -> str | None:
    """The start method ``set_start_method`` chose; else corral's default,
    "forkserver" (None with ``allow_none``)."""
    chosen = process.chosen_start_method
    if chosen is None and not allow_none:
        return "forkserver"
    return chosen


def set_start_method(method: str | None, force: bool = False) -> None:
    """Chooses the start method of ``corral.Process``, ``corral.Pool`` and
    ``get_context()`` (the process pool executors keep their own
    ``start_method``). RuntimeError if one was chosen already, unless
    ``force``; None (with ``force``) goes back to the defaults."""
    if process.chosen_start_method is not None and not force:
        raise RuntimeError("context has already been set")
    if method is not None and method not in _METHODS:
        raise ValueError(f"cannot find context for {method!r}")
    process.chosen_start_method = method


class Context:
    """The names of ``multiprocessing`` with one start method applied to
    ``Process`` and ``Pool`` (what :func:`get_context` returns)."""

    # The same everywhere.
    Queue = queues.Queue
    SimpleQueue = queues.SimpleQueue
    JoinableQueue = joinable.JoinableQueue
    Pipe = staticmethod(connection.Pipe)
    Lock = synchronize.Lock
    RLock = synchronize.RLock
    Semaphore = synchronize.Semaphore
    BoundedSemaphore = synchronize.BoundedSemaphore
    Condition = synchronize.Condition
    Event = synchronize.Event
    Barrier = synchronize.Barrier
    Value = staticmethod(sharedctypes.Value)
    Array = staticmethod(sharedctypes.Array)
    RawValue = staticmethod(sharedctypes.RawValue)
    RawArray = staticmethod(sharedctypes.RawArray)
    TimeoutError = mp_pool.TimeoutError
    ProcessError = multiprocessing.ProcessError
    AuthenticationError = multiprocessing.AuthenticationError
    BufferTooShort = multiprocessing.BufferTooShort
    cpu_count = staticmethod(cpu_count)
    current_process = staticmethod(current_process)
    active_children = staticmethod(active_children)
    get_all_start_methods = staticmethod(get_all_start_methods)

    def __init__(self, method: str) -> None:
        if method not in _METHODS:
            raise ValueError(f"cannot find context for {method!r}")
        self._method = method
        #: ``Process`` started with this context's method.
        self.Process: type[process.Process] = ForkProcess if method == "fork" else SpawnProcess

    def __repr__(self) -> str:
        return f"<corral.Context {self._method!r}>"

    def get_start_method(self, allow_none: bool = False) -> str:
        """This context's start method."""
        return self._method

    def get_context(self, method: str | None = None) -> "Context":
        """A context for ``method`` (None: this one)."""
        return self if method is None else get_context(method)

    def Pool(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
    ) -> mp_pool.Pool:
        """A :class:`corral.Pool` whose workers start with this context's
        method."""
        return mp_pool.Pool(processes, initializer, initargs, maxtasksperchild, start_method=self._method)

    def Manager(self) -> Any:
        """A started ``multiprocessing`` manager of this start method (its
        proxies work in corral's processes and pool workers too)."""
        return multiprocessing.get_context(self._method).Manager()


def get_context(method: str | None = None) -> Context:
    """A :class:`Context` for ``method`` ("spawn", "fork" or
    "forkserver"; None: the one ``set_start_method`` chose, else
    "forkserver")."""
    if method is None:
        method = get_start_method()
    assert method is not None
    return Context(method)
