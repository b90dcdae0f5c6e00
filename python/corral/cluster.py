"""``corral.RayExecutor`` and ``corral.DaskExecutor``: the pool API on an
engine you already run, for when one machine is not enough.

Moving a job is a one-line change::

    pool = corral.ProcessPoolExecutor()                  # this machine
    pool = corral.RayExecutor(address="auto")            # a Ray cluster
    pool = corral.DaskExecutor("tcp://scheduler:8786")   # a Dask cluster

The same surface as the process pool: ``submit`` (futures that work with
``concurrent.futures.wait``/``as_completed`` and can be awaited), lazy and
bounded ``map``/``imap_unordered`` with ``progress=True`` (items go in
chunks sized from the measured time per item, one engine task per chunk),
``options(timeout=, retries=)``, ``shutdown`` and the context manager.

- numpy arrays over ``LARGE`` bytes are put in the engine's object store
  once per call (``ray.put``, ``client.scatter``) instead of being pickled
  into the task.
- A task's exception keeps its type; a worker lost under a task raises
  :class:`corral.WorkerLostError` (or the task is re-run when ``retries``
  allows: the engine's own retry).
- ``timeout``: the future raises ``TimeoutError`` and the engine's task is
  cancelled (Ray: ``ray.cancel(force=True)`` kills its worker; Dask cancels
  the future, a running function runs on).
- Per-worker state (``initializer``) is not offered: use a Ray actor or a
  Dask worker plugin; passing one raises TypeError.
- Futures are settled in batches by one thread per executor (``_Bridge``),
  not by a bridge per future: see ``_Bridge`` for what that saves.
"""

import concurrent.futures as cf
import heapq
import inspect
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ._executor import Future, FutureStreams, Options, check_timeout, settle
from .errors import WorkerLostError, missing_extra

__all__ = ["DaskExecutor", "RayExecutor"]

#: Where a failure to settle an engine future is reported (the stdlib logs a
#: raising done-callback on this logger).
_log = logging.getLogger("concurrent.futures")

#: numpy arrays at least this large go through the engine's object store.
LARGE = 1 << 20


def _is_large_array(x: Any) -> bool:
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray" and x.nbytes >= LARGE


class _EngineThread:
    """A lazy daemon thread per executor (``name``, started by the first
    ``_wake``) that runs ``_run`` under the Condition ``_cond`` until
    ``stop``, or until ``owner`` is collected without being shut down."""

    #: The thread's name.
    name = "corral-engine"

    def __init__(self, owner: object) -> None:
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Not the owner itself: the finalizer would keep it alive.
        weakref.finalize(owner, self.stop)

    def _wake(self) -> None:
        """Under ``_cond``: starts the thread if it is not running, and
        tells it there is something new."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._cond.notify()

    #: The thread's loop (each subclass defines it).
    _run: Callable[[], None]

    def stop(self, join: bool = False) -> None:
        """Ends the thread; with ``join``, waits until it has ended."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join()


class _Deadlines(_EngineThread):
    """One thread per executor (``corral-engine-timeouts``, lazy) that
    fails the futures of engine tasks past their timeout; the future's
    done callback then cancels the engine task. The engine runs the work
    and has no timeout of its own, so this is the engine executors' one
    timeout mechanism. It ends at ``stop``, or when ``owner`` is collected
    without being shut down."""

    name = "corral-engine-timeouts"

    def __init__(self, owner: object) -> None:
        super().__init__(owner)
        self._heap: list[tuple[float, int, weakref.ref[Future[Any]], float]] = []
        self._seq = itertools.count()

    def watch(self, fut: Future[Any], timeout: float) -> None:
        """Fails ``fut`` with TimeoutError ``timeout`` seconds from now
        unless it is done by then (it is held weakly meanwhile)."""
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + timeout, next(self._seq), weakref.ref(fut), timeout))
            self._wake()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, ref, timeout = self._heap[0]
                left = when - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                fut = ref()
                if fut is not None and not fut.done():
                    settle(fut, False, TimeoutError(f"the task ran longer than its timeout of {timeout} s"))


