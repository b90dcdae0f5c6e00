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
from typing import Any

from . import _core

#: Arrays of at least this many bytes are born in the arena; smaller ones
#: keep using malloc (a block costs an arena lock and a first-fit walk).
MIN_BYTES = 1 << 20
#: At most this many bytes of a worker's arrays live in the arena at once
#: (past it, malloc): long-lived worker arrays must not fill the arena the
#: results travel through. Capped at 1/8 of the arena (``ulimit -v``).
BUDGET = 512 << 20

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
    budget = min(BUDGET, results.max_message // 8)
    try:
        ok = _core.install_array_allocator(results, MIN_BYTES, budget)
    except (ImportError, AttributeError, RuntimeError):
        return False  # a NumPy without the C-API capsule: plain malloc
    if ok:
        global installed
        _installed.append(results)
        installed = True
    return ok


def put(results: Any, inband: bytes, buffers: list[Any]) -> None:
    """Puts a result message into ``results``, blocking; a buffer that is
    one of this worker's array blocks, referenced by nothing else here,
    travels without a copy. Empties ``buffers``."""
    if not _installed:
        install(results)
    _core.put_arrays(results, inband, buffers)
