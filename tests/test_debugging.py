"""Debugging from workers (issue 14): tracebacks through functions of
``__main__`` name their file and line, log records of workers reach the
parent's logging, a worker's printed lines arrive whole,
``corral.worker_id()``."""

from __future__ import annotations

import linecache
import logging
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import corral
from corral import _pickle

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_script(tmp_path: Any, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``source`` as the ``__main__`` script ``tmp_path/script.py``."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path)
    )


# -- tracebacks ---------------------------------------------------------------

_RAISING_SCRIPT = """\
import sys
import traceback

import corral


def boom(x):
    y = x + 1
    raise ValueError(f"bad {y}")  # the line a traceback shows


if __name__ == "__main__":
    method = sys.argv[1]
    if method == "process":
        p = corral.Process(target=boom, args=(1,))
        p.start()
        call = lambda: p.result(60)
    else:
        pool = corral.ProcessPoolExecutor(1, start_method=method)
        call = pool.submit(boom, 1).result
    try:
        call()
    except ValueError:
        print(traceback.format_exc())
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork", "process"])
def test_a_traceback_through_a_function_of_main_names_its_file_line_and_source(tmp_path: Any, method: str) -> None:
    r = _run_script(tmp_path, _RAISING_SCRIPT, method)
    assert r.returncode == 0, r.stderr
    script = str(tmp_path / "script.py")
    assert "<dynamic-code>" not in r.stdout
    assert (
        f'File "{script}", line 9, in boom\n    raise ValueError(f"bad {{y}}")  # the line a traceback shows\n'
        in r.stdout
    )


def test_the_parent_fills_in_a_source_line_only_it_can_read() -> None:
    # A notebook cell: its code is in the kernel's linecache, not in a file
    # a worker could open.
    name = "/nonexistent/ipykernel_0/cell1.py"
    source = "def cell_boom(x):\n    raise KeyError(x)  # in the cell\n"
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, name, "exec"), namespace)
    linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    try:
        with corral.ProcessPoolExecutor(1) as pool:
            with pytest.raises(KeyError) as info:
                pool.submit(namespace["cell_boom"], 3).result(60)
        tb = str(info.value.__cause__)
        assert f'File "{name}", line 2, in cell_boom\n    raise KeyError(x)  # in the cell\n' in tb
    finally:
        linecache.cache.pop(name, None)


def test_source_lines_are_added_only_where_a_frame_has_none() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        f'  File "{__file__}", line 1, in <module>\n'
        '  File "/nonexistent.py", line 3, in f\n'
        f'  File "{__file__}", line 2, in g\n'
        "    already here\n"
        "ValueError: x\n"
    )
    out = _pickle.with_source_lines(tb)
    first = linecache.getline(__file__, 1).strip()
    assert out == tb.replace("<module>\n", f"<module>\n    {first}\n")


# -- worker_id ----------------------------------------------------------------


def _id_and_pid(_: Any = None) -> tuple[int | None, int]:
    return corral.worker_id(), os.getpid()


def _init_id() -> int | None:
    return corral.worker_id()


def _state_and_id(_: Any = None) -> tuple[Any, int | None]:
    return corral.worker_state(), corral.worker_id()


def _die_in_slot_0(_: Any) -> int | None:
    if corral.worker_id() == 0:
        os._exit(1)
    return corral.worker_id()


def test_worker_id_is_none_outside_a_pool_worker(start: Any) -> None:
    assert corral.worker_id() is None
    assert start(corral.worker_id).result(60) is None
    with corral.ThreadPoolExecutor(2) as threads:
        assert threads.submit(corral.worker_id).result(60) is None


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_worker_id_is_the_slot_and_the_initializer_sees_it(method: str) -> None:
    with corral.ProcessPoolExecutor(3, initializer=_init_id, start_method=method) as pool:
        seen = set(pool.map(_state_and_id, range(300), chunksize=1))
    # The initializer's view is the task's: each worker's own slot.
    assert all(state == slot for state, slot in seen)
    assert {slot for _, slot in seen} <= {0, 1, 2}


def test_a_replacement_worker_takes_the_slot_of_the_one_it_replaces() -> None:
    with corral.ProcessPoolExecutor(2, max_tasks_per_child=1) as pool:
        seen = list(pool.map(_id_and_pid, range(40), chunksize=1))
        pids_by_slot: dict[int | None, set[int]] = {}
        for slot, pid in seen:
            pids_by_slot.setdefault(slot, set()).add(pid)
        assert set(pids_by_slot) <= {0, 1}
        assert sum(len(p) for p in pids_by_slot.values()) == 40  # a new process per task
        # A worker that dies: its replacement is slot 0 again.
        with pytest.raises(corral.WorkerLostError):
            list(pool.map(_die_in_slot_0, range(20), chunksize=1))
        assert {pool.submit(_id_and_pid).result(60)[0] for _ in range(10)} <= {0, 1}


# -- log records of workers ---------------------------------------------------

LOGGER = "corral_test_debugging"


class _Records(logging.Handler):
    """Keeps what it is given, formatted by this process's formatter."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("[%(processName)s] %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def records() -> Any:
    """A handler on ``LOGGER`` (level INFO, not propagated)."""
    logger = logging.getLogger(LOGGER)
    handler = _Records()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def _log_some(tag: Any, n: int = 3) -> bool:
    logger = logging.getLogger(LOGGER)
    logger.debug("not shipped %s", tag)
    for i in range(n):
        logger.info("info %s %d", tag, i)
    logging.getLogger(LOGGER + ".child").warning("warn %s", tag, extra={"job": tag, "odd": object()})
    try:
        raise KeyError(tag)
    except KeyError:
        logger.exception("failed %s", tag)
    # The parent's level: a DEBUG record is not even made here.
    return logger.isEnabledFor(logging.DEBUG)


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_records_logged_in_pool_workers_reach_the_parents_handlers(records: Any, method: str) -> None:
    with corral.ProcessPoolExecutor(2, start_method=method) as pool:
        assert list(pool.map(_log_some, range(4), chunksize=1)) == [False] * 4
    # All there once shutdown(wait=True) returned.
    infos = sorted(line.split("] ", 1)[1] for line in records.lines if " INFO " in line)
    assert infos == sorted(f"INFO {LOGGER}: info {t} {i}" for t in range(4) for i in range(3))
    assert not [line for line in records.lines if "not shipped" in line]
    warns = [r for r in records.records if r.levelno == logging.WARNING]
    assert sorted(r.job for r in warns) == [0, 1, 2, 3]
    assert {r.name for r in warns} == {LOGGER + ".child"}
    assert all(r.odd.startswith("<object object") for r in warns)
    errors = [r for r in records.records if r.levelno == logging.ERROR]
    assert len(errors) == 4 and all("KeyError" in r.exc_text for r in errors)
    assert {r.processName for r in records.records} <= {"corral-pool-worker-0", "corral-pool-worker-1"}
    assert all(r.worker == r.processName and r.process != os.getpid() for r in records.records)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_records_logged_in_a_process_reach_the_parents_handlers(records: Any, method: str) -> None:
    p = corral.Process(target=_log_some, args=("p", 2), name="logger-child", start_method=method)
    p.start()
    assert p.result(60) is False
    lines = [line for line in records.lines if " INFO " in line]
    assert lines == [f"[logger-child] INFO {LOGGER}: info p 0", f"[logger-child] INFO {LOGGER}: info p 1"]


