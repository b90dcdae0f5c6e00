"""The process pool's fork server (the default start method, and
``start_method="forkserver"``).

A fresh interpreter imports the ``preload`` modules and the parent's
``__main__`` (as ``multiprocessing``'s fork server does), then forks a
worker on each request: workers start in milliseconds with those modules
already imported, and are forked from a process that runs no other thread.
Once requests pause (``QUIET_SECONDS``: the first pool's workers are forked
first), the server also imports the other modules the parent had imported
when it started it (numpy, torch, the user's modules imported later or from
a notebook), one at a time, then the public submodules these did not
import (``sklearn.linear_model``: what a worker unpickling a scikit-learn
model needs). Each is first imported by a probe: a child the
server forks for it (``_probe``), which dies with the server, leaves through
``os._exit`` and never writes to the server's pipe; the server keeps
serving requests meanwhile and reaps it. Only if the probe imported the
module within ``PRELOAD_SECONDS`` does the server import it itself,
uninterrupted, while no request waits (a request that comes then waits for
that import: about as long as the probe's took). A module whose probe
raised, exited, crashed, ran over (it is killed, and reaped once gone: the
server never blocks on a child), started a thread (``_probe``: the server
must stay single-threaded: every thread state counts, one running a
builtin too) or could not be forked is skipped: workers import it
themselves if they need it. The server counts its threads again after
its own import: one left running a thread its probe's import did not
start (lazily, or only in the server) forks no more; the parent replaces
it with a server that does not import that module, and it leaves once
the workers it forked are gone. Once it forked its first workers and
requests paused (``EAGER_QUIET_SECONDS``), the server imports ``EAGER``
(cloudpickle) itself. So an import cut off or failing
part-way never leaves the server, and every worker it forks later, half
imported (torch's "can only be initialized once per process"), and one
that crashes kills the probe, not the server and its workers. Only
``preload`` failures are errors (they say what the user asked for).

The fallback, for a module whose import kills the server but not its probe
(it works in a grandchild only): it is named to the parent before the
server's import (``("importing", name)``): the parent restarts the server
without it, and no server of this program imports it again (``_lethal``);
after ``LETHAL_LIMIT`` such modules, servers import no modules while idle.
The workers that server had forked died with it (a task running there
fails with ``WorkerLostError``, or is retried); the pools replace them from
the new server.

A worker the server cannot fork (``os.fork`` fails: out of processes,
``EAGAIN``, or memory, ``ENOMEM``) fails that request only: the parent's
``start_workers`` raises ``OSError`` with the server's errno, as a spawn
that cannot fork raises (the pool's constructor raises it; a replacement
that cannot start breaks the pool), and the server serves the next ones.

One server per preload list serves every pool of this process
(``shared``): started by the first pool, kept up for the later ones (a
second pool starts in milliseconds), stopped when this process exits (it
is a daemon ``corral.Process``, and dies with this process anyway). A
server that died otherwise (killed from outside) is relaunched by the next
pool that starts a worker, a replacement included (``ForkServer.revive``):
the workers it killed as it died (booting ones included) are reported as
killed with their server (``set_exit(..., server_died=True)``), which the
pool does not count as failed boots; the replacement's boot is bounded
(``RELAUNCH_BOOT_SECONDS``), as a pool's results thread waits for it.
A server killed at each start is relaunched ``RELAUNCH_LIMIT`` times in a
row at most while none of its workers boots; then the pools needing a
worker break, saying how it died. Workers and probes close their copy of the server's pipe end as they
start: only the server holds it, and its death is seen at once.

The parent watches each worker by pidfd. The server is the workers' real
parent, so it reaps them and reports each exit code; it reaps a worker only
after the parent has acknowledged its pid (and so holds a pidfd for it),
so a pid cannot be reused under the parent.
"""

from __future__ import annotations

import collections
import importlib
import os
import queue
import select
import signal
import sys
import threading
import time
import traceback
import weakref
from typing import Any

from . import _core, _fds, _forked, _pickle, _worker
from .connection import Pipe
from .process import Process, signal_name

__all__ = ["ForkServer", "serve", "shared"]

