"""Entry point of a child started by ``corral.Process``:
``python -m corral._child BOOT_FD PARENT_PID``.

The parent sends two messages on the bootstrap socket: the preparation data
of ``multiprocessing.spawn`` (sys.path, working directory, the main module
to import as ``__mp_main__``), then the pickled ``Process``. The child runs
it and sends back ``("ok", value)`` or ``("err", exception)``; if that
message holds descriptors, it waits for the parent's acknowledgement
(``Process._read_outcome``) before it exits, as the parent fetches them from
its broker.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from ._forked import write_stderr


def run_process(proc: Any, conn: Any) -> int:
    """Runs ``proc.run()``, reports the outcome on ``conn``, returns the
    exit code (``multiprocessing``'s rules for SystemExit)."""
    code = 0
    try:
        outcome: tuple[str, Any] = ("ok", proc.run())
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            write_stderr(str(e.code) + "\n")
            code = 1
        outcome = ("err", _pack(e))
    except BaseException as e:
        code = 1
        write_stderr(f"Process {proc.name}:\n{traceback.format_exc()}")
        outcome = ("err", _pack(e))
    from . import _fds, _pickle

    # Descriptors in the result (a Queue, a Lock, a Pipe end) are fetched
    # from this process's broker while the parent loads it: registered
    # under ``lending``, and this process stays until the parent says it
    # has loaded the result (or closes its end), RESULT_LOAD_WAIT at most.
    with _fds.lending() as lent:
        try:
            data = _pickle.dumps_inband(outcome)[0]
        except Exception as e:
            data = _pickle.dumps_inband(("err", _pack(TypeError(f"cannot pickle the result of {proc.name}: {e}"))))[0]
        try:
            conn.send_bytes(data)
        except OSError:
            return code
        if lent.tokens:
            _await_loaded(conn)
    return code


def _await_loaded(conn: Any) -> None:
    """Waits until the parent acknowledges the result (any message) or
    closes its end, ``process.RESULT_LOAD_WAIT`` at most; a signal ends the
    wait (the process is leaving anyway)."""
    from .process import RESULT_LOAD_WAIT

    try:
        conn.poll(RESULT_LOAD_WAIT)
    except BaseException:
        pass


def _pack(exc: BaseException) -> bytes:
    from . import _pickle

    return _pickle.pack_exception(exc)


def main(argv: list[str]) -> int:
    boot_fd, parent = int(argv[1]), int(argv[2])
    if os.getppid() != parent:
        return 1
    from . import _core, process
    from . import _pickle
    from .connection import Connection
    import multiprocessing.spawn as mp_spawn

    conn = Connection(_core.Connection.from_fd(boot_fd, True, True))
    prep = _pickle.loads(conn.recv_bytes())
    process._bootstrapping = True
    try:
        mp_spawn.prepare(prep)
    finally:
        process._bootstrapping = False
    proc = _pickle.loads(conn.recv_bytes())
    return run_process(proc, conn)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
