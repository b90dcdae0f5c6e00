"""``corral.Process``: ``multiprocessing.Process``, plus ``result()``.

A child is a fresh interpreter by default (``python -m corral._child``),
safe however many threads the parent runs. It is started from the core's
spawner thread with ``PR_SET_PDEATHSIG``, so it never outlives its parent,
and it is watched through a pidfd. The target and its arguments go by
cloudpickle, so lambdas, closures and functions of ``__main__`` (also in a
notebook) work. The parent's ``__main__`` module is imported in the child
as ``__mp_main__``, as ``multiprocessing`` does, so objects of classes
defined there unpickle.
"""

import atexit
import collections
import functools
import itertools
import os
import select
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import _childio, _core, _fds, _forked, _pickle
from .connection import Connection
from .errors import WorkerLostError
from .queues import Queue

__all__ = ["Process", "START_METHODS", "active_children"]

START_METHODS = ("spawn", "fork")
#: The start method ``corral.set_start_method`` chose for the classes of
#: the ``multiprocessing`` API (``Process``, ``Pool``); None: their own
#: defaults (``Process``: "spawn"; ``Pool``: the pool's, "forkserver").
chosen_start_method: str | None = None

_counter = itertools.count(1)
_children: "set[Process]" = set()
_children_lock = threading.Lock()
# True in a child while the parent's __main__ is being imported.
_bootstrapping = False

_NO_RESULT = object()
#: Tags an outcome whose message arrived but could not be loaded here.
_UNLOADABLE = "unloadable"
#: How long a child whose result holds descriptors waits for its parent to
#: load it (``join``, ``is_alive`` or ``result`` do: the descriptors are
#: fetched from the child's broker). A parent that asks later gets a
#: RuntimeError saying so, not a lost worker.
RESULT_LOAD_WAIT = 60.0


