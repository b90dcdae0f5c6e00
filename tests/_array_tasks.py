"""Worker functions of ``test_shm_arrays.py`` (importable by name in a
spawned worker)."""

from __future__ import annotations

import contextvars
import os
import threading
from typing import Any

import numpy as np

from corral import _core

#: Arrays a task keeps after it returns (a worker global).
KEPT: list[Any] = []


def double(a: Any) -> Any:
    return a * 2


def stats() -> tuple[int, int, int, int]:
    s = _core.array_arena_stats()
    return s.live_blocks, s.live_bytes, s.sent, s.sent_bytes


def make(n: int) -> Any:
    return np.full(n, 3.0)


def double_and_keep(a: Any) -> Any:
    r = a * 2
    KEPT.append(r)
    return r


def overwrite_kept() -> float:
    KEPT[-1][:] = -1.0
    return float(KEPT[-1][0])


def drop_kept() -> int:
    n = len(KEPT)
    KEPT.clear()
    return n


def keep_big(n: int) -> int:
    KEPT.append(np.ones(n))
    return os.getpid()


def pair(n: int) -> tuple[Any, Any]:
    a = np.arange(n, dtype=np.float64)
    return a, a[8:]


def grown(n: int) -> Any:
    a = np.arange(n, dtype=np.float64)
    a.resize(2 * n, refcheck=False)  # realloc of an arena block
    assert (a[:n] == np.arange(n)).all() and (a[n:] == 0).all()
    a.resize(n // 2, refcheck=False)
    return a


def in_threads(threads: int, rounds: int, n: int) -> bool:
    """Threads that use this worker's allocator (a copy of the main
    thread's context) make, check and drop arrays at the same time."""
    ok: list[bool] = []

    def work(seed: int) -> None:
        good = True
        for i in range(rounds):
            a = np.full(n, float(seed * 1000 + i))
            b = a + 1
            good &= bool((b == seed * 1000 + i + 1).all())
            del a, b
        ok.append(good)

    ts = [threading.Thread(target=contextvars.copy_context().run, args=(work, k)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return len(ok) == threads and all(ok)


def fork_child_drops(n: int) -> bool:
    """A child forked from the worker drops an inherited array and makes
    new ones: the worker's array must stay intact and owned."""
    a = np.full(n, 7.0)
    pid = os.fork()
    if pid == 0:
        try:
            b = np.ones(n)
            del a, b
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return bool((a == 7.0).all()) and stats()[0] >= 1


def fork_child_writes(n: int) -> tuple[float, float]:
    """A forked child writes an inherited array: the worker's must not
    change (copy-on-write, as for malloc'd memory); returns the worker's
    sum and the sum the child saw after its write."""
    a = np.zeros(n)

    def write() -> bytes:
        a[:] = 7.0
        return str(float(a.sum())).encode()

    seen = _in_forked_child(write)
    return float(a.sum()), float(seen or b"nan")


def fork_child_resizes(n: int) -> str:
    """A forked child grows and shrinks an inherited array; returns what
    it saw ("ok" or the error)."""
    a = np.arange(n, dtype=np.float64)

    def resize() -> bytes:
        try:
            a.resize(2 * n, refcheck=False)
            good = bool((a[:n] == np.arange(n)).all() and (a[n:] == 0).all())
            a.resize(n // 2, refcheck=False)
            return b"ok" if good and (a == np.arange(n // 2)).all() else b"wrong data"
        except BaseException as e:  # reported to the parent
            return repr(e).encode()[:200]

    return _in_forked_child(resize).decode()


def _in_forked_child(fn: Any) -> bytes:
    """Runs ``fn`` in a child forked from this worker; returns the bytes
    it returned (up to 200; empty if it failed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, fn())
        finally:
            os._exit(0)
    os.close(w)
    seen = os.read(r, 200)
    os.close(r)
    os.waitpid(pid, 0)
    return seen


def keep_until(n: int, barrier: Any) -> int:
    """Keeps an array of ``n`` float64 in a worker global once every worker
    of the pool holds one (the barrier); returns the pid."""
    KEPT.append(np.ones(n))
    barrier.wait(60)
    return os.getpid()