def test_a_level_the_parent_raised_drops_records_already_sent(records: Any) -> None:
    with corral.ProcessPoolExecutor(1) as pool:
        logging.getLogger(LOGGER).setLevel(logging.ERROR)  # after the worker started
        pool.submit(_log_some, "late").result(60)
    assert {r.levelname for r in records.records} == {"ERROR"}


def _log_and_leave(tag: int) -> int:
    for i in range(50):
        logging.getLogger(LOGGER).info("record %d %d", tag, i)
    return os.getpid()


def test_no_record_is_lost_when_workers_exit_and_threads_and_fds_stay_flat(records: Any) -> None:
    def counts() -> tuple[int, int]:
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    with corral.ProcessPoolExecutor(2, max_tasks_per_child=1) as pool:
        list(pool.map(_log_and_leave, range(4), chunksize=1))
    before = counts()
    with corral.ProcessPoolExecutor(2, max_tasks_per_child=1) as pool:
        pids = set(pool.map(_log_and_leave, range(4, 44), chunksize=1))
    assert len(pids) == 40  # each task in a worker of its own, which then left
    assert len(records.records) == 44 * 50
    assert sorted(r.getMessage() for r in records.records) == sorted(
        f"record {t} {i}" for t in range(44) for i in range(50)
    )
    threads, fds = counts()
    assert threads <= before[0] and fds <= before[1] + 2, (before, (threads, fds))


