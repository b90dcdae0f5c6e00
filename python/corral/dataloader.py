"""``corral.DataLoader``: torch's ``DataLoader`` over corral's process pool.

A batch is a pool task: the worker fetches the samples of its indices and
collates them there, so the batch is born in the worker and travels to the
parent through the pool's result queue, whose large buffers are shared
memory (the default collate's batch arrays, from 4 KiB, and a worker's
other NumPy arrays of >= 1 MiB are born in that memory and travel without
any copy; a collate_fn's smaller arrays are copied once at send). At most
``prefetch_factor * num_workers`` batches are in flight; they are yielded
in sampler order. A worker that dies under a batch (SIGKILL, segfault, OOM)
costs that batch a retry (``retries``), not the epoch; a batch that raises
re-raises in the loop at its position, with the worker's traceback.

An iterable dataset (``__iter__``) runs as one stream task per worker, each
iterating its own copy of the dataset (split it with
:func:`get_worker_info`, as with torch); its batches come through a bounded
:class:`corral.Queue` per stream and are yielded round-robin, as torch does.
A stream's position cannot be recovered: a worker that dies under an
iterable dataset raises :class:`corral.WorkerLostError` in the loop.

Migrating from ``torch.utils.data.DataLoader`` (what differs):

- the default collate returns NumPy arrays; torch tensors (views on the
  same memory, ``torch.from_numpy``) when the program has imported torch;
- ``seed=`` (an int) makes the shuffle order and the workers' seeds
  reproducible without torch; ``generator=`` takes a ``torch.Generator``
  or a ``numpy.random.Generator``;
- ``retries=`` (default 2): how many times a batch whose worker died is
  re-run; ``progress=`` draws a tqdm bar over the batches;
- a batch goes to whichever worker is free (torch: batch i to worker
  i % num_workers); so that a seed still reproduces the data, each batch
  task first seeds ``random``, NumPy's and torch's global generators from
  the epoch's base seed and the batch's number: the random draws of a
  per-sample augmentation are the same run to run, whichever worker loads
  the batch (and when a batch is re-run after its worker died). The
  per-worker seeding (``WorkerInfo.seed``, the generators as seeded before
  ``worker_init_fn``) is torch's; generators a ``worker_init_fn`` makes of
  its own follow the worker, not the batch. An iterable dataset's streams
  (one per worker) are not reseeded per batch;
- ``pin_memory`` is accepted and does nothing on a machine without an
  accelerator (as torch, with a warning);
- ``multiprocessing_context`` is a start method name ("fork", "spawn",
  "forkserver") or a context; None is ``multiprocessing``'s default, as
  torch; ``worker_init_fn`` and the seeding run in corral's pool
  initializer, so a replacement worker runs them again (same seed);
- without ``persistent_workers``, an epoch's end does not wait for its
  workers to exit (torch joins them): the next epoch's workers may start
  while the last ones are still leaving, so for a moment both sets exist
  (their memory too: a dataset a worker copied on write).
"""

import collections
import contextlib
import copy
import importlib
import itertools
import math
import multiprocessing
import queue
import random
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _progress, _shm_arrays
from ._pickle import OUT_OF_BAND_MIN
from ._state import worker_id
from .errors import ChannelClosed, WorkerLostError
from .pool import ProcessPoolExecutor
from .queues import Queue
from .synchronize import Event, Semaphore

__all__ = ["DataLoader", "WorkerInfo", "default_collate", "get_worker_info"]


@dataclass(frozen=True)
class WorkerInfo:
    """What :func:`get_worker_info` says inside a DataLoader worker (the
    fields of torch's ``WorkerInfo``)."""

    #: This worker's number, 0 to ``num_workers - 1`` (its pool slot: a
    #: replacement keeps it).
    id: int
    #: The loader's number of workers.
    num_workers: int
    #: This worker's seed: the epoch's base seed + ``id``.
    seed: int
    #: The worker's copy of the dataset.
    dataset: Any


#: Seconds a stream task waits for room in its queue before it looks
#: whether its epoch was left.
_STOP_POLL = 0.1

#: (pid, info) of this DataLoader worker; None elsewhere (a forked child
#: of a worker sees another pid).
_info: tuple[int, WorkerInfo] | None = None
#: The worker's side of its loader (set by ``_setup``).
_side: "_WorkerSide | None" = None


