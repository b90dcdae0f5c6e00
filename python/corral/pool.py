"""``corral.ProcessPoolExecutor``: ``concurrent.futures``' process pool,
scheduled and supervised by the Rust core.

What differs from ``concurrent.futures.ProcessPoolExecutor``, as a user
sees it:

- A worker that dies (SIGKILL, segfault, ``os._exit``, the OOM killer) fails
  only the task it was running, with :class:`corral.WorkerLostError` (or
  re-runs it when ``retries`` allows); it is replaced and every other task
  completes. The stdlib breaks the whole pool.
- ``map`` reads its input lazily with a bounded number of chunks in flight
  (an infinite generator works) and, with ``chunksize=None``, sizes chunks
  from the measured time per item. ``imap_unordered`` yields as tasks finish.
  ``progress=True`` shows a tqdm bar.
- What the ``initializer`` returns is :func:`corral.worker_state` in tasks.
- ``pool.options(timeout=..., retries=...)`` gives per-task options (with
  ``submit``, ``map`` and ``imap_unordered``); a task past its timeout
  (seconds from when a worker starts it, kept by the core's board) has its
  worker killed and replaced, and its future raises ``TimeoutError``.
  ``future.kill()`` stops a running task the same way.
- Lambdas, closures and functions of ``__main__`` work (cloudpickle). A
  function is pickled once and sent once per worker.
- numpy arrays in arguments and results travel through shared memory.

Workers are forked from a fork server by default (``start_method=
"forkserver"``, the default of ``multiprocessing`` from Python 3.14 on): one
fresh interpreter per program, started by the first pool and kept up for the
later ones, imports the parent's ``__main__`` and the ``preload`` modules
once (and, while idle, the other modules the parent had imported), then
forks each worker in milliseconds, from a process that runs no other
thread. A second pool in the same program starts in milliseconds; so does a
replaced worker. ``start_method="spawn"`` starts each worker as a fresh
interpreter (every pool pays the interpreter's start again, though a
program's first pool can be ready a little sooner than through the server);
``"fork"`` forks this process (fastest; the usual caveats of
forking a process that runs threads apply, as with ``multiprocessing``).
"""

import concurrent.futures as cf
import hashlib
import itertools
import os
import pickle
import queue
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from . import _childio, _core, _executor, _fds, _pickle, _progress, _shm_arrays, _worker
from ._executor import Executor, Options, check_timeout, settle
from ._executor import Future as _Future
from ._executor import cancel_now as _cancel_now
from ._forkserver import ForkServer
from ._forkserver import shared as shared_forkserver
from .errors import WorkerLostError
from .process import Process
from .queues import Queue
from .threads import Thread

if TYPE_CHECKING:
    from ._core import _TaskKind

__all__ = ["Future", "ProcessPoolExecutor", "ProcessPool"]

T = TypeVar("T")

_FN_CACHE = 256
#: Longest per-task timeout (the core counts it in u32 milliseconds).
_MAX_TIMEOUT = (2**32 - 1) / 1000


class Future(_Future[T]):
    """A process-pool task's :class:`corral.Future`: ``cancel`` and
    ``running`` ask the core, ``kill`` stops a running task (its worker is
    killed and replaced)."""

    #: The task's arguments, referenced until it ends, as in the stdlib (a
    #: corral.share()d array passed as a temporary must live until a worker
    #: has loaded it); not kept when they hold no corral object (``_send``).
    _args: Any = None

    def __init__(self, pool: "ProcessPoolExecutor", task: int) -> None:
        # Not the base's ``__init__``: it makes nothing (a call less per submit).
        self._pool = pool
        self._task = task

    def cancel(self) -> bool:
        """Cancels the task if no worker has started it (as the stdlib:
        False once it runs)."""
        if self._state != "PENDING":  # read once, unlocked: it never goes back to PENDING
            return super().cancel()
        if not self._pool._core.cancel(self._task):
            return False
        self._pool._handlers.pop(self._task, None)
        return _cancel_now(self)

    def running(self) -> bool:
        """True while a worker runs the task (read from the pool's board)."""
        state = self._state
        if state != "PENDING":
            return state == "RUNNING"
        return bool(self._pool._core.running(self._task))

    def _kill_running(self) -> bool:
        return bool(self._pool._core.kill(self._task))


#: Argument types whose pickle holds no corral object, so no descriptor
#: for ``_fds.lending`` to register (exact types: a subclass may reduce
#: to anything).
_PLAIN = frozenset((int, float, complex, bool, str, bytes, type(None)))
#: ``_PLAIN`` but ``bytes`` (a large one may travel out of band some day):
#: the arguments ``_send`` pickles with pickle's own ``dumps``.
_SCALARS = _PLAIN - {bytes}
_plain_dumps = pickle.dumps


def _decode(raised: bool, inband: Any, buffers: list[Any]) -> tuple[bool, Any]:
    """(True, value) or (False, exception) from a result's outcome (the
    core has taken its header off); a result or exception that cannot be
    loaded here becomes that loading error."""
    try:
        value = _pickle.loads(inband, buffers)
        if raised:
            return False, _pickle.unpack_exception(value)
    except BaseException as e:  # SystemExit or KeyboardInterrupt from a __reduce__ too
        return False, e
    return True, value


#: How long a submit refused by a broken core waits for the results thread
#: to handle the ``broken`` event (it is already queued).
_BROKEN_EVENT_WAIT = 10.0

#: Calls of ``PoolCore.next_events`` in a row that may raise before the
#: results thread breaks the pool (a persistent error). A call that fails
#: for want of memory has waited its 0.1 s first: about 5 s of failures.
_PUMP_FAILURES = 50

#: How many windows of chunks a map of a list, tuple or range may hold
#: back, done, behind an earlier chunk still running (``_MapState._room``):
#: with chunks of a quarter of what is left (``ChunkSizer.next_of``), four
#: windows (24 chunks over two workers) reach the end of the input; with a
#: given chunksize, at most 4 x (8 x workers + 32) results wait.
_HELD_WINDOWS = 4

#: The result arena: 16 GiB of address space (touched only as used), or a
#: quarter of the room left under an address-space limit (``ulimit -v``).
_RESULT_ARENA = 16 << 30
_RESULT_ARENA_SHARE = 4


def _relieve(results: Any, buffers: list[Any]) -> list[Any]:
    """``buffers``, with the result arena's blocks copied out when the arena
    is under pressure (``_shm_arrays.pressure``)."""
    if not buffers:
        return buffers
    if any(isinstance(b, _core.ShmBlock) for b in buffers) and results.arena_used() > _shm_arrays.pressure(results):
        return [bytearray(b) if isinstance(b, _core.ShmBlock) else b for b in buffers]
    return buffers


