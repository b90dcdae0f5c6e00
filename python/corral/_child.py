"""Entry point of a child started by ``corral.Process``:
``python -m corral._child BOOT_FD PARENT_PID``.

The parent sends two messages on the bootstrap socket: the preparation data
of ``multiprocessing.spawn`` (sys.path, working directory, the main module
to import as ``__mp_main__``), then the pickled ``Process``. The child runs
it (``process.run_in_child``) and sends back ``("ok", value)`` or
``("err", exception)``; if that message holds descriptors, it waits for the
parent's acknowledgement (``Process._read_outcome``) before it exits, as the
parent fetches them from its broker.

Nothing imports this module: run as ``__main__``, it must not be in
``sys.modules`` already (runpy would warn), so ``process`` holds the
child's side of ``start`` and this file only reads the bootstrap.
"""

from __future__ import annotations

import multiprocessing.spawn as mp_spawn
import os
import sys

from . import _core, _pickle, process
from .connection import Connection


def main(argv: list[str]) -> int:
    """Reads the bootstrap from descriptor ``argv[1]`` and runs the
    ``Process`` it holds; 1 at once if ``argv[2]`` is not the parent's pid
    (the parent died before this child started)."""
    boot_fd, parent = int(argv[1]), int(argv[2])
    if os.getppid() != parent:
        return 1
    conn = Connection(_core.Connection.from_fd(boot_fd, True, True))
    prep = _pickle.loads(conn.recv_bytes())
    process._bootstrapping = True
    try:
        mp_spawn.prepare(prep)
    finally:
        process._bootstrapping = False
    proc = _pickle.loads(conn.recv_bytes())
    return process.run_in_child(proc, conn)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