# -- printed lines ------------------------------------------------------------

_PRINTING_SCRIPT = """\
import sys

import corral


def talk(tag):
    for i in range(300):
        # Several writes per line, and lines longer than a write buffer.
        print(f"<{tag}:{i}", "x" * (i * 7 % 3000), end="")
        sys.stdout.write("|")
        print(f"{tag}:{i}>")
        print(f"<{tag}:{i}:a>\\n<{tag}:{i}:b>", file=sys.stderr)
    return tag


if __name__ == "__main__":
    with corral.ProcessPoolExecutor(3, start_method=sys.argv[1]) as pool:
        assert list(pool.map(talk, ["w0", "w1", "w2", "w3"], chunksize=1)) == ["w0", "w1", "w2", "w3"]
    procs = [corral.Process(target=talk, args=(f"p{i}",)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_lines_printed_by_workers_at_once_arrive_whole(tmp_path: Any, method: str) -> None:
    r = _run_script(tmp_path, _PRINTING_SCRIPT, method)
    assert r.returncode == 0, r.stderr[-2000:]
    tags = ["w0", "w1", "w2", "w3", "p0", "p1"]
    out = r.stdout.splitlines()
    expected = {f"<{t}:{i} {'x' * (i * 7 % 3000)}|{t}:{i}>" for t in tags for i in range(300)}
    assert len(out) == len(expected) and set(out) == expected
    err = [line for line in r.stderr.splitlines() if line.startswith("<")]
    assert sorted(err) == sorted(f"<{t}:{i}:{s}>" for t in tags for i in range(300) for s in "ab")


class _ToList(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(record.getMessage())


def _log_to_own_handler() -> list[str]:
    mine: list[str] = []
    logging.getLogger().addHandler(_ToList(mine))
    logging.getLogger(LOGGER).info("kept in the child")
    return mine


def test_a_child_that_sets_up_its_own_root_handler_keeps_its_records(records: Any, start: Any) -> None:
    assert start(_log_to_own_handler).result(60) == ["kept in the child"]
    assert records.records == []


_THRESHOLD_SCRIPT = """\
import logging
import sys

import corral


def enabled():
    return [logging.getLogger("lib").isEnabledFor(level) for level in (logging.INFO, logging.ERROR)]


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG)
    logging.getLogger().handlers[0].setLevel(getattr(logging, sys.argv[1]))
    with corral.ProcessPoolExecutor(1) as pool:
        print(pool.submit(enabled).result(60))
"""


@pytest.mark.parametrize(("handler_level", "expected"), [("ERROR", "[False, True]"), ("DEBUG", "[True, True]")])
def test_a_record_no_parent_handler_would_print_is_not_made_in_the_worker(
    tmp_path: Any, handler_level: str, expected: str
) -> None:
    r = _run_script(tmp_path, _THRESHOLD_SCRIPT, handler_level)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


_TTY_SCRIPT = """\
import json
import sys

import corral


def report(_=None):
    return [sys.stdout.isatty(), sys.stderr.isatty()]