def get_worker_info() -> WorkerInfo | None:
    """In a DataLoader worker, its :class:`WorkerInfo` (``id``,
    ``num_workers``, ``seed``, ``dataset``); None in the main process, as
    ``torch.utils.data.get_worker_info()``. An iterable dataset splits its
    stream with it::

        def __iter__(self):
            info = corral.get_worker_info()
            start, step = (0, 1) if info is None else (info.id, info.num_workers)
            return iter(self.items[start::step])
    """
    import os

    held = _info
    if held is None or held[0] != os.getpid():
        return None
    return held[1]


# ---------------------------------------------------------------- collate


def _np() -> Any:
    try:
        import numpy
    except ImportError as e:
        # corral does not depend on NumPy; the default collate batches into it.
        raise ImportError(
            "corral.DataLoader's default collate makes NumPy arrays and needs numpy: "
            "pip install numpy (or pass a collate_fn of your own)"
        ) from e
    return numpy


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _stack(samples: Sequence[Any]) -> Any:
    """The arrays of ``samples`` stacked into one new array, written once.
    In a pool worker it is born in shared memory (the result arena) from
    the size that travels out of band: the batch then reaches the parent
    without being copied into it at send (below ``_shm_arrays.MIN_BYTES``
    it was: 800 KB batches of small images)."""
    np = _np()
    first = samples[0]
    with _shm_arrays.born_in_arena(OUT_OF_BAND_MIN):
        out = np.empty((len(samples), *first.shape), dtype=first.dtype)
    for i, s in enumerate(samples):
        if s.shape != first.shape:
            raise RuntimeError(
                f"stack expects each array to be equal size, but got {first.shape} at entry 0 "
                f"and {s.shape} at entry {i}"
            )
        out[i] = s
    return out


def default_collate(batch: Sequence[Any]) -> Any:
    """Merges a list of samples into a batch, as torch's ``default_collate``
    with NumPy arrays: arrays (and CPU torch tensors) are stacked along a
    new first axis into one array; Python and NumPy numbers become an array
    (int64, float64, bool); dicts, namedtuples, tuples and lists are
    collated field by field (tuples become lists, as torch); strings and
    bytes stay lists. The DataLoader turns its arrays into torch tensors
    (no copy) when the program has imported torch."""
    np = _np()
    elem = batch[0]
    if _is_tensor(elem):
        tensors = [t.detach().cpu() for t in batch]
        try:
            arrays = [t.numpy() for t in tensors]
        except TypeError:
            # bfloat16, float8: no NumPy dtype; torch stacks them (they
            # travel as tensors, without copying their storage).
            return sys.modules["torch"].stack(tensors)
        return _stack(arrays)
    if isinstance(elem, np.ndarray):
        if elem.dtype.kind in "OUS":
            raise TypeError(f"default_collate: batch must contain numbers, arrays, dicts or lists; found {elem.dtype}")
        return _stack(batch)
    if isinstance(elem, np.generic):
        return np.array(batch)
    if isinstance(elem, bool):
        return np.array(batch, dtype=np.bool_)
    if isinstance(elem, int):
        return np.array(batch, dtype=np.int64)
    if isinstance(elem, float):
        return np.array(batch, dtype=np.float64)
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, Mapping):
        collated = {key: default_collate([d[key] for d in batch]) for key in elem}
        try:
            return type(elem)(collated)  # type: ignore[call-arg]
        except TypeError:
            return collated
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(default_collate(list(s)) for s in zip(*batch, strict=True)))
    if isinstance(elem, Sequence):
        size = len(elem)
        if any(len(e) != size for e in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        transposed = [default_collate(list(s)) for s in zip(*batch, strict=True)]
        if isinstance(elem, tuple):
            return transposed
        try:
            return type(elem)(transposed)  # type: ignore[call-arg]
        except TypeError:
            return transposed
    raise TypeError(
        f"default_collate: batch must contain numbers, arrays, tensors, dicts or lists; found {type(elem).__name__}"
    )


def _walk(x: Any, leaf: Callable[[Any], Any]) -> Any:
    """``x`` with ``leaf`` applied to each value inside its mappings,
    namedtuples, tuples and lists, as torch's ``default_convert``: a
    mapping or list keeps its type where it can be rebuilt (a mutable
    mapping is copied and updated, another is called with a dict, a list
    subclass with a list; a type that refuses gives a plain dict or list);
    a tuple becomes a list. The one walker over a batch: the worker's
    ``_convert`` and the parent's ``_to_torch`` differ only in ``leaf`` (on
    a default-collated batch, which holds no plain tuple, the tuple rule
    changes nothing)."""
    if isinstance(x, Mapping):
        values = {k: _walk(v, leaf) for k, v in x.items()}
        try:
            if isinstance(x, MutableMapping):
                clone = copy.copy(x)
                clone.update(values)
                return clone
            return type(x)(values)  # type: ignore[call-arg]
        except TypeError:
            return values
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_walk(v, leaf) for v in x))
    if isinstance(x, tuple):
        return [_walk(v, leaf) for v in x]
    if isinstance(x, list):
        items = [_walk(v, leaf) for v in x]
        if type(x) is list:
            return items
        try:
            return type(x)(items)
        except TypeError:
            return items
    return leaf(x)