class Process:
    """A process running ``target(*args, **kwargs)``.

    The API of ``multiprocessing.Process``; ``start_method`` is ``"spawn"``
    (a fresh interpreter, the default) or ``"fork"``; None takes the one
    ``corral.set_start_method`` chose, else the class's
    (``_default_start_method``: a ``get_context`` context's ``Process``).
    ``"forkserver"`` starts a fresh interpreter too (a ``Process`` has no
    fork server of its own: that is what it promises, a child that
    inherits no thread of the parent). As ``multiprocessing``, ``start``
    lets go of the target and its arguments (the child has them).
    """

    #: The start method when neither the caller nor ``set_start_method`` says.
    _default_start_method = "spawn"
    #: A spawned child's payload sends functions by value (cloudpickle:
    #: lambdas, functions of ``__main__``); False names them (the fork
    #: server's target, a corral function: its start spares importing
    #: cloudpickle).
    _by_value = True

    def __init__(
        self,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
        start_method: str | None = None,
    ) -> None:
        if group is not None:
            raise ValueError("group argument must be None for now")
        if start_method is None:
            start_method = chosen_start_method or self._default_start_method
        if start_method == "forkserver":
            start_method = "spawn"
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, not {start_method!r}")
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._name = name or f"Process-{next(_counter)}"
        self._daemon = bool(daemon) if daemon is not None else False
        self._start_method = start_method
        self._child: _core.ChildProcess | None = None
        self._fork_pid: int | None = None
        self._conn: Connection | None = None
        self._exitcode: int | None = None
        self._outcome: Any = _NO_RESULT
        self._closed = False
        self._lock = threading.RLock()
        #: Why a forked child has no pidfd (``_child`` is None), if so.
        self._watch_error: OSError | None = None
        #: The child's ``authkey`` if set (None: this process's).
        self._authkey: bytes | None = None
        #: Where the child's log records go (made at ``start``).
        self._logs: _childio.Forwarding | None = None

    # -- what a subclass may override, as with multiprocessing --
    def run(self) -> Any:
        """Runs the target; override in a subclass. Its return value is
        what ``result()`` returns."""
        if self._target is not None:
            return self._target(*self._args, **self._kwargs)
        return None

    # -- properties --
    @property
    def name(self) -> str:
        """The process's name."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)

    @property
    def daemon(self) -> bool:
        """A daemon child is killed when the parent exits; a non-daemon
        child is joined at exit."""
        return self._daemon

    @daemon.setter
    def daemon(self, value: bool) -> None:
        if self._started():
            raise AssertionError("process has already started")
        self._daemon = bool(value)

    @property
    def pid(self) -> int | None:
        """The child's pid once started."""
        if self._child is not None:
            return self._child.pid
        return self._fork_pid

    ident = pid

    @property
    def authkey(self) -> bytes:
        """The key the child authenticates with to ``multiprocessing``
        managers and listeners: this process's
        (``multiprocessing.current_process().authkey``) unless set."""
        import multiprocessing.process

        key = self._authkey if self._authkey is not None else multiprocessing.current_process().authkey
        wrap: Any = multiprocessing.process.AuthenticationString  # type: ignore[attr-defined]
        return wrap(key)  # type: ignore[no-any-return]

    @authkey.setter
    def authkey(self, value: bytes) -> None:
        self._authkey = bytes(value)

    @property
    def exitcode(self) -> int | None:
        """None while running; the exit status, or minus the signal that
        killed it."""
        self._check_closed()
        if self._started() and self._exitcode is None:
            self._poll_exit(0.0)
        return self._exitcode

    @property
    def sentinel(self) -> int:
        """A descriptor that becomes readable when the process ends."""
        self._check_closed()
        if self._child is None:
            raise ValueError("process not started (or started with fork)")
        return self._child.pidfd()

    def __repr__(self) -> str:
        if not self._started():
            state = "initial"
        elif self._exitcode is None:
            state = "started"
        else:
            state = f"stopped exitcode={self._exitcode}"
        return f"<corral.Process name={self._name!r} {state}{' daemon' if self._daemon else ''}>"

    def _started(self) -> bool:
        return self._child is not None or self._fork_pid is not None

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    # -- lifecycle --
    def start(self) -> None:
        """Starts the child."""
        self._check_closed()
        if self._started():
            raise AssertionError("cannot start a process twice")
        if _bootstrapping:
            raise RuntimeError(
                "a corral.Process was started while the child imports the parent's __main__ module;"
                " protect the start with `if __name__ == '__main__':`"
            )
        _reap_finished()
        self._logs = _childio.Forwarding(self._name)
        parent_end, child_end = Pipe_pair()
        if self._start_method == "fork":
            self._start_fork(parent_end, child_end)
        else:
            self._start_spawn(parent_end, child_end)
        self._conn = parent_end
        # The child has them: as multiprocessing, the parent lets go.
        self._target, self._args, self._kwargs = None, (), {}
        with _children_lock:
            _children.add(self)

    def _start_spawn(self, parent_end: Connection, child_end: Connection) -> None:
        # Imported here, not at the top: only spawn needs it, and it would
        # add 0.7 ms to every ``import corral``.
        import multiprocessing.spawn as mp_spawn

        prep = mp_spawn.get_preparation_data(self._name)
        # The child authenticates to the parent's multiprocessing managers
        # and listeners with the parent's key, as a spawned multiprocessing
        # child does (``prepare`` sets it); as bytes, since an
        # AuthenticationString pickles only for multiprocessing's own starts.
        prep["authkey"] = bytes(self.authkey)
        if not os.path.isfile(prep.get("init_main_from_path", "")):
            # A script read from standard input (`python - < script.py`)
            # has "<stdin>" for a file: there is nothing to import, and
            # its functions go by value, as a notebook's do.
            prep.pop("init_main_from_path", None)
        with _fds.inheriting() as inherit, _pickle.spawning():
            payload = _pickle.dumps_by_value(self) if self._by_value else _pickle.dumps_by_reference(self)
            boot_fd = _core.dup_fd(child_end.fileno())
            inherit.fds.append(boot_fd)
            try:
                argv = [sys.executable, "-m", "corral._child", str(boot_fd), str(os.getpid())]
                self._child = _core.spawn(argv, list(inherit.fds), [])
            finally:
                for fd in inherit.fds:
                    os.close(fd)
        try:
            # A queue refuses a holder past its limit (ValueError): the
            # child, still waiting for its payload, is stopped before it runs.
            inherit.spawned(self._child.pid)
        except BaseException:
            child, self._child = self._child, None
            child.signal(signal.SIGKILL)
            child.wait(None)
            child_end.close()
            parent_end.close()
            raise
        child_end.close()
        try:
            parent_end._conn().send_bytes(_pickle.dumps_inband(prep)[0])
            parent_end._conn().send_bytes(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The child exists but died (killed, out of memory) before it
            # read its bootstrap: the process was started and has ended,
            # which its exit code tells (as for a child dying a moment
            # later). Raising here would make a dead child look like a
            # failure to create one (a pool counts the first among its
            # boot failures; only the second breaks it).
            pass

    def _start_fork(self, parent_end: Connection, child_end: Connection) -> None:
        parent = os.getpid()
        # Decided before fork: in the child, the forking thread becomes the
        # main thread.
        from_main = threading.current_thread() is threading.main_thread()
        holders = _fork_holders((self._target, self._args, self._kwargs, self.__getstate__()))
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                parent_end.close()
                _die_with_parent(parent, from_main)
                _as_forked_child(self)
                code = run_in_child(self, child_end)
                # As multiprocessing's children: non-daemon threads the
                # target started run to their end before the exit.
                threading._shutdown()  # type: ignore[attr-defined]
            finally:
                _forked.leave(code)
        # The child holds the queues it was started with from now on, as a
        # spawned child does, not from its first put or get.
        try:
            for add_holder in holders:
                add_holder(pid)
        except BaseException as e:
            # A queue refused one more holder (ValueError): the child is
            # stopped and reaped; forked, it may have begun its target.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            child_end.close()
            parent_end.close()
            e.add_note("corral: the forked child was killed (it may already have begun to run its target)")
            raise
        self._fork_pid = pid
        try:
            # Watched by pidfd like a spawned child (no recycled-pid race).
            self._child = _core.adopt_child(pid)
        except OSError as e:
            # Watched by polling waitpid instead; kept for a caller that
            # needs the pidfd (the pool's supervision).
            self._watch_error = e
        child_end.close()

    def _leave_at_exit(self) -> None:
        """Leaves this started child out of the exit hook that terminates
        daemon children and joins the others (``_reap_children_at_exit``)
        and of ``_reap_finished``: for a child its owner stops itself, that
        must outlive that hook and dies with this process anyway (the
        pools' fork server)."""
        with _children_lock:
            _children.discard(self)

    def __getstate__(self) -> dict[str, Any]:
        # What the child needs: the target and its arguments, not handles.
        return {
            "_target": self._target,
            "_args": self._args,
            "_kwargs": self._kwargs,
            "_name": self._name,
            "_daemon": self._daemon,
            "_start_method": self._start_method,
            "_authkey": self._authkey,
            "_logs": self._logs,
            **{k: v for k, v in self.__dict__.items() if not k.startswith("_")},
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._child = None
        self._fork_pid = None
        self._conn = None
        self._exitcode = None
        self._outcome = _NO_RESULT
        self._closed = False
        self._lock = threading.RLock()
        self._watch_error = None
        self._authkey = state.get("_authkey")

    def _read_outcome(self) -> None:
        """Takes the child's result message if one has arrived."""
        conn = self._conn
        if conn is None or self._outcome is not _NO_RESULT:
            return
        try:
            if not conn.poll(0):
                return
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # no result: the child died first
        try:
            self._outcome = _pickle.loads(data)
        except BaseException as e:  # SystemExit or KeyboardInterrupt from a __reduce__ too
            self._outcome = (_UNLOADABLE, e)
            if isinstance(e, KeyboardInterrupt):
                raise
        finally:
            # A child whose result holds descriptors waits for this before
            # it exits (they are fetched from its broker while loading).
            try:
                conn.send_bytes(b"loaded")
            except OSError:
                pass

    def _poll_exit(self, timeout: float) -> bool:
        """Waits up to ``timeout`` for the exit; reads the result meanwhile
        (a child blocked sending a large result could not exit otherwise)."""
        with self._lock:
            self._read_outcome()
            if self._exitcode is not None:
                return True
            if self._child is not None:
                code = self._child.wait(timeout)
            else:
                code = _wait_forked(self._fork_pid, timeout)
            if code is not None:
                self._exitcode = code
                self._read_outcome()
                with _children_lock:
                    _children.discard(self)
                return True
            return False

    def join(self, timeout: float | None = None) -> None:
        """Waits until the child ends, or ``timeout`` seconds pass."""
        self._check_closed()
        if not self._started():
            raise AssertionError("can only join a started process")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            step = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
            if self._poll_exit(step):
                _childio.drain()  # the child's last log records are handled
                return
            if deadline is not None and time.monotonic() >= deadline:
                return

    def is_alive(self) -> bool:
        """True from ``start`` until the child ends."""
        self._check_closed()
        if not self._started():
            return False
        return not self._poll_exit(0.0)

    def result(self, timeout: float | None = None) -> Any:
        """Waits for the child and returns what its target returned, or
        raises the target's exception with the child's traceback attached
        (``__cause__``). ``TimeoutError`` if still running after
        ``timeout``; :class:`corral.WorkerLostError` if the child died
        without a result (killed, segfault, ``os._exit``)."""
        self.join(timeout)
        if self._exitcode is None:
            raise TimeoutError(f"{self._name} still running after {timeout} s")
        outcome = self._outcome
        if outcome is _NO_RESULT:
            raise WorkerLostError(_describe_exit(self._name, self._exitcode), self._exitcode)
        kind, value = outcome
        if kind == "ok":
            return value
        if kind == _UNLOADABLE:
            raise RuntimeError(
                f"{self._name} returned a result (exit code {self._exitcode}) that could not be loaded here:"
                f" {value!r}; a result holding descriptors (a Queue, Lock or Pipe end) is loaded by join(),"
                f" is_alive() or result() within {RESULT_LOAD_WAIT:.0f} s of the child's return, or lost"
            ) from value
        raise _pickle.unpack_exception(value)

    def terminate(self) -> None:
        """Sends SIGTERM."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Sends SIGKILL."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        self._check_closed()
        if self._child is not None:
            self._child.signal(sig)
        elif self._fork_pid is not None and self._exitcode is None:
            try:
                os.kill(self._fork_pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Releases the handle's resources; ``ValueError`` if still running."""
        if self._closed:
            return
        if self._started() and not self._poll_exit(0.0):
            raise ValueError("Cannot close a process while it is still running. Use join() or terminate() first.")
        if self._conn is not None:
            self._conn.close()
        self._child = None
        self._closed = True


def run_in_child(proc: Process, conn: Connection) -> int:
    """The child's side of ``start``, in the child (spawned: ``_child.main``;
    forked: ``_start_fork``): runs ``proc.run()``, reports the outcome on
    ``conn`` (``("ok", value)`` or ``("err", packed exception)``) and returns
    the exit code (``multiprocessing``'s rules for SystemExit)."""
    code = 0
    _childio.install(getattr(proc, "_logs", None), forked=proc._start_method == "fork")
    try:
        outcome: tuple[str, Any] = ("ok", proc.run())
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            _forked.write_stderr(str(e.code) + "\n")
            code = 1
        outcome = ("err", _pickle.pack_exception(e))
    except BaseException as e:
        code = 1
        _forked.write_stderr(f"Process {proc.name}:\n{traceback.format_exc()}")
        outcome = ("err", _pickle.pack_exception(e))
    # Descriptors in the result (a Queue, a Lock, a Pipe end) are fetched
    # from this process's broker while the parent loads it: registered
    # under ``lending``, and this process stays until the parent says it
    # has loaded the result (or closes its end), RESULT_LOAD_WAIT at most.
    with _fds.lending() as lent:
        try:
            data = _pickle.dumps_inband(outcome)[0]
        except Exception as e:
            error = _pickle.PicklingError(f"cannot pickle the result of {proc.name}: {e}")
            data = _pickle.dumps_inband(("err", _pickle.pack_exception(error)))[0]
        try:
            conn.send_bytes(data)
        except OSError:
            return code
        if lent.tokens:
            _await_loaded(conn)
    return code


def _await_loaded(conn: Connection) -> None:
    """Waits until the parent acknowledges the result (any message) or
    closes its end, ``RESULT_LOAD_WAIT`` at most; a signal ends the wait
    (the process is leaving anyway)."""
    try:
        conn.poll(RESULT_LOAD_WAIT)
    except BaseException:
        pass


def _fork_holders(payload: Any) -> list[Callable[[int], None]]:
    """What a fork child starts with that counts its holders (``Queue``):
    the ``add_holder`` of every queue reachable from ``payload`` (target,
    args, kwargs, the Process's state), to run with the child's pid before
    ``start`` returns. A walk, not a pickle: forking is how users pass what
    is large or does not pickle, and a pickle of it would cost as much as a
    spawn (a 2M-entry dict: 0.5 s) and run user ``__reduce__`` code in the
    parent. Objects reached only through globals, or through more than
    ``_walk_holders``'s budget of objects, are not found: the child holds
    them from its first put or get."""
    return _walk_holders(payload)


def _walk_holders(root: Any, limit: int = 100_000) -> list[Callable[[int], None]]:
    """The ``add_holder`` of every corral ``Queue`` reachable from ``root``
    through tuples, lists, sets, deques, dicts, ``functools.partial``, bound
    methods, closures and defaults of functions, instance ``__dict__``s and
    ``__slots__`` (each object once, ``limit`` objects at most)."""
    found: list[Callable[[int], None]] = []
    seen: set[int] = set()
    stack = [root]
    budget = limit

    def push(items: Any) -> None:
        nonlocal budget
        if budget > 0:
            before = len(stack)
            stack.extend(itertools.islice(items, budget))
            budget -= len(stack) - before

    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Queue):
            found.append(obj._q.add_holder)
        elif isinstance(obj, (str, bytes, bytearray, int, float, complex, type, types.ModuleType)):
            continue
        elif isinstance(obj, (tuple, list, set, frozenset, collections.deque)):
            push(obj)
        elif isinstance(obj, dict):
            push(itertools.chain.from_iterable(obj.items()))
        elif isinstance(obj, functools.partial):
            push((obj.func, obj.args, obj.keywords))
        elif isinstance(obj, types.MethodType):
            push((obj.__self__,))
        elif isinstance(obj, types.FunctionType):
            cells = []
            for cell in obj.__closure__ or ():
                try:
                    cells.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
            push(cells)
            push(obj.__defaults__ or ())
            push((obj.__kwdefaults__ or {}).values())
        else:
            d = getattr(obj, "__dict__", None)
            if isinstance(d, dict):
                push((d,))
            for klass in type(obj).__mro__:
                slots = klass.__dict__.get("__slots__", ())
                for name in (slots,) if isinstance(slots, str) else slots:
                    if name not in ("__dict__", "__weakref__"):
                        try:
                            push((getattr(obj, name),))
                        except AttributeError:  # an unset slot
                            pass
    return found


def _die_with_parent(parent: int, from_main_thread: bool) -> None:
    """In a forked child: end when ``parent`` ends.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked exits, so it is
    only armed when the main thread forked; otherwise a daemon thread waits
    on a pidfd of the parent and kills this process when it becomes readable.
    """
    if from_main_thread:
        if not _core.die_with_parent(parent):
            os._exit(1)
        return
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(1)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="corral-parent-watch", daemon=True).start()


