"""Functions the multiprocessing-compatibility tests run in workers and
children (importable by name there)."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import threading
import time
from typing import Any

_log_queue: Any = None


def install_queue_handler(q: Any) -> None:
    """Pool initializer: this worker's log records go to ``q`` (a
    ``multiprocessing.Queue``), as the logging cookbook does."""
    global _log_queue
    _log_queue = q
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(logging.INFO)


def log_and_return(x: int) -> int:
    logging.getLogger("corral-test").info("record %d", x)
    return x


def set_mp_event(ev: Any) -> bool:
    ev.set()
    return True


def release_mp_semaphore(sem: Any) -> bool:
    sem.release()
    return True


def use_proxy(d: Any, key: str, value: int) -> int:
    d[key] = value
    return len(d)


def add_under_lock(v: Any, n: int) -> None:
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def fill_array(a: Any, value: float) -> None:
    for i in range(len(a)):
        a[i] = value


def set_raw(v: Any, value: int) -> None:
    v.value = value


def consume_and_ack(q: Any, n: int) -> int:
    got = 0
    for _ in range(n):
        got += q.get(timeout=60)
        q.task_done()
    return got


def my_process_name() -> tuple[str, int]:
    cur = multiprocessing.current_process()
    return cur.name, cur.pid


def main_thread_native_id() -> int | None:
    return threading.main_thread().native_id


def start_thread_setting(ev: Any, go: Any) -> None:
    """Starts a non-daemon thread that sets ``ev`` once ``go`` is set, and
    returns at once: the process must wait for that thread before it exits."""

    def later() -> None:
        go.wait(60)
        ev.set()

    threading.Thread(target=later).start()


def tag_init(tag: Any) -> None:
    global _tag
    _tag = tag


_tag: Any = None


def get_tag(_: Any = None) -> Any:
    return _tag


def worker_pid(_: Any = None) -> int:
    return os.getpid()


def die(_: Any = None) -> None:
    os._exit(7)


def slow_square(x: int) -> int:
    time.sleep(0.001)
    return x * x


def raise_timeout() -> None:
    raise TimeoutError("from the task")


def my_authkey() -> bytes:
    return bytes(multiprocessing.current_process().authkey)