def _lost_error(ev: _core.TaskLost) -> BaseException:
    """The exception of a task the core reports lost (``cause`` "killed"
    is a cancel and handled by the caller)."""
    exitcode, cause = ev.exitcode, ev.cause
    if cause == "timed_out":
        return TimeoutError("the task ran past its timeout; its worker was killed and replaced")
    if cause == "died_before_start":
        return WorkerLostError(
            f"{_core.MAX_UNSTARTED_DEATHS} worker processes in a row died while loading this task, before it"
            f" could start (last exit code {exitcode}); it is not sent again",
            exitcode,
        )
    how = f"killed by signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}"
    return WorkerLostError(f"the worker process running this task died ({how})", exitcode)


def _pickle_function(fn: Callable[..., Any]) -> bytes:
    """A task's function, pickled: by value (cloudpickle) if it lives in
    ``__main__``, else by reference."""
    if getattr(fn, "__module__", None) == "__main__":
        return _pickle.dumps_by_value(fn)
    return _pickle.dumps_inband(fn)[0]


class _Strong:
    """A strong reference called like a ``weakref.ref`` (the function memo's
    entry for a module's builtin)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


def _drain(values: list[Any]) -> Iterator[Any]:
    """Iterates ``values`` (a chunk's results, in order), dropping each
    from the list as it is yielded: a result the caller let go of is freed
    at once, not with the rest of its chunk (as the stdlib's ``map``, which
    pops each future). The loop is C's: ``list.pop()`` n times, by
    ``starmap`` (measured 39 ms per million items, ``map(pop, repeat(-1))``
    44-51 ms, a plain list iterator 14-24 ms)."""
    values.reverse()
    return itertools.starmap(values.pop, itertools.repeat((), len(values)))


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _MapState:
    """The chunks one ``map``/``imap_unordered`` call has in flight.

    ``fill`` sends chunks up to the window (or, at ``shutdown``, the whole
    rest of the input, so that results read after the pool's ``with`` block
    still come, as with the stdlib's eager ``map``). A chunk's items stay
    referenced until its result is in.
    """

    def __init__(
        self,
        pool: "ProcessPoolExecutor",
        fn: Callable[..., Any],
        items: Iterator[Any],
        star: bool,
        chunksize: int | None,
        opts: tuple[float | None, int | None],
    ) -> None:
        self.pool, self.items, self.star, self.chunksize, self.opts = pool, items, star, chunksize, opts
        #: The input when it is a list, tuple or range (of a one-iterable
        #: map): chunks are its slices from ``pos`` on, made in C, and a
        #: range's slice travels as three numbers (the parent neither
        #: builds nor pickles its items; the worker does not unpickle them).
        self.seq: list[Any] | tuple[Any, ...] | range | None = None
        self.pos = 0
        #: None once the consumer is done (``release``).
        self.fn: Callable[..., Any] | None = fn
        self.sizer = pool._sizer(fn) if chunksize is None else None
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.inflight: dict[int, tuple[int, int, Any]] = {}
        self.sent = 0
        self.items_sent = 0
        self.last_seq = 0
        self.exhausted = False
        #: The consumer has started iterating.
        self.started = False
        #: The consumer's iterator was dropped before it started: the pool
        #: runs the whole input anyway (results are dropped), as the
        #: stdlib's eager map would.
        self.orphaned = False
        #: The pool shut down before the input was read to its end; no
        #: more is read (an endless input cannot be finished).
        self.cut = False
        #: The input's length is known (it is finite).
        self.sized = False
        #: The number of items of an input of known length (the sizer caps
        #: chunks at a share of those left: ``ChunkSizer.next_of``).
        self.total: int | None = None
        #: Chunks an ordered map has received but holds back behind an
        #: earlier one still running (the consumer's ``ready``): with those
        #: in the inbox, they count against the read-ahead, so neither a
        #: stalled chunk nor a consumer slower than the workers lets the map
        #: read its input (an endless generator) without bound.
        self.held = 0
        #: Items of the chunks the consumer has been given (or, of a map
        #: nobody reads, that have come back): bounds the chunks of an
        #: input of unknown length (``fill``).
        self.taken = 0
        self.lock = threading.Lock()

    def put(self, ev: _core.TaskDone | _core.TaskLost) -> None:
        """A chunk's outcome from the core (pump thread)."""
        self._arrive(ev.task, ev, None)

    def fail(self, task: int, exc: BaseException) -> None:
        """Chunk ``task`` ends with ``exc`` and no value: it was rejected,
        the pool broke or was shut down first, or handling its event
        raised."""
        self._arrive(task, None, exc)

    def _arrive(self, task: int, ev: Any, exc: BaseException | None) -> None:
        with self.lock:
            entry = self.inflight.pop(task, None)
            if entry is not None and self.sizer is not None and type(ev) is _core.TaskDone:
                self.sizer.observe(entry[1], ev.busy_ns)
            if not self.orphaned:
                # With the pop, under the lock: see ``finished``.
                self.inbox.put((entry, ev, exc))
            elif entry is not None:
                self.taken += entry[1]
        if self.orphaned:
            self.pool._drive_orphan(self)
            return
        if self.seq is not None and entry is not None and self.inbox.qsize() <= self._window():
            # A slice of a list, tuple or range is sent from here (the pump
            # thread) as soon as a chunk's result is in, not once the
            # consumer thread has run: on a busy machine each hand-off to
            # another thread waits to be scheduled, and the workers waited
            # for two of them. At most a window of results waits unread.
            # Any other input is read by the consumer only (its code, a
            # generator's, must not run on the pump). A failure here is
            # left for the consumer's own fill, which raises it: a slice is
            # taken from the input only once sent.
            try:
                self.fill()
            except Exception:
                pass

    def finished(self) -> bool:
        """No chunk is in flight and no outcome waits to be read."""
        with self.lock:
            return not self.inflight and self.inbox.empty()

    def _window(self) -> int:
        """How many chunks to keep in flight now."""
        if self.sizer is not None:
            return self.sizer.in_flight(self.pool._max_workers)
        # No sizer: a chunksize was given (see __init__).
        assert self.chunksize is not None
        return _core.chunks_in_flight(self.chunksize, self.pool._max_workers)

    def _room(self) -> bool:
        """Another chunk may be sent now (under ``lock``). A list, tuple or
        range keeps up to a window of results unread besides the window in
        flight (the pump refills it, see ``_arrive``), and up to
        ``_HELD_WINDOWS`` windows held back behind an earlier chunk still
        running: a worker preempted in the middle of a chunk (a busy
        machine: 20-60 ms) must not leave the others idle once a window
        of later chunks is done (with one window, a 400 k-item map on a
        loaded machine had one of its two workers idle for 40-75 ms of
        its 150-230). Any other input, read by the consumer, counts its
        unread and held-back results in the window. So neither a consumer
        slower than the workers nor a chunk that stalls an ordered map
        lets it read its input without bound."""
        window = self._window()
        if len(self.inflight) >= window:
            return False
        if self.seq is not None:
            return self.inbox.qsize() <= window and self.held <= _HELD_WINDOWS * window
        return len(self.inflight) + self.inbox.qsize() + self.held < window

    def fill(self, everything: bool = False) -> None:
        with self.lock:
            while not self.exhausted and not self.cut:
                if not everything and not self._room():
                    return
                if self.sizer is None:
                    n = self.chunksize
                elif self.total is not None:
                    n = self.sizer.next_of(max(0, self.total - self.items_sent), self.pool._max_workers)
                    if self.opts[0] is not None:
                        # A timeout per chunk: no larger first chunk than
                        # the one item it was measured against before.
                        n = min(n, self.sizer.next())
                else:
                    n = self.sizer.next()
                    if not everything:
                        # An input of unknown length (maybe endless, read
                        # here only) is read ahead of the consumer by at
                        # most a window of chunks no larger than what it
                        # has taken: a remembered sizer's chunk (64 k items
                        # of a tiny function) is reached by a ramp that
                        # follows the consumer, not sent from the first item.
                        n = min(n, max(1, self.taken))
                assert n is not None
                chunk: list[Any] | tuple[Any, ...] | range
                if self.seq is not None:
                    chunk = self.seq[self.pos : self.pos + n]
                else:
                    chunk = list(itertools.islice(self.items, n))
                if not chunk or self.fn is None:
                    self.exhausted = True
                    return
                items: Any = chunk
                if type(chunk) is list:
                    # A slice of exact ints travels as 8 bytes each, not
                    # pickled: slicing and packing 40,000 of them took 12 ns
                    # per item here, slicing and pickling 16; the worker
                    # iterates a memoryview of them instead of a loaded list.
                    packed = _core.pack_scalars(chunk)
                    if type(packed) is bytes:
                        items = packed
                task = self.pool._send(self, self.fn, (self.star, items), "chunk", *self.opts)
                self.pos += len(chunk)
                self.inflight[task] = (self.sent, len(chunk), chunk)
                self.sent += 1
                self.items_sent += len(chunk)

    def done(self, item: tuple[Any, Any, BaseException | None]) -> tuple[list[Any], BaseException | None, bool]:
        """A chunk's outcome (an ``inbox`` item: its ``inflight`` entry, the
        core's event or None, the exception given to ``fail``); returns its
        values, exception, and whether the values are all scalars."""
        entry, ev, exc = item
        self.last_seq = entry[0]
        if ev is None:
            return [], exc, False
        return self.pool._chunk_outcome(ev)

    def release(self) -> None:
        """The consumer is done: lets go of the function and the input (an
        exhausted ``map`` iterator the caller keeps holds neither, as with
        the stdlib)."""
        with self.lock:
            self.cut = True  # nothing more is read or sent
            self.fn = None
            self.items = iter(())
            self.seq = None

    def wake(self) -> None:
        """Ends the consumer's wait for its next outcome, and the stream
        with it (as closing it would): the iterator's owner let go of it
        while another thread waits in it for them (``corral.Pool``'s
        ``imap`` reader, ``mp_pool._Reader``)."""
        self.inbox.put(None)

    def abandon(self, kill: bool) -> None:
        """The consumer stopped: cancels the chunks not started (and, after
        Ctrl-C, stops the running ones)."""
        with self.lock:
            tasks = list(self.inflight)
            self.inflight.clear()
        for task in tasks:
            self.pool._handlers.pop(task, None)
            if not self.pool._core.cancel(task) and kill:
                self.pool._core.kill(task)


class ProcessPoolExecutor(Executor):
    """A pool of worker processes (``concurrent.futures.ProcessPoolExecutor``).

    ``max_workers`` defaults to the CPUs this process may use.
    ``start_method`` (or ``mp_context``'s) is "forkserver" (the default:
    workers are forked by this program's fork server, which imported the
    parent's ``__main__`` and the ``preload`` modules once; fast starts and
    restarts, no threads inherited; see the module doc), "spawn" (a fresh
    interpreter per worker) or "fork".
    ``initializer(*initargs)`` runs once per worker; its return value is
    :func:`corral.worker_state` there. ``max_tasks_per_child`` and
    ``max_memory_per_child`` (bytes of resident memory) replace a worker
    after a task once reached. ``retries`` re-runs a task whose worker died
    under it (or passed its timeout) up to that many times.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        *,
        start_method: str | None = None,
        preload: Iterable[str] = (),
        max_memory_per_child: int | None = None,
        retries: int = 0,
    ) -> None:
        if max_workers is None:
            max_workers = _default_workers()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if max_memory_per_child is not None and max_memory_per_child <= 0:
            raise ValueError("max_memory_per_child must be > 0 bytes")
        # The annotation is not enforced: check what the caller passed.
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError("retries must be an integer")
        if not 0 <= retries < 2**32:
            raise ValueError(f"retries must be >= 0 and < 2**32, not {retries}")
        method = start_method or (mp_context.get_start_method() if mp_context is not None else "forkserver")
        if method not in ("spawn", "fork", "forkserver"):
            raise ValueError(f"start_method must be 'spawn', 'fork' or 'forkserver', not {method!r}")
        preload = [str(m) for m in preload]
        if preload and method != "forkserver":
            raise ValueError("preload needs start_method='forkserver'")
        self._start_method = method
        #: This program's fork server for ``preload``, shared with its other
        #: pools (``_forkserver.shared``); they do not stop it.
        self._forkserver: ForkServer | None = None
        if method == "forkserver":
            self._forkserver = shared_forkserver(preload)
        self._max_workers = max_workers
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks_per_child
        self._max_memory = max_memory_per_child
        self._retries = retries
        #: Task id (numbered by the core) -> the Future or _MapState waiting
        #: for it; written under ``_registering`` (see ``_take_handler``).
        self._handlers: dict[int, Any] = {}
        self._registering = threading.Lock()
        self._streams: weakref.WeakSet[_MapState] = weakref.WeakSet()
        # Maps whose iterator was dropped unread: held here until their
        # input is done (the pump thread sends it, window by window).
        self._orphans: set[_MapState] = set()
        self._orphaned: queue.SimpleQueue[_MapState] = queue.SimpleQueue()
        #: id(function) -> (a reference to it, its id, its pickle): see ``_function``.
        self._fns: dict[int, tuple[Callable[[], Any], int, bytes]] = {}
        #: id(function), or (id(object), id(function)) of a bound method ->
        #: (weak references to them, the chunk sizer of its maps without a
        #: chunksize): see ``_sizer``.
        self._sizers: dict[Any, tuple[tuple[weakref.ref[Any], ...], _core.ChunkSizer]] = {}
        self._broken: str | None = None
        self._init_error: BaseException | None = None
        #: Why the results thread broke the pool (``_pump_failed``).
        self._broken_cause: BaseException | None = None
        #: Set once the results thread has handled the core's ``broken``.
        self._broken_seen = threading.Event()
        self._open()
        self._results: Queue[Any] = Queue(arena_bytes=_core.fit_reservation(_RESULT_ARENA, _RESULT_ARENA_SHARE))
        self._core = _core.PoolCore(max_workers, self._results._q)
        self._workers = _Workers(self, max_workers)
        try:
            self._workers.start(max_workers)
        except BaseException:
            self._core.terminate("the pool could not start its workers")
            raise
        # corral's Thread: a shutdown(wait=True) interrupted by Ctrl-C must
        # leave it joinable (CPython 3.11's join then marks it stopped, and
        # a later shutdown(wait=True) would not wait). It holds the pool
        # only weakly: see _pump.
        self._pump_thread = Thread(
            target=_pump,
            args=(weakref.ref(self), self._core, self._workers, self._orphaned),
            name="corral-pool-results",
            daemon=True,
        )
        self._pump_thread.start()
        # Collected without shutdown (the user dropped it): as the stdlib,
        # the tasks already submitted finish, then the workers leave.
        weakref.finalize(self, _close_core, self._core).atexit = False

    def _orphan(self, st: _MapState) -> None:
        """The iterator of ``st`` was dropped (a weakref callback: it only
        hands ``st`` to the pump thread)."""
        if not st.started and not st.exhausted:
            st.orphaned = True
            self._orphaned.put(st)

    def _drive_orphan(self, st: _MapState) -> None:
        """Sends the next window of a map nobody reads (pump thread)."""
        if self._shutdown or self._broken is not None:
            return  # shutdown sends the rest itself
        self._orphans.add(st)
        try:
            st.fill()
        except BaseException:  # its input raised, or the pool closed: it ends there
            st.exhausted = True
        if st.exhausted and not st.inflight:
            self._orphans.discard(st)

    def _on_error(self, ev: Any, exc: BaseException) -> None:
        """Handling ``ev`` raised: fails its task, if it names one (the pump
        goes on)."""
        task = getattr(ev, "task", None)
        if task is not None:
            self._fail_task(task, exc)

    def _take_handler(self, task: int) -> Any:
        """The future or map state waiting for ``task``, no longer
        registered; None if nothing waits (cancelled, abandoned)."""
        h = self._handlers.pop(task, None)
        if h is None:
            # The core numbers a task inside ``submit``; its event can come
            # before the submitting thread registered it (``_send`` holds
            # ``_registering`` from the submit to the registration).
            with self._registering:
                h = self._handlers.pop(task, None)
        return h

    def _all_registered(self) -> None:
        """Returns once every task the core accepted is in ``_handlers``.
        Call it only once the core accepts no more tasks (closed, broken or
        stopped): a submitter holds ``_registering`` from the core's
        ``submit`` to its registration, so a task accepted before that
        point is registered once the lock is free."""
        with self._registering:
            pass

    def _take_all(self) -> list[tuple[int, Any]]:
        """Every registered task and its handler, taken off ``_handlers``,
        those accepted but not yet registered included (call it only once
        the core accepts no more tasks: see ``_all_registered``). Each is
        taken once (``popitem``), whichever thread ends it."""
        self._all_registered()
        taken = []
        while True:
            try:
                taken.append(self._handlers.popitem())
            except KeyError:
                return taken

    def _fail_task(self, task: int, exc: BaseException) -> None:
        """Ends ``task`` with ``exc``: its future raises it, or its map
        raises it at that chunk's place."""
        self._fail_handler(self._take_handler(task), task, exc)

    def _fail_handler(self, h: Any, task: int, exc: BaseException) -> None:
        """Ends ``task``, whose handler ``h`` (None: nothing waits) is
        already taken, with ``exc``."""
        if isinstance(h, Future):
            self._fail(h, exc)
        elif h is not None:
            h.fail(task, exc)

    def _on_event(self, ev: Any, wake: list[_core.Sleeper]) -> bool:
        """Handles one event of the core; True once the pool is closed. The
        sleepers of the futures it ended go to ``wake`` (the pump wakes them
        once it released the GIL).

        A task's handler is taken off ``_handlers`` before its event is
        handled: if handling it raises, the task ends with that exception
        here (``_on_error`` could no longer find it, and a thread in
        ``result()`` would sleep for ever with the pool idle)."""
        kind = type(ev)
        if kind is _core.TaskDone:
            # The common case first, with the fewest calls: one per result.
            h = self._handlers.pop(ev.task, None)
            if h is None:
                h = self._take_handler(ev.task)
            try:
                if isinstance(h, Future):
                    buffers = ev.buffers
                    if buffers:
                        buffers = _relieve(self._results._q, buffers)
                    self._resolve(h, ev.status, ev.inband, buffers, wake)
                elif h is not None:
                    h.put(ev)
            except BaseException as exc:
                self._fail_handler(h, ev.task, exc)
            return False
        if kind is _core.TaskLost or kind is _core.TaskCancelled:
            h = self._take_handler(ev.task)
            try:
                self._end_lost(h, ev)
            except BaseException as exc:
                self._fail_handler(h, ev.task, exc)
            return False
        return self._on_pool_event(ev)

    def _end_lost(self, h: Any, ev: _core.TaskLost | _core.TaskCancelled) -> None:
        """Ends the task of a ``TaskLost`` / ``TaskCancelled`` whose handler
        ``h`` is taken."""
        if type(ev) is _core.TaskCancelled:
            # Cancelled on the board in a dead worker's queue: whoever
            # cancelled it has already ended its future or map.
            if isinstance(h, Future):
                _cancel_now(h)
            elif h is not None:
                h.fail(ev.task, cf.CancelledError())
        elif isinstance(h, Future):
            if ev.cause == "killed":
                _cancel_now(h)
            else:
                self._fail(h, _lost_error(ev))
        elif h is not None:
            h.put(ev)

    def _on_pool_event(self, ev: Any) -> bool:
        """``_on_event`` for the events that name no handler."""
        kind = type(ev)
        if kind is _core.TaskFailed:
            # Its result came but could not be read here (a corrupt arena
            # block, no memory for its bytes): only this task ends, with
            # that error; the other events of its batch were delivered.
            exc = ev.error
            exc.add_note(f"corral could not read the result message of this task (task {ev.task})")
            self._fail_task(ev.task, exc)
        elif kind is _core.TaskRejected:
            self._fail_task(ev.task, ValueError(f"the task could not be sent to a worker: {ev.error}"))
        elif kind is _core.WorkerExited:
            self._workers.on_exit(ev)
        elif kind is _core.InitFailed:
            _, exc = _decode(True, ev.inband, ev.buffers)
            self._init_error = exc if isinstance(exc, BaseException) else None
        elif kind is _core.PoolBroken:
            self._workers.stopped = True  # a replacement asked for before would be killed at once
            if ev.stopped:
                # ``_stop_now``'s own stop: a task left ends cancelled, and
                # the pool says it was shut down, not broken. A break that
                # came first is reported as one (the core decides which
                # under its lock: a stop after a break makes no event).
                self._broken_seen.set()
                self._end_all(self._cancel_handler)
            else:
                self._set_broken(ev.reason, self._workers.start_error)
        elif kind is _core.PoolClosed:
            return True
        return False

    def _set_broken(self, reason: str, cause: BaseException | None = None) -> None:
        """The pool is broken (the core broke, or the results thread could
        not read its events: ``cause``): every task it had accepted, those
        not yet registered by their submitter included, fails with
        BrokenProcessPool."""
        if self._init_error is not None:
            name = getattr(self._initializer, "__qualname__", repr(self._initializer))
            reason = f"the pool's initializer {name} raised {self._init_error!r}; the pool cannot run tasks"
        # The first reason stays: the core's own break that follows one the
        # bindings reported (an initializer's exception that could not be
        # read) says less.
        if self._broken is None:
            self._broken = reason
            self._broken_cause = cause
        self._broken_seen.set()
        err = self._broken_error()  # one for all, as the stdlib's pool
        self._end_all(lambda h, task: self._fail_handler(h, task, err))

    def _end_all(self, end: Callable[[Any, int], None]) -> None:
        """Takes every handler (``_take_all``) and ends each with ``end(h,
        task)``; one that raises (no memory for its exception's note, a
        handler's own fault) does not leave the others pending: they are
        taken already, no table names them any more. The first error is
        raised once every handler had its turn."""
        first: BaseException | None = None
        for task, h in self._take_all():
            try:
                end(h, task)
            except BaseException as e:
                if first is None:
                    first = e
        if first is not None:
            try:
                raise first
            finally:
                first = None  # no reference cycle through the traceback

    def _broken_error(self) -> BrokenProcessPool:
        """The error of a broken pool; its ``__cause__`` is the
        initializer's exception if that is why it broke."""
        err = BrokenProcessPool(self._broken)
        err.__cause__ = self._init_error if self._init_error is not None else self._broken_cause
        return err

    @staticmethod
    def _resolve(fut: Future[Any], status: str, inband: Any, buffers: list[Any], wake: list[_core.Sleeper]) -> None:
        """Ends ``fut`` with a ``TaskDone``'s outcome; its sleepers go to
        ``wake``."""
        fut._args = None
        if status == "cancelled":
            # Cancelled on the board before a worker began it: whoever
            # cancelled it ends it too; if not yet, it ends here (never left
            # pending once its handler is gone).
            _cancel_now(fut)
            return
        sleepers = fut._settle(*_decode(status == "raised", inband, buffers))
        if sleepers:
            wake.extend(sleepers)

    @staticmethod
    def _fail(fut: Future[Any], exc: BaseException) -> None:
        """Ends ``fut`` with ``exc`` (unless it was cancelled meanwhile)."""
        fut._args = None
        settle(fut, False, exc)

    # ---- submitting ----

    _default_opts = (None, None)

    def _check_usable(self) -> None:
        if not self._owned():  # a forked child inherits this object, not its threads or workers
            raise RuntimeError(
                "this process pool belongs to the process that created it; a forked child cannot submit to it"
                " (create a new pool in the child)"
            )
        if self._broken is not None:
            raise self._broken_error()

    def _function(self, fn: Callable[..., Any], lent: _fds.lending) -> tuple[int, bytes]:
        """The function's id and pickle. The id is a hash of the pickle, so
        a worker loads each distinct function once. Plain functions without
        a closure, and a module's builtins, are pickled once per pool; any other
        callable (a bound method, an object, a partial, a closure) is pickled
        on every submit, as the stdlib does, so changes to its state reach
        the workers. So is a function whose pickle holds corral objects
        (``lent`` registered them for this task only)."""
        hit = self._fns.get(id(fn))
        if hit is not None and hit[0]() is fn:
            return hit[1], hit[2]
        lent_before = len(lent.tokens)
        data = _pickle_function(fn)
        fn_id = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 2 or 1
        if len(lent.tokens) == lent_before:
            # The memo holds a function weakly (the pool keeps nothing of a
            # task once it is done: CPython's test_free_reference), a
            # module's builtin strongly (it cannot be weakly referenced;
            # its module holds it anyway). A builtin bound to an object
            # (``[].append``) is pickled with that object's state: not kept.
            ref: Callable[[], Any] | None = None
            if isinstance(fn, types.FunctionType) and fn.__closure__ is None:
                ref = weakref.ref(fn)
            elif isinstance(fn, types.BuiltinFunctionType) and isinstance(fn.__self__, (types.ModuleType, type(None))):
                ref = _Strong(fn)
            if ref is not None:
                if len(self._fns) >= _FN_CACHE:
                    self._fns.clear()
                self._fns[id(fn)] = (ref, fn_id, data)
        return fn_id, data

    def _sizer(self, fn: Callable[..., Any]) -> _core.ChunkSizer:
        """The chunk sizer of a map of ``fn`` without a chunksize: the one
        its last map here used (it measured the time per item), or a new
        one. A map of a tiny function then starts at its measured chunk
        (capped at a quarter of the items per worker pair, as any chunk of
        an input of known length) and keeps its window in flight from the
        first fill, instead of ramping up from a small unmeasured chunk
        through a round trip to the parent per step (3-45 ms on a busy
        machine, the workers waiting). Looked up by identity (no user
        ``__hash__``/``__eq__`` runs), held weakly: a bound method (a new
        object at each ``obj.method``) by its object and function, each
        held weakly. A callable that cannot be weakly referenced, or a new
        one each time (a lambda or a partial made per call), starts
        afresh."""
        refs: tuple[weakref.ref[Any], ...]
        if type(fn) is types.MethodType:
            key: Any = (id(fn.__self__), id(fn.__func__))
            parts: tuple[Any, ...] = (fn.__self__, fn.__func__)
        else:
            key, parts = id(fn), (fn,)
        hit = self._sizers.get(key)
        if hit is not None and all(r() is p for r, p in zip(hit[0], parts, strict=True)):
            return hit[1]
        sizer = _core.ChunkSizer()
        try:
            refs = tuple(weakref.ref(p) for p in parts)
        except TypeError:
            return sizer
        if len(self._sizers) >= _FN_CACHE:
            self._sizers.clear()
        self._sizers[key] = (refs, sizer)
        return sizer

    def _send(
        self,
        handler: Any,
        fn: Callable[..., Any],
        payload: Any,
        kind: "_TaskKind",
        timeout: float | None,
        retries: int | None,
    ) -> int:
        """Submits ``fn`` with ``payload`` (kind "call": ``(args, kwargs)``;
        "chunk": ``(star, items)``) to the core; registers ``handler`` (a
        Future or a ``_MapState``) under the task id the core gives it."""
        memo = self._fns.get(id(fn))
        if memo is not None and memo[0]() is fn and kind == "call" and not payload[1]:
            # Nothing to lend: the function's pickle is memoized (it held no
            # corral object) and the arguments are ``_PLAIN``, no keywords.
            # Skips ``_fds.lending``: 0.4-0.7 us of a submit. Nor does the
            # future keep such arguments (``Future._args``): two objects
            # fewer for the garbage collector per task pending.
            args = payload[0]
            if _SCALARS.issuperset(map(type, args)):
                # Nor anything out of band: pickle's own ``dumps``, 0.2 us
                # instead of 0.5.
                inband = _plain_dumps(payload, _pickle._PROTOCOL)
                return self._enqueue(handler, memo[1], memo[2], inband, (), kind, timeout, retries, [])
            if _PLAIN.issuperset(map(type, args)):
                inband, buffers = _pickle.dumps(payload, self._workers.task_buffers)
                return self._enqueue(handler, memo[1], memo[2], inband, buffers, kind, timeout, retries, [])
        # The corral objects in the function and arguments are registered
        # with the broker for as long as the task lives, not for one load:
        # a task re-run after its worker died loads them again.
        if kind == "call":
            handler._args = payload
        with _fds.lending() as lent:
            fn_id, fn_bytes = self._function(fn, lent)
            inband, buffers = _pickle.dumps(payload, self._workers.task_buffers)
            task = self._enqueue(handler, fn_id, fn_bytes, inband, buffers, kind, timeout, retries, lent.tokens)
            lent.tokens = []  # the task's now: withdrawn when it is done
        return task

    def _enqueue(
        self,
        handler: Any,
        fn_id: int,
        fn_bytes: bytes,
        inband: bytes,
        buffers: Sequence[Any],
        kind: "_TaskKind",
        timeout: float | None,
        retries: int | None,
        tokens: list[int],
    ) -> int:
        """Hands a pickled task to the core (``tokens``: its lent
        descriptors) and registers ``handler`` under its id."""
        timeout_ms = 0 if timeout is None else max(1, int(timeout * 1000))
        try:
            # The core numbers the task; its events wait for this
            # registration (``_take_handler``).
            with self._registering:
                task = self._core.submit(
                    fn_id,
                    fn_bytes,
                    inband,
                    buffers,
                    kind,
                    timeout_ms,
                    self._retries if retries is None else retries,
                    tokens,
                )
                self._handlers[task] = handler
        except BaseException as exc:
            if isinstance(exc, BrokenProcessPool) and threading.current_thread() is not self._pump_thread:
                # The core broke before the results thread handled the
                # event (which brings the initializer's exception): the
                # error raised here says why, as the later ones do.
                self._broken_seen.wait(_BROKEN_EVENT_WAIT)
            self._check_open()
            raise
        return task

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: tuple[float | None, int | None],
    ) -> Future[Any]:
        # A pickling error of an argument is raised here. The flags are
        # read without ``_shutdown_lock`` (taken only to raise): the core
        # refuses a task once the pool is closed, and ``_send`` then raises
        # what ``_check_open`` says, so a submit racing a shutdown runs or
        # raises as it would under the lock.
        if self._shutdown or self._broken is not None or _executor._exiting or not self._owned():
            with self._shutdown_lock:
                self._check_open()
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        timeout, retries = opts
        fut: Future[Any] = Future(self, 0)
        fut._task = self._send(fut, fn, (args, kwargs), "call", timeout, retries)
        return fut

    def options(self, *, timeout: float | None = None, retries: int | None = None) -> Options:
        """Per-task options for ``submit``/``map``/``imap_unordered``:
        ``timeout`` is seconds from when a worker starts the task (of a
        map: each chunk); past it the core kills and replaces the worker and
        the task raises TimeoutError. ``retries`` re-runs a task whose
        worker died under it (or passed its timeout)."""
        check_timeout(timeout, _MAX_TIMEOUT)
        if retries is not None and not 0 <= retries < 2**32:
            raise ValueError("retries must be >= 0")
        return Options(self, (timeout, retries))

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        opts: tuple[float | None, int | None],
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: _progress.Spec = False,
        whole: bool = False,
        on_state: Callable[[_MapState], object] | None = None,
    ) -> Iterator[Any]:
        """The map's results, lazily. ``whole``: the caller keeps them all
        (``corral.Pool.map`` makes a list of them), so a chunk's values are
        yielded without being dropped one by one (``_drain``). ``on_state``
        is given the map's ``_MapState`` (``corral.Pool.imap``: its
        ``wake``)."""
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        with self._shutdown_lock:
            self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        star = len(iterables) > 1
        items = zip(*iterables, strict=False) if star else iter(iterables[0])
        total = _progress.total_of(iterables) if _progress.wanted(progress) else None
        # The stream yields lists of results; chain flattens them in C, which
        # costs less per item than resuming a generator.
        # The state exists from this call on (a generator body would only
        # start at the first next()), so shutdown can send the rest.
        st = _MapState(self, fn, items, star, chunksize, opts)
        first = iterables[0]
        if not star and isinstance(first, (list, tuple, range)) and type(first) in (list, tuple, range):
            st.seq = first
        st.total = _progress.total_of(iterables)
        st.sized = st.total is not None
        self._streams.add(st)
        if on_state is not None:
            on_state(st)
        stream = self._stream(st, ordered, deadline, progress, total, whole)
        # Dropped before its first item: the work is done anyway.
        weakref.finalize(stream, self._orphan, st).atexit = False
        st.fill()
        return itertools.chain.from_iterable(stream)

    def _stream(
        self,
        st: _MapState,
        ordered: bool,
        deadline: float | None,
        progress: _progress.Spec,
        total: int | None,
        whole: bool,
    ) -> Iterator[Iterable[Any]]:
        """Yields the results chunk by chunk (a failed chunk: the results
        before the failure, then its exception): each value is dropped from
        its chunk as it is yielded (``_drain``), unless the caller keeps
        them all (``whole``) or they are all scalars (a worker's
        ``_core.pack_scalars``: nothing to free early, and their chunk is no larger
        than a chunk of results waiting to be read)."""
        ready: dict[int, tuple[list[Any], BaseException | None, bool]] = {}
        emitted = 0
        st.started = True
        bar = _progress.bar(progress, total)
        interrupted = False
        try:
            while True:
                st.fill()
                if st.finished():
                    if st.cut and not st.exhausted:
                        raise RuntimeError(
                            f"the pool was shut down before this map's input was read to its end: the first"
                            f" {st.items_sent} items ran; an input of unknown length is not read past shutdown"
                        )
                    return
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise TimeoutError()
                try:
                    ev = st.inbox.get(timeout=wait)
                except queue.Empty:
                    raise TimeoutError() from None
                if ev is None:  # wake(): nobody reads on
                    return
                values, exc, plain = st.done(ev)
                ev = None  # its buffers are not kept while the consumer reads
                if bar is not None:
                    bar.update(len(values))
                if not ordered:
                    st.taken += len(values)
                    yield values if whole or plain else _drain(values)
                    if exc is not None:
                        raise exc
                    continue
                ready[st.last_seq] = (values, exc, plain)
                st.held = len(ready)
                while emitted in ready:
                    values, exc, plain = ready.pop(emitted)
                    st.held = len(ready)
                    emitted += 1
                    st.taken += len(values)
                    yield values if whole or plain else _drain(values)
                    if exc is not None:
                        raise exc
        except BaseException as e:
            interrupted = isinstance(e, (KeyboardInterrupt, SystemExit))
            raise
        finally:
            self._streams.discard(st)
            if bar is not None:
                bar.close()
            st.abandon(kill=interrupted)
            st.release()

    def _chunk_outcome(self, ev: _core.TaskDone | _core.TaskLost) -> tuple[list[Any], BaseException | None, bool]:
        """A chunk's values, exception, and whether its values are all
        scalars (the worker's ``_core.pack_scalars``), from its ``TaskDone`` or
        ``TaskLost`` (called by the map's consumer, off the pump)."""
        if type(ev) is _core.TaskDone:
            if ev.status == "cancelled":  # skipped by its worker: nothing to load
                return [], cf.CancelledError(), False
            ok, value = _decode(ev.status == "raised", ev.inband, _relieve(self._results._q, ev.buffers))
            if not ok:
                return [], value, False
            values, packed, plain = value
            if type(values) is bytes:  # the worker's pack_scalars: exact ints
                values = _core.unpack_ints(values)
            return values, None if packed is None else _pickle.unpack_exception(packed), plain
        if ev.cause == "killed":  # stopped by the pool (terminate), as a future is
            return [], cf.CancelledError(), False
        return [], _lost_error(ev), False

    # ---- life cycle ----

    def stats(self) -> dict[str, Any]:
        """Per worker: tasks done, busy and idle seconds, restarts, the task
        running; tasks outstanding and pending; latency percentiles (s) of
        recent tasks from submit to result."""
        return self._core.stats()

    def _stop(self, first: bool, cancel_futures: bool) -> None:
        # The workers leave once the tasks already submitted are done.
        if first:
            for st in list(self._streams) + list(self._orphans):
                if cancel_futures:
                    st.cut = True
                elif st.orphaned or st.sized:
                    # As the stdlib's eager map: the whole input runs, and
                    # results read after the with block still come.
                    st.fill(everything=True)
                else:
                    # An input of unknown length may be endless: what was
                    # read runs, the rest is not read.
                    st.cut = True
            withdrawn = self._core.close(cancel_futures)
            # A task the core accepted before the close but whose submitter
            # has not registered it yet would be missed below (never ended,
            # no event coming for a withdrawn one): wait for them.
            self._all_registered()
            for task in withdrawn:
                h = self._handlers.pop(task, None)
                if isinstance(h, Future):
                    _cancel_now(h)
                elif h is not None:
                    h.fail(task, cf.CancelledError())
            if cancel_futures:
                for task, h in list(self._handlers.items()):
                    if isinstance(h, Future) and self._core.cancel(task):
                        self._handlers.pop(task, None)
                        _cancel_now(h)

    def _join(self) -> None:
        self._pump_thread.join()
        _childio.drain()  # the workers' last log records are handled

    def _interrupted(self) -> None:
        # Ctrl-C or SystemExit inside the block: stop now instead of
        # running every queued task first.
        self._stop_now()

    def _stop_now(self) -> None:
        """Cancels every task not started, kills every worker (those
        running a task, and those still booting or idle: nothing is left
        for them to do) and starts no replacement; the futures of the tasks
        the stop cut off end cancelled. The core's ``stop`` does the
        killing: its ``PoolBroken`` says ``stopped``, not a fault. A task
        whose result came before the stop keeps it; if the pool had broken
        before the stop, its futures fail with that ``BrokenProcessPool``
        (the pump ends them), not cancelled."""
        self.shutdown(wait=False, cancel_futures=True)
        for st in list(self._streams) + list(self._orphans):
            st.cut = True
        self._workers.stopped = True
        for task in self._core.stop() or ():
            self._cancel_handler(self._take_handler(task), task)

    @staticmethod
    def _cancel_handler(h: Any, task: int) -> None:
        """Ends ``task``, whose handler ``h`` (None: nothing waits) is taken,
        cancelled."""
        if isinstance(h, Future):
            _cancel_now(h)
        elif h is not None:
            h.fail(task, cf.CancelledError())


