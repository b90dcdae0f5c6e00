"""The loop of a process-pool worker, started by ``ProcessPoolExecutor`` as
the target of a ``corral.Process`` (spawn and fork) or run directly by the
fork server in a child it forked (``_forkserver._run_worker``).

It runs the pool's initializer once, then takes tasks from its own queue:
marks the task as started on the shared board (a task the parent cancelled
first is skipped), runs it, sends the outcome to the pool's result queue
and marks itself idle. A function arrives pickled with the first task that
uses it and is cached by id afterwards.

The messages' layout is the core's (``pool/wire.rs``): a task is read with
``_core.TaskMessage.decode`` and a result written with
``_core.encode_result``.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
import threading
import time
import types
from typing import TYPE_CHECKING, Any

from . import _childio, _core, _fds, _pickle, _shm_arrays
from ._state import NO_STATE as _NO_STATE
from ._state import run_chunk as _run_chunk
from ._state import set_process_state, set_worker_id
from .errors import ChannelClosed

if TYPE_CHECKING:
    from ._core import _ResultStatus


class BoardHandle:
    """The pool's shared board as passed to a worker (its descriptor is
    inherited at spawn)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_open_board, (_fds.export_fd(self.fd),))


def _open_board(handle: _fds.FdHandle) -> _core.PoolBoard:
    return _core.PoolBoard.from_fd(_fds.import_fd(handle))


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _load_function(data: bytes) -> Any:
    """Loads a task's function; a function of the parent's ``__main__``
    (sent by value) is bound to this worker's ``__main__`` namespace, which
    the initializer and every task share (see ``_main_namespace``)."""
    global _prefetch
    if _prefetch is not None:
        _prefetch.finish()
        _prefetch = None
    fn = _pickle.loads(data)
    return _in_main_namespace(fn)


def _main_globals() -> dict[str, Any] | None:
    """The globals of this process's ``__main__`` code. A spawned worker
    ran the parent's script with ``runpy.run_path`` (multiprocessing's
    ``prepare``), whose functions keep the globals dict of that run, a copy
    of which became the module's ``__dict__``: that dict is where the
    script's own functions (and so the stdlib's tasks) read and write."""
    main = sys.modules.get("__main__")
    if main is None:
        return None
    d = main.__dict__
    for v in list(d.values()):
        if (
            isinstance(v, types.FunctionType)
            and v.__globals__ is not d
            and v.__globals__.get("__name__") == d.get("__name__")
        ):
            return v.__globals__
    return d


#: Bytes of freed object arenas a worker keeps mapped for its next tasks
#: (``_core.keep_arenas``): a map chunk of a tiny function (64 k ints in and
#: out, 4 MB of small objects freed at its end) no longer faults its memory
#: back in page by page; measured 2026-12-07, both workers of a 1 M-item
#: map of ``square``: 5-11 k minor faults and 131-152 ns of CPU per item,
#: with the arenas kept 1.7-3.5 k and 117-124 ns.
ARENA_CACHE = 16 << 20

#: The value this worker last took from a parent's snapshot, per name of
#: ``__main__`` (see ``_in_main_namespace``).
_from_snapshot: dict[str, Any] = {}
#: The ``__main__`` globals as the worker started (imported or inherited by
#: fork), before its initializer ran.
_baseline: dict[str, Any] = {}
#: The pickled state of each mutable value of ``_from_snapshot`` when it was
#: written (see ``_untouched``).
_snapshot_prints: dict[str, bytes | None] = {}

#: Values that cannot change in place: their identity says all.
_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, tuple, frozenset, range, type, types.FunctionType)


def _print(value: Any) -> bytes | None:
    """The pickled state of a mutable value (its out-of-band buffers left
    out), or None for one that cannot change in place or be pickled."""
    if isinstance(value, _IMMUTABLE):
        return None
    try:
        return pickle.dumps(value, 5, buffer_callback=lambda _: False)
    except Exception:
        return None


def _adopt(fn: types.FunctionType, namespace: dict[str, Any], seen: set[int]) -> None:
    """A function of this worker's own ``__main__`` (inherited by fork, or
    imported) is about to run: the globals its code names (and that of
    the ``__main__`` functions it names) still holding their first value
    are noted as if a copy had written them, with their state, so that a
    later copy does not replace one this code changes in place (an
    initializer filling a dict)."""
    seen.add(id(fn))
    codes = [fn.__code__]
    while codes:
        code = codes.pop()
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for name in code.co_names:
            if name in _from_snapshot or name not in namespace:
                continue
            value = namespace[name]
            if value is not _baseline.get(name, _NO_STATE):
                continue
            _from_snapshot[name] = value
            _snapshot_prints[name] = _print(value)
            if isinstance(value, types.FunctionType) and value.__globals__ is namespace and id(value) not in seen:
                _adopt(value, namespace, seen)


