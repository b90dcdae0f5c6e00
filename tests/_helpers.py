"""Parent-side helpers shared by the corral test suites (imported by the
test modules; tests/ is on sys.path because it has no __init__.py)."""

from __future__ import annotations

import itertools
import os
import platform
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


def proc_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` ('R', 'S', 'Z', ...), or
    None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return text[text.rfind(")") + 2 :].split()[0]


def pid_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs: absent, or a zombie awaiting reaping."""
    return proc_state(pid) in (None, "Z", "X", "x")


class Counting:
    """An endless input 0, 1, 2, ... that counts what was read of it
    (``pulled``): how far ahead of its results a lazy ``map`` reads."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.pulled += 1
            yield i


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Polls ``predicate`` until it is true or ``timeout`` seconds pass;
    returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)


# -- "is that thread blocked on this object yet?" ------------------------------
#
# A test that needs a thread (or a child process) to be *waiting* on a lock,
# a queue or a pipe before it acts asks the kernel instead of sleeping a
# while: /proc/<pid>/task/<tid>/syscall names the system call a sleeping
# thread is in and its arguments. A corral primitive or queue waits with
# futex() on a word of its shared memory (never FUTEX_PRIVATE_FLAG), a pipe
# end with poll()/recvmsg()/sendmsg() on its socket.

#: System call numbers per machine: futex, and the calls that wait on a
#: descriptor (fd first argument) or on a pollfd array (first argument).
_SYSCALLS = {
    "x86_64": {"futex": {202}, "fd": {0, 1, 44, 45, 46, 47}, "pollfds": {7, 271}},
    "aarch64": {"futex": {98}, "fd": {63, 64, 206, 207, 211, 212}, "pollfds": {73}},
}
_POLLFD = struct.Struct("iHH")


def _current_syscall(pid: int, tid: int) -> tuple[int, list[int]] | None:
    """The system call thread ``tid`` of ``pid`` sleeps in (number and
    arguments), or None if it runs in user space or is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if not fields or fields[0] in ("running", "-1"):
        return None
    return int(fields[0]), [int(x, 16) for x in fields[1:7]]


def _mapped_ranges(pid: int, info: os.stat_result) -> list[tuple[int, int]]:
    """Address ranges of ``pid`` mapping the file ``info`` describes."""
    ranges = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5 or int(fields[4]) != info.st_ino:
                continue
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            if (major, minor) == (os.major(info.st_dev), os.minor(info.st_dev)):
                start, end = fields[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def _fds_naming(pid: int, target: str) -> set[int]:
    """Descriptors of ``pid`` that open ``target`` (a readlink of
    /proc/self/fd/N, e.g. ``socket:[1234]``)."""
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                found.add(int(name))
        except OSError:
            pass  # closed meanwhile
    return found


def _polled_fds(pid: int, address: int, count: int) -> set[int]:
    """The descriptors of the pollfd array a thread of ``pid`` polls."""
    count = min(count, 64)
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return set()
    try:
        raw = os.pread(fd, _POLLFD.size * count, address)
    except OSError:  # the call returned and its stack moved on
        return set()
    finally:
        os.close(fd)
    return {_POLLFD.unpack_from(raw, i * _POLLFD.size)[0] for i in range(len(raw) // _POLLFD.size)}


def sleeping_on(obj: Any, pid: int | None = None, tid: int | None = None) -> bool:
    """True if thread ``tid`` of process ``pid`` (default: this process;
    any of its threads if ``tid`` is None) sleeps in the kernel waiting on
    ``obj``: a futex wait on a word of the shared memory of a corral
    primitive or queue, or a wait for I/O on the socket of a pipe end
    (``obj`` has ``fileno()``, or is the descriptor itself)."""
    calls = _SYSCALLS.get(platform.machine())
    if calls is None:
        raise NotImplementedError(
            f"sleeping_on knows the system calls of {sorted(_SYSCALLS)}, not {platform.machine()}"
        )
    pid = os.getpid() if pid is None else pid
    fd = obj if isinstance(obj, int) else obj.fileno()
    info = os.fstat(fd)
    try:
        tids = [tid] if tid is not None else [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        if stat.S_ISSOCK(info.st_mode):
            theirs = _fds_naming(pid, os.readlink(f"/proc/self/fd/{fd}"))
            ranges: list[tuple[int, int]] = []
        else:
            theirs = set()
            ranges = _mapped_ranges(pid, info)
    except FileNotFoundError:  # the process is gone
        return False
    for t in tids:
        call = _current_syscall(pid, t)
        if call is None:
            continue
        nr, args = call
        if nr in calls["futex"] and any(lo <= args[0] < hi for lo, hi in ranges):
            return True
        if nr in calls["fd"] and args[0] in theirs:
            return True
        if nr in calls["pollfds"] and theirs & _polled_fds(pid, args[0], args[1]):
            return True
    return False


class act_when_blocked(threading.Thread):
    """A thread that runs ``action()`` once thread ``tid`` of this process
    sleeps on ``obj`` (see :func:`sleeping_on`): e.g. sends the message a
    blocked ``recv`` waits for. After ``timeout`` seconds it runs the action
    anyway, so that the test cannot hang; ``blocked`` then is False (assert
    it after ``join``)."""

    def __init__(self, obj: Any, tid: int, action: Callable[[], Any], timeout: float = 20) -> None:
        super().__init__(daemon=True)
        self.obj, self.tid, self.action, self.timeout = obj, tid, action, timeout
        self.blocked = False
        self.start()

    def run(self) -> None:
        self.blocked = wait_until(lambda: sleeping_on(self.obj, tid=self.tid), self.timeout, interval=0.005)
        self.action()


class Interrupted(Exception):
    """Raised by the SIGUSR1 handler of :func:`interrupt_after`."""


class interrupt_after:
    """``with interrupt_after(0.2): blocking_call()``: sends this process
    SIGUSR1 after ``seconds``; its handler raises :class:`Interrupted` in
    the main thread, as Ctrl-C raises KeyboardInterrupt. ``elapsed`` is the
    time spent inside the block."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.elapsed = 0.0

    def __enter__(self) -> interrupt_after:
        import signal
        import threading

        def handler(signum, frame):
            raise Interrupted()

        self._old = signal.signal(signal.SIGUSR1, handler)
        self._timer = threading.Timer(self.seconds, os.kill, args=(os.getpid(), signal.SIGUSR1))
        self._t0 = time.monotonic()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        self.elapsed = time.monotonic() - self._t0
        self._timer.cancel()
        self._timer.join()
        signal.signal(signal.SIGUSR1, self._old)
