"""NumPy arrays of a pool worker born in the pool's result arena, so that
a returned array reaches the parent without a copy (the allocator and the
ownership rules are the core's: ``crates/corral-python/src/numpy_alloc.rs``).

The worker calls ``install`` at start and ``put`` to send a result that has
out-of-band buffers. Installing needs NumPy imported: a worker that imports
it later (in a task) installs after that task's result, so its later tasks
benefit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import _core

#: Arrays of at least this many bytes are born in the arena; smaller ones
#: keep using malloc (a block costs an arena lock and a first-fit walk).
MIN_BYTES = 1 << 20
#: Arrays are born in the arena only while it has less than this many bytes
#: in use, by every process of the pool (past it, malloc), and at most
#: ``pressure``: the workers' long-lived arrays (globals, caches) together
#: must not fill the arena their results travel through.
BUDGET = 512 << 20
#: Past this much of the result arena in use (or an eighth of the arena, if
#: less), the arena is under pressure: the parent copies the results it
#: receives out of it (results the caller keeps cannot fill it) and workers
#: stop making arrays in it, so a result always finds room.
PRESSURE = 2 << 30


def pressure(results: Any) -> int:
    """The bytes in use past which ``results``' arena is under pressure
    (see ``PRESSURE``)."""
    return min(PRESSURE, int(results.max_message) // 8)


_installed: list[Any] = []  # the result queue, once installed
#: True once the allocator is in place in this process.
installed = False
_reclaimed = False


def install(results: Any) -> bool:
    """Installs the allocator for ``results`` (a ``_core.SharedQueue``) in
    this thread if NumPy is imported; True if it is in place."""
    global _reclaimed
    if _installed:
        return _installed[0] is results
    if not _reclaimed:
        # The arrays a dead predecessor left in the arena (a SIGKILLed
        # worker's) are freed now rather than when the arena fills.
        _reclaimed = True
        _core.reclaim_dead_blocks(results)
    if "numpy" not in sys.modules:
        return False
    budget = min(BUDGET, pressure(results))
    try:
        ok = _core.install_array_allocator(results, MIN_BYTES, budget)
    except (ImportError, AttributeError, RuntimeError):
        return False  # a NumPy without the C-API capsule: plain malloc
    if ok:
        global installed
        _installed.append(results)
        installed = True
    return ok


@contextmanager
def born_in_arena(min_bytes: int) -> Iterator[None]:
    """Arrays of ``min_bytes`` and up made inside are born in the arena,
    where the allocator is installed (elsewhere nothing changes): for an
    array the task will return, so that it travels without the copy into
    the arena that sending it would make (a DataLoader batch of 800 KB:
    ~60 us of a ~1 ms batch). Temporaries stay on malloc (``MIN_BYTES``):
    an arena block costs a lock shared with the other workers."""
    previous = _core.set_array_min_bytes(min_bytes)
    try:
        yield
    finally:
        if previous:
            _core.set_array_min_bytes(previous)


def put(results: Any, inband: bytes, buffers: list[Any]) -> None:
    """Puts a result message into ``results``, blocking; a buffer that is
    one of this worker's array blocks, referenced by nothing else here,
    travels without a copy. Empties ``buffers``."""
    if not _installed:
        install(results)
    _core.put_arrays(results, inband, buffers)