def _untouched(name: str, value: Any) -> bool:
    """``value``, which the last copy wrote as ``name``, has not been
    changed in place since by the worker's own code (an initializer that
    filled a dict the parent sent empty)."""
    return _print(value) == _snapshot_prints.get(name)


def _in_main_namespace(fn: Any, _memo: dict[int, Any] | None = None) -> Any:
    """``fn`` itself, or, for a plain function of ``__main__`` sent by
    value, the same function over this process's ``__main__`` globals.

    cloudpickle gives each function of ``__main__`` its own copy of the
    globals it uses, so an initializer that sets a global would change
    only its own copy and the tasks would not see it. With the stdlib,
    tasks and initializer share the worker's ``__main__``; so do they here.
    A name of the copy is written into the worker's ``__main__`` when the
    worker lacks it (a notebook, ``python -``) or still holds the value it
    started with or the last copy gave it (and the worker has not changed
    that value in place since: an initializer filling a dict), so a value
    the parent changed since arrives; a value the worker's own code set or
    changed (an initializer, a task) is kept, as with the stdlib.
    Functions of ``__main__`` among those globals are rebound the same way.
    """
    if not isinstance(fn, types.FunctionType) or fn.__module__ not in ("__main__", "__mp_main__"):
        return fn
    namespace = _main_globals()
    if namespace is None:
        return fn
    if fn.__globals__ is namespace:
        _adopt(fn, namespace, set())
        return fn
    if fn.__module__ != "__main__":
        return fn
    memo: dict[int, Any] = {} if _memo is None else _memo
    if id(fn) in memo:
        return memo[id(fn)]
    rebound = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    memo[id(fn)] = rebound
    rebound.__kwdefaults__ = fn.__kwdefaults__
    rebound.__dict__.update(fn.__dict__)
    rebound.__qualname__ = fn.__qualname__
    rebound.__doc__ = fn.__doc__
    rebound.__annotations__ = fn.__annotations__
    for name, value in list(fn.__globals__.items()):
        if name.startswith("__") and name.endswith("__"):
            continue
        value = _in_main_namespace(value, memo)
        if name in namespace:
            current = namespace[name]
            if name in _from_snapshot:
                if current is not _from_snapshot[name] or not _untouched(name, current):
                    continue  # set or changed by the worker's own code: kept
            elif current is not _baseline.get(name, _NO_STATE):
                continue
        namespace[name] = value
        _from_snapshot[name] = value
        _snapshot_prints[name] = _print(value)
    return rebound


#: How long the cloudpickle prefetch (``_Prefetch``) watches the main
#: thread once the initializer started (twice as long at each next look,
#: ``PREFETCH_LOOKS`` at most), and the largest share of that time it may
#: have run or waited to run for the initializer to count as idle.
PREFETCH_LOOK = 0.02
PREFETCH_LOOKS = 3
PREFETCH_BUSY_SHARE = 0.25
#: Longest the first function load, or a fork made in the worker (an
#: initializer starting a process), waits for a prefetch import under way
#: to end (``_Prefetch.finish``).
PREFETCH_FORK_WAIT = 10.0


def _cpu_wanted(path: str) -> int:
    """Nanoseconds the thread of this ``schedstat`` file has run or waited
    in a run queue to run."""
    with open(path, "rb") as f:
        ran, waited = f.read().split()[:2]
    return int(ran) + int(waited)


