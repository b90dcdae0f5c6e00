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
import itertools
import logging
import os
import sys
import time
import threading
import weakref
from typing import Any, Callable, Iterator

from . import _core, _pickle, _progress
from ._streams import StreamingMixin, ThreadFuture
from .errors import WorkerLostError
from .threads import _Watchdog

__all__ = ["DaskExecutor", "RayExecutor"]

#: numpy arrays at least this large go through the engine's object store.
LARGE = 1 << 20


def _is_large_array(x: Any) -> bool:
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray" and x.nbytes >= LARGE


class _Options:
    """Per-task options bound to an executor."""

    def __init__(self, pool: "_EngineExecutor", timeout: float | None, retries: int | None) -> None:
        self._pool, self._timeout, self._retries = pool, timeout, retries

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ThreadFuture:
        """``submit`` with these options."""
        with self._pool._shutdown_lock:
            self._pool._check_open()
            return self._pool._enqueue(fn, args, kwargs, self._timeout, self._retries)


class _EngineExecutor(StreamingMixin, cf.Executor):
    """What the Ray and Dask executors share: futures, options, timeouts,
    streams, shutdown. Each engine class defines how a task is launched
    (``_launch``), watched (``_on_done``), stopped (``_cancel``), and how
    the engine is let go (``_close``)."""

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
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()
        self._pending: set[ThreadFuture] = set()
        self._watchdog = _Watchdog(self)

    # -- the pool API ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: Any,
        kwargs: Any,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> ThreadFuture:
        fut = ThreadFuture()
        handle = self._launch(fn, tuple(args), dict(kwargs), self._retries if retries is None else retries)
        self._pending.add(fut)

        def done(ok: bool, value: Any) -> None:
            self._pending.discard(fut)
            try:
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            except cf.InvalidStateError:
                pass  # cancelled or timed out meanwhile

        def stop_engine_task(f: cf.Future) -> None:  # type: ignore[type-arg]
            if f.cancelled() or isinstance(f.exception(), TimeoutError):
                self._pending.discard(fut)
                self._cancel(handle)

        fut.add_done_callback(stop_engine_task)
        self._on_done(handle, done)
        if timeout is not None:
            fut.set_running_or_notify_cancel()
            self._watchdog.watch(fut, timeout)
        return fut

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ThreadFuture:  # type: ignore[override]
        """Runs ``fn(*args, **kwargs)`` on the engine; returns its future."""
        with self._shutdown_lock:
            self._check_open()
            return self._enqueue(fn, args, kwargs)

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *iterables: Any,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Results of ``fn`` over the zipped ``iterables``, in order, read
        lazily. Items travel in chunks (one engine task each), sized from
        the measured time per item when ``chunksize`` is None, so the
        engine's cost per task is spread over a chunk."""
        return self._chunked(
            fn, zip(*iterables), True, timeout, chunksize, _progress.total_of(iterables) if progress else -1,
            _progress.total_of(iterables) is not None,
        )

    def imap_unordered(
        self,
        fn: Callable[..., Any],
        iterable: Any,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Results of ``fn`` over ``iterable`` as chunks finish."""
        items = ((x,) for x in iterable)
        return self._chunked(
            fn, items, False, timeout, chunksize, _progress.total_of((iterable,)) if progress else -1,
            _progress.total_of((iterable,)) is not None,
        )

    def _chunked(
        self, fn: Callable[..., Any], items: Iterator[Any], ordered: bool, timeout: float | None, chunksize: int | None, total: int | None,
        sized: bool = False,
    ) -> Iterator[Any]:
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        sizer = _core.ChunkSizer() if chunksize is None else None

        def chunks() -> Iterator[tuple[Any, list[Any]]]:
            while True:
                chunk = list(itertools.islice(items, sizer.next() if sizer is not None else chunksize))
                if not chunk:
                    return
                yield (fn, chunk)

        results = self._stream(_run_engine_chunk, chunks(), ordered, timeout, None, sized)
        bar = _progress.bar(total) if total != -1 else None
        return self._flatten(results, sizer, bar)

    @staticmethod
    def _flatten(results: Iterator[Any], sizer: Any, bar: Any) -> Iterator[Any]:
        try:
            for values, packed, busy_ns in results:
                if sizer is not None:
                    sizer.observe(max(1, len(values)), busy_ns)
                if bar is not None:
                    bar.update(len(values))
                yield from values
                if packed is not None:
                    raise _pickle.unpack_exception(packed)
        finally:
            if bar is not None:
                bar.close()

    def options(self, *, timeout: float | None = None, retries: int | None = None) -> _Options:
        """Per-task ``timeout`` (seconds from submission) and ``retries``."""
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        if retries is not None and retries < 0:
            raise ValueError("retries must be >= 0")
        return _Options(self, timeout, retries)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; ``cancel_futures`` cancels those not finished;
        ``wait`` waits for the others, then lets go of the engine (a cluster
        this executor started is stopped)."""
        with self._shutdown_lock:
            if self._shutdown:
                return
            self._shutdown = True
            if not cancel_futures:
                self._fill_streams()
        if cancel_futures:
            for f in list(self._pending):
                f.cancel()
        if wait:
            cf.wait(list(self._pending))
            self._watchdog.stop(join=True)
            self._close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=True)


def _run_engine_chunk(fn: Callable[..., Any], chunk: list[Any]) -> tuple[list[Any], bytes | None, int]:
    """Runs on an engine worker: ``fn(*args)`` for each item of a chunk;
    returns the results before any exception, the packed exception, and
    the nanoseconds it took."""
    from ._worker import _run_chunk

    t0 = time.perf_counter_ns()
    values, packed = _run_chunk(fn, (True, chunk))
    return values, packed, time.perf_counter_ns() - t0


class RayExecutor(_EngineExecutor):
    """The pool API on Ray. ``address`` and ``ray_init_kwargs`` go to
    ``ray.init`` unless Ray is already initialized in this process (then
    that session is used and left running at shutdown)."""

    def __init__(
        self, address: str | None = None, *, initializer: Any = None, retries: int = 0, **ray_init_kwargs: Any
    ) -> None:
        import ray

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
    or give ``client=``; with neither, a ``LocalCluster`` of one single-thread
    worker process per CPU is started (and stopped at shutdown)."""

    def __init__(
        self, address: str | None = None, *, client: Any = None, initializer: Any = None, retries: int = 0
    ) -> None:
        from distributed import Client, LocalCluster

        super().__init__(initializer, retries)
        self._cluster = None
        if client is None:
            if address is None:
                self._cluster = LocalCluster(
                    n_workers=os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                address = self._cluster
            client = Client(address)
            self._owns = True
        else:
            self._owns = False
        self._client = client
        self._max_workers = max(1, sum(self._client.nthreads().values()))

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