POLL_SECONDS = 0.02
#: Longest import of one of the parent's other modules by its probe (see
#: the module doc); past it the probe is killed and the module skipped.
PRELOAD_SECONDS = 10.0
#: The server starts those imports once no request has come for this long
#: (or ten times this long after it was ready, if requests never pause).
QUIET_SECONDS = 1.0
#: After this many of this program's modules killed a server (see the
#: module doc), servers import no modules while idle.
LETHAL_LIMIT = 3
#: Most fork server deaths in a row with no worker booted in between
#: (``ForkServer``): then it is not relaunched, and the pools that need a
#: worker break saying how the last one died. A server killed at each
#: start (the OOM killer, a user's ``pkill``) must not be relaunched for
#: ever; one that dies after its workers booted resets the count.
RELAUNCH_LIMIT = 3
#: A relaunched server's boot may take this long plus four times its
#: predecessor's; past it, it is killed and the relaunch fails (a pool's
#: results thread relaunches it: it must not hang there).
RELAUNCH_BOOT_SECONDS = 10.0
#: Longest wait for the server's reply to one worker request once it is
#: ready: it forks in milliseconds, but a request that comes during one of
#: its idle imports waits for that import (about as long as its probe
#: took: ``PRELOAD_SECONDS`` at most). Past it, a server that is alive but
#: does not answer (stopped, stuck) is killed and relaunched as a dead one
#: (a pool's results thread asks for its replacement workers: it must not
#: hang there, with every task's result waiting behind it).
REPLY_SECONDS = PRELOAD_SECONDS + 10.0
#: Longest wait for the workers of a server that died to die with it
#: (``die_with_parent``: at once, but for one stuck in the kernel); those
#: that have not by then are left to the core's grace for a missing report.
LOST_SECONDS = 5.0
#: Longest wait for a reader to read what its dead server sent.
READER_SECONDS = 5.0

#: What the server imports itself once it forked its first workers and no
#: request came for ``EAGER_QUIET_SECONDS``, with no probe (corral's own
#: dependencies, which start no thread): a worker loading a function of
#: the program's ``__main__`` (sent by value) needs cloudpickle, 8-20 ms to
#: import after its initializer, before its first task; the workers of a
#: later pool, and every replacement, inherit it.
EAGER = ("cloudpickle",)
#: The pause in requests before the ``EAGER`` imports: a pool started right
#: after the first (a program's second pool, 10-30 ms later) must not wait
#: for them, nor the first pool's first task share the CPU with them.
EAGER_QUIET_SECONDS = 0.2

#: The modules whose idle import killed one of this program's fork
#: servers, or left it running a thread (``serve``: ``threaded``).
_lethal: set[str] = set()


def _preloadable(name: str, mod: Any, std: frozenset[str]) -> bool:
    """True for a module of ``sys.modules`` a fork server may import: a
    public one (no part of its name private, ``_``: ``__main__``, extension
    internals), not of the standard library (cheap, or imported by corral
    anyway), not ``corral`` itself (its public submodules may be), whose
    module says it is that name (not an alias put in ``sys.modules``), and
    neither built-in nor frozen."""
    parts = name.split(".")
    if any(p.startswith("_") for p in parts) or parts[0] in std or name == "corral":
        return False
    spec = getattr(mod, "__spec__", None)
    return not (spec is None or spec.name != name or spec.origin in (None, "built-in", "frozen"))


def imported_modules() -> list[str]:
    """The modules this process has imported that a fork server may import
    too (``_preloadable``): the top-level ones in import order, then the
    public submodules (a program's ``from sklearn.linear_model import
    ...``, the module of a task's function). Most submodules are imported
    by their package already: the server probes only the few left."""
    std = frozenset(sys.stdlib_module_names)
    names = [name for name, mod in list(sys.modules.items()) if _preloadable(name, mod, std)]
    return [n for n in names if "." not in n] + [n for n in names if "." in n]


def _threads() -> int:
    """How many threads this process runs, native ones included (a C
    extension's pool, a thread ``_thread`` started: ``threading`` sees
    neither)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _python_threads() -> int:
    """How many Python threads this interpreter has (``_core.python_thread_count``:
    its thread states, walked with the GIL held throughout; a thread
    ``_thread`` started has one from the moment ``start_new_thread``
    returns, whatever its target)."""
    return _core.python_thread_count()


#: A probe's exit code when its import worked but started a thread.
STARTS_A_THREAD = 2
#: A probe whose top-level package's import started native threads (a
#: BLAS pool) exits with this plus their number: the server, importing
#: it, may start as many, no more (``_allowed_threads``).
NATIVE_THREADS = 100


def _allowed_threads(code: int) -> int | None:
    """From a probe's exit code: None if its import failed (or ran over,
    or started a Python thread), else how many native threads the server's
    own import of the module may start."""
    if code == 0:
        return 0
    if NATIVE_THREADS < code <= 255:
        return code - NATIVE_THREADS
    return None


def _probe(server: int, name: str, conn: Any) -> int | None:
    """Forks a child that imports ``name`` and leaves (exit code 0 if the
    import worked, ``NATIVE_THREADS`` + n if it worked and started n
    native threads, 1 if it raised, ``STARTS_A_THREAD`` if it started a
    thread it must not); returns its pid, or None if no child could be forked (out of
    processes or memory: the module is skipped, the server serves on). The
    child dies with the server, leaves through ``os._exit`` (no atexit
    hook, no finalizer: nothing of the server's runs there), never writes
    to the server's pipe, and writes nothing to stdout/stderr (the server's
    own import prints what the module prints, once).

    The server forks every worker from a single thread: a module whose
    import starts a Python thread (which may hold a lock, the import
    lock or a logging handler's, when the server forks) is refused, and
    a submodule whose import starts a thread of any kind. A top-level
    package may start a native pool as its library loads (numpy's and
    scipy's OpenBLAS: idle, with its own fork handlers, as under the
    stdlib's fork start method): preloading it is what the server is for.
    The child, forked from the server's one thread, starts with one. It
    closes its copy of the server's end of the pipe (``conn``) at once: a
    process it leaves behind must not keep the parent from seeing EOF once
    the server died."""
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:
        code = 1
        try:
            conn.close()
            if _core.die_with_parent(server):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)
                before = _threads()
                importlib.import_module(name)
                native = _threads() - before
                # Python threads: every thread state but this one's
                # (``_python_threads``: a builtin target included).
                started = _python_threads() > 1 or ("." in name and native > 0)
                if started:
                    code = STARTS_A_THREAD
                else:
                    code = 0 if native <= 0 else NATIVE_THREADS + min(native, 255 - NATIVE_THREADS)
        except BaseException:  # whatever the module's top level did: skipped
            pass
        finally:
            os._exit(code)
    return pid


def _probe_result(pid: int, started: float, limit: float, killed: list[int]) -> int | None:
    """The probe's exit code once it ended (``_allowed_threads`` reads
    it), None while it runs. One that ran over ``limit`` seconds from
    ``started`` is killed (its code is then ``-SIGKILL``) and added to
    ``killed``, to be reaped once it is gone (``_reap``): the server never
    blocks waiting for a child (a process stuck in the kernel dies only
    when it leaves it)."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        return os.waitstatus_to_exitcode(status)
    if time.monotonic() - started < limit:
        return None
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)
    return -signal.SIGKILL