def via_process(method):
    p = corral.Process(target=report, start_method=method)
    p.start()
    return p.result(60)


if __name__ == "__main__":
    seen = {"parent": report()}
    for method in ("spawn", "fork"):
        seen["process-" + method] = via_process(method)
    for method in ("forkserver", "spawn", "fork"):
        with corral.ProcessPoolExecutor(1, start_method=method) as pool:
            seen["pool-" + method] = pool.submit(report).result(60)
    with open(sys.argv[1], "w") as f:
        json.dump(seen, f)
"""


def test_a_childs_whole_line_streams_still_say_they_are_a_terminal(tmp_path: Any) -> None:
    # A child's stdout/stderr on a terminal answer isatty() True, as the
    # stdlib's children's do (colour and progress-bar libraries ask).
    import json
    import pty

    master, slave = pty.openpty()
    try:
        script = tmp_path / "script.py"
        script.write_text(_TTY_SCRIPT)
        out = tmp_path / "seen.json"
        r = subprocess.run(
            [sys.executable, str(script), str(out)],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            timeout=120,
            cwd=str(tmp_path),
        )
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 0
    seen = json.loads(out.read_text())
    assert seen == {k: [True, True] for k in seen} and len(seen) == 6


_REENTRANT_SCRIPT = """\
import io
import os
import signal
import sys

from corral import _childio

r, w = os.pipe()
out = io.TextIOWrapper(_childio._LineSink(w), write_through=True)
real_write = os.write
fired = []


def write_raising_a_signal(fd, data):
    if not fired:  # the handler runs while write holds the sink
        fired.append(1)
        os.kill(os.getpid(), signal.SIGUSR1)
    return real_write(fd, data)


signal.signal(signal.SIGUSR1, lambda *a: print("from the handler", file=out, flush=True))
os.write = write_raising_a_signal
print("a whole line", file=out)
os.write = real_write
os.close(w)
with os.fdopen(r, "rb") as f:
    sys.stdout.write(f.read().decode())
"""


def test_a_signal_handler_printing_while_the_child_prints_does_not_hang() -> None:
    # A worker's SIGTERM/SIGALRM handler that prints, arriving while its
    # main thread is inside a print, hung the child (the whole-line sink's
    # lock is held by the very thread the handler runs in).
    r = subprocess.run([sys.executable, "-c", _REENTRANT_SCRIPT], capture_output=True, text=True, timeout=60, cwd=HERE)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(r.stdout.splitlines()) == ["a whole line", "from the handler"]


def test_the_whole_line_sink_takes_only_bytes_like_objects() -> None:
    # As a BufferedWriter: bytes(5) made 5 NUL bytes, bytes([104, 105]) "hi".
    from corral import _childio

    r, w = os.pipe()
    try:
        sink = _childio._LineSink(w)
        for bad in (5, [104, 105], "text"):
            with pytest.raises(TypeError):
                sink.write(bad)
        sink.write(bytearray(b"ok"))
        sink.write(memoryview(b"!\n"))
        assert os.read(r, 100) == b"ok!\n"
    finally:
        os.close(r)
        os.close(w)


_CLOUDPICKLE_2_SCRIPT = """\
import cloudpickle.cloudpickle as impl

if hasattr(impl, "_code_reduce"):
    del impl._code_reduce  # where cloudpickle 2.x (pyproject: >= 2.2) has no such name

from corral import _pickle

f = _pickle.loads(_pickle.dumps_by_value(lambda x: x + 1))
assert f(1) == 2
print("ok")
"""


def test_functions_go_by_value_with_cloudpickle_2_layout() -> None:
    # With cloudpickle 2.2 every function of __main__ failed to pickle
    # (PicklingError: module 'cloudpickle.cloudpickle' has no attribute
    # '_code_reduce'): the source-keeping pickler looked up 3.x's reducer.
    r = subprocess.run([sys.executable, "-c", _CLOUDPICKLE_2_SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr[-2000:]