def _as_array(x: Any) -> Any:
    if not _is_tensor(x):
        return x
    x = x.detach().cpu()
    try:
        return x.numpy()
    except TypeError:  # bfloat16, float8: travels as a tensor
        return x


def _as_tensor(x: Any) -> Any:
    np = sys.modules.get("numpy")
    if np is None:
        return x
    if isinstance(x, np.ndarray) and x.dtype.kind in "biufc":
        if not x.flags.writeable:
            # A batch received from a worker views shared memory that only
            # this process uses; torch wants a writable array.
            x = _writable(x)
        return sys.modules["torch"].from_numpy(x)
    if isinstance(x, np.generic):
        return sys.modules["torch"].as_tensor(x)
    return x


def _convert(sample: Any) -> Any:
    """A sample as is (``batch_size=None``: no batching), its tensors as
    arrays (they travel as arrays and become tensors again in the parent);
    a tuple becomes a list, as torch's ``default_convert``."""
    return _walk(sample, _as_array)


def _to_torch(batch: Any) -> Any:
    """The parent's side of the default collate: every array of ``batch``
    as a torch tensor on the same memory (``torch.from_numpy``)."""
    return _walk(batch, _as_tensor)


def _writable(arr: Any) -> Any:
    try:
        arr.flags.writeable = True
        return arr
    except ValueError:
        return arr.copy()


# ---------------------------------------------------------------- workers


@dataclass
class _WorkerSide:
    """What a worker keeps of its loader: the dataset and how to batch it."""

    dataset: Any
    collate: Callable[[Any], Any]
    auto: bool
    batch_size: int | None
    drop_last: bool


def _seed_all(seed: int, wid: int, base_seed: int) -> None:
    random.seed(seed)
    if "numpy" in sys.modules:
        np = sys.modules["numpy"]
        np.random.seed(np.random.SeedSequence([wid, base_seed]).generate_state(4))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def _random_modules_loaded() -> None:
    """Imports ``numpy.random`` here (when NumPy is imported) before the
    workers start: NumPy 2 loads it on first use, and each worker's
    seeding would (20-60 ms of CPU per worker and epoch, before its first
    batch); forked workers inherit it, a fork server preloads it."""
    np = sys.modules.get("numpy")
    if np is not None:
        np.random  # noqa: B018 (the attribute access is the import)


def _setup(side: _WorkerSide, num_workers: int, base_seed: int, worker_init_fn: Callable[[int], Any] | None) -> None:
    """The pool initializer: one torch thread (when torch is imported),
    records the worker's info, seeds ``random``, NumPy and torch (when
    imported) from ``base_seed + id``, then runs ``worker_init_fn(id)``."""
    global _side
    wid = worker_id() or 0
    seed = base_seed + wid
    _side = side
    torch = sys.modules.get("torch")
    if torch is not None:
        # As torch's worker loop: one intra-op thread per worker. A forked
        # worker whose parent had used torch's OpenMP pool otherwise blocks
        # for good in its first parallel op (F11), and N workers would
        # each run a pool of all the cores.
        torch.set_num_threads(1)
    _set_info(WorkerInfo(wid, num_workers, seed, side.dataset))
    _seed_all(seed, wid, base_seed)
    if worker_init_fn is not None:
        worker_init_fn(wid)


def _set_info(info: WorkerInfo) -> None:
    """Records this worker's info for :func:`get_worker_info` and, when
    torch is imported, for ``torch.utils.data.get_worker_info()`` too: a
    torch dataset that shards by torch's function (its docs' pattern) would
    otherwise see None and read everything in every worker."""
    import os

    global _info
    _info = (os.getpid(), info)
    torch = sys.modules.get("torch")
    if torch is not None:
        # By name: a static import would make type checkers analyse torch.
        torch_worker: Any = importlib.import_module("torch.utils.data._utils.worker")
        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=info.id, num_workers=info.num_workers, seed=info.seed, dataset=info.dataset
        )