def Pipe_pair() -> tuple[Connection, Connection]:
    """The bootstrap channel between a parent and one child."""
    a, b = _core.pipe(True)
    return Connection(a), Connection(b)


def _wait_forked(pid: int | None, timeout: float) -> int | None:
    if pid is None:
        return None
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))


def _reap_finished() -> None:
    """Forgets the children that have exited, as ``multiprocessing`` does at
    each start: a Process started and dropped without ``join`` would
    otherwise be kept in ``_children`` with its pidfd and bootstrap socket
    open for ever (2 descriptors per child). A child whose handle another
    thread is using (a ``join`` in progress) is left to that thread."""
    with _children_lock:
        children = list(_children)
    for p in children:
        if not p._lock.acquire(blocking=False):
            continue
        try:
            # Only the exit status: the result stays in the socket for
            # result() (reading it here could wait on a child sending a
            # large one).
            if p._exitcode is None:
                if p._child is not None:
                    p._exitcode = p._child.wait(0.0)
                else:
                    p._exitcode = _wait_forked(p._fork_pid, 0.0)
            if p._exitcode is not None:
                with _children_lock:
                    _children.discard(p)
        except (OSError, ValueError):
            pass
        finally:
            p._lock.release()


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal N`` for a number the platform does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _describe_exit(name: str, code: int) -> str:
    if code < 0:
        return f"{name} was killed by {signal_name(-code)} (exit code {code}) before returning a result"
    return f"{name} exited with code {code} before returning a result"