ProcessPool = ProcessPoolExecutor


class _Workers:
    """A pool's worker processes: starts one in a slot, lets go of one that
    exited. The pool's results thread keeps using it after a pool is
    collected without shutdown, until its workers have left; so it holds
    what starting a worker needs, not the pool."""

    def __init__(self, pool: ProcessPoolExecutor, n: int) -> None:
        self.core = pool._core
        self.results = pool._results
        self.board = _worker.BoardHandle(pool._core.board_fd())
        self.forkserver = pool._forkserver
        self.start_method = pool._start_method
        self.initializer, self.initargs = pool._initializer, pool._initargs
        self.max_tasks, self.max_memory = pool._max_tasks, pool._max_memory
        self.procs: list[Process | None] = [None] * n
        self.queues: list[Queue[Any] | None] = [None] * n
        #: Most out-of-band buffers a task message may carry (the task
        #: queues' bound; learned from the first one started).
        self.task_buffers = _pickle.MAX_BUFFERS
        #: The pool was stopped or broke: no replacement is started (the
        #: core would kill it; it may never finish booting).
        self.stopped = False
        #: Why a replacement could not be started (the break's cause).
        self.start_error: BaseException | None = None
        if self.forkserver is not None:
            self.forkserver.serves(self)

    def booted_pids(self) -> set[int]:
        """The pids of this pool's workers that finished booting, as the
        board names them (a slot's pid is written by its worker once its
        initializer returned, cleared when the slot is prepared for the
        next): the fork server's count of fruitless relaunches."""
        try:
            return {w["pid"] for w in self.core.stats()["workers"] if w["pid"]}
        except Exception:  # a closed core: nothing to tell
            return set()

    def _args(self, slot: int) -> tuple[Queue[Any], tuple[Any, ...]]:
        """A new task queue for ``slot`` (cleared in the core) and the
        arguments of its worker's ``_worker.main``."""
        tasks: Queue[Any] = Queue()
        self.task_buffers = tasks._q.max_buffers
        self.core.prepare(slot)
        args: tuple[Any, ...] = (
            slot,
            tasks,
            self.results,
            self.board,
            self.initializer,
            self.initargs,
            self.max_tasks,
            self.max_memory,
        )
        if self.forkserver is not None:
            args += (_childio.Forwarding(f"corral-pool-worker-{slot}", inherited=True),)
        return tasks, args

    def start(self, n: int) -> None:
        """Starts the pool's first ``n`` workers: from the fork server in
        one exchange (all requests sent before the first reply is read),
        else one by one."""
        if self.forkserver is None:
            for slot in range(n):
                self.spawn(slot)
            return
        made = [self._args(slot) for slot in range(n)]
        started: list[Any] = []
        try:
            self.forkserver.start_workers([args for _, args in made], started)
        finally:
            # Those started before a failure too: the pool that terminates
            # then stops them.
            for slot, ((tasks, _), child) in enumerate(zip(made, started, strict=False)):  # started: maybe fewer
                self.core.attach(slot, child, tasks._q)
                self.procs[slot], self.queues[slot] = None, tasks

    def spawn(self, slot: int) -> None:
        """Starts a worker in ``slot`` (at the start, or replacing one)."""
        tasks, args = self._args(slot)
        if self.forkserver is not None:
            child = self.forkserver.start_worker(args)
            self.core.attach(slot, child, tasks._q)
            self.procs[slot], self.queues[slot] = None, tasks
            return
        proc = Process(
            target=_worker.main,
            args=args,
            name=f"corral-pool-worker-{slot}",
            daemon=True,
            start_method=self.start_method,
        )
        proc.start()
        if proc._child is None:
            # Forked, but no pidfd could be opened to watch it (out of
            # descriptors): the pool cannot supervise it.
            proc.kill()
            proc.join(10)
            raise OSError(f"cannot watch the new worker process: {proc._watch_error}") from proc._watch_error
        self.core.attach(slot, proc._child, tasks._q)
        self.procs[slot], self.queues[slot] = proc, tasks

    def release(self, slot: int) -> None:
        """Lets go of an exited worker's handles at once: its pidfd, its
        bootstrap pipe and its task queue (the core has already reaped it,
        so this does not wait)."""
        proc, tasks = self.procs[slot], self.queues[slot]
        self.procs[slot] = self.queues[slot] = None
        if proc is not None:
            proc.join(0)
            try:
                proc.close()
            except ValueError:  # not reaped yet: the exit handler reaps it later
                pass
        del tasks  # the last reference: its shared memory is unmapped

    def on_exit(self, ev: _core.WorkerExited) -> None:
        """A worker exited: releases it, starts its replacement if the core
        asks for one."""
        if self.forkserver is not None and self.forkserver.wants_boots():
            # Before its slot is prepared for the next (which clears its
            # pid): did it boot before it died (with its server, maybe)?
            self.forkserver.note_booted(self.booted_pids())
        self.release(ev.slot)
        if ev.respawn and not self.stopped:
            try:
                self.spawn(ev.slot)
            except Exception as e:
                # No process could be created or watched (out of descriptors
                # or memory, fork refused), or the fork server keeps dying.
                # A child that was created and then died, even before its
                # bootstrap, does not land here: the core sees it exit while
                # booting and applies BOOT_FAILURES.
                self.start_error = e
                self.core.terminate(f"could not start a worker process: {e!r}")


