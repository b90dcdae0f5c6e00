"""Top-level functions the process-pool tests run in workers (importable by
name in a spawned worker, like ``_workers``)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

import corral


def square(x: int) -> int:
    return x * x


def identity(x: Any) -> Any:
    return x


def add(a: int, b: int = 0, *, scale: int = 1) -> int:
    return (a + b) * scale


def pid(_: Any = None) -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def raise_value_error(msg: str) -> None:
    raise ValueError(msg)


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(x)
    return x


def fail_at_or_mark(x: int, bad: int, folder: str) -> int:
    """``fail_at``, but every other item waits (30 s at most) for the file
    ``go`` in ``folder`` and then leaves the file ``str(x)`` there: a
    trace of the items whose tasks ran to their end."""
    if x == bad:
        raise KeyError(x)
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(folder, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(os.path.join(folder, str(x)), "w"):
        pass
    return x


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def die_once(marker: str) -> str:
    """Dies the first time (leaving a marker file), succeeds the second."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(7)
    return "second try"


def model_init(offset: int) -> dict[str, int]:
    return {"offset": offset, "pid": os.getpid()}


def use_model(x: int) -> int:
    return corral.worker_state()["offset"] + x


def no_state() -> Any:
    return corral.worker_state()


def bad_init() -> None:
    raise ValueError("model file missing")


def double(arr: Any) -> Any:
    return arr * 2


def unpicklable_result() -> Any:
    import threading

    return threading.Lock()


def grow_memory(mb: int) -> int:
    global _hog
    _hog = b"x" * (mb << 20)  # touched pages: the RSS stays high
    return os.getpid()


_hog = b""


def array_facts(arr: Any) -> tuple[float, int, bool, str]:
    """Sum, data address, writable flag and type of an array argument."""
    return float(arr.sum()), arr.__array_interface__["data"][0], bool(arr.flags.writeable), type(arr).__name__


def try_write(arr: Any) -> str:
    try:
        arr[0] = 1
    except ValueError as e:
        return f"refused: {e}"
    return "written"


_concurrency_lock = __import__("threading").Lock()
_running = 0
_peak = 0


def track_concurrency(seconds: float) -> int:
    """Sleeps; returns the most tasks seen running at once so far."""
    global _running, _peak
    with _concurrency_lock:
        _running += 1
        _peak = max(_peak, _running)
    time.sleep(seconds)
    with _concurrency_lock:
        _running -= 1
        return _peak


def thread_name() -> str:
    return __import__("threading").current_thread().name


def thread_state() -> Any:
    return corral.worker_state()


class ParentCannotLoad(Exception):
    """Loads in a worker, not in the test process (its pid is in
    CORRAL_TEST_PARENT)."""

    def __reduce__(self) -> Any:
        return (_load_only_in_worker, (str(self),))


def _load_only_in_worker(msg: str) -> Exception:
    if str(os.getpid()) == os.environ.get("CORRAL_TEST_PARENT"):
        raise RuntimeError("this exception cannot be loaded in the parent")
    return ParentCannotLoad(msg)


def raise_parent_cannot_load() -> None:
    raise ParentCannotLoad("worker only")


class Scaler:
    """A callable object whose state changes between submits."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return self.k * x


def total(arr: Any) -> float:
    return float(arr.sum())


def big_array(mb: int) -> Any:
    import numpy as np

    return np.ones(mb << 17)  # mb MiB of float64


def touch(path: str) -> str:
    with open(path, "a"):
        pass
    return path


def gated_init(folder: str) -> None:
    """Initializer: announces its pid, then waits (bounded) until the test
    lets it finish booting."""
    me = os.getpid()
    with open(os.path.join(folder, f"boot-{me}"), "w"):
        pass
    go = os.path.join(folder, f"go-{me}")
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.005)


class ExitsWhenLoaded:
    """A result whose unpickling raises SystemExit in the parent."""

    def __reduce__(self) -> Any:
        import sys

        return (sys.exit, (3,))


def returns_exit_bomb() -> Any:
    return ExitsWhenLoaded()


def break_stdio_then_pid() -> int:
    """Leaves the worker with ``sys.stdout`` None and ``sys.stderr`` closed,
    as under some daemons and launchers."""
    import sys

    sys.stdout = None
    sys.stderr.close()
    return os.getpid()


def wait_for_file(path: str) -> str:
    """Waits (bounded) until ``path`` exists; returns it."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def second_init_fails(folder: str) -> None:
    """Initializer: the first worker to run it boots; any other waits
    (bounded) for ``folder/go``, then raises ValueError("init boom")."""
    try:
        os.close(os.open(os.path.join(folder, "claimed"), os.O_CREAT | os.O_EXCL))
        return
    except FileExistsError:
        pass
    wait_for_file(os.path.join(folder, "go"))
    raise ValueError("init boom")


# -- tasks gated by events: the test decides when they end --------------------


def wait_for(go: Any, value: Any = None, linger: float = 0.0) -> Any:
    """Returns ``value`` once ``go`` (a corral.Event) is set (60 s at most)
    and ``linger`` more seconds have passed."""
    if not go.wait(60):
        raise TimeoutError("never told to finish")
    time.sleep(linger)
    return value


def exit_when(go: Any, code: int) -> None:
    """Leaves through ``os._exit(code)`` once ``go`` is set (60 s at most)."""
    go.wait(60)
    os._exit(code)


def set_then_sleep(started: Any, seconds: float) -> None:
    """Sets ``started`` (a corral.Event), then sleeps ``seconds``."""
    started.set()
    time.sleep(seconds)


class Dummy:
    """A weakly referenceable object a task takes or returns (tests of what
    the pool keeps alive)."""

    def __init__(self, n: int) -> None:
        self.n = n


def make_dummy(n: int) -> Dummy:
    return Dummy(n)


def int_or_dummy(n: int) -> int | Dummy:
    """``n`` for an even ``n``, else a Dummy: a chunk of results that
    starts with a scalar and holds objects."""
    return Dummy(n) if n % 2 else n


def wait_or_touch(go: Any, path: str | None) -> str | None:
    """With no ``path``: waits for ``go`` (a corral.Event, 60 s at most);
    else creates the file ``path`` (proof that the task ran)."""
    if path is None:
        go.wait(60)
        return None
    return touch(path)


def hold_zero(x: int, go: Any) -> int:
    """``x``; item 0 only once ``go`` (a corral.Event) is set (60 s at most)."""
    if x == 0 and not go.wait(60):
        raise TimeoutError("never told to finish")
    return x
