"""The process pool's fork server (``start_method="forkserver"``).

A fresh interpreter, started once per pool, imports the ``preload`` modules
(numpy, torch, the model code) and the parent's ``__main__``, then forks a
worker on each request: workers start in milliseconds with those modules
already imported, and are forked from a process that runs no other thread.

The parent watches each worker by pidfd. The server is the workers' real
parent, so it reaps them and reports each exit code; it reaps a worker only
after the parent has acknowledged its pid (and so holds a pidfd for it),
so a pid cannot be reused under the parent.
"""

from __future__ import annotations

import importlib
import os
import queue
import signal
import threading
import traceback
from typing import Any

from . import _core, _forked, _worker
from .connection import Pipe
from .process import Process

__all__ = ["ForkServer", "serve"]

POLL_SECONDS = 0.02


def serve(conn: Any, preload: list[str]) -> None:
    """The server's loop (the target of its ``corral.Process``). It first
    reports ``("ready",)``, or ``("error", traceback)`` if a preload failed."""
    try:
        for name in preload:
            importlib.import_module(name)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready",))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    acked: set[int] = set()
    while True:
        while conn.poll(POLL_SECONDS):
            try:
                msg = conn.recv()
            except EOFError:
                return  # the parent is gone; so are we (and our workers)
            if msg[0] == "spawn":
                request, args = msg[1], msg[2]
                pid = os.fork()
                if pid == 0:
                    _run_worker(me, args)
                for q in (args[1], args[2]):
                    q.close()  # only the worker holds them now
                conn.send(("spawned", request, pid))
            elif msg[0] == "ack":
                acked.add(msg[1])
            elif msg[0] == "stop":
                return
        for pid in list(acked):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                acked.discard(pid)
                conn.send(("exit", pid, os.waitstatus_to_exitcode(status)))


def _run_worker(server: int, args: tuple[Any, ...]) -> None:
    code = 1
    try:
        if not _core.die_with_parent(server):
            os._exit(1)
        _worker.main(*args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        _forked.write_stderr(traceback.format_exc())
    finally:
        _forked.leave(code)


class ForkServer:
    """The parent's handle on a fork server."""

    def __init__(self, preload: list[str]) -> None:
        here, there = Pipe()
        self._proc = Process(target=serve, args=(there, list(preload)), name="corral-forkserver", daemon=True)
        self._proc.start()
        there.close()
        self._conn = here
        self._lock = threading.Lock()
        self._replies: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._children: dict[int, Any] = {}
        self._requests = 0
        self._reader = threading.Thread(target=self._read, name="corral-forkserver-reader", daemon=True)
        self._reader.start()
        try:
            reply = self._reply()
            if reply[0] == "error":
                raise RuntimeError(f"the pool's fork server could not preload {preload}:\n{reply[1]}")
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                self._replies.put(("gone",))  # wake a caller waiting for a reply
                return
            if msg[0] == "exit":
                child = self._children.pop(msg[1], None)
                if child is not None:
                    child.set_exit(msg[2])
            else:
                self._replies.put(msg)

    def _reply(self) -> tuple[Any, ...]:
        """The server's next reply; waits as long as the server lives."""
        while True:
            try:
                reply = self._replies.get(timeout=0.5)
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError("the pool's fork server died") from None
                continue
            if reply[0] == "gone":
                raise RuntimeError("the pool's fork server died")
            return reply

    def start_worker(self, args: tuple[Any, ...]) -> Any:
        """Forks a worker running ``_worker.main(*args)``; returns its
        ``_core.ChildProcess``."""
        with self._lock:
            self._requests += 1
            try:
                self._conn.send(("spawn", self._requests, args))
            except (BrokenPipeError, ConnectionResetError):
                # Not a worker that died: nothing is left to fork workers.
                self._proc.join(1)
                raise RuntimeError(
                    f"the pool's fork server died (exit code {self._proc.exitcode}); no worker can be started"
                ) from None
            while True:
                reply = self._reply()
                if reply[0] == "spawned" and reply[1] == self._requests:
                    break
            pid = reply[2]
            child = _core.watch_external(pid)
            self._children[pid] = child
            self._conn.send(("ack", pid))
            return child

    def stop(self) -> None:
        """Asks the server to leave and waits for it (killing it if it
        does not leave)."""
        try:
            self._conn.send(("stop",))
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
