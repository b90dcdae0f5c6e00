"""How a corral object's descriptors reach another process when pickled.

During ``Process.start`` the child inherits them: the parent duplicates each
descriptor, the child receives it under the same number. Otherwise (an
object put in a queue or sent on a pipe) the descriptor is registered with
this process's broker and the receiver fetches it over a Unix socket.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Union

from . import _core

__all__ = ["FdHandle", "Inheritance", "export_fd", "import_fd", "inheriting", "on_spawn"]

FdHandle = Union[tuple[str, int], tuple[str, bytes, int]]

_local = threading.local()


class Inheritance:
    """What pickling a process's payload collected: the descriptors the child
    must inherit (the caller closes them after the spawn) and what to tell
    the pickled objects once the child's pid is known."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.on_spawn: list[Callable[[int], None]] = []

    def spawned(self, pid: int) -> None:
        """Runs the ``on_spawn`` callbacks with the child's pid."""
        for callback in self.on_spawn:
            callback(pid)


@contextmanager
def inheriting() -> Iterator[Inheritance]:
    """Collects, while pickling a process's payload, what the child must
    inherit (see ``Inheritance``)."""
    inheritance = Inheritance()
    prev = getattr(_local, "inherit", None)
    _local.inherit = inheritance
    try:
        yield inheritance
    finally:
        _local.inherit = prev


def on_spawn(callback: Callable[[int], None]) -> None:
    """While pickling a process's payload, asks for ``callback(child_pid)``
    after the child starts; elsewhere does nothing."""
    inherit = getattr(_local, "inherit", None)
    if inherit is not None:
        inherit.on_spawn.append(callback)


def export_fd(fd: int) -> FdHandle:
    """A picklable handle from which another process gets ``fd``."""
    inherit = getattr(_local, "inherit", None)
    if inherit is not None:
        dup = _core.dup_fd(fd)
        inherit.fds.append(dup)
        return ("inherit", dup)
    address, token = _core.share_fd(fd)
    return ("broker", address, token)


def import_fd(handle: FdHandle) -> int:
    """The descriptor behind ``handle``, owned by the caller."""
    kind = handle[0]
    if kind == "inherit":
        fd = int(handle[1])  # type: ignore[misc]
        os.fstat(fd)  # a clear OSError if it was not inherited
        return fd
    if kind == "broker":
        return _core.fetch_fd(handle[1], handle[2])  # type: ignore[misc]
    raise ValueError(f"unknown descriptor handle {handle!r}")