def _running(pid: int) -> bool:
    """True while the server's child ``pid`` has not exited; it is not
    reaped (``WNOWAIT``): a worker whose pid the parent has not
    acknowledged keeps its pid until the server leaves. A retired server
    leaves once its acknowledged workers are reaped and the others have
    exited (an "ack" may never come: the parent's ``start_workers``
    raised between the reply and the ack); a parent that reads such a
    reply late finds the pid gone with its server (``ProcessLookupError``,
    ``_Died``)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # not its child (any more)
        return False


def _reap(killed: list[int]) -> None:
    """Reaps the killed probes that are gone (no zombie left behind)."""
    for pid in list(killed):
        if os.waitpid(pid, os.WNOHANG)[0]:
            killed.remove(pid)


def _import_announced(conn: Any, name: str, allowed: int | None) -> bool:
    """Imports ``name`` in the server (once a probe imported it, or an
    ``EAGER`` one) between ``("importing", name)`` and ``("imported",
    name)`` to the parent: if the import kills the server, the parent knows
    which module. Nothing the import raises (``SystemExit`` included) stops
    the server. With ``allowed`` (the native threads its probe's import
    started), True if it left the server running a thread it may not (a
    Python thread, or more native ones: a module starting one lazily, or
    only in this process), said first with ``("threaded", name)``.
    ``OSError`` if the parent is gone."""
    conn.send(("importing", name))
    before = _threads() if allowed is not None else 0
    try:
        importlib.import_module(name)
    except BaseException:  # one that works only in a child of the server: skipped
        pass
    # Counted again here: the probe saw one import; this one may start a
    # thread the probe's did not.
    threaded = allowed is not None and (_python_threads() > 1 or _threads() - before > allowed)
    if threaded:
        conn.send(("threaded", name))
    conn.send(("imported", name))
    return threaded


def serve(
    conn: Any,
    preload: list[str],
    later: list[str] | None = None,
    limit: float = PRELOAD_SECONDS,
    quiet: float = QUIET_SECONDS,
) -> None:
    """The server's loop (the target of its ``corral.Process``). It first
    imports ``preload`` and reports ``("ready",)``, or ``("error",
    traceback)`` if one failed; then serves requests. Once no request has
    come for ``quiet`` seconds (or ``10 * quiet`` after ``ready``), it
    probes the modules of ``later`` one by one (``_probe``, ``limit``
    seconds each at most) while it serves, and imports each that passed
    while none waits (``_import_announced``), between ``("importing", name)``
    and ``("imported", name)`` (``EAGER`` too, unprobed, once it forked
    its first workers and requests paused). If that import left it running a thread
    its probe did not start (a Python thread, or more native ones: a
    module starting one lazily, or only when imported here), it says
    ``("threaded", name)`` and forks no more workers (a fork from a
    multithreaded process may copy a lock held by another thread): it
    refuses each later request (``("refused", request)``; the parent
    asks a new server), reaps and reports the workers it forked, and
    leaves once they are all gone."""
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
    unacked: set[int] = set()  # forked, the parent's "ack" not read yet
    threaded = False  # an idle import left a thread running: no more forks
    eager = [name for name in EAGER if name not in sys.modules]
    forked = False  # a worker was forked: ``eager`` may be imported
    pending = collections.deque(name for name in later or () if name not in sys.modules)
    ready = last = time.monotonic()
    importing = False  # the first pool's workers are forked first
    probe: tuple[int, str, float] | None = None  # (pid, module, started)
    passed: str | None = None  # probed fine: imported here once no request waits
    allowed = 0  # native threads its probe's import started: the server's may too
    killed: list[int] = []  # probes killed past the limit, not reaped yet
    try:
        while True:
            if pending and not importing:
                now = time.monotonic()
                importing = now - last >= quiet or now - ready >= 10 * quiet
            if probe is not None:
                code = _probe_result(probe[0], probe[2], limit, killed)
                if code is not None:
                    native = _allowed_threads(code)
                    passed = probe[1] if native is not None else None
                    allowed = native or 0
                    probe = None
            if killed:
                _reap(killed)
            if passed is not None and not conn.poll(0):
                try:
                    if _import_announced(conn, passed, allowed):
                        threaded = True
                        pending.clear()
                except OSError:
                    return  # the parent is gone
                passed = None
            if threaded and not acked and not any(map(_running, unacked)) and not conn.poll(0):
                # Retired, and the last of its workers is gone; no message
                # unread (an ack read first makes its worker's exit known).
                return
            if eager and forked and time.monotonic() - last >= EAGER_QUIET_SECONDS and not conn.poll(0):
                try:
                    _import_announced(conn, eager.pop(0), None)  # unprobed: starts no thread
                except OSError:
                    return  # the parent is gone
            if probe is None and passed is None and pending and importing and not conn.poll(0):
                name = pending.popleft()
                # Else an earlier one imported it; or, for a submodule, its
                # package was skipped (it would be again).
                package, dot, _ = name.partition(".")
                if name not in sys.modules and (not dot or package in sys.modules):
                    child = _probe(me, name, conn)
                    if child is not None:  # else skipped
                        probe = (child, name, time.monotonic())
            busy = passed is not None or bool(pending and importing and probe is None)
            while conn.poll(0 if busy else POLL_SECONDS):
                try:
                    msg = conn.recv()
                except EOFError:
                    return  # the parent is gone; so are we (and our workers)
                last = time.monotonic()
                if msg[0] == "spawn":
                    request, args, where = msg[1], msg[2], msg[3]
                    reply: tuple[Any, ...]
                    if threaded:
                        reply = ("refused", request)
                    else:
                        try:
                            pid = os.fork()
                        except OSError as e:
                            # Out of processes (EAGAIN: RLIMIT_NPROC, pid_max,
                            # the cgroup's pids.max) or of memory (ENOMEM):
                            # this request fails, the server serves on.
                            reply = ("failed", request, e.errno, e.strerror)
                        else:
                            if pid == 0:
                                _run_worker(me, conn, args, where)
                            unacked.add(pid)
                            forked = True
                            reply = ("spawned", request, pid)
                    for q in (args[1], args[2]):
                        q.close()  # only the worker holds them now
                    conn.send(reply)
                elif msg[0] == "ack":
                    unacked.discard(msg[1])
                    acked.add(msg[1])
                elif msg[0] == "stop":
                    return
            for pid in list(acked):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    acked.discard(pid)
                    conn.send(("exit", pid, os.waitstatus_to_exitcode(status)))
    finally:
        # The server leaves: so does its probe (killed here, and by its
        # parent-death signal), reaped if already gone, else by whoever
        # inherits it; the server's exit is not held up by a child.
        if probe is not None:
            os.kill(probe[0], signal.SIGKILL)
            killed.append(probe[0])
        _reap(killed)


class Surroundings:
    """What a spawned worker would take from the parent at its start and a
    forked one must be given: the server started earlier, and the parent may
    have changed them since (a folder added to ``sys.path`` for a module of
    its tasks, ``os.chdir``, an environment variable). Modules the server
    imported already read the environment when they were imported.

    A plain class, not a dataclass: ``dataclasses`` (with ``inspect``) was
    the largest import of the server's own boot (4-7 ms)."""

    __slots__ = ("sys_path", "cwd", "environ")

    def __init__(self, sys_path: list[str], cwd: str, environ: dict[str, str]) -> None:
        self.sys_path = sys_path
        self.cwd = cwd
        self.environ = environ

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