def _as_forked_child(proc: Process) -> None:
    """In a child forked by ``start``: ``multiprocessing.current_process()``
    is named after ``proc`` (a spawned child's is, by ``prepare``)."""
    import multiprocessing

    multiprocessing.current_process().name = proc.name
    if proc._authkey is not None:
        multiprocessing.current_process().authkey = proc._authkey


def active_children() -> list[Process]:
    """The ``corral.Process`` children of this process still running
    (those that ended are reaped, as ``multiprocessing.active_children``)."""
    _reap_finished()
    with _children_lock:
        children = list(_children)
    return [p for p in children if p._exitcode is None]


def _main_thread_ids_after_fork() -> None:
    """In any forked child: the main thread's ``native_id`` is this
    process's thread, not the parent's (CPython 3.11 keeps the parent's;
    3.12 sets it itself)."""
    main = threading.main_thread()
    if main is threading.current_thread() and hasattr(main, "_set_native_id"):
        main._set_native_id()


os.register_at_fork(after_in_child=_main_thread_ids_after_fork)


def _forget_parents_children() -> None:
    """In a forked child (any fork: ``start_method="fork"``, the fork
    server, ``os.fork``): the inherited children are the parent's, and so
    are their handles (reading one's bootstrap socket would take the result
    the parent waits for). As ``multiprocessing`` does, the child starts
    with none; a new lock too, in case another thread held it at the fork."""
    global _children, _children_lock
    _children = set()
    _children_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_parents_children)


@atexit.register
def _reap_children_at_exit() -> None:
    """As multiprocessing: daemon children are terminated, the others
    joined."""
    with _children_lock:
        children = list(_children)
    for p in children:
        try:
            if p._daemon:
                p.terminate()
            p.join()
        except Exception:
            pass