def _fetch(indices: Any, base_seed: int, number: int) -> Any:
    """A batch task: the samples of ``indices`` collated (one index, not
    collated by batch, when the loader does not batch), after seeding
    ``random``, NumPy's and torch's global generators from the epoch's
    ``base_seed`` and the batch's ``number``: its random draws are the same
    whichever worker runs it (or re-runs it after a worker died)."""
    side = _side
    if side is None:
        raise RuntimeError("corral.DataLoader task outside a DataLoader worker")
    _seed_batch(base_seed, number)
    with _as_error(_info[1].id if _info is not None else 0):
        return _load(side, indices)


@contextlib.contextmanager
def _as_error(wid: int) -> Iterator[None]:
    """An exception of the dataset or collate in worker ``wid`` gets
    torch's context as a note, "Caught ValueError in DataLoader worker
    process 1." (it reaches the loop as itself, the worker's traceback as
    its ``__cause__``). A SystemExit or KeyboardInterrupt becomes a
    RuntimeError (as torch's "DataLoader worker exited unexpectedly"):
    re-raised as such, it would end the main process silently
    (``sys.exit(3)`` in ``__getitem__`` -> the trainer exits 3)."""
    import os

    try:
        yield
    except Exception as e:
        e.add_note(f"Caught {type(e).__name__} in DataLoader worker process {wid}.")
        raise
    except BaseException as e:
        err = RuntimeError(f"DataLoader worker (pid {os.getpid()}) exited unexpectedly: the dataset raised {e!r}")
        err.add_note(f"Caught {type(e).__name__} in DataLoader worker process {wid}.")
        raise err from e


