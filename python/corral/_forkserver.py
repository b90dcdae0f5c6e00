"""The process pool's fork server (the default start method, and
``start_method="forkserver"``).

A fresh interpreter imports the ``preload`` modules and the parent's
``__main__`` (as ``multiprocessing``'s fork server does), then forks a
worker on each request: workers start in milliseconds with those modules
already imported, and are forked from a process that runs no other thread.
Between requests, the server also imports the other modules the parent had
imported when it started it (numpy, torch, the user's modules imported
later or from a notebook), one at a time, while no request waits; a module
that fails there (an exception, ``SystemExit``, more than
``PRELOAD_SECONDS``) is skipped: workers import it themselves if they need
it. Only ``preload`` failures are errors (they say what the user asked for).

One server per preload list serves every pool of this process
(``shared``): started by the first pool, kept up for the later ones (a
second pool starts in milliseconds), stopped when this process exits (it
is a daemon ``corral.Process``, and dies with this process anyway). A
server that died is replaced by the next pool that asks.

The parent watches each worker by pidfd. The server is the workers' real
parent, so it reaps them and reports each exit code; it reaps a worker only
after the parent has acknowledged its pid (and so holds a pidfd for it),
so a pid cannot be reused under the parent.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import os
import queue
import signal
import sys
import threading
import traceback
from typing import Any

from . import _core, _forked, _worker
from .connection import Pipe
from .process import Process

__all__ = ["ForkServer", "serve", "shared"]

POLL_SECONDS = 0.02
#: Longest import of one of the parent's other modules in the server (see
#: the module doc); past it the import is abandoned.
PRELOAD_SECONDS = 10.0


def imported_modules() -> list[str]:
    """The top-level modules this process has imported, in import order,
    that a fork server may import too: not the standard library's (cheap,
    or imported by corral anyway), not private ones (``_``: ``__main__``,
    extension internals), not corral, not names whose module says it is
    another one (an alias put in ``sys.modules``), and not built-in or
    frozen ones."""
    std = sys.stdlib_module_names
    names = []
    for name, mod in list(sys.modules.items()):
        if "." in name or name.startswith("_") or name in std or name == "corral":
            continue
        spec = getattr(mod, "__spec__", None)
        if spec is None or spec.name != name or spec.origin in (None, "built-in", "frozen"):
            continue
        names.append(name)
    return names


def _too_long(signum: int, frame: Any) -> None:
    raise TimeoutError("the import took too long")


def _import_quietly(name: str, limit: float) -> bool:
    """Imports ``name`` in the server, ``limit`` seconds at most (an alarm
    interrupts it); True if it worked. Nothing it raises (``SystemExit``
    included) stops the server."""
    previous = signal.signal(signal.SIGALRM, _too_long)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            importlib.import_module(name)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:  # whatever the module's top level did: skipped
        return False
    finally:
        signal.signal(signal.SIGALRM, previous)
    return True


def serve(conn: Any, preload: list[str], later: list[str] | None = None, limit: float = PRELOAD_SECONDS) -> None:
    """The server's loop (the target of its ``corral.Process``). It first
    imports ``preload`` and reports ``("ready",)``, or ``("error",
    traceback)`` if one failed; then serves requests, and imports the
    modules of ``later`` one by one while none waits (``_import_quietly``,
    ``limit`` seconds each at most)."""
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
    pending = collections.deque(name for name in later or () if name not in sys.modules)
    while True:
        if pending and not conn.poll(0):
            _import_quietly(pending.popleft(), limit)
        while conn.poll(0 if pending else POLL_SECONDS):
            try:
                msg = conn.recv()
            except EOFError:
                return  # the parent is gone; so are we (and our workers)
            if msg[0] == "spawn":
                request, args, where = msg[1], msg[2], msg[3]
                pid = os.fork()
                if pid == 0:
                    _run_worker(me, args, where)
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


@dataclasses.dataclass(frozen=True)
class Surroundings:
    """What a spawned worker would take from the parent at its start and a
    forked one must be given: the server started earlier, and the parent may
    have changed them since (a folder added to ``sys.path`` for a module of
    its tasks, ``os.chdir``, an environment variable). Modules the server
    imported already read the environment when they were imported."""

    sys_path: list[str]
    cwd: str
    environ: dict[str, str]

    @classmethod
    def here(cls) -> Surroundings:
        """This process's."""
        return cls(list(sys.path), os.getcwd(), dict(os.environ))

    def enter(self) -> None:
        """Makes them this process's (a folder that is gone is not entered)."""
        sys.path[:] = self.sys_path
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        try:
            os.chdir(self.cwd)
        except OSError:
            pass


def _run_worker(server: int, args: tuple[Any, ...], where: Surroundings) -> None:
    code = 1
    try:
        if not _core.die_with_parent(server):
            os._exit(1)
        where.enter()
        _worker.main(*args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        _forked.write_stderr(traceback.format_exc())
    finally:
        _forked.leave(code)


class ForkServer:
    """The parent's handle on a fork server: it imports ``preload`` before
    it serves (an import error raises ``RuntimeError`` here), and the
    modules of ``later`` while idle."""

    def __init__(self, preload: list[str], later: list[str] | None = None) -> None:
        here, there = Pipe()
        self._proc = Process(
            target=serve,
            args=(there, list(preload), list(later or ()), PRELOAD_SECONDS),
            name="corral-forkserver",
            daemon=True,
        )
        self._proc.start()
        # Not stopped by corral.Process's exit hook, which runs before the
        # executors' (``_executor._exit_all``): pools still start workers
        # while that one lets them finish their tasks. It dies with this
        # process (PR_SET_PDEATHSIG, and EOF on its pipe).
        self._proc._leave_at_exit()
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

    def alive(self) -> bool:
        """True while the server process runs."""
        return self._proc.is_alive()

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
                self._conn.send(("spawn", self._requests, args, Surroundings.here()))
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
        if not self._proc.is_alive():
            self._reader.join(10)  # EOF: the server's end is closed


#: This process's fork servers, by preload list (see ``shared``).
_servers: dict[tuple[str, ...], ForkServer] = {}
_servers_lock = threading.Lock()


def shared(preload: list[str]) -> ForkServer:
    """This process's fork server for ``preload``: the one already running,
    or a new one, which also imports (while idle) the modules this process
    has imported by now. It stays up for later pools until this process
    exits; pools do not stop it."""
    key = tuple(preload)
    with _servers_lock:
        server = _servers.get(key)
        if server is not None and server.alive():
            return server
        _servers.pop(key, None)
        if server is not None:
            server.stop()  # dead: reaped and forgotten
        server = ForkServer(list(preload), imported_modules())
        _servers[key] = server
        return server


def _forget_servers() -> None:
    """In a forked child: the servers are the parent's (their reader
    threads are not here); the child starts its own if it makes a pool."""
    global _servers, _servers_lock
    _servers = {}
    _servers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_servers)