class _Bridge(_EngineThread):
    """One thread per executor (``corral-engine-bridge``, lazy) that settles
    the futures of engine tasks in batches.

    A bridge per future costs more than a tiny task: Ray's
    ``ObjectRef.future()`` runs a callback per result from Ray's own thread
    (160 us of the driver's CPU per task, against 324 us for a whole
    ``ray.get(f.remote(x))`` round; measured with 2,000 tiny tasks), and the
    Dask done-callback asked the scheduler for the status and then the result
    of each future, two round trips through the client's event loop per task.
    This thread waits on every pending task at once and fetches the results
    of all that finished in one engine call (``ray.get`` of a list,
    ``client.gather``). Each engine says how to wait (``_ready``) and how to
    fetch (``_outcomes``); a callback per task (``watch``) gets the outcome
    as ``(ok, value)``. It ends at ``stop``, or when ``owner`` is collected
    without being shut down."""

    name = "corral-engine-bridge"

    def __init__(self, owner: object) -> None:
        super().__init__(owner)
        #: Watched tasks the thread has not taken yet, in submission order.
        self._inbox: dict[Any, Callable[[bool, Any], None]] = {}

    def watch(self, handle: Any, callback: Callable[[bool, Any], None]) -> None:
        """Calls ``callback(ok, value)`` once the engine's task ``handle`` has
        ended (on the bridge thread)."""
        with self._cond:
            self._inbox[handle] = callback
            self._wake()

    def settle_here(self, handle: Any, timeout: float | None) -> None:
        """Fetches the outcome of ``handle`` in the calling thread (which is
        about to block on its future) and settles the future, if the engine
        can and the bridge thread has not taken the task yet: one engine
        call instead of a wait, a fetch and two thread wake-ups. If the
        fetch does not end (``timeout``, an exception such as Ctrl-C) the
        task goes back to the bridge."""
        if not self._fetch_one_supported:
            return
        with self._cond:
            callback = self._inbox.pop(handle, None)
        if callback is None:
            return
        try:
            outcome = self._fetch_one(handle, timeout)
        except BaseException:
            self.watch(handle, callback)
            raise
        callback(*outcome)

    #: The engine can fetch one task's outcome with a timeout (``_fetch_one``).
    _fetch_one_supported = False

    # Each engine's bridge defines these hooks:
    #: ``_fetch_one(handle, timeout)``: ``(ok, value)`` of the task, waiting
    #: up to ``timeout`` seconds (TimeoutError past it); only where
    #: ``_fetch_one_supported``.
    _fetch_one: Callable[[Any, float | None], tuple[bool, Any]]
    #: ``_ready(pending)``: blocks until some of ``pending`` have ended (or
    #: briefly, when new tasks may be waiting in the inbox); returns those
    #: that have.
    _ready: Callable[[dict[Any, Any]], list[Any]]
    #: ``_outcomes(handles)``: ``(ok, value)`` of each ended task of
    #: ``handles``, in order (an error of the engine is the value of the
    #: tasks it concerns).
    _outcomes: Callable[[list[Any]], list[tuple[bool, Any]]]

    def _take_inbox(self, pending: dict[Any, Any]) -> None:
        with self._cond:
            pending.update(self._inbox)
            self._inbox.clear()

    def _run(self) -> None:
        pending: dict[Any, Callable[[bool, Any], None]] = {}
        while True:
            with self._cond:
                while not self._stopped and not self._inbox and not pending:
                    self._cond.wait()
                if self._stopped:
                    return
            self._take_inbox(pending)
            try:
                ready = self._ready(pending)
            except Exception as e:  # the engine went away under its tasks
                self._take_inbox(pending)
                ready, outcomes = list(pending), [(False, e)] * len(pending)
            else:
                try:
                    outcomes = self._outcomes(ready) if ready else []
                except Exception as e:  # the fetch failed: so did these tasks
                    outcomes = [(False, e)] * len(ready)
            # A task may end before the thread took it from the inbox.
            self._take_inbox(pending)
            for handle, (ok, value) in zip(ready, outcomes, strict=True):
                callback = pending.pop(handle, None)
                if callback is not None:
                    try:
                        callback(ok, value)
                    except BaseException:  # a done-callback's SystemExit must not end the bridge
                        _log.exception("exception settling the future of %r", handle)


class _EngineFuture(Future[Any]):
    """The future of an engine task: a caller blocking on it before the
    bridge thread has taken the task fetches the outcome itself
    (``_Bridge.settle_here``)."""

    _handle: Any = None
    _bridge: _Bridge | None = None
    #: Cancelled as a dropped task of a map: its engine task runs on.
    _dropped = False

    def result(self, timeout: float | None = None) -> Any:
        """As ``concurrent.futures.Future.result``."""
        if self._bridge is not None and not self.done():
            try:
                self._bridge.settle_here(self._handle, timeout)
            except TimeoutError:
                raise TimeoutError() from None
        return super().result(timeout)


