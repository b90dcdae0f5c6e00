"""Functions run in the children of bench_sync.py."""

from __future__ import annotations

from typing import Any

from corral import _core, _fds


class CorralCounter:
    """A shared 64-bit integer (picklable to corral children)."""

    def __init__(self) -> None:
        self._c = _core.Counters()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (_fds.export_fd(self._c.fileno()),))

    def get(self) -> int:
        return self._c.get(0)

    def set(self, v: int) -> None:
        self._c.set(0, v)


def _rebuild(handle: Any) -> CorralCounter:
    c = CorralCounter.__new__(CorralCounter)
    c._c = _core.Counters.from_fd(_fds.import_fd(handle))
    return c


def corral_increment(lock: Any, counter: CorralCounter, n: int, start: Any) -> None:
    get, set_ = counter._c.get, counter._c.set
    start.wait()
    for _ in range(n):
        with lock:
            set_(0, get(0) + 1)


def mp_increment(value: Any, n: int, start: Any) -> None:
    start.wait()
    for _ in range(n):
        with value.get_lock():
            value.value += 1


def pong(ping: Any, pong_ev: Any, n: int) -> None:
    for _ in range(n):
        ping.wait(30)
        ping.clear()
        pong_ev.set()
