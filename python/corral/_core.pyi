"""Type stubs of the extension ``corral._core`` (the Rust bindings)."""

from collections.abc import Iterable, Sequence
from typing import Any, Literal, Self, SupportsIndex, final

#: The version of the corral-python crate this extension was built from.
__version__: str
#: True if the extension was built with debug assertions (not ``--release``).
DEBUG_BUILD: bool

@final
class SharedQueue:
    """A multi-producer multi-consumer queue in shared memory."""

    def __new__(cls, maxsize: int = 0, ring_bytes: int = ..., arena_bytes: int | None = None) -> SharedQueue: ...
    @staticmethod
    def from_fd(fd: int) -> SharedQueue: ...
    def fileno(self) -> int: ...
    def put(self, inband: Any, buffers: Iterable[Any], block: bool = True, timeout: float | None = None) -> None: ...
    def put_many(self, messages: Iterable[tuple[Any, Iterable[Any]]]) -> int: ...
    def get(
        self, block: bool = True, timeout: float | None = None
    ) -> tuple[bytes | ShmBlock, list[bytearray | ShmBlock]]: ...
    def get_many(
        self, max_items: int, block: bool = True, timeout: float | None = None
    ) -> list[tuple[bytes | ShmBlock, list[bytearray | ShmBlock]]]: ...
    def qsize(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    @property
    def maxsize(self) -> int: ...
    @property
    def max_message(self) -> int: ...
    @property
    def max_buffers(self) -> int: ...
    def close_producer(self) -> None: ...
    def add_holder(self, pid: int) -> None: ...
    def share_lent(self, reusable: bool) -> tuple[bytes, int, int, int]: ...
    def release_lent(self, slot: int, pid: int) -> None: ...
    def arena_used(self) -> int: ...
    def _corrupt_next_get(self, index: int) -> None:
        """For tests only (fault injection; no program calls it): in the
        next batch this handle reads off the ring, the message at ``index``
        is read as if its in-band part were a corrupt arena block."""

@final
class ShmBlock:
    """A received block of a queue's shared arena (buffer protocol); it
    pickles, so it can be sent on."""

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __reduce_ex__(self, protocol: SupportsIndex, /) -> tuple[Any, ...]: ...

@final
class Connection:
    """One end of a pipe."""

    @staticmethod
    def from_fd(fd: int, readable: bool, writable: bool) -> Connection: ...
    def send_bytes(self, data: Any) -> None: ...
    def recv_bytes(self) -> bytes: ...
    def poll(self, timeout: float | None = 0.0) -> bool: ...
    def fileno(self) -> int: ...
    @property
    def readable(self) -> bool: ...
    @property
    def writable(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def dup_fd(self) -> int: ...

def pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """Creates a pipe: two connected ends."""

def fit_reservation(wanted: int, share: int) -> int:
    """Bytes to reserve for a shared block that would like ``wanted``: all of
    it without an address-space limit (``ulimit -v``), else at most
    ``1/share`` of the room left."""

def keep_arenas(max_bytes: int) -> bool:
    """Keeps up to ``max_bytes`` of freed object arenas (pymalloc's) mapped
    in this process for the next allocations, instead of unmapping each
    and faulting it in again; a second call changes only the limit. False
    if the interpreter has no arena allocator to wrap."""

def kept_arena_bytes() -> int:
    """Bytes of freed object arenas kept now (``keep_arenas``)."""

def install_array_allocator(queue: SharedQueue, min_bytes: int, budget: int) -> bool:
    """Installs, in the calling thread's context, a NumPy data allocator
    whose arrays of ``min_bytes`` and up are blocks of ``queue``'s arena
    while it has less than ``budget`` bytes in use (by any process); False if NumPy is older than 1.22 or
    this process installed one over another queue."""

def set_array_min_bytes(min_bytes: int) -> int:
    """Sets the size from which this process's array allocator makes arrays
    in the arena; returns the previous one, or 0 (changing nothing) where
    the allocator is not installed."""

def put_arrays(queue: SharedQueue, inband: Any, buffers: list[Any]) -> int:
    """Puts a message like ``SharedQueue.put`` (blocking); a buffer that is
    one of this process's array blocks and that nothing else here holds
    travels without a copy. Empties ``buffers``; returns how many buffers
    went without a copy."""

def reclaim_dead_blocks(queue: SharedQueue) -> int:
    """Frees the blocks of ``queue``'s arena that dead processes were
    writing or holding; returns how many."""

@final
class ArrayArenaStats:
    """The array allocator's figures in this process."""

    @property
    def live_blocks(self) -> int:
        """Arena blocks NumPy owns in this process now."""
    @property
    def live_bytes(self) -> int:
        """Their bytes."""
    @property
    def sent(self) -> int:
        """Blocks sent without a copy since the allocator was installed."""
    @property
    def sent_bytes(self) -> int:
        """Their bytes."""

def array_arena_stats() -> ArrayArenaStats:
    """The array allocator's figures here (zeros if it is not installed)."""

@final
class ChildProcess:
    """A child process watched through a pidfd."""

    @property
    def pid(self) -> int: ...
    def pidfd(self) -> int: ...
    def wait(self, timeout: float | None = None) -> int | None: ...
    def signal(self, sig: int) -> None: ...
    def set_exit(self, code: int, server_died: bool = False) -> None: ...

def spawn(argv: Sequence[str], pass_fds: Sequence[int] = ..., env: Sequence[tuple[str, str]] = ...) -> ChildProcess:
    """Starts ``argv`` as a child that is killed if this process dies; the
    descriptors in ``pass_fds`` are inherited under the same numbers."""

def die_with_parent(parent: int) -> bool:
    """In a child made by fork: die with the parent; False if ``parent`` is
    already gone."""

def share_fd(fd: int) -> tuple[bytes, int, int]:
    """Registers a duplicate of ``fd`` with this process's broker for one
    receiver; returns ``(address, pid, token)``."""

def fetch_fd(address: bytes, pid: int, token: int, timeout: float | None = None) -> int:
    """Fetches a descriptor shared by ``share_fd`` in process ``pid``; the
    caller owns the returned number. Waits at most ``timeout`` seconds, or
    while the sender lives when None; raises ``TimeoutError`` on timeout."""

def dup_fd(fd: int) -> int:
    """Duplicates ``fd`` into a new descriptor that child processes may
    inherit."""

class Lock:
    """A process-shared ``threading.Lock`` (robust to a dead owner)."""

    def __new__(cls, *, _fd: int | None = None) -> Self: ...
    def fileno(self) -> int: ...
    def acquire(self, blocking: bool = True, timeout: float = ...) -> bool: ...  # timeout default: -1.0 (none)
    def release(self) -> None: ...
    def locked(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *args: object) -> None: ...
    def _at_fork_reinit(self) -> None: ...

class RLock:
    """A process-shared ``threading.RLock`` owned by a thread."""

    def __new__(cls, *, _fd: int | None = None) -> Self: ...
    def fileno(self) -> int: ...
    def acquire(self, blocking: bool = True, timeout: float = ...) -> bool: ...  # timeout default: -1.0 (none)
    def release(self) -> None: ...
    def locked(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *args: object) -> None: ...
    def _release_save(self) -> int: ...
    def _acquire_restore(self, count: int) -> None: ...
    def _is_owned(self) -> bool: ...
    def _recursion_count(self) -> int: ...
    def _at_fork_reinit(self) -> None: ...

class Semaphore:
    """A process-shared counting semaphore, optionally bounded."""

    def __new__(cls, value: int = 1, bounded: bool = False, *, _fd: int | None = None) -> Self: ...
    def fileno(self) -> int: ...
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool: ...
    def release(self, n: int = 1) -> None: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *args: object) -> None: ...
    @property
    def value(self) -> int: ...
    @property
    def initial(self) -> int: ...
    @property
    def bounded(self) -> bool: ...

class Event:
    """A process-shared ``threading.Event``."""

    def __new__(cls, *, _fd: int | None = None) -> Self: ...
    def fileno(self) -> int: ...
    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...

@final
class Condition:
    """The wait queue of a process-shared condition variable."""

    def __init__(self) -> None: ...
    @staticmethod
    def from_fd(fd: int) -> Condition: ...
    def fileno(self) -> int: ...
    def register(self) -> int: ...
    def wait(self, slot: int, timeout: float | None = None) -> bool: ...
    def cancel(self, slot: int) -> bool: ...
    def notify(self, n: int) -> int: ...
    def reap_dead_waiters(self) -> int: ...
    def is_signaled(self, slot: int) -> bool: ...
    @property
    def waiters(self) -> int: ...

class Barrier:
    """A process-shared ``threading.Barrier`` (``corral.Barrier`` keeps its
    action and default timeout). ``wait`` runs the whole protocol; the other
    methods are its steps, for ``wait_async``."""

    def __new__(cls, parties: int = 1, *, _fd: int | None = None) -> Self: ...
    def fileno(self) -> int: ...
    def wait(self, timeout: float | None = None, action: Any = None) -> int: ...
    def try_arrive(self) -> tuple[int, int | None] | None: ...
    def pass_round(self) -> None: ...
    def fail_round(self) -> None: ...
    def poll(self, slot: int) -> bool: ...
    def expire(self, slot: int) -> bool: ...
    def withdraw(self, slot: int) -> None: ...
    def abort(self) -> None: ...
    def reset(self) -> None: ...
    @property
    def parties(self) -> int: ...
    @property
    def n_waiting(self) -> int: ...
    @property
    def broken(self) -> bool: ...

@final
class Counters:
    """A few process-shared 64-bit integers (tests and benchmarks)."""

    def __init__(self) -> None: ...
    @staticmethod
    def from_fd(fd: int) -> Counters: ...
    def fileno(self) -> int: ...
    def get(self, i: int) -> int: ...
    def set(self, i: int, v: int) -> None: ...
    def add(self, i: int, d: int) -> int: ...

def watch_external(pid: int) -> ChildProcess:
    """A ``ChildProcess`` watching a process a fork server made and reaps."""

def python_thread_count() -> int:
    """How many Python thread states this interpreter has (a thread started
    by ``_thread`` counts, whatever its target)."""

def adopt_child(pid: int) -> ChildProcess:
    """A ``ChildProcess`` watching ``pid``, a child this process forked."""

#: What a pool task runs: one call, or a chunk of ``map``.
_TaskKind = Literal["call", "chunk"]

#: The status of a result message a worker sends (``encode_result``).
_ResultStatus = Literal["ok", "raised", "cancelled", "init_failed", "ready"]

@final
class PoolCore:
    """The parent side of a process pool: the Rust scheduler, completion
    thread and worker supervision."""

    def __new__(cls, workers: int, results: SharedQueue) -> PoolCore: ...
    def board_fd(self) -> int: ...
    def prepare(self, slot: int) -> None: ...
    def attach(self, slot: int, child: ChildProcess, queue: SharedQueue) -> None: ...
    def submit(
        self,
        fn_id: int,
        fn_bytes: bytes,
        inband: Any,
        buffers: Any,
        kind: _TaskKind = "call",
        timeout_ms: int = 0,
        retries: int = 0,
        shares: Sequence[int] = ...,
    ) -> int: ...
    def cancel(self, task: int) -> bool: ...
    def running(self, task: int) -> bool: ...
    def kill(self, task: int) -> bool: ...
    def close(self, cancel_pending: bool) -> list[int]: ...
    def terminate(self, reason: str) -> None: ...
    def stop(self) -> list[int] | None: ...
    def next_events(self, timeout: float, max_events: int = 1024, wake: list[Sleeper] = ...) -> list[_PoolEvent]: ...
    def stats(self) -> dict[str, Any]: ...
    def _corrupt_outcomes(self, tasks: list[int], init_failed: bool = False) -> bool:
        """For tests only (fault injection; no program calls it): the
        results of ``tasks`` (and, with ``init_failed``, the next
        initializer's exception) are read as if their in-band part were a
        corrupt arena block, once each; returns whether the hook still
        names a message to come (while it does, each result takes its lock;
        else one relaxed atomic load)."""
    def _fail_next_events(self, count: int, panic: bool = False) -> None:
        """For tests only (fault injection; no program calls it): the next
        ``count`` calls of ``next_events`` raise at once, taking no event
        (``RuntimeError``; with ``panic`` the ``PanicException`` a panic of
        the core becomes)."""

#: Why a worker ended (``WorkerExited.cause``, ``TaskLost.cause``).
_WorkerCause = Literal[
    "crashed", "crashed_booting", "timed_out", "killed", "retired", "stopped", "init_failed", "died_before_start"
]

@final
class TaskDone:
    """A task's result came: ``status`` "ok" (``inband`` + ``buffers``
    pickle its value), "raised" (its packed exception) or "cancelled" (the
    worker skipped it)."""

    @property
    def task(self) -> int: ...
    @property
    def status(self) -> Literal["ok", "raised", "cancelled"]: ...
    @property
    def inband(self) -> Any: ...
    @property
    def buffers(self) -> list[Any]: ...
    @property
    def busy_ns(self) -> int: ...

@final
class TaskLost:
    """A task died with its worker and is not run again."""

    @property
    def task(self) -> int: ...
    @property
    def exitcode(self) -> int: ...
    @property
    def cause(self) -> _WorkerCause: ...

@final
class TaskCancelled:
    """A task cancelled in a dead worker's queue: it will not run."""

    @property
    def task(self) -> int: ...

@final
class TaskRejected:
    """A task that could not be sent to a worker."""

    @property
    def task(self) -> int: ...
    @property
    def error(self) -> str: ...

@final
class WorkerExited:
    """A worker ended; when ``respawn``, start a new one in ``slot``."""

    @property
    def slot(self) -> int: ...
    @property
    def exitcode(self) -> int: ...
    @property
    def cause(self) -> _WorkerCause: ...
    @property
    def respawn(self) -> bool: ...

@final
class InitFailed:
    """A worker's initializer raised: ``inband`` + ``buffers`` pickle the
    packed exception."""

    @property
    def inband(self) -> Any: ...
    @property
    def buffers(self) -> list[Any]: ...

@final
class PoolBroken:
    """The pool cannot run tasks any more; ``tasks`` never finish.
    ``stopped``: its owner stopped it (``PoolCore.stop``), not a fault."""

    @property
    def reason(self) -> str: ...
    @property
    def tasks(self) -> list[int]: ...
    @property
    def stopped(self) -> bool: ...

@final
class PoolClosed:
    """The pool was closed and every worker has left: the last event."""

@final
class TaskFailed:
    """A task's result came but could not be read (a corrupt arena block,
    no memory for its bytes): the task ends with ``error``."""

    @property
    def task(self) -> int: ...
    @property
    def error(self) -> BaseException: ...

_PoolEvent = (
    TaskDone
    | TaskFailed
    | TaskLost
    | TaskCancelled
    | TaskRejected
    | WorkerExited
    | InitFailed
    | PoolBroken
    | PoolClosed
)

@final
class TaskMessage:
    """A task message as a worker reads it."""

    @staticmethod
    def decode(inband: Any) -> TaskMessage: ...
    @property
    def task(self) -> int: ...
    @property
    def fn_id(self) -> int: ...
    @property
    def kind(self) -> _TaskKind: ...
    @property
    def reset_fns(self) -> bool: ...
    @property
    def timeout_ns(self) -> int: ...
    @property
    def function(self) -> bytes | None: ...
    @property
    def args(self) -> memoryview: ...

def encode_result(
    task: int,
    status: _ResultStatus,
    slot: int,
    busy_ns: int,
    outcome: Any,
) -> bytes:
    """A result message's in-band bytes: header, then ``outcome``."""

@final
class PoolBoard:
    """A pool worker's view of the shared board."""

    @staticmethod
    def from_fd(fd: int) -> PoolBoard: ...
    def ready(self, slot: int, pid: int) -> None: ...
    def begin(self, slot: int, task: int, timeout_ns: int) -> bool: ...
    def end(self, slot: int) -> int: ...
    def set_state(self, slot: int, state: str) -> None: ...

@final
class ThreadPoolCore:
    """The core's worker threads, calling submitted Python callables (or a
    task's ``_run`` method: ``submit_task``)."""

    def __new__(cls, max_workers: int, name: str) -> ThreadPoolCore: ...
    def submit(self, job: Any, timeout: float | None = None, on_timeout: Any = None) -> None: ...
    def submit_task(self, task: Any, timeout: float | None = None, on_timeout: Any = None) -> None: ...
    def drain(self) -> list[Any]: ...
    def shutdown(self, wait: bool) -> None: ...
    @property
    def threads(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def armed(self) -> int: ...
    def stats(self) -> list[dict[str, Any]]: ...

@final
class Sleeper:
    """What a thread blocked on a future's result sleeps on; a pool job may
    return a list of them, woken once its thread released the GIL."""

    def __init__(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool:
        """Sleeps until woken (True) or ``timeout`` seconds passed (False)."""
    def wake(self) -> None:
        """Wakes the sleeper now."""

#: How many times in a row a task is sent again after its worker died
#: before starting it (while reading or loading it); then it is lost.
MAX_UNSTARTED_DEATHS: int

def chunks_in_flight(chunk_size: int, workers: int) -> int:
    """How many chunks of ``chunk_size`` items ``map`` keeps in flight over
    ``workers``."""

def pack_scalars(values: list[Any]) -> bytes | bool:
    """A map chunk's items or values as they travel between the parent and
    a worker: the 64-bit ints of the values in this machine's byte order if
    every one is exactly an ``int`` in that range (``unpack_ints`` makes
    the list again; a ``memoryview`` cast to "q" reads them), else whether they are all
    of one exact scalar type (``int``, ``float``, ``complex``, ``bool``,
    ``None``)."""

def unpack_ints(data: bytes) -> list[int]:
    """The list of ints ``pack_scalars`` packed into ``data``."""

@final
class ChunkSizer:
    """``map``'s chunk-size policy."""

    def __init__(self) -> None: ...
    def next(self) -> int: ...
    def next_of(self, left: int, workers: int) -> int: ...
    def observe(self, items: int, busy_ns: int) -> None: ...
    def in_flight(self, workers: int) -> int: ...

def share_fd_reusable(fd: int) -> tuple[bytes, int, int]:
    """Registers a duplicate of ``fd`` for any number of receivers until
    ``unshare_fd(token)``; returns ``(address, pid, token)``."""

def unshare_fd(token: int) -> None:
    """Withdraws a registration of ``share_fd_reusable``."""

def shared_fd_count() -> int:
    """Registrations this process's broker holds now (for leak checks)."""

@final
class SharedBuffer:
    """A memfd exposed through the buffer protocol (``corral.share``)."""

    def __new__(cls, nbytes: int) -> SharedBuffer: ...
    @staticmethod
    def from_fd(fd: int, nbytes: int) -> SharedBuffer: ...
    def seal(self) -> None: ...
    def fileno(self) -> int: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...

@final
class AsyncNotifier:
    """Where the core's async wait hub reports to one event loop."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def take(self) -> list[int]: ...

def wait_word(primitive: Any, room: bool = False, slot: int | None = None) -> int:
    """The primitive's futex word now (pass it to ``watch`` after a failed
    try); for a queue, ``room`` picks its space signal instead of its data
    signal."""

def watch(
    primitive: Any, expected: int, notifier: AsyncNotifier, token: int, room: bool = False, slot: int | None = None
) -> int:
    """Posts ``token`` to ``notifier`` once ``primitive``'s word differs
    from ``expected``; returns the watch id."""

def unwatch(id: int) -> bool:
    """Stops a watch; True if it had not fired."""