class _EngineExecutor(FutureStreams):
    """What the Ray and Dask executors share beyond the skeleton: launching
    a task and settling its future, timeouts, cancelling the engine's task.
    Each engine class defines how a task is launched (``_launch``), watched
    (its ``_bridge``), stopped (``_cancel``), and how the engine is let go
    (``_close``)."""

    _chunks = True
    _default_opts = (None, None)
    #: The engine has been let go (``_close``).
    _closed = False
    _launch: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any], int], Any]
    #: Settles the futures (made by the engine class once it is connected).
    _bridge: _Bridge
    _cancel: Callable[[Any], None]
    _close: Callable[[], None]

    def __init__(self, initializer: Any, retries: int) -> None:
        if initializer is not None:
            raise TypeError(
                f"{type(self).__name__} has no per-worker initializer: use a Ray actor or a Dask worker plugin"
            )
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._retries = retries
        self._pending: set[Future[Any]] = set()
        self._deadlines = _Deadlines(self)

    def _enqueue(self, fn: Callable[..., Any], args: Any, kwargs: Any, opts: Any) -> Future[Any]:
        timeout, retries = opts
        fut = _EngineFuture()
        handle = self._launch(fn, tuple(args), dict(kwargs), self._retries if retries is None else retries)
        fut._handle, fut._bridge = handle, self._bridge
        self._pending.add(fut)

        def done(ok: bool, value: Any) -> None:
            self._pending.discard(fut)
            settle(fut, ok, value)

        def stop_engine_task(f: cf.Future) -> None:  # type: ignore[type-arg]
            if f.cancelled() and fut._dropped:
                self._pending.discard(fut)
                return
            if f.cancelled() or isinstance(f.exception(), TimeoutError):
                self._pending.discard(fut)
                self._cancel(handle)

        fut.add_done_callback(stop_engine_task)
        self._bridge.watch(handle, done)
        if timeout is not None:
            # The future stays pending (as without a timeout), so that
            # cancel() and kill() still reach the engine's task.
            self._deadlines.watch(fut, timeout)
        return fut

    def options(self, *, timeout: float | None = None, retries: int | None = None) -> Options:
        """Per-task options for ``submit``/``map``/``imap_unordered``:
        ``timeout`` is seconds from submission (of the task, or of each
        chunk of a map); past it the future raises TimeoutError and the
        engine's task is cancelled (Ray: its worker is killed; Dask: a
        running function runs on). ``retries``: the engine re-runs a task
        whose worker was lost up to that many times."""
        check_timeout(timeout)
        if retries is not None and retries < 0:
            raise ValueError("retries must be >= 0")
        return Options(self, (timeout, retries))

    def _stop(self, first: bool, cancel_futures: bool) -> None:
        if first and not cancel_futures:
            self._fill_streams()
        if cancel_futures:
            for f in list(self._pending):
                f.cancel()

    def _join(self) -> None:
        cf.wait(list(self._pending))
        self._deadlines.stop(join=True)
        self._bridge.stop(join=True)
        if not self._closed:
            self._closed = True
            self._close()


class _RayBridge(_Bridge):
    """Waits with ``ray.wait`` on the oldest pending refs and fetches the
    ended ones with one ``ray.get``.

    A ``ray.wait`` or ``ray.get`` call costs 30-80 us whatever it carries
    (plus 0.2 us a ref waited on, 22 us a result fetched), so results are
    fetched in batches: with ``n`` tasks pending, the thread waits until
    ``n // 8`` of them (at most 64) have ended, or ``POLL`` has passed. One
    task pending is settled as soon as it ends; with many, a result waits at
    most ``POLL`` for its batch. The refs beyond the oldest ``WINDOW`` are
    looked at every ``REST_POLL`` at most: a task there that ended before
    the older ones waits that long at most."""

    #: Seconds a ``ray.wait`` blocks at most: the most a result waits for
    #: the rest of its batch, and the delay before tasks submitted in the
    #: meantime (or beyond the window) are looked at.
    POLL = 0.01
    #: The oldest refs waited on; Ray runs tasks about in submission order.
    WINDOW = 256
    #: Largest batch waited for.
    BATCH = 64
    #: Seconds between two looks at the refs beyond the window (a look
    #: costs about 0.2 us a ref: with 3,000 pending, one at each ``POLL``
    #: was most of the bridge's CPU).
    REST_POLL = 0.1
    #: The clock of ``REST_POLL``.
    _clock = staticmethod(time.monotonic)

    def __init__(self, owner: object, ray: Any) -> None:
        super().__init__(owner)
        self._ray = ray
        #: When the refs beyond the window were last looked at.
        self._rest_seen = 0.0

    def _ready(self, pending: dict[Any, Any]) -> list[Any]:
        wait = self._ray.wait
        window = list(itertools.islice(pending, self.WINDOW))
        want = min(len(window), max(1, len(pending) // 8), self.BATCH)
        # fetch_local=False: waiting costs 0.2 us a ref instead of 1.4 us;
        # ray.get fetches what it must.
        ready, _ = wait(window, num_returns=want, timeout=self.POLL, fetch_local=False)
        if len(ready) < want and len(pending) > len(window):  # the others, at a timeout
            now = self._clock()
            if now - self._rest_seen >= self.REST_POLL:
                self._rest_seen = now
                rest = list(itertools.islice(pending, self.WINDOW, None))
                more, _ = wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
                ready += more
        return ready  # type: ignore[no-any-return]

    def _outcomes(self, handles: list[Any]) -> list[tuple[bool, Any]]:
        try:
            return [(True, v) for v in self._ray.get(handles)]
        except Exception:  # one of them failed: each on its own
            return [self._outcome(h) for h in handles]

    _fetch_one_supported = True

    def _fetch_one(self, handle: Any, timeout: float | None) -> tuple[bool, Any]:
        try:
            return True, self._ray.get(handle, timeout=timeout)
        except self._ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"the task did not end within {timeout} s") from None
        except Exception:  # the task failed: its error, as the bridge maps it
            return self._outcome(handle)

    def _outcome(self, handle: Any) -> tuple[bool, Any]:
        exceptions = self._ray.exceptions
        try:
            return True, self._ray.get(handle)
        except exceptions.RayTaskError as e:
            return False, e.as_instanceof_cause()
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError) as e:
            return False, WorkerLostError(f"the Ray worker running this task was lost: {e}")
        except exceptions.TaskCancelledError as e:
            return False, cf.CancelledError(str(e))
        except BaseException as e:
            return False, e


