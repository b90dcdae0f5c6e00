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
"""

from __future__ import annotations

import concurrent.futures as cf
import heapq
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

#: numpy arrays at least this large go through the engine's object store.
LARGE = 1 << 20


def _is_large_array(x: Any) -> bool:
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray" and x.nbytes >= LARGE


class _Deadlines:
    """One thread per executor (``corral-engine-timeouts``, lazy) that
    fails the futures of engine tasks past their timeout; the future's
    done callback then cancels the engine task. The engine runs the work
    and has no timeout of its own, so this is the engine executors' one
    timeout mechanism. It ends at ``stop``, or when ``owner`` is collected
    without being shut down."""

    def __init__(self, owner: object) -> None:
        self._heap: list[tuple[float, int, weakref.ref[Future[Any]], float]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Not the owner itself: the finalizer would keep it alive.
        weakref.finalize(owner, self.stop)

    def watch(self, fut: Future[Any], timeout: float) -> None:
        """Fails ``fut`` with TimeoutError ``timeout`` seconds from now
        unless it is done by then (it is held weakly meanwhile)."""
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + timeout, next(self._seq), weakref.ref(fut), timeout))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="corral-engine-timeouts", daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self, join: bool = False) -> None:
        """Ends the thread; with ``join``, waits until it has ended."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join()

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


class _EngineExecutor(FutureStreams):
    """What the Ray and Dask executors share beyond the skeleton: launching
    a task and settling its future, timeouts, cancelling the engine's task.
    Each engine class defines how a task is launched (``_launch``), watched
    (``_on_done``), stopped (``_cancel``), and how the engine is let go
    (``_close``)."""

    _chunks = True
    _default_opts = (None, None)
    #: The engine has been let go (``_close``).
    _closed = False
    _launch: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any], int], Any]
    _on_done: Callable[[Any, Callable[[bool, Any], None]], None]
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
        fut: Future[Any] = Future()
        handle = self._launch(fn, tuple(args), dict(kwargs), self._retries if retries is None else retries)
        self._pending.add(fut)

        def done(ok: bool, value: Any) -> None:
            self._pending.discard(fut)
            settle(fut, ok, value)

        def stop_engine_task(f: cf.Future) -> None:  # type: ignore[type-arg]
            if f.cancelled() or isinstance(f.exception(), TimeoutError):
                self._pending.discard(fut)
                self._cancel(handle)

        fut.add_done_callback(stop_engine_task)
        self._on_done(handle, done)
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
        if not self._closed:
            self._closed = True
            self._close()


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
        self._open()

    def _remote_fn(self, fn: Callable[..., Any], retries: int) -> Any:
        """``ray.remote(fn)`` with these retries, made once (making it, and
        its ``.options``, costs more than a tiny task)."""
        hit = self._remote.get((id(fn), retries))
        if hit is None or hit[0] is not fn:
            if len(self._remote) > 256:
                self._remote.clear()
            remote = self._ray.remote(fn).options(max_retries=retries, retry_exceptions=False)
            hit = self._remote[(id(fn), retries)] = (fn, remote)
        return hit[1]

    def _launch(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], retries: int) -> Any:
        ray = self._ray
        # Top-level ObjectRef arguments are resolved by Ray before the call.
        args = tuple(ray.put(a) if _is_large_array(a) else a for a in args)
        kwargs = {k: ray.put(v) if _is_large_array(v) else v for k, v in kwargs.items()}
        return self._remote_fn(fn, retries).remote(*args, **kwargs)

    def _on_done(self, handle: Any, callback: Callable[[bool, Any], None]) -> None:
        exceptions = self._ray.exceptions

        def settle(f: cf.Future) -> None:  # type: ignore[type-arg]
            try:
                callback(True, f.result())
            except exceptions.RayTaskError as e:
                callback(False, e.as_instanceof_cause())
            except (exceptions.WorkerCrashedError, exceptions.NodeDiedError) as e:
                callback(False, WorkerLostError(f"the Ray worker running this task was lost: {e}"))
            except exceptions.TaskCancelledError as e:
                callback(False, cf.CancelledError(str(e)))
            except BaseException as e:
                callback(False, e)

        handle.future().add_done_callback(settle)

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
        self._open()

    def _launch(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], retries: int) -> Any:
        c = self._client
        args = tuple(c.scatter(a, direct=True) if _is_large_array(a) else a for a in args)
        kwargs = {k: c.scatter(v, direct=True) if _is_large_array(v) else v for k, v in kwargs.items()}
        return c.submit(fn, *args, retries=retries, pure=False, **kwargs)

    def _on_done(self, handle: Any, callback: Callable[[bool, Any], None]) -> None:
        from distributed.scheduler import KilledWorker

        def settle(f: Any) -> None:
            try:
                if f.status == "cancelled":
                    callback(False, cf.CancelledError())
                    return
                exc = f.exception()
                if exc is None:
                    callback(True, f.result())
                elif isinstance(exc, KilledWorker):
                    callback(False, WorkerLostError(f"the Dask worker running this task was lost: {exc}"))
                else:
                    callback(False, exc)
            except BaseException as e:
                callback(False, e)

        handle.add_done_callback(settle)

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
