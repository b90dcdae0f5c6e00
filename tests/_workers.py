"""Top-level functions that the tests run in corral child processes.

They live in an importable module (not in a test function) so that the
child can load them by reference: the child gets the parent's ``sys.path``
through ``multiprocessing.spawn.prepare``, and ``tests/`` is on it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import corral


class CustomError(Exception):
    """An exception type defined outside the stdlib, with two arguments."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


# -- plain targets -----------------------------------------------------------


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def _innermost_failure(msg: str) -> None:
    raise ValueError(msg)


def raise_value_error(msg: str) -> None:
    _innermost_failure(msg)


def raise_custom_error(code: int, detail: str) -> None:
    raise CustomError(code, detail)


def exit_with(code: int) -> None:
    sys.exit(code)


def hard_exit(code: int) -> None:
    sys.stdout.flush()
    os._exit(code)


def sleep_then_return(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def where_am_i() -> tuple[str, int, int]:
    """This module's file, this pid and the parent's pid."""
    return __file__, os.getpid(), os.getppid()


# -- queue producers and consumers -------------------------------------------


def produce(q: corral.Queue, n: int, start: int = 0) -> int:
    for i in range(start, start + n):
        q.put(i)
    return n


def consume_sum(q: corral.Queue, n: int) -> int:
    return sum(q.get(timeout=20) for _ in range(n))


def produce_close_then_wait(q: corral.Queue, n: int, go: corral.Connection) -> int:
    """Puts ``n`` items, closes the queue, then stays alive until told."""
    for i in range(n):
        q.put(i)
    q.close()
    go.poll(30)
    return n


def produce_forever(q: corral.Queue) -> None:
    i = 0
    while True:
        q.put(i)
        i += 1


def produce_arrays_forever(q: corral.Queue, nbytes: int) -> None:
    import numpy as np

    i = 0
    while True:
        q.put((i, np.full(nbytes, i % 251, dtype=np.uint8)))
        i += 1


def stress_producer(q: corral.Queue, tag: int, seconds: float, array_every: int) -> int:
    """Puts ``(tag, i, payload)`` for about ``seconds``; every
    ``array_every``-th payload is a 100 KB array filled with ``i % 256``
    (so it crosses the shared-memory arena). Returns how many it put."""
    import numpy as np

    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        batch = []
        for _ in range(50):
            payload = np.full(100_000, i % 256, dtype=np.uint8) if i % array_every == 0 else i
            batch.append((tag, i, payload))
            i += 1
        q.put_many(batch)
    q.close()
    return i


def apply_items(q_in: corral.Queue, q_out: corral.Queue, n: int) -> int:
    """Gets ``n`` ``(function, argument)`` items and puts each result."""
    for _ in range(n):
        fn, arg = q_in.get(timeout=20)
        q_out.put(fn(arg))
    return n


def echo_sizes(q_in: corral.Queue, q_out: corral.Queue) -> None:
    """Puts back ``(len, first, last)`` of each bytes item until None."""
    while True:
        item = q_in.get(timeout=20)
        if item is None:
            return
        q_out.put((len(item), item[:1], item[-1:]))


# -- handles received after start ----------------------------------------------


def receive_queue_and_produce(ctrl: corral.Queue, n: int, tag: str, all_hold: Any = None) -> int:
    data = ctrl.get(timeout=20)
    assert isinstance(data, corral.Queue), type(data)
    if all_hold is not None:
        all_hold.wait(timeout=20)  # every producer holds the queue before any finishes
    for i in range(n):
        data.put((tag, i))
    return n


def receive_queue_and_consume(ctrl: corral.Queue, n: int) -> int:
    data = ctrl.get(timeout=20)
    assert isinstance(data, corral.Queue), type(data)
    return sum(data.get(timeout=20) for _ in range(n))


def receive_conn_from_queue_and_send(ctrl: corral.Queue, message: Any) -> str:
    conn = ctrl.get(timeout=20)
    assert isinstance(conn, corral.Connection), type(conn)
    conn.send(message)
    if conn.poll(20):
        reply = conn.recv()
    else:
        reply = "no reply"
    conn.close()
    return reply


def receive_queue_from_pipe_and_produce(ctrl: corral.Connection, n: int) -> int:
    if not ctrl.poll(20):
        raise TimeoutError("no queue arrived")
    data = ctrl.recv()
    for i in range(n):
        data.put(i)
    return n


def receive_conn_from_pipe_and_send(ctrl: corral.Connection, message: Any) -> None:
    if not ctrl.poll(20):
        raise TimeoutError("no connection arrived")
    conn = ctrl.recv()
    conn.send(message)
    conn.close()


# -- pipes ---------------------------------------------------------------------


def pipe_echo(conn: corral.Connection) -> int:
    """Sends back ``("echo", x)`` for each object until None; returns the count."""
    n = 0
    while True:
        if not conn.poll(20):
            raise TimeoutError("nothing received")
        x = conn.recv()
        if x is None:
            return n
        conn.send(("echo", x))
        n += 1


def pipe_send_then_sleep(conn: corral.Connection, obj: Any, seconds: float) -> None:
    conn.send(obj)
    time.sleep(seconds)


def pipe_send_bytes_and_exit(conn: corral.Connection, data: bytes) -> None:
    conn.send_bytes(data)


# -- exceptions that do not travel well --------------------------------------------


class UnpicklableError(Exception):
    """Carries a lock: neither pickle nor cloudpickle can send it."""

    def __init__(self, msg: str) -> None:
        import threading

        super().__init__(msg)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: __init__ wants two arguments and
    ``args`` holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}-{b}")