def _pump(
    ref: weakref.ref[ProcessPoolExecutor],
    core: Any,
    workers: _Workers,
    orphaned: queue.SimpleQueue[_MapState],
) -> None:
    """The pool's results thread: routes the core's events to futures and
    streams, restarts workers; ends when the pool is closed and every worker
    left. It holds the pool only while it handles events, so a pool the
    user dropped without shutdown can be collected (its finalizer closes
    the core); then it only restarts and releases workers until they have
    all left (the results of tasks nobody can ask for are dropped). The
    fork server is the program's, not the pool's: it stays up."""
    # Sleepers of the futures the last events ended: woken by next_events
    # once the GIL is released (or here, before anything else may block).
    wake: list[_core.Sleeper] = []
    try:
        _pump_events(ref, core, workers, orphaned, wake)
    finally:
        for s in wake:
            s.wake()


def _pump_events(
    ref: weakref.ref[ProcessPoolExecutor],
    core: Any,
    workers: _Workers,
    orphaned: queue.SimpleQueue[_MapState],
    wake: list[_core.Sleeper],
) -> None:
    failures = 0  # calls of next_events in a row that raised
    while True:
        pool = ref()
        if pool is not None and not orphaned.empty():
            for s in wake:
                s.wake()
            wake.clear()
            while not orphaned.empty():
                pool._drive_orphan(orphaned.get())
        del pool
        try:
            events = core.next_events(0.1, 1024, wake)
        except BaseException as exc:
            # No memory left to make the list of events: none was taken
            # off the core's backlog (the next call returns them), so the
            # pump goes on; the sleepers are woken here. An error that
            # persists, or a panic of the core (PanicException, a
            # BaseException), would leave every future pending for ever:
            # the pool breaks with it as the cause.
            for s in wake:
                s.wake()
            wake.clear()
            failures += 1
            if isinstance(exc, Exception) and failures < _PUMP_FAILURES:
                continue
            _pump_failed(ref, core, workers, exc)
            return
        failures = 0
        wake.clear()
        pool = ref()
        # Events are popped, not iterated: a loop variable would keep the
        # last event (and a result's shared-memory buffers) alive while the
        # pump waits for the next one.
        events.reverse()
        while events:
            ev = events.pop()
            if pool is None:
                if type(ev) is _core.WorkerExited:
                    workers.on_exit(ev)
                elif type(ev) is _core.PoolClosed:
                    return
                continue
            try:
                if pool._on_event(ev, wake):
                    return
            except BaseException as exc:  # never let one event stop the pump
                pool._on_error(ev, exc)
        ev = None  # not kept while the next wait runs
        del pool


def _pump_failed(
    ref: weakref.ref[ProcessPoolExecutor],
    core: Any,
    workers: _Workers,
    exc: BaseException,
) -> None:
    """The results thread cannot read the core's events (``exc``): kills
    the workers, breaks the pool (its tasks fail with BrokenProcessPool,
    ``exc`` as the cause; a break event would never be read) and lets
    the results thread end, so that ``shutdown(wait=True)`` returns."""
    reason = f"the pool's results thread could not read the pool's events: {exc!r}"
    workers.stopped = True
    try:
        core.terminate(reason)
    except Exception:
        pass  # the core's lock is unusable: the futures still end below
    pool = ref()
    if pool is not None:
        pool._set_broken(reason, exc)


def _close_core(core: Any) -> None:
    """Finalizer of a pool collected without shutdown: no new tasks; the
    workers leave once the submitted ones are done."""
    try:
        core.close(False)
    except Exception:
        pass  # already closed or broken