def _run_worker(server: int, conn: Any, args: tuple[Any, ...], where: Surroundings) -> None:
    """A worker's life, in the child the server forked for it. Its copy of
    the server's end of the pipe (``conn``) is closed first: else a process
    a task leaves behind (``os.fork``, a subprocess) would hold it, and the
    parent would never see EOF once the server died."""
    code = 1
    try:
        conn.close()
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


def _lost(children: list[Any]) -> None:
    """Reports the exits of a dead server's workers, as each dies with it
    (within ``LOST_SECONDS``): killed (``SIGKILL``, ``die_with_parent``),
    by their server's death (the pools do not count it as a failed boot).
    One still running then is left to the core (its grace for a missing
    report)."""
    poller = select.poll()
    left = {}
    for child in children:
        left[child.pidfd()] = child
        poller.register(child.pidfd(), select.POLLIN)
    deadline = time.monotonic() + LOST_SECONDS
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0:
            return
        for fd, _ in poller.poll(wait * 1000):
            poller.unregister(fd)
            left.pop(fd).set_exit(-signal.SIGKILL, server_died=True)


class _Died(Exception):
    """A fork server process died (inside ``_Server``)."""


class _Refused(Exception):
    """A fork server that runs a thread refused to fork (inside
    ``_Server``; see ``serve``)."""


