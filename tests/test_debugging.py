"""Debugging from workers (issue 14): tracebacks through functions of
``__main__`` name their file and line, log records of workers reach the
parent's logging, a worker's printed lines arrive whole,
``corral.worker_id()``."""

from __future__ import annotations

import linecache
import os
import subprocess
import sys
import textwrap
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
    assert f'File "{script}", line 9, in boom\n    raise ValueError(f"bad {{y}}")  # the line a traceback shows\n' in r.stdout


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