class _DaskBridge(_Bridge):
    """Dask's ``as_completed`` watches the futures on the client's event
    loop; this thread takes the ended ones in batches and fetches the
    results of each batch with one ``client.gather``. (A done-callback per
    future went through Dask's callback thread, then asked the scheduler for
    the status and the result of each; ``as_completed(with_results=True)``
    fetches each result on its own as it ends.)

    A ``client.gather`` is a round trip through the client's event loop and
    the scheduler that costs more than a tiny task, so, as the Ray bridge,
    with ``n`` tasks pending the thread waits until ``n // 8`` of them (at
    most ``BATCH``) have ended, or ``POLL`` has passed since the first did:
    taking each batch as soon as one task had ended made 186 gathers of 5.4
    results for 1,000 tiny tasks. One task pending is settled as soon as it
    ends."""

    #: Seconds the first ended task of a batch waits at most for the rest.
    POLL = 0.01
    #: Largest batch waited for.
    BATCH = 64

    def __init__(self, owner: object, client: Any) -> None:
        super().__init__(owner)
        from distributed import as_completed

        self._client = client
        self._completed = as_completed(loop=client.loop, with_results=False)

    def watch(self, handle: Any, callback: Callable[[bool, Any], None]) -> None:
        super().watch(handle, callback)
        self._completed.add(handle)

    def _ready(self, pending: dict[Any, Any]) -> list[Any]:
        completed = self._completed
        try:
            batch: list[Any] = completed.next_batch(block=True)
        except StopIteration:  # a task in the inbox, not added yet
            with self._cond:
                self._cond.wait(0.001)
            return []
        want = min(max(1, len(pending) // 8), self.BATCH)
        deadline = time.monotonic() + self.POLL
        while len(batch) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with completed.thread_condition:  # notified at each task's end
                if not completed.has_ready():
                    completed.thread_condition.wait(left)
            batch += completed.next_batch(block=False)
        return batch

    def _outcomes(self, handles: list[Any]) -> list[tuple[bool, Any]]:
        finished = [h for h in handles if h.status == "finished"]
        try:
            values = dict(zip(finished, self._client.gather(finished, errors="skip"), strict=True))
        except Exception:
            values = {}
        # A result lost between its end and the gather: on its own.
        return [(True, values[h]) if h in values and h.status == "finished" else self._outcome(h) for h in handles]

    def _outcome(self, handle: Any) -> tuple[bool, Any]:
        from distributed.scheduler import KilledWorker

        try:
            if handle.status == "cancelled":
                return False, cf.CancelledError()
            exc = handle.exception()
            if exc is None:
                return True, handle.result()
            if isinstance(exc, KilledWorker):
                return False, WorkerLostError(f"the Dask worker running this task was lost: {exc}")
            return False, exc
        except BaseException as e:
            return False, e


def _calling(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function that calls ``fn`` (a local function, so cloudpickle
    sends it by value: a Ray worker needs no corral to run it)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    call.__name__ = call.__qualname__ = getattr(fn, "__name__", type(fn).__name__)
    return call


class RayExecutor(_EngineExecutor):
    """The pool API on Ray. ``address`` and ``ray_init_kwargs`` go to
    ``ray.init`` unless Ray is already initialized in this process (then
    that session is used and left running at shutdown)."""

    def __init__(
        self, address: str | None = None, *, initializer: Any = None, retries: int = 0, **ray_init_kwargs: Any
    ) -> None:
        try:
            import ray
        except ImportError as e:
            raise missing_extra("corral.RayExecutor", "ray", e) from e

        super().__init__(initializer, retries)
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            if address is None and "runtime_env" not in ray_init_kwargs:
                # A local Ray: its workers see this process's sys.path, as
                # corral's own workers do, so functions import by name.
                ray_init_kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            ray.init(address=address, **ray_init_kwargs)
        self._max_workers = max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))
        self._remote: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._bridge = _RayBridge(self, ray)
        self._open()

    def _remote_fn(self, fn: Callable[..., Any], retries: int) -> Any:
        """``ray.remote(fn)`` with these retries, made once (making it, and
        its ``.options``, costs more than a tiny task)."""
        hit = self._remote.get((id(fn), retries))
        if hit is None or hit[0] is not fn:
            if len(self._remote) > 256:
                self._remote.clear()
            # ray.remote takes a Python function (or a class, which it makes an
            # actor): a builtin, a bound method, a partial, a callable object
            # or a class to instantiate is called through a plain function.
            target = fn if inspect.isfunction(fn) else _calling(fn)
            remote = self._ray.remote(target).options(max_retries=retries, retry_exceptions=False)
            hit = self._remote[(id(fn), retries)] = (fn, remote)
        return hit[1]

    def _launch(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], retries: int) -> Any:
        ray = self._ray
        # Top-level ObjectRef arguments are resolved by Ray before the call.
        args = tuple(ray.put(a) if _is_large_array(a) else a for a in args)
        kwargs = {k: ray.put(v) if _is_large_array(v) else v for k, v in kwargs.items()}
        return self._remote_fn(fn, retries).remote(*args, **kwargs)

    def _drop(self, fut: Any) -> None:
        """A map's dropped chunk is cancelled here, not in Ray: its task runs
        on and its result is thrown away. ``ray.cancel`` racing the task's
        reply stops Ray's driver (Ray 2.60: ``task_manager.cc`` "Check
        failed ... Tried to complete task that was not pending", exit 1, no
        traceback; ray-project/ray#54846): 300 maps raising at item 60 lost
        the driver within 67-145 maps with the cancel, none in 300 without.
        ``cancel()``, ``kill()`` and timeouts still cancel the Ray task."""
        fut._dropped = True
        fut.cancel()

    def _cancel(self, handle: Any) -> None:
        try:
            self._ray.cancel(handle, force=True)
        except Exception:
            pass  # already finished

    def _close(self) -> None:
        if self._owns:
            self._ray.shutdown()


