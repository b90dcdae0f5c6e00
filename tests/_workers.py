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

def receive_queue_and_produce(ctrl: corral.Queue, n: int, tag: str) -> int:
    data = ctrl.get(timeout=20)
    assert isinstance(data, corral.Queue), type(data)
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
