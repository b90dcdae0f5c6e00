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
from typing import Iterator, Union

from . import _core

__all__ = ["FdHandle", "export_fd", "import_fd", "inheriting"]

FdHandle = Union[tuple[str, int], tuple[str, bytes, int]]

_local = threading.local()


@contextmanager
def inheriting() -> Iterator[list[int]]:
    """Collects, while pickling a process's payload, the descriptors that
    the child must inherit. The caller closes them after the spawn."""
    fds: list[int] = []
    prev = getattr(_local, "inherit", None)
    _local.inherit = fds
    try:
        yield fds
    finally:
        _local.inherit = prev


def export_fd(fd: int) -> FdHandle:
    """A picklable handle from which another process gets ``fd``."""
    inherit = getattr(_local, "inherit", None)
    if inherit is not None:
        dup = _core.dup_fd(fd)
        inherit.append(dup)
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