class _Prefetch:
    """cloudpickle imported by a thread of its own while the pool's
    initializer runs, for the first task's function of ``__main__`` (sent
    by value: loading it imports cloudpickle, after the initializer and
    before the first task; measured 2026-12-07 in case 3 of
    ``benches/bench_startup.py``, 3-7 ms of CPU in a worker of a program
    that imported numpy, 11-16 ms without).

    The thread looks, ``PREFETCH_LOOK`` after the initializer started,
    at how much the main thread ran or waited to run meanwhile (its
    ``schedstat``: time in a run queue counts, so a computing initializer
    on a loaded machine is not taken for an idle one); it imports once
    that was under ``PREFETCH_BUSY_SHARE`` of a look: a sleeping or
    waiting "model load" hides the import, a computing one is not slowed
    down by it (nor is one whose tasks are named functions, which never
    need cloudpickle): its worker imports it at the first load, as before.
    A few looks, further and further apart (an initializer that works a
    little before it waits), not a poll: a thread waking while the
    initializer computes takes the GIL from it each time (with the machine
    loaded, until the scheduler runs that thread: measured on the loaded
    VM, a poll every 10 ms took a pool with a 0.5 s computing initializer
    from 1.8-1.9 s to 2.6-2.9 s, two runs each).

    The main thread ``finish``es it at its first function load: an import
    under way is waited for, one not begun is not begun. A fork made
    meanwhile (the initializer starting a process) waits for an import
    under way (``before_fork``): the child must not inherit an import lock
    held by a thread it does not have."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        #: The main thread's, read by ``_cpu_wanted``.
        self.schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        #: What ``_cpu_wanted`` said at the last look, and when.
        self.wanted = _cpu_wanted(self.schedstat)
        self.started = time.monotonic_ns()
        self.thread = threading.Thread(target=self._run, name="corral-prefetch", daemon=True)

    def _run(self) -> None:
        look = PREFETCH_LOOK
        for _ in range(PREFETCH_LOOKS):
            wanted, started = self.wanted, self.started
            if self.stop.wait(look):
                return
            try:
                self.wanted = _cpu_wanted(self.schedstat)
            except OSError:
                return
            self.started = time.monotonic_ns()
            if self.wanted - wanted < PREFETCH_BUSY_SHARE * (self.started - started):
                break
            look *= 2
        else:
            return  # a computing initializer
        if self.stop.is_set():  # set later: ``finish`` waits for this import
            return
        try:
            importlib.import_module("cloudpickle")
        except BaseException:  # the first load imports it again, and raises there
            pass

    def finish(self) -> None:
        """No import begins from now on; waits for one under way
        (``PREFETCH_FORK_WAIT`` at most: an import that hangs holds its
        module's lock, and the first load would wait for it there)."""
        self.stop.set()
        self.thread.join(PREFETCH_FORK_WAIT)

    def before_fork(self) -> None:
        """A fork (the initializer starting a process) ends the prefetch
        first (``finish``): an import under way is waited for, and the
        thread is gone, so the child inherits no import lock it holds and
        the fork is not made from a process running another thread (3.12+
        warns of that)."""
        self.finish()


def _no_prefetch_in_child() -> None:
    """A child forked in a worker has no prefetch: its first load imports
    cloudpickle."""
    global _prefetch
    _prefetch = None


#: This worker's prefetch, until its first function load (``_load_function``).
_prefetch: _Prefetch | None = None


def _start_prefetch() -> None:
    """Starts ``_Prefetch`` in a worker with an initializer, unless
    cloudpickle is imported already (inherited from the fork server, which
    imports it once idle: ``_forkserver.EAGER``)."""
    global _prefetch
    if "cloudpickle" in sys.modules:
        return
    try:
        prefetch = _Prefetch()
    except OSError:  # no schedstat here (a kernel without CONFIG_SCHED_INFO)
        return
    try:
        prefetch.thread.start()
    except RuntimeError:  # no thread to be had (a pids cgroup, RLIMIT_NPROC): the first load imports it
        return
    os.register_at_fork(before=prefetch.before_fork, after_in_child=_no_prefetch_in_child)
    _prefetch = prefetch


def _one_torch_thread() -> None:
    """In a worker forked from the parent (``start_method="fork"``) of a
    program that imported torch: one intra-op thread, as torch's own
    DataLoader sets in its workers. torch's OpenMP pool does not survive a
    fork: once the parent has run a parallel op, the child's first one
    blocks for good (plain ``os.fork()`` and the stdlib's fork pools hang
    the same way). Raising the count again in such a worker (an
    initializer calling ``torch.set_num_threads(4)``) brings the hang
    back."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def main(
    slot: int,
    tasks: Any,
    results: Any,
    board: Any,
    initializer: Any,
    initargs: tuple[Any, ...],
    max_tasks: int | None,
    max_memory: int | None,
    logs: _childio.Forwarding | None = None,
) -> None:
    """The worker's life: initializer, then tasks until the queue closes
    or a bound (tasks, memory) is reached. ``logs``: where its log records
    go, for a worker the fork server started (a ``corral.Process`` worker
    has its own)."""
    if isinstance(board, BoardHandle):  # forked: the parent's object as is
        board = _core.PoolBoard.from_fd(os.dup(board.fd))
        _one_torch_thread()
    # Ctrl-C reaches the whole process group; the parent decides what
    # stops (it kills the workers whose tasks it abandons).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _core.keep_arenas(ARENA_CACHE)
    tq, rq = tasks._q, results._q
    _shm_arrays.install(rq)
    encode = _core.encode_result
    max_buffers = rq.max_buffers
    # The broker entries of corral objects in a result that does not leave
    # (any failure in its block) are withdrawn with it.
    sending = _fds.sending()

    def send(task: int, status: _ResultStatus, busy: int, value: Any = None) -> None:
        try:
            with sending:
                try:
                    inband, buffers = _pickle.dumps(value, max_buffers)
                    del value  # so an array nothing else holds can travel uncopied
                except Exception as e:
                    status = "raised"
                    inband, buffers = _pickle.dumps(
                        _pickle.pack_exception(_pickle.PicklingError(f"cannot pickle the task's result: {e}"))
                    )
                if buffers:
                    _shm_arrays.put(rq, encode(task, status, slot, busy, inband), buffers)
                    return
                rq.put(encode(task, status, slot, busy, inband), buffers, True, None)
            if not _shm_arrays.installed:  # numpy imported by a task: the next arrays
                _shm_arrays.install(rq)
        except (ValueError, OverflowError, MemoryError) as e:
            # The result cannot travel (too large, too many parts): the task
            # fails with that reason; the worker lives on.
            err = ValueError(f"the task's result could not be sent to the parent: {e}")
            err.__cause__ = e
            packed = _pickle.dumps_inband(_pickle.pack_exception(err))[0]
            rq.put(encode(task, "raised", slot, busy, packed), [], True, None)

    set_worker_id(slot)
    _childio.install(logs, forked=False)
    _baseline.update(_main_globals() or {})
    if initializer is not None:
        _start_prefetch()
        try:
            set_process_state(_in_main_namespace(initializer)(*initargs))
        except BaseException as e:
            board.set_state(slot, "init_failed")
            send(0, "init_failed", 0, _pickle.pack_exception(e))
            raise SystemExit(3) from e
    board.ready(slot, os.getpid())
    send(0, "ready", 0)
    fns: dict[int, Any] = {}
    # Functions received and not loaded yet: a function is loaded once its
    # task has started, so a function that cannot be loaded here (a module
    # the worker cannot import) fails that task with the import error
    # instead of killing the worker before the task counts as started.
    unloaded: dict[int, bytes] = {}
    done = 0
    decode = _core.TaskMessage.decode
    now = time.monotonic_ns
    while True:
        try:
            inband, buffers = tq.get(True, None)
        except ChannelClosed:
            board.set_state(slot, "stopped")
            return
        # A message that is not a task (CorruptDataError) ends the worker:
        # the parent sees it crash and books its tasks.
        msg = decode(inband)
        del inband
        task, fn_id = msg.task, msg.fn_id
        if msg.reset_fns:
            fns.clear()
            unloaded.clear()
        if msg.function is not None:
            unloaded[fn_id] = msg.function
        if not board.begin(slot, task, msg.timeout_ns):
            del msg
            send(task, "cancelled", 0)
            continue
        t0 = now()
        args: Any = None
        try:
            fn = fns.get(fn_id)
            if fn is None:
                fn = fns[fn_id] = _load_function(unloaded[fn_id])
                del unloaded[fn_id]
            args = _pickle.loads(msg.args, buffers)
            if msg.kind == "chunk":
                if type(args[1]) is bytes:  # exact ints, packed by the parent (pool._MapState.fill)
                    args = (args[0], memoryview(args[1]).cast("q"))
                values, packed = _run_chunk(fn, args)
                # Exact ints travel as 8 bytes each, not pickled; the third
                # field says whether the values are all scalars.
                scalars = _core.pack_scalars(values)
                if type(scalars) is bytes:
                    value: Any = (scalars, packed, True)
                else:
                    value = (values, packed, scalars)
                del values, scalars
            else:
                value = fn(*args[0], **args[1])
            status: _ResultStatus = "ok"
        except BaseException as e:
            value, status = _pickle.pack_exception(e), "raised"
        del args, msg
        out = [value]
        del value
        send(task, status, now() - t0, out.pop())  # send holds the only reference
        board.end(slot)
        done += 1
        if (max_tasks is not None and done >= max_tasks) or (max_memory is not None and _rss_bytes() > max_memory):
            board.set_state(slot, "retiring")
            return