def raise_unpicklable_error(msg: str) -> None:
    raise UnpicklableError(msg)


def raise_two_arg_error(a: str, b: str) -> None:
    raise TwoArgError(a, b)


class CodedError(Exception):
    """The audit's example: ``__init__`` takes (code, msg), ``args`` holds
    only msg, so rebuilding it by calling the class fails."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


class PairError(Exception):
    """A ``__new__`` written in Python that wants two arguments as well."""

    def __new__(cls, a: str, b: str) -> PairError:
        return super().__new__(cls, a, b)

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")
        self.pair = (a, b)


def raise_coded_error(code: int, msg: str, note: str | None = None) -> None:
    e = CodedError(code, msg)
    if note is not None:
        e.add_note(note)
    raise e


def raise_pair_error(a: str, b: str) -> None:
    raise PairError(a, b)


def raise_group_of_coded_errors(code: int) -> None:
    """An ExceptionGroup holding an exception that does not pickle as
    itself."""
    raise ExceptionGroup("batch failed", [CodedError(code, "first"), ValueError("second")])


class SelfRefError(Exception):
    """Takes no arguments and refers to itself (as a wrapper holding its
    own context might)."""

    def __init__(self) -> None:
        super().__init__("self-referring")
        self.me = self
        self.code = 3


def raise_self_ref_error() -> None:
    raise SelfRefError()


def raise_untravelable_error(msg: str) -> None:
    """Raises an exception whose type itself cannot be pickled: a local
    class (so sent by value) holding a lock."""
    import threading

    class LocalError(Exception):
        guard = threading.Lock()

    raise LocalError(msg)


def use_channels_then_die_once(q: Any, conn: Any, lock: Any, marker: str) -> str:
    """Uses a queue, a pipe end and a lock of its arguments, then dies the
    first time it runs (leaving ``marker``); returns on the second run."""
    with lock:
        q.put(os.getpid())
    conn.send("attempt")
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return "second run"


def die_always_with(q: Any) -> None:
    q.put(os.getpid())
    os.kill(os.getpid(), 9)


def put_items(q: Any, items: Any) -> int:
    for x in items:
        q.put(x)
    return len(items)


def return_a_lock() -> Any:
    import threading

    return threading.Lock()


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def hold_two_items(q: corral.Queue, report: corral.Queue) -> None:
    """Takes two items (large arrays: arena blocks), keeps them, reports,
    then sleeps until killed."""
    kept = [q.get(timeout=20), q.get(timeout=20)]
    report.put(sum(int(a.nbytes) for a in kept))
    time.sleep(60)


# -- process-shared synchronization primitives (test_sync_processes) ----------


class SharedInts:
    """A few process-shared 64-bit integers (``corral._core.Counters``,
    8 of them, all 0 at first) that can be passed to a child at start or
    through a queue: pickled with its memfd, as ``synchronize._Shared``."""

    def __init__(self, core: Any = None) -> None:
        self._c = corral._core.Counters() if core is None else core

    def __reduce__(self) -> tuple[Any, ...]:
        from corral import _fds

        return (_rebuild_shared_ints, (_fds.export_fd(self._c.fileno()),))

    def get(self, i: int = 0) -> int:
        return self._c.get(i)

    def set(self, i: int, v: int) -> None:
        self._c.set(i, v)

    def add(self, i: int, d: int) -> int:
        """Atomically adds ``d`` to integer ``i``; returns the new value."""
        return self._c.add(i, d)


def _rebuild_shared_ints(handle: Any) -> SharedInts:
    from corral import _fds

    return SharedInts(corral._core.Counters.from_fd(_fds.import_fd(handle)))


def _must(ok: bool, what: str) -> None:
    if not ok:
        raise TimeoutError(what)


def wait_for_go(ints: SharedInts, ready_index: int, go: Any) -> None:
    """Start gate: counts this process in ``ints[ready_index]`` then waits
    for the parent to set ``go`` (so that every child runs at once)."""
    ints.add(ready_index, 1)
    _must(go.wait(20), "no go from the parent")


def locked_increments(lock: Any, ints: SharedInts, n: int, depth: int = 1, go: Any = None) -> int:
    """``n`` non-atomic increments (read, then write + 1) of ``ints[0]``,
    each under ``lock`` acquired ``depth`` times. A lock that lets two
    processes in at once loses updates. Counts itself in ``ints[1]`` and
    waits for ``go`` first if given."""
    if go is not None:
        wait_for_go(ints, 1, go)
    for _ in range(n):
        for _ in range(depth):
            _must(lock.acquire(timeout=20), "lock not acquired")
        try:
            v = ints.get(0)
            ints.set(0, v + 1)
        finally:
            for _ in range(depth):
                lock.release()
    return n


def exercise_primitive(kind: str, obj: Any) -> Any:
    """Uses a primitive the parent prepared (see test_sync_processes) and
    reports what this process saw; leaves a trace the parent checks."""
    if kind == "Lock":
        # The parent holds it: the child sees it taken, releases it (any
        # process may release a Lock), then takes it and keeps it.
        seen = (obj.locked(), obj.acquire(False))
        obj.release()
        return seen + (obj.acquire(timeout=10),)
    if kind == "RLock":
        # The parent holds it: locked, not ours, not releasable here.
        seen = (obj.locked(), obj._is_owned(), obj.acquire(False))
        try:
            obj.release()
            released = "released"
        except RuntimeError:
            released = "RuntimeError"
        return seen + (released,)
    if kind == "Semaphore":
        # The parent took one of two permits: one left; then add three.
        seen = (obj.acquire(False), obj.acquire(False))
        obj.release(3)
        return seen
    if kind == "Event":
        # The parent set it; the child sees it and clears it.
        seen = obj.wait(10)
        obj.clear()
        return seen
    if kind == "Condition":
        # The parent notifies until this wait returns: True means notified.
        with obj:
            return obj.wait(timeout=10)
    if kind == "Barrier":
        return obj.wait(timeout=10)
    raise ValueError(kind)


def receive_and_exercise(q: corral.Queue, kind: str) -> Any:
    """``exercise_primitive`` on a primitive that arrives through ``q``."""
    return exercise_primitive(kind, q.get(timeout=20))


def event_pong(ping: Any, pong: Any, n: int) -> int:
    """``n`` round trips: wait for ``ping``, clear it, set ``pong``."""
    for i in range(n):
        _must(ping.wait(10), f"no ping {i}")
        ping.clear()
        pong.set()
    return n


def semaphore_occupancy(sem: Any, ints: SharedInts, go: Any, rounds: int, hold: float) -> int:
    """``rounds`` times: takes a permit, counts itself in ``ints[0]``,
    stays ``hold`` seconds, leaves. Returns the most holders it saw at once."""
    wait_for_go(ints, 1, go)
    most = 0
    for _ in range(rounds):
        _must(sem.acquire(timeout=20), "no permit")
        try:
            most = max(most, ints.add(0, 1))
            time.sleep(hold)
            ints.add(0, -1)
        finally:
            sem.release()
    return most


def over_release(sem: Any) -> str:
    """Acquires and releases once, then releases once more: the name of the
    exception that raises (a BoundedSemaphore: ValueError)."""
    _must(sem.acquire(timeout=10), "no permit")
    sem.release()
    try:
        sem.release()
    except Exception as e:
        return type(e).__name__
    return "no error"


def condition_wait_for_counter(cond: Any, ints: SharedInts, target: int, timeout: float) -> Any:
    """Under ``cond``: counts itself in ``ints[1]``, then
    ``wait_for(ints[0] >= target, timeout)``."""
    with cond:
        ints.add(1, 1)
        return cond.wait_for(lambda: ints.get(0) >= target, timeout=timeout)


def condition_wait_once(cond: Any, ints: SharedInts) -> tuple[int, bool]:
    """Under ``cond``: counts itself in ``ints[1]`` (its arrival order),
    waits once (20 s at most), then counts itself in ``ints[2]`` (woken).
    Returns ``(arrival order, wait's result)``."""
    with cond:
        order = ints.add(1, 1)
        notified = cond.wait(timeout=20)
        ints.add(2, 1)
    return order, notified


def barrier_rounds(barrier: Any, rounds: int) -> list[int]:
    """The index ``barrier.wait`` returns in each of ``rounds`` rounds."""
    return [barrier.wait(timeout=20) for _ in range(rounds)]


def barrier_wait_outcome(barrier: Any) -> str:
    """``"broken"`` if the wait raises BrokenBarrierError, else the index."""
    try:
        return str(barrier.wait(timeout=20))
    except corral.BrokenBarrierError:
        return "broken"


def hold_until(lock: Any, held: Any, done: Any) -> bool:
    """Takes ``lock``, sets ``held``, waits for ``done``, releases."""
    _must(lock.acquire(timeout=10), "lock not acquired")
    try:
        held.set()
        _must(done.wait(20), "no done")
    finally:
        lock.release()
    return True


def acquire_then_sigkill(lock: Any, held: Any = None, die: Any = None) -> None:
    """Takes ``lock``, sets ``held`` if given, waits for ``die`` if given,
    then kills this process with SIGKILL, the lock still held."""
    import signal

    _must(lock.acquire(timeout=10), "lock not acquired")
    if held is not None:
        held.set()
    if die is not None:
        die.wait(20)
    os.kill(os.getpid(), signal.SIGKILL)


def acquire_outcome(lock: Any, waiting: Any, timeout: float) -> str:
    """Sets ``waiting``, then ``lock.acquire(timeout=...)``: ``"owner-died"``
    (OwnerDiedError), ``"acquired"`` (then released) or ``"timed out"``."""
    waiting.set()
    try:
        got = lock.acquire(timeout=timeout)
    except corral.OwnerDiedError:
        return "owner-died"
    if got:
        lock.release()
        return "acquired"
    return "timed out"


def interrupted_wait(kind: str, obj: Any, after: float) -> tuple[str, Any]:
    """Blocks on ``obj`` (held or unset by the parent) for up to 20 s while
    SIGUSR1 arrives after ``after`` seconds; its handler raises
    ``_helpers.Interrupted``. Returns how the wait ended and, for a
    Condition, whether the lock is held again afterwards."""
    from _helpers import Interrupted, interrupt_after

    after_state = None
    try:
        with interrupt_after(after):
            if kind in ("Lock", "RLock", "Semaphore"):
                r = obj.acquire(timeout=20)
            elif kind == "Event":
                r = obj.wait(20)
            elif kind == "Condition":
                _must(obj.acquire(timeout=10), "condition lock not acquired")
                try:
                    try:
                        r = obj.wait(20)
                    finally:
                        after_state = obj._is_owned()
                finally:
                    obj.release()
            else:
                raise ValueError(kind)
        return (f"returned {r}", after_state)
    except Interrupted:
        return ("interrupted", after_state)


def one_element_array(x: int) -> Any:
    import numpy as np

    return np.full(1, x, dtype=np.int64)


def forward(q_in: corral.Queue, q_out: corral.Queue, n: int) -> list[str]:
    """Gets ``n`` items and puts each on as received; returns their types."""
    kinds = []
    for _ in range(n):
        item = q_in.get(timeout=20)
        kinds.append(type(item).__name__)
        q_out.put(item)
    return kinds


def array_sum(a: Any) -> float:
    return float(a.sum())


def empty_array(_: int) -> Any:
    import numpy as np

    return np.empty(1)


def recv_and_return(conn: corral.Connection) -> Any:
    """Returns the first message it receives."""
    return conn.recv()


def start_a_child_once_gone(pid: int, value: Any) -> Any:
    """Waits until process ``pid`` has exited, then starts (and waits for) a
    child of its own: in a forked child, that start must not touch the
    handles of its parent's other children."""
    from _helpers import pid_gone, wait_until

    if not wait_until(lambda: pid_gone(pid), 20):
        raise TimeoutError(f"{pid} still runs")
    p = corral.Process(target=sleep_then_return, args=(0, value))
    p.start()
    return p.result(timeout=30)


def return_a_queue_holding(item: Any) -> Any:
    q = corral.Queue()
    q.put(item)
    return q


def return_a_corral_lock() -> Any:
    return corral.Lock()


def return_a_pipe_end_holding(item: Any) -> Any:
    mine, theirs = corral.Pipe()
    mine.send(item)
    return theirs


class LoadsOnlyInChild:
    """A result that cannot be loaded in the test process (its pid is in
    CORRAL_TEST_PARENT)."""

    def __reduce__(self) -> Any:
        return (_load_only_in_child, ())


def _load_only_in_child() -> LoadsOnlyInChild:
    if str(os.getpid()) == os.environ.get("CORRAL_TEST_PARENT"):
        raise ValueError("this result cannot be loaded in the parent")
    return LoadsOnlyInChild()


def return_unloadable_in_parent() -> Any:
    return LoadsOnlyInChild()


# -- holders of a queue that put late (issue 11: ChannelClosed too early) ------


def put_and_return_pid(q: corral.Queue, item: Any) -> int:
    q.put(item)
    return os.getpid()


def wait_then_put(go: Any, q: corral.Queue, item: Any, *unused: Any) -> int:
    """Puts ``item`` once ``go`` (a corral.Event) is set."""
    if not go.wait(30):
        raise TimeoutError("never told to go")
    q.put(item)
    return os.getpid()


def wait_then_receive_queue_and_put(go: Any, carrier: corral.Queue, item: Any) -> int:
    """Once ``go`` is set, takes a queue from ``carrier`` and puts ``item``
    into it."""
    if not go.wait(30):
        raise TimeoutError("never told to go")
    q = carrier.get(timeout=30)
    q.put(item)
    return os.getpid()


def forward_queue_in_message(q: corral.Queue, out: corral.Queue) -> None:
    """Pickles ``q`` into a message (a one-shot export), then reports."""
    holder: corral.Queue = corral.Queue()
    holder.put(q)
    out.put("sent")


def receive_queue_then_put(conn: corral.Connection, go: corral.Event) -> None:
    """Loads the queue sent on ``conn`` once ``go`` is set, puts "late"."""
    assert go.wait(20)
    q = conn.recv()
    q.put("late")


# -- targets gated by events: the test decides when they end ----------------


def wait_then_return(go: Any, value: Any, started: Any = None) -> Any:
    """Sets ``started`` if given, then returns ``value`` once ``go`` (a
    corral.Event) is set (30 s at most)."""
    if started is not None:
        started.set()
    if not go.wait(30):
        raise TimeoutError("never told to return")
    return value