def _later(modules: list[str]) -> list[str]:
    """``modules`` as a new server should import them while idle: without
    those that killed a server (nor their submodules), none after
    ``LETHAL_LIMIT`` did."""
    if len(_lethal) >= LETHAL_LIMIT:
        return []
    return [name for name in modules if name not in _lethal and name.partition(".")[0] not in _lethal]


class _Server:
    """One fork server process and the parent's end of its pipe, read by
    its own reader thread. Unless ``wait``, it is made without waiting for
    the server to be ready: the first requests are queued on the pipe
    while it boots (the parent prepares them meanwhile), and the first
    ``start_workers`` raises what its boot raised. ``boot_timeout``: a
    server not ready within that many seconds is killed (``RuntimeError``)."""

    def __init__(
        self, preload: list[str], later: list[str], wait: bool = True, boot_timeout: float | None = None
    ) -> None:
        self.preload = preload
        self.started = time.monotonic()
        #: How long the server took to boot, once it said it is ready.
        self.boot_seconds: float | None = None
        here, there = Pipe()
        self.proc = Process(
            target=serve,
            args=(there, preload, later, PRELOAD_SECONDS, QUIET_SECONDS),
            name="corral-forkserver",
            daemon=True,
        )
        self.proc._by_value = False  # ``serve`` is imported by name
        self.proc.start()
        # Not stopped by corral.Process's exit hook, which runs before the
        # executors' (``_executor._exit_all``): pools still start workers
        # while that one lets them finish their tasks. It dies with this
        # process (PR_SET_PDEATHSIG, and EOF on its pipe).
        self.proc._leave_at_exit()
        there.close()
        self.conn = here
        self.replies: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        #: The workers the server forked and has not reported the exit of,
        #: by pid; ``gone`` once the reader saw EOF (taken under ``lock``:
        #: ``start_workers`` adds while the reader reports).
        self.children: dict[int, Any] = {}
        self.gone = False
        self.lock = threading.Lock()
        #: The broker registrations of each request not answered yet
        #: (``_lend``), by request (under ``lock``).
        self.loans: dict[int, list[int]] = {}
        #: Set when the parent killed it for a reply that did not come
        #: (``start_workers``): dead from then on, even before it is gone.
        self.killed = False
        #: Set once the reader read all the server sent (EOF).
        self.ended = threading.Event()
        self.requests = 0
        #: The module the server is importing while idle, if any.
        self.importing: str | None = None
        #: The modules it imported while idle (``EAGER`` included), in order.
        self.imported: list[str] = []
        #: Set once the server said it is ready.
        self.ready = False
        #: The module whose idle import left the server running a thread:
        #: it forks no more (``serve``), and leaves once its workers did.
        self.threaded: str | None = None
        #: True once one of its workers finished booting (``note_booted``);
        #: until then, the pids it forked.
        self.booted = False
        self.forked: set[int] = set()
        self.reader = threading.Thread(target=self._read, name="corral-forkserver-reader", daemon=True)
        self.reader.start()
        if wait:
            self.await_ready(boot_timeout)

    def await_ready(self, timeout: float | None = None) -> None:
        """Waits for the server's ``ready`` (at most ``timeout`` seconds
        from its start, if given); a server that failed to boot, or not
        within ``timeout``, is stopped and this raises ``RuntimeError``
        saying why."""
        if self.ready:
            return
        try:
            try:
                reply = self._reply(None if timeout is None else self.started + timeout)
            except TimeoutError:
                raise RuntimeError(
                    f"the pool's fork server did not finish importing this program's __main__ or preload "
                    f"{self.preload} within {timeout:.1f} s (it was killed)"
                ) from None
            except _Died:
                code = self.exitcode()
                if code is not None and code < 0:  # a signal from outside (the OOM killer, a kill)
                    raise RuntimeError(
                        f"the pool's fork server was killed by {signal_name(-code)} (exit code {code}) while it "
                        f"imported this program's __main__ or preload {self.preload}"
                    ) from None
                raise RuntimeError(
                    f"the pool's fork server died importing this program's __main__ or preload {self.preload} "
                    f"(exit code {code}): a module they import ends a process that imports it "
                    "again; start_method='fork' does not import them again"
                ) from None
            if reply[0] == "error":
                raise RuntimeError(f"the pool's fork server could not preload {self.preload}:\n{reply[1]}")
        except BaseException:
            self.stop()
            raise
        self.ready = True

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "exit":
                with self.lock:
                    child = self.children.pop(msg[1], None)
                if child is not None:
                    child.set_exit(msg[2])
            elif msg[0] in ("spawned", "failed", "refused"):
                # Any reply to a request: the server has loaded it.
                with self.lock:
                    tokens = self.loans.pop(msg[1], ())
                _fds.unshare(tokens)
                self.replies.put(msg)
            elif msg[0] == "importing":
                self.importing = msg[1]
            elif msg[0] == "imported":
                self.importing = None
                self.imported.append(msg[1])
            elif msg[0] == "threaded":
                self.threaded = msg[1]
            else:
                if msg[0] == "ready":
                    self.boot_seconds = time.monotonic() - self.started
                self.replies.put(msg)
        # EOF: the server exited (its workers and probe close their copy of
        # its end as they start), or the parent hung up on a dead one
        # (``_hang_up``). Its workers die with it (``die_with_parent``) and
        # their exits will not be reported: said here (``_lost``).
        with self.lock:
            self.gone = True
            children = list(self.children.values())
            self.children.clear()
            loans, self.loans = self.loans, {}
        for tokens in loans.values():  # requests it will never load
            _fds.unshare(tokens)
        self.ended.set()
        self.replies.put(("gone",))  # wake a caller waiting for a reply
        _lost(children)

    def _reply(self, deadline: float | None = None) -> tuple[Any, ...]:
        """The server's next reply; waits as long as the server lives
        (``_Died`` once it is gone), or until ``deadline`` (``time.monotonic``;
        ``TimeoutError``)."""
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                reply = self.replies.get(timeout=wait)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise _Died from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError from None
                continue
            if reply[0] == "gone":
                raise _Died
            return reply

    def _lend(self, request: int, msg: tuple[Any, ...]) -> bytes:
        """``msg``, request ``request``, pickled for the server. The
        descriptors in it (a worker's task queue, the results queue) are
        registered with this process's broker until the server has loaded
        the request (the reader reads its reply) or is gone (the reader's
        EOF), then withdrawn (``loans``), not for one fetch: a request
        the server never loads (it was stopped, then killed; it died) must
        not leave its Queues counted as lent by this process for as long
        as it lives (a worker would never see its task queue end:
        ``shutdown(wait=True)`` hung), nor their descriptors held by the
        broker. ``_Died`` if the server is gone already."""
        # A process start: multiprocessing objects in the initargs may
        # travel (``_pickle.spawning``), as to a stdlib worker.
        with _pickle.spawning(), _fds.lending() as lent:
            data = _pickle.dumps_inband(msg)[0]
            tokens, lent.tokens = lent.tokens, []
        with self.lock:
            if not self.gone:
                # Before it is sent: the reader may read the reply next.
                self.loans[request] = tokens
                return data
        _fds.unshare(tokens)
        raise _Died

    def _hang_up(self) -> None:
        """Shuts the reading side of the parent's end: the reader reads what
        the server sent, then sees EOF, even if a process the server forked
        still holds a copy of the server's end."""
        import socket  # only here: the server and the workers never need it

        try:
            fd = os.dup(self.conn.fileno())
        except OSError:  # closed already
            return
        with socket.socket(fileno=fd) as sock:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def refuses(self) -> bool:
        """True once the server said an idle import left it running a
        thread: it forks no more (``serve``)."""
        return self.threaded is not None

    def exitcode(self) -> int | None:
        """The dead server's exit code (None if it still runs)."""
        self.proc.join(1)
        return self.proc.exitcode

    def lethal_module(self) -> str | None:
        """Once the server died: the module it died importing while idle
        (added to ``_lethal``), or None if it died otherwise."""
        if self.exitcode() is None:
            return None
        # What it sent before it died is read before EOF.
        self._hang_up()
        self.ended.wait(READER_SECONDS)
        name = self.importing
        if name is not None:
            _lethal.add(name)
        return name

    def start_workers(self, many: list[tuple[Any, ...]], started: list[Any]) -> None:
        """As ``ForkServer.start_workers``: appends each worker's
        ``_core.ChildProcess`` to ``started`` as its reply comes; ``_Died``
        if the server died (``started`` then holds those it forked);
        ``OSError`` if it could not fork one (out of processes or memory:
        ``started`` then holds those before it, the later ones are killed;
        the server serves on)."""
        first = self.requests + 1
        where = Surroundings.here()
        try:
            # Every request is sent before the first reply is read: the
            # server forks the next worker while this process watches the
            # last one (a round trip per worker saved), and a server still
            # booting finds them queued.
            for args in many:
                self.requests += 1
                self.conn.send_bytes(self._lend(self.requests, ("spawn", self.requests, args, where)))
        except (BrokenPipeError, ConnectionResetError):
            self.await_ready()  # a failed boot raises what it was
            raise _Died from None
        self.await_ready()
        failed: OSError | None = None
        for request in range(first, self.requests + 1):
            deadline = time.monotonic() + REPLY_SECONDS
            while True:
                try:
                    reply = self._reply(deadline)
                except TimeoutError:
                    # Alive but silent: replaced as a dead one at once
                    # (``killed``: it may not be gone yet, and a request
                    # sent to it again would wait for nothing).
                    self.killed = True
                    self.proc.kill()
                    raise _Died from None
                if reply[0] in ("spawned", "failed", "refused") and reply[1] == request:
                    break
            if reply[0] == "refused":
                raise _Refused  # it runs a thread: the parent asks another
            if reply[0] == "failed":
                if failed is None:
                    failed = OSError(reply[2], f"{reply[3]}: the pool's fork server could not fork a worker process")
                continue
            pid = reply[2]
            try:
                child = _core.watch_external(pid)
            except ProcessLookupError:
                # Reaped already: not by the server, which reaps a worker
                # only once acknowledged; so the server died, the worker
                # with it, and an init reaped it. The next server forks it.
                raise _Died from None
            with self.lock:
                if self.gone:  # died with the server, after the reader's EOF
                    raise _Died
                self.children[pid] = child
                if not self.booted:
                    self.forked.add(pid)
            if failed is not None:
                # Forked after one that failed: ``started`` must hold the
                # workers in request order, up to the failure. The server
                # reaps it once acknowledged.
                child.signal(signal.SIGKILL)
            try:
                self.conn.send(("ack", pid))
            except OSError:
                pass  # the server died: so does the worker, which the pool sees
            if failed is None:
                started.append(child)
        if failed is not None:
            raise failed

    def stop(self) -> None:
        """Asks the server to leave and waits for it (killing it if it
        does not leave; one still booting is killed at once: it reads no
        request before its imports end, and an interrupted pool start must
        not wait for an import that may never end). Then the reader reads
        what it sent, and its pipe is closed."""
        if self.ready:
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self._hang_up()
        self.ended.wait(READER_SECONDS)
        self.conn.close()  # a reader still reading gets OSError: EOF