class DaskExecutor(_EngineExecutor):
    """The pool API on Dask distributed. ``address`` is a scheduler address,
    a ``Cluster`` or a ``Client`` (or give ``client=``); with neither, a
    ``LocalCluster`` of one single-thread worker process per CPU is started
    (and stopped at shutdown). A client or cluster given is left running."""

    def __init__(self, address: Any = None, *, client: Any = None, initializer: Any = None, retries: int = 0) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:
            raise missing_extra("corral.DaskExecutor", "dask", e) from e

        if isinstance(address, Client):
            if client is not None:
                raise TypeError("give the Dask client once: as address or as client=, not both")
            address, client = None, address
        super().__init__(initializer, retries)
        self._cluster: Any = None
        if client is None:
            if address is None:
                self._cluster = LocalCluster(
                    n_workers=os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            client = Client(address if self._cluster is None else self._cluster)
            self._owns = True
        else:
            self._owns = False
        self._client = client
        self._max_workers = max(1, sum(self._client.nthreads().values()))
        self._bridge = _DaskBridge(self, client)
        self._open()

    def _launch(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], retries: int) -> Any:
        c = self._client
        args = tuple(c.scatter(a, direct=True) if _is_large_array(a) else a for a in args)
        kwargs = {k: c.scatter(v, direct=True) if _is_large_array(v) else v for k, v in kwargs.items()}
        return c.submit(fn, *args, retries=retries, pure=False, **kwargs)

    def _cancel(self, handle: Any) -> None:
        try:
            handle.cancel()
        except Exception:
            pass

    def _close(self) -> None:
        if self._owns:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()