def _seed_batch(base_seed: int, number: int) -> None:
    # splitmix64 of (base_seed, number): distinct, well-mixed batch seeds.
    z = (base_seed + (number + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    seed = (z ^ (z >> 31)) >> 1
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    torch = sys.modules.get("torch")
    if torch is not None:
        # The CPU generator only: ~1 us, where torch.manual_seed (which
        # also seeds the accelerators' lazily) cost 140-200 us per batch.
        torch.default_generator.manual_seed(seed)


def _load(side: _WorkerSide, indices: Any) -> Any:
    ds = side.dataset
    if side.auto:
        getitems = getattr(ds, "__getitems__", None)
        samples = getitems(indices) if getitems is not None else [ds[i] for i in indices]
        return side.collate(samples)
    return side.collate(ds[indices])


def _stream(k: int, out: Queue[Any], stop: Event, arrived: Semaphore | None) -> None:
    """An iterable dataset's stream task: iterates the worker's copy of the
    dataset as worker ``k``, putting each batch in ``out`` (None at the end)
    and releasing ``arrived`` (if any) after each put. Returns early once
    ``stop`` is set: the epoch was left (``break``, an error in the loop),
    so nobody reads ``out`` any more."""
    side = _side
    held = _info
    if side is None or held is None:
        raise RuntimeError("corral.DataLoader task outside a DataLoader worker")
    info = held[1]
    if info.id != k:  # two streams on one worker (one waited for the other)
        base = info.seed - info.id
        info = WorkerInfo(k, info.num_workers, base + k, info.dataset)
        _set_info(info)
        _seed_all(info.seed, k, base)
    with _as_error(k):
        for batch in _batches_of(side, iter(side.dataset)):
            if not _put(out, batch, stop, arrived):
                return
    _put(out, None, stop, arrived)


def _put(out: Queue[Any], item: Any, stop: Event, arrived: Semaphore | None) -> bool:
    """Puts ``item`` in ``out`` unless ``stop`` is set while it is full
    (False then): a persistent worker must not block for good on the queue
    of an epoch that was left. Releases ``arrived`` once it is in."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_STOP_POLL)
        except queue.Full:
            continue
        if arrived is not None:
            arrived.release()
        return True
    return False


def _batches_of(side: _WorkerSide, it: Iterator[Any]) -> Iterator[Any]:
    """An iterable dataset's batches (its samples one by one without
    auto-batching)."""
    if not side.auto:
        for sample in it:
            yield side.collate(sample)
        return
    size = side.batch_size or 1
    while True:
        samples = list(itertools.islice(it, size))
        if not samples or (side.drop_last and len(samples) < size):
            return
        yield side.collate(samples)


# ---------------------------------------------------------------- loader


class _Epoch:
    """One pass over the loader: an iterator of batches. Closing it (or
    dropping it) cancels its batches in flight; a loader without persistent
    workers then stops its pool."""

    def __init__(self, loader: "DataLoader", gen: Iterator[Any], n: int | None) -> None:
        self._gen = gen
        self._len = n
        self._loader = weakref.ref(loader)
        self._ended = False
        self._superseded = False

    def __iter__(self) -> "_Epoch":
        return self

    def __next__(self) -> Any:
        if self._superseded:
            raise RuntimeError(
                "this DataLoader iterator was ended by a newer iter() of its loader: persistent "
                "workers over an iterable dataset serve one epoch at a time (torch resets its one "
                "iterator); finish or drop an epoch before starting the next, or use "
                "persistent_workers=False (each iterator then has its own workers)"
            )
        try:
            return next(self._gen)
        except StopIteration:
            self._ended = True
            raise

    def _supersede(self) -> None:
        """A newer epoch takes the workers: this one stops, and says so at
        its next ``next()`` (never a silently short epoch)."""
        if not self._ended:
            self._superseded = True
            self.close()

    def __len__(self) -> int:
        if self._len is None:
            raise TypeError("this DataLoader's dataset has no len()")
        return self._len

    def close(self) -> None:
        """Stops the epoch: its batches in flight are cancelled."""
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()


def _start_method(ctx: Any) -> str:
    if ctx is None:
        return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_context().get_start_method()
    if isinstance(ctx, str):
        if ctx not in ("fork", "spawn", "forkserver"):
            raise ValueError(
                f"multiprocessing_context option should specify a valid start method in "
                f"['fork', 'spawn', 'forkserver'], but got multiprocessing_context={ctx!r}"
            )
        return ctx
    method = getattr(ctx, "get_start_method", None)
    if method is None:
        raise TypeError(
            f"multiprocessing_context option should be a valid context object or a string specifying "
            f"the start method, but got multiprocessing_context={ctx!r}"
        )
    return str(method())


class DataLoader:
    """Batches of a dataset loaded by worker processes, as
    ``torch.utils.data.DataLoader`` (same arguments and errors; see the
    module doc for what differs).

    ``dataset``: map-style (``__getitem__`` and ``__len__``) or iterable
    (``__iter__``). ``batch_size`` samples per batch (None: no batching,
    each sample through ``collate_fn``, by default as is), from ``sampler``
    (indices; default in order, or shuffled with ``shuffle=True``) or
    ``batch_sampler`` (lists of indices). ``num_workers`` processes of a
    corral pool load them (0: in this process); ``prefetch_factor`` batches
    per worker are in flight (default 2). ``collate_fn`` merges a list of
    samples (default :func:`default_collate`). ``timeout`` seconds to wait
    for a batch (0: forever), then RuntimeError. ``worker_init_fn(id)``
    runs in each worker after seeding. ``persistent_workers`` keeps the
    workers between epochs. ``in_order=False`` yields the batches as they
    complete, not in sampler order (as torch >= 2.6; with workers only): a
    slow batch does not hold back the others. ``generator`` (torch or
    NumPy) or ``seed`` (int): the shuffle order and the workers' base seed,
    drawn per epoch.
    ``retries``: re-runs of a batch whose worker died. ``progress``: a
    tqdm bar over the batches (True, tqdm options or a tqdm class).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Iterable[Any] | None = None,
        batch_sampler: Iterable[Sequence[Any]] | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[Any], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], Any] | None = None,
        multiprocessing_context: Any = None,
        generator: Any = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        in_order: bool = True,
        seed: int | None = None,
        retries: int = 2,
        progress: _progress.Spec = False,
    ) -> None:
        if isinstance(num_workers, bool) or not isinstance(num_workers, int):
            raise TypeError(f"num_workers must be an integer, not {type(num_workers).__name__}")
        if num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to disable multiprocessing.")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError(
                "prefetch_factor option could only be specified in multiprocessing."
                "let num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to None."
            )
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        if prefetch_factor is not None and prefetch_factor < 0:
            raise ValueError("prefetch_factor option should be non-negative")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")
        if type(retries) is not int or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
        if seed is not None and generator is not None:
            raise ValueError("pass seed= or generator=, not both")
        _progress.wanted(progress)  # TypeError now, not at the first batch
        iterable = not hasattr(dataset, "__getitem__") and hasattr(dataset, "__iter__")
        iterable = iterable or _is_torch_iterable(dataset)
        if iterable:
            if shuffle not in (False, None):
                raise ValueError(
                    f"DataLoader with IterableDataset: expected unspecified shuffle option, but got shuffle={shuffle}"
                )
            if sampler is not None:
                raise ValueError(
                    f"DataLoader with IterableDataset: expected unspecified sampler option, but got sampler={sampler}"
                )
            if batch_sampler is not None:
                raise ValueError(
                    "DataLoader with IterableDataset: expected unspecified batch_sampler option, "
                    f"but got batch_sampler={batch_sampler}"
                )
        else:
            if not hasattr(dataset, "__getitem__"):
                raise TypeError(f"dataset must be map-style (__getitem__) or iterable (__iter__), not {dataset!r}")
        shuffle = bool(shuffle)
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError(
                    "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and drop_last"
                )
            batch_size = None
            drop_last = False
        elif batch_size is None:
            if drop_last:
                raise ValueError(
                    "batch_size=None option disables auto-batching and is mutually exclusive with drop_last"
                )
        elif type(batch_size) is not int or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError("collate_fn must be callable")
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise TypeError("worker_init_fn must be callable")
        start_method = _start_method(multiprocessing_context) if num_workers > 0 else None
        if pin_memory and not _accelerator():
            warnings.warn(
                "'pin_memory' argument is set as true but no accelerator is found, "
                "then device pinned memory won't be used.",
                stacklevel=2,
            )
        #: The dataset (map-style or iterable).
        self.dataset = dataset
        #: Samples per batch (None: no auto-batching).
        self.batch_size = batch_size
        #: Whether a short last batch is dropped.
        self.drop_last = drop_last
        #: The sampler of indices (None for an iterable dataset or a batch sampler).
        self.sampler = sampler
        #: The sampler of index lists, if given.
        self.batch_sampler = batch_sampler
        #: Worker processes (0: the calling process loads).
        self.num_workers = num_workers
        #: Batches in flight per worker (None without workers).
        self.prefetch_factor = prefetch_factor
        #: Whether the workers are kept between epochs.
        self.persistent_workers = persistent_workers
        #: Whether batches are yielded in sampler order (False: as they
        #: complete; only with workers).
        self.in_order = in_order
        #: Seconds to wait for a batch (0: no limit).
        self.timeout = timeout
        #: The function that merges samples (None: ``default_collate``).
        self.collate_fn = collate_fn
        #: Called with the worker's id in each worker after seeding.
        self.worker_init_fn = worker_init_fn
        #: Accepted for torch's signature (no accelerator pinning here).
        self.pin_memory = pin_memory
        #: The source of the shuffle order and base seeds, if given.
        self.generator = generator
        self._iterable = iterable
        self._shuffle = shuffle
        self._start_method = start_method
        self._retries = retries
        self._progress = progress
        self._seeds = random.Random(seed) if seed is not None else None
        self._pool: ProcessPoolExecutor | None = None
        self._epoch: weakref.ref[_Epoch] | None = None

    # -- sizes and orders

    def __len__(self) -> int:
        """Batches per epoch (of an iterable dataset: from its ``len()``)."""
        if self.batch_sampler is not None:
            return len(self.batch_sampler)  # type: ignore[arg-type]
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)  # type: ignore[arg-type]
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _draw(self) -> int:
        """A 63-bit number from the loader's source of randomness (torch's
        global RNG when torch is imported and nothing else is given)."""
        if self._seeds is not None:
            return self._seeds.getrandbits(63)
        gen = self.generator
        torch = sys.modules.get("torch")
        if torch is not None and (gen is None or isinstance(gen, torch.Generator)):
            return int(torch.empty((), dtype=torch.int64).random_(generator=gen).item())
        if gen is not None and hasattr(gen, "integers"):
            return int(gen.integers(0, 2**63 - 1))
        if gen is not None:
            raise TypeError(
                f"generator must be a torch.Generator or a numpy.random.Generator, not {type(gen).__name__}"
            )
        return random.getrandbits(63)

    def _indices(self) -> Iterable[Any]:
        if self.sampler is not None:
            return self.sampler
        n = len(self.dataset)
        if not self._shuffle:
            return range(n)
        torch = sys.modules.get("torch")
        gen = self.generator
        if self._seeds is None and torch is not None and (gen is None or isinstance(gen, torch.Generator)):
            # torch's RandomSampler: its own generator seeded from the
            # global RNG, or the loader's generator.
            if gen is None:
                gen = torch.Generator()
                gen.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
            return torch.randperm(n, generator=gen).tolist()  # type: ignore[no-any-return]
        return _np().random.default_rng(self._draw()).permutation(n).tolist()  # type: ignore[no-any-return]

    def _index_batches(self) -> Iterator[Any]:
        if self.batch_sampler is not None:
            return (list(b) for b in self.batch_sampler)
        indices = self._indices()
        if self.batch_size is None:
            return iter(indices)
        return _chunks(iter(indices), self.batch_size, self.drop_last)

    def _length(self) -> int | None:
        try:
            return len(self)
        except TypeError:
            return None

    # -- iteration

    def __iter__(self) -> _Epoch:
        """An epoch: the batches in sampler order (an iterable dataset's:
        round-robin over the workers' streams)."""
        previous = self._epoch() if self._epoch is not None else None
        if previous is not None and self._iterable and self.persistent_workers:
            # Its streams hold the workers; other epochs (each its own
            # pool, or tasks interleaved on the persistent one) go on.
            previous._supersede()
        base_seed = self._draw()
        side = _WorkerSide(
            self.dataset,
            self.collate_fn or (default_collate if self.batch_size is not None or self.batch_sampler else _convert),
            self.batch_size is not None or self.batch_sampler is not None,
            self.batch_size,
            self.drop_last,
        )
        n = self._length()
        if self.num_workers == 0:
            gen = self._in_process(side)
        else:
            pool = self._workers(side, base_seed)
            gen = self._streams(pool) if self._iterable else self._batches(pool, base_seed)
        gen = self._finished(gen, n)
        epoch = _Epoch(self, gen, n)
        self._epoch = weakref.ref(epoch)
        return epoch

    def _finished(self, gen: Iterator[Any], n: int | None) -> Iterator[Any]:
        """The batches as the user gets them: tensors when the default
        collate ran and torch is imported; the progress bar."""
        convert = self.collate_fn is None and "torch" in sys.modules
        bar = _progress.bar(self._progress, n)
        try:
            for batch in gen:
                if convert:
                    batch = _to_torch(batch)
                if bar is not None:
                    bar.update(1)
                yield batch
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
            if bar is not None:
                bar.close()

    def _in_process(self, side: _WorkerSide) -> Iterator[Any]:
        if self._iterable:
            yield from _batches_of(side, iter(self.dataset))
            return
        for indices in self._index_batches():
            yield _load(side, indices)

    def _workers(self, side: _WorkerSide, base_seed: int) -> ProcessPoolExecutor:
        if self._pool is not None:
            return self._pool
        _random_modules_loaded()
        pool = ProcessPoolExecutor(
            self.num_workers,
            initializer=_setup,
            initargs=(side, self.num_workers, base_seed, self.worker_init_fn),
            start_method=self._start_method,
            retries=self._retries,
        )
        if self.persistent_workers:
            self._pool = pool
            weakref.finalize(self, pool.shutdown, False, cancel_futures=True).atexit = False
        return pool

    def _wait(self, fut: Any) -> Any:
        """The batch of ``fut``; RuntimeError past ``timeout`` (as torch)."""
        try:
            return fut.result(self.timeout or None)
        except TimeoutError:
            if fut.done():  # the task's own TimeoutError
                return fut.result()
            raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds") from None

    def _release(self, pool: ProcessPoolExecutor, inflight: Iterable[Any]) -> None:
        """The end of an epoch: its batches still in flight are cancelled
        (killed when the pool goes); a pool that is not kept is shut down
        without waiting for its workers to exit: the loop goes on (the next
        epoch starts its workers) while they leave, and the pool's results
        thread reaps them (waiting took 4-7 ms of a ~200 ms small-sample
        epoch, both cores idle meanwhile)."""
        if pool is self._pool:
            for fut in inflight:
                fut.cancel()
            return
        pool.shutdown(wait=False, cancel_futures=True)
        for fut in inflight:
            fut.kill(0)  # a batch running in a worker the epoch no longer reads

    def _batches(self, pool: ProcessPoolExecutor, base_seed: int) -> Iterator[Any]:
        """A map-style epoch: one task per batch, at most
        ``prefetch_factor * num_workers`` in flight, yielded in order (with
        ``in_order=False``, as they complete: each future puts itself in
        ``done`` when it ends)."""
        cap = max(1, (self.prefetch_factor or 0) * self.num_workers)
        inflight: collections.deque[Any] = collections.deque()
        done: queue.SimpleQueue[Any] | None = None if self.in_order else queue.SimpleQueue()
        todo = enumerate(self._index_batches())

        def submit(n: int) -> None:
            for number, indices in itertools.islice(todo, n):
                fut = pool.submit(_fetch, indices, base_seed, number)
                if done is not None:
                    fut.add_done_callback(done.put)
                inflight.append(fut)

        try:
            submit(cap)
            while inflight:
                fut = inflight[0] if done is None else self._first_done(done)
                batch = self._wait(fut)
                inflight.remove(fut)
                submit(1)
                yield batch
                del batch, fut
        finally:
            self._release(pool, inflight)

    def _first_done(self, done: "queue.SimpleQueue[Any]") -> Any:
        """The next future of ``done``; RuntimeError past ``timeout``."""
        try:
            return done.get(timeout=self.timeout or None)
        except queue.Empty:
            raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds") from None

    def _streams(self, pool: ProcessPoolExecutor) -> Iterator[Any]:
        """An iterable-dataset epoch: a stream task per worker, each with a
        queue of ``prefetch_factor`` batches, read round-robin (with
        ``in_order=False``, whichever stream has a batch first: each put
        releases ``arrived``)."""
        n = self.num_workers
        queues: list[Queue[Any]] = [Queue(max(1, self.prefetch_factor or 0)) for _ in range(n)]
        stop = Event()
        arrived = None if self.in_order else Semaphore(0)
        once = pool.options(retries=0)
        futs = [once.submit(_stream, k, queues[k], stop, arrived) for k in range(n)]
        held: list[collections.deque[Any]] = [collections.deque() for _ in range(n)]
        live = list(range(n))
        try:
            while live:
                if arrived is None:
                    turn = list(live)
                else:
                    turn = [self._first_arrived(live, queues, futs, held, arrived)]
                for k in turn:
                    batch = self._next_of(k, queues, futs, held)
                    if batch is None:
                        live.remove(k)
                    else:
                        yield batch
                        del batch
        finally:
            stop.set()  # a persistent worker's stream ends instead of blocking in put
            self._release(pool, futs)

    def _first_arrived(
        self,
        live: list[int],
        queues: list[Queue[Any]],
        futs: list[Any],
        held: list[collections.deque[Any]],
        arrived: Semaphore,
    ) -> int:
        """The stream (of ``live``) with a batch or its end waiting, moved
        into ``held``; a stream whose task ended (its error or its death is
        raised by ``_next_of``) when none comes in ``_STOP_POLL``. The
        streams are tried from the one after the last found, so one fast
        stream does not starve the others' waiting batches."""
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            if any(held[k] for k in live):
                return next(k for k in live if held[k])
            if arrived.acquire(timeout=_STOP_POLL):
                for k in live:
                    try:
                        held[k].append(queues[k].get_nowait())
                    except (queue.Empty, ChannelClosed):
                        continue
                    live.append(live.pop(live.index(k)))  # tried last next time
                    return k
                continue  # a batch already taken as held by _next_of's wait
            for k in live:
                if futs[k].done():
                    return k
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds")

    def _next_of(self, k: int, queues: list[Queue[Any]], futs: list[Any], held: list[collections.deque[Any]]) -> Any:
        """The next batch of stream ``k``, None once it ended. While stream
        ``k`` has not started (its worker still boots, or runs another
        stream first: two streams landed on one worker), the other streams'
        batches are held here so that their tasks can go on: the order
        stays round-robin and nothing hangs."""
        if held[k]:
            return held[k].popleft()
        deadline = time.monotonic() + self.timeout if self.timeout else None
        fut = futs[k]
        while True:
            try:
                return queues[k].get(timeout=0.05)
            except ChannelClosed:
                # The stream's worker died: the pool says so shortly.
                self._wait_quietly(fut)
            except queue.Empty:
                pass
            if fut.done():
                try:
                    return queues[k].get_nowait()
                except (queue.Empty, ChannelClosed):
                    break
            if not fut.running():
                for j, q in enumerate(queues):
                    if j != k and not futs[j].done():
                        while True:
                            try:
                                held[j].append(q.get_nowait())
                            except (queue.Empty, ChannelClosed):
                                break
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds")
        exc = fut.exception()
        if isinstance(exc, WorkerLostError):
            raise WorkerLostError(
                f"a DataLoader worker died while iterating stream {k} of an iterable dataset; its position is lost"
            ) from exc
        if exc is not None:
            # As the map-style path: the worker's exception, its traceback
            # as __cause__ and torch's "Caught ... in DataLoader worker
            # process k." as a note (``_as_error``).
            raise exc
        return None

    def _wait_quietly(self, fut: Any) -> None:
        try:
            fut.exception(self.timeout or 60)
        except TimeoutError:
            raise RuntimeError(f"DataLoader timed out after {self.timeout or 60} seconds") from None
        except BaseException:  # cancelled: the caller reads the outcome
            pass

    def shutdown(self) -> None:
        """Stops the persistent workers now (they are stopped anyway when
        the loader is collected)."""
        epoch = self._epoch() if self._epoch is not None else None
        if epoch is not None:
            epoch.close()  # its streams stop, so the workers can be joined
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _chunks(it: Iterator[Any], size: int, drop_last: bool) -> Iterator[list[Any]]:
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk or (drop_last and len(chunk) < size):
            return
        yield chunk


def _is_torch_iterable(dataset: Any) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(dataset, torch.utils.data.IterableDataset)


def _accelerator() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())