class ForkServer:
    """The parent's handle on a fork server: it imports the program's
    ``__main__`` and ``preload`` before it serves (an import error of
    ``preload`` raises ``RuntimeError`` here; without ``preload``, this
    returns while the server boots and the first ``start_workers`` raises
    it), and the modules of ``later`` while idle. A server that died after
    it was ready (killed from outside: the OOM killer, a stray ``pkill``)
    is relaunched under the same handle (``revive``), without the module
    it died importing while idle if that is why; one that dies booting is
    not (the same imports would kill the next), nor one that died
    ``RELAUNCH_LIMIT`` times in a row with no worker booted in between
    (``note_booted``: the pools say which of their workers booted). A
    server left running a thread by an idle import is retired: a new one
    forks the next workers, without that module, while the old one reaps
    the workers it forked and then leaves."""

    def __init__(self, preload: list[str], later: list[str] | None = None) -> None:
        self._preload = list(preload)
        self._later = list(later or ())
        self._lock = threading.Lock()
        # Without preload, the first workers' requests are queued while the
        # server boots (its boot errors are raised by start_workers); a
        # preload error is raised here.
        self._server = _Server(self._preload, _later(self._later), wait=bool(self._preload))
        #: Servers started after the first died or was retired (``_revive``).
        self.relaunches = 0
        #: Server deaths in a row with no worker booted in between.
        self.fruitless = 0
        #: Retired servers (``_retire``) whose workers may still run.
        self._retired: list[_Server] = []
        #: The pools' worker sets (``pool._Workers``) this server forks
        #: for, asked which of their workers booted (``booted_pids``).
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def _proc(self) -> Process:
        """The current server process."""
        return self._server.proc

    def alive(self) -> bool:
        """True while the server process runs: not once the parent killed
        it for a reply that did not come (``_Server.killed``), nor once its
        pipe ended (``_Server.gone``: it is exiting), even if it is not
        gone yet (a request sent to it would be sent again, in a loop, until
        it is)."""
        server = self._server
        return not (server.killed or server.gone) and server.proc.is_alive()

    def died_booting(self) -> bool:
        """True if the server died before anyone saw it ready (the pool
        that started it raised why)."""
        return not self._server.ready and not self.alive()

    def serves(self, pool: Any) -> None:
        """Registers a pool's worker set (``pool._Workers``: its
        ``booted_pids()``), asked when a server dies whether one of the
        workers it forked booted (held weakly)."""
        self._pools.add(pool)

    def wants_boots(self) -> bool:
        """True while the current server has no worker known to have
        booted: a pool tells it (``note_booted``) before it lets go of an
        exited worker's slot."""
        return not self._server.booted

    def note_booted(self, pids: set[int]) -> None:
        """``pids``: workers that finished booting (a pool's board names
        them). A server that forked one of them has booted a worker: its
        death does not count towards ``RELAUNCH_LIMIT``."""
        server = self._server
        with server.lock:  # ``start_workers`` adds to ``forked`` meanwhile
            if not server.booted and server.forked & pids:
                server.booted = True
                server.forked.clear()

    def revive(self, fresh: bool = False) -> bool:
        """True once a server runs: a dead one is relaunched, a retired
        one replaced (``_revive``). One that died booting, whose
        replacement fails to boot, or that died ``RELAUNCH_LIMIT`` times
        in a row with no worker booted in between raises ``RuntimeError``
        saying why. ``fresh``: a new pool's start, which tries again
        after such deaths (the count starts over)."""
        with self._lock:
            if fresh:
                self.fruitless = 0
            return self._revive()

    def _revive(self) -> bool:
        if self._server.refuses():
            self._retire()
            return True
        if self.alive():
            return True
        self._server.await_ready()  # one that died booting: raises why
        # Killed from outside, or by a module it imported while idle (left
        # out of the next one's imports). The old server is reaped and its
        # pipe closed before the next starts; its workers died with it
        # (``die_with_parent``): the pools replace them from the new one.
        module = self._server.lethal_module()  # reads all it sent
        if self._server.refuses():  # it retired, and left once its workers had
            self._retire()
            return True
        code = self._server.exitcode()
        dead = self._server
        # Known dead: its pipe is closed and its reader ends now, whether
        # or not a successor follows (``_count_death`` may refuse one).
        dead.stop()
        self._count_death(code)
        try:
            self._server = self._successor(dead)
        except RuntimeError as e:
            why = f"importing {module!r} while idle" if module is not None else f"(exit code {code})"
            raise RuntimeError(f"the pool's fork server died {why}, and its replacement failed: {e}") from None
        return True

    def _successor(self, old: _Server) -> _Server:
        """The server after ``old`` (dead, or retired: ``_retire``), counted
        in ``relaunches``; its boot is bounded (``RELAUNCH_BOOT_SECONDS``
        plus four times ``old``'s: a pool's results thread waits for it),
        ``RuntimeError`` past it."""
        server = _Server(
            self._preload, _later(self._later), boot_timeout=RELAUNCH_BOOT_SECONDS + 4 * (old.boot_seconds or 0.0)
        )
        self.relaunches += 1
        return server

    def _count_death(self, code: int | None) -> None:
        """Counts the current server's death (exit code ``code``) unless a
        worker it forked booted; raises ``RuntimeError`` at
        ``RELAUNCH_LIMIT`` such deaths in a row."""
        dead = self._server
        if not dead.booted:
            # The pools' boards still name the workers that booted and
            # died with it (a pool tells of a slot it reuses before).
            for pool in list(self._pools):
                self.note_booted(pool.booted_pids())
        self.fruitless = 0 if dead.booted else self.fruitless + 1
        if self.fruitless < RELAUNCH_LIMIT:
            return
        if code is not None and code < 0:
            how = f"was killed by {signal_name(-code)} (exit code {code})"
        else:
            how = f"exited with exit code {code}"
        raise RuntimeError(
            f"the pool's fork server died {self.fruitless} times in a row before any worker it forked had booted"
            f" (the last one {how}); it is not relaunched again, and no worker can be started"
        )

    def _retire(self) -> None:
        """Replaces a server left running a thread by an idle import: it
        forks no more, but reaps and reports the workers it forked, and
        leaves once they are gone (``serve``); the next server does not
        import that module."""
        old = self._server
        if old.threaded is not None:
            _lethal.add(old.threaded)
        for gone in [r for r in self._retired if r.ended.is_set() and r is not old]:
            gone.stop()  # its reader read its last report: pipe closed
            self._retired.remove(gone)
        if old not in self._retired:  # (again if its replacement failed to boot)
            self._retired.append(old)
        self._server = self._successor(old)

    def start_worker(self, args: tuple[Any, ...]) -> Any:
        """Forks a worker running ``_worker.main(*args)``; returns its
        ``_core.ChildProcess``. A server that died importing a module while
        idle is replaced first (``revive``). ``OSError`` if the server could
        not fork (out of processes or memory): the pool's usual failure to
        start a worker; the server serves on."""
        started: list[Any] = []
        self.start_workers([args], started)
        return started[0]

    def start_workers(self, many: list[tuple[Any, ...]], started: list[Any]) -> None:
        """``start_worker`` for each of ``many``, in one exchange with the
        server (a pool's first workers): appends the ``_core.ChildProcess``
        of each to ``started``, in order, so that a caller whose call
        raised still holds the workers started before. A server that dies
        meanwhile is relaunched (``_revive``: ``RuntimeError`` at
        ``RELAUNCH_LIMIT`` deaths in a row), one that refuses (``serve``:
        ``threaded``) replaced."""
        with self._lock:
            while len(started) < len(many):
                self._revive()
                try:
                    self._server.start_workers(many[len(started) :], started)
                except (_Died, _Refused):
                    continue

    def stop(self) -> None:
        """Asks the server to leave and waits for it (killing it if it
        does not leave); the retired ones too."""
        for server in [*self._retired, self._server]:
            server.stop()
        self._retired.clear()


#: This process's fork servers, by preload list (see ``shared``).
_servers: dict[tuple[str, ...], ForkServer] = {}
_servers_lock = threading.Lock()


def shared(preload: list[str]) -> ForkServer:
    """This process's fork server for ``preload``: the one already running
    (or revived, see ``ForkServer.revive``), or a new one, which also
    imports (while idle) the modules this process has imported by now. It
    stays up for later pools until this process exits; pools do not stop
    it."""
    key = tuple(preload)
    with _servers_lock:
        server = _servers.get(key)
        if server is not None and not server.died_booting() and server.revive(fresh=True):
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
