"""corral.Process: multiprocessing.Process's API plus result(); exit codes,
errors with the child's traceback, WorkerLostError for a child that died,
and no child outliving its parent."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import _workers
import corral
from _helpers import Interrupted, interrupt_after, pid_gone, wait_until


def square(x):
    """A target defined in this test module (loaded by reference in the child)."""
    return x * x


class SquareProcess(corral.Process):
    """A subclass overriding run(), as multiprocessing users write them."""

    def __init__(self, x):
        super().__init__()
        self.x = x

    def run(self):
        return self.x**2


# -- targets and results --------------------------------------------------------


def test_target_gets_args_and_kwargs_and_result_returns_its_value(start):
    p = start(_workers.add, 2, 3, scale=10)
    assert p.result(timeout=20) == 50
    assert p.exitcode == 0
    assert p.result(timeout=20) == 50  # asking again gives the same value


def test_constructor_with_explicit_args_and_kwargs():
    p = corral.Process(target=_workers.add, args=(1,), kwargs={"b": 4, "scale": 2}, name="adder")
    p.start()
    try:
        assert p.result(timeout=20) == 10
        assert p.name == "adder"
    finally:
        p.join(20)


def test_the_child_is_our_child_and_imports_helper_modules_from_our_sys_path(start):
    p = start(_workers.where_am_i)
    path, pid, ppid = p.result(timeout=20)
    assert path == _workers.__file__
    assert pid == p.pid != os.getpid()
    assert ppid == os.getpid()


def test_a_lambda_target(start):
    p = start(lambda: 6 * 7)
    assert p.result(timeout=20) == 42


def test_a_closure_target(start):
    factor = 7

    def times(x):
        return x * factor

    p = start(times, 6)
    assert p.result(timeout=20) == 42


def test_a_target_defined_in_the_test_module(start):
    p = start(square, 9)
    assert p.result(timeout=20) == 81


def test_a_subclass_overriding_run():
    p = SquareProcess(12)
    p.start()
    try:
        assert p.result(timeout=20) == 144
    finally:
        p.join(20)


def test_several_children_run_side_by_side(start):
    procs = [start(_workers.sleep_then_return, 0.2, k) for k in range(4)]
    assert [p.result(timeout=30) for p in procs] == [0, 1, 2, 3]
    assert len({p.pid for p in procs}) == 4


def test_a_result_larger_than_the_pipe_buffer_comes_back(start):
    p = start(lambda: b"r" * 10_000_000)
    assert p.result(timeout=30) == b"r" * 10_000_000
    assert p.exitcode == 0


def test_an_unpicklable_result_raises_type_error(start):
    p = start(_workers.return_a_lock)
    with pytest.raises(TypeError):
        p.result(timeout=20)


# -- exit codes and errors ------------------------------------------------------------


def test_a_normal_return_exits_with_zero(start):
    p = start(_workers.add, 1, 1)
    p.join(20)
    assert p.exitcode == 0
    assert not p.is_alive()


def test_sys_exit_sets_the_exit_code(start):
    p = start(_workers.exit_with, 3)
    p.join(20)
    assert p.exitcode == 3


def test_sys_exit_with_a_message_exits_with_one(start):
    p = start(_workers.exit_with, "fatal: bad config")
    p.join(20)
    assert p.exitcode == 1


def test_an_exception_exits_with_one_and_result_reraises_it_with_the_remote_traceback(start):
    p = start(_workers.raise_value_error, "boom 42")
    p.join(20)
    assert p.exitcode == 1
    with pytest.raises(ValueError, match="boom 42") as info:
        p.result(timeout=20)
    cause = info.value.__cause__
    assert isinstance(cause, corral.RemoteTraceback)
    text = str(cause)
    assert "Traceback" in text
    assert "raise_value_error" in text and "_innermost_failure" in text
    assert "ValueError: boom 42" in text


def test_a_custom_exception_comes_back_with_its_type_and_attributes(start):
    p = start(_workers.raise_custom_error, 7, "disk full")
    with pytest.raises(_workers.CustomError) as info:
        p.result(timeout=20)
    assert (info.value.code, info.value.detail) == (7, "disk full")
    assert isinstance(info.value.__cause__, corral.RemoteTraceback)


def test_an_exception_with_an_unpicklable_attribute_comes_back_as_its_type_without_that_attribute(start):
    p = start(_workers.raise_unpicklable_error, "with a lock inside")
    with pytest.raises(_workers.UnpicklableError, match="with a lock inside") as info:
        p.result(timeout=20)
    assert not hasattr(info.value, "lock")
    assert any("'lock'" in n and "dropped" in n for n in info.value.__notes__)
    assert "raise_unpicklable_error" in str(info.value.__cause__)
    assert p.exitcode == 1


def test_an_exception_whose_init_wants_other_arguments_comes_back_as_its_type(start):
    p = start(_workers.raise_two_arg_error, "x", "y")
    with pytest.raises(_workers.TwoArgError, match="x-y") as info:
        p.result(timeout=20)
    assert info.value.args == ("x-y",)
    p = start(_workers.raise_coded_error, 7, "disk full", "while saving")
    with pytest.raises(_workers.CodedError, match="disk full") as info:
        p.result(timeout=20)
    assert info.value.code == 7
    assert info.value.__notes__ == ["while saving"]
    assert isinstance(info.value.__cause__, corral.RemoteTraceback)


def test_an_exception_whose_type_cannot_be_pickled_comes_back_as_runtime_error_naming_it(start):
    p = start(_workers.raise_untravelable_error, "local")
    with pytest.raises(RuntimeError, match=r"raise_untravelable_error.<locals>.LocalError: local") as info:
        p.result(timeout=20)
    assert "cannot be pickled" in info.value.__notes__[0]
    assert "raise_untravelable_error" in str(info.value.__cause__)


def test_os_exit_sets_the_exit_code_and_result_raises_worker_lost(start):
    p = start(_workers.hard_exit, 7)
    p.join(20)
    assert p.exitcode == 7
    with pytest.raises(corral.WorkerLostError) as info:
        p.result(timeout=20)
    assert info.value.exitcode == 7


def test_kill_gives_exit_code_minus_9_and_result_raises_worker_lost(start):
    p = start(_workers.sleep_then_return, 60, "never")
    p.kill()
    p.join(20)
    assert p.exitcode == -signal.SIGKILL
    with pytest.raises(corral.WorkerLostError) as info:
        p.result(timeout=20)
    assert info.value.exitcode == -9
    assert isinstance(info.value, RuntimeError)


def test_terminate_gives_exit_code_minus_15(start):
    p = start(_workers.sleep_then_return, 60, "never")
    p.terminate()
    p.join(20)
    assert p.exitcode == -signal.SIGTERM
    with pytest.raises(corral.WorkerLostError) as info:
        p.result(timeout=20)
    assert info.value.exitcode == -15


def test_result_with_a_timeout_on_a_running_child_raises_timeout_error(start):
    p = start(_workers.sleep_then_return, 60, "never")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        p.result(timeout=0.1)
    assert time.monotonic() - t0 >= 0.08
    assert p.is_alive()
    assert p.exitcode is None


def test_join_and_result_without_timeout_are_interrupted_by_a_signal_like_ctrl_c(start):
    p = start(_workers.sleep_then_return, 60, "never")
    rescued: list = []  # bounds the test if the waits ignore signals
    rescue = threading.Timer(10, lambda: (rescued.append(True), p.kill()))
    rescue.start()
    try:
        with pytest.raises(Interrupted):
            with interrupt_after(0.2):
                p.join()
        with pytest.raises(Interrupted):
            with interrupt_after(0.2):
                p.result()
    finally:
        rescue.cancel()
        rescue.join()
    assert not rescued, "the wait was not interrupted; only killing the child ended it"
    assert p.is_alive()  # interrupting the wait does not touch the child


# -- lifecycle ----------------------------------------------------------------------


def test_join_with_a_timeout_returns_while_the_child_still_runs(start):
    p = start(_workers.sleep_then_return, 60, "never")
    t0 = time.monotonic()
    p.join(timeout=0.2)
    assert time.monotonic() - t0 >= 0.15
    assert p.is_alive()
    assert p.exitcode is None
    p.kill()
    p.join(20)
    assert not p.is_alive()


def test_is_alive_pid_and_exitcode_through_the_lifecycle():
    go = corral.Event()
    p = corral.Process(target=_workers.wait_then_return, args=(go, "done"))
    assert not p.is_alive()
    assert p.pid is None
    assert p.exitcode is None
    p.start()
    try:
        assert isinstance(p.pid, int) and p.pid > 0
        assert p.is_alive()  # it waits for go
        go.set()
        assert p.result(timeout=20) == "done"
        assert not p.is_alive()
        assert p.exitcode == 0
    finally:
        p.join(20)


def test_sentinel_becomes_readable_when_the_child_exits(start):
    p = start(_workers.sleep_then_return, 0.2, None)
    ready, _, _ = select.select([p.sentinel], [], [], 20)
    assert ready == [p.sentinel]
    p.join(20)
    assert p.exitcode == 0


def test_name_defaults_and_can_be_set():
    p = corral.Process(target=square, args=(2,))
    assert p.name.startswith("Process-")
    q = corral.Process(target=square, args=(2,), name="worker-a")
    assert q.name == "worker-a"
    q.name = "worker-b"
    assert q.name == "worker-b"
    assert corral.Process(target=square).name != p.name


def test_daemon_flag_defaults_to_false_and_is_fixed_once_started(start):
    assert corral.Process(target=square).daemon is False
    assert corral.Process(target=square, daemon=True).daemon is True
    p = corral.Process(target=_workers.add, args=(1, 2))
    p.daemon = True
    assert p.daemon is True
    p.start()
    try:
        with pytest.raises(AssertionError):
            p.daemon = False
        assert p.result(timeout=20) == 3
    finally:
        p.join(20)


def test_starting_twice_raises(start):
    p = start(_workers.add, 1, 2)
    with pytest.raises(AssertionError):
        p.start()
    assert p.result(timeout=20) == 3


def test_join_before_start_raises():
    with pytest.raises(AssertionError):
        corral.Process(target=square, args=(1,)).join(0.1)


def test_close_on_a_running_process_raises_and_after_join_releases_the_handle(start):
    p = start(_workers.sleep_then_return, 60, None)
    with pytest.raises(ValueError):
        p.close()
    p.kill()
    p.join(20)
    p.close()
    p.close()  # idempotent
    with pytest.raises(ValueError):
        p.is_alive()
    with pytest.raises(ValueError):
        p.start()


def test_bad_constructor_arguments_raise_value_error():
    with pytest.raises(ValueError):
        corral.Process(group=object(), target=square)
    with pytest.raises(ValueError):
        corral.Process(target=square, start_method="forkserver-does-not-exist")


# -- the fork start method --------------------------------------------------------------


def test_fork_start_method_runs_a_target_and_returns_its_result(start):
    p = start(_workers.where_am_i, start_method="fork")
    path, pid, ppid = p.result(timeout=20)
    assert path == _workers.__file__
    assert pid == p.pid and ppid == os.getpid()
    assert p.exitcode == 0


def test_fork_start_method_with_a_closure_an_error_and_a_kill(start):
    secret = object()  # not picklable by reference: fork needs no pickling
    p = start(lambda: id(secret) > 0, start_method="fork")
    assert p.result(timeout=20) is True
    p = start(_workers.raise_value_error, "forked boom", start_method="fork")
    with pytest.raises(ValueError, match="forked boom"):
        p.result(timeout=20)
    assert p.exitcode == 1
    p = start(_workers.sleep_then_return, 60, None, start_method="fork")
    p.kill()
    p.join(20)
    assert p.exitcode == -9
    with pytest.raises(corral.WorkerLostError):
        p.result(timeout=20)


# -- a child never outlives its parent ------------------------------------------------------

_INTERMEDIATE = """
import os, sys, time
import corral

def sleeper(marker):
    open(marker, "w").close()  # the target runs
    time.sleep(60)

if __name__ == "__main__":
    marker = sys.argv[1]
    p = corral.Process(target=sleeper, args=(marker,), daemon={daemon})
    p.start()
    deadline = time.monotonic() + 20
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(p.pid, flush=True)
    {after}
"""


def _run_intermediate(tmp_path, daemon: bool, after: str) -> tuple[subprocess.Popen, int]:
    """Starts a python process that starts a corral child sleeping 60 s and
    prints the child's pid once the child's target runs."""
    script = tmp_path / "intermediate.py"
    script.write_text(textwrap.dedent(_INTERMEDIATE.format(daemon=daemon, after=after)))
    marker = tmp_path / "running"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        proc.kill()
        proc.wait(10)
        pytest.fail("the intermediate process printed no pid within 30 s")
    line = proc.stdout.readline()
    if not line.strip():
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the intermediate process failed: {err.decode(errors='replace')}")
    assert marker.exists(), "the grandchild's target never ran"
    return proc, int(line)


def _kill_if_alive(pid: int) -> None:
    if not pid_gone(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_child_dies_when_its_parent_is_sigkilled(tmp_path):
    proc, grandchild = _run_intermediate(tmp_path, daemon=False, after="time.sleep(60)")
    try:
        assert not pid_gone(grandchild), "the grandchild should be running"
        proc.kill()
        proc.wait(10)
        assert wait_until(lambda: pid_gone(grandchild), 20), "the child outlived its SIGKILLed parent"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
        _kill_if_alive(grandchild)


def test_a_daemon_child_is_stopped_when_its_parent_exits_normally(tmp_path):
    proc, grandchild = _run_intermediate(tmp_path, daemon=True, after="sys.exit(0)")
    try:
        # The parent does not wait 60 s for its daemon child: it stops it.
        assert proc.wait(20) == 0
        assert wait_until(lambda: pid_gone(grandchild), 20), "the daemon child outlived its parent"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
        _kill_if_alive(grandchild)


def test_a_segfault_in_the_child_gives_minus_11_and_worker_lost(start):
    p = start(_workers.segfault)
    p.join(20)
    assert p.exitcode == -signal.SIGSEGV
    with pytest.raises(corral.WorkerLostError) as info:
        p.result(timeout=20)
    assert info.value.exitcode == -11


# -- starting from a thread ---------------------------------------------------------------


def _start_from_a_thread_that_then_exits(start_method: str) -> corral.Process:
    """Starts a child from a thread that ends once the child's target runs;
    once that thread is gone from the OS too, lets the child return
    "survived"."""
    box: list = []
    started, go = corral.Event(), corral.Event()

    def starter():
        p = corral.Process(target=_workers.wait_then_return, args=(go, "survived", started), start_method=start_method)
        p.start()
        box.append((p, threading.get_native_id()))
        started.wait(20)  # the child is fully started

    t = threading.Thread(target=starter)
    t.start()
    t.join(20)
    assert not t.is_alive() and box
    p, tid = box[0]
    # join() returns before the OS thread has exited; a PR_SET_PDEATHSIG
    # tied to the thread is sent by then.
    assert wait_until(lambda: not os.path.exists(f"/proc/self/task/{tid}"), 20)
    go.set()
    return p


def test_a_spawned_child_survives_the_exit_of_the_thread_that_started_it():
    p = _start_from_a_thread_that_then_exits("spawn")
    try:
        assert p.result(timeout=20) == "survived"
        assert p.exitcode == 0
    finally:
        p.kill()
        p.join(20)


def test_a_forked_child_survives_the_exit_of_the_thread_that_started_it():
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits.
    p = _start_from_a_thread_that_then_exits("fork")
    try:
        assert p.result(timeout=20) == "survived"
        assert p.exitcode == 0
    finally:
        p.kill()
        p.join(20)


# -- scripts: the parent's __main__ in the child ---------------------------------------------

_MAIN_WITH_CLASSES = """
import corral

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

def mirror(q_in, q_out):
    p = q_in.get(timeout=20)
    q_out.put(Point(p.y, p.x))
    return type(p).__module__

if __name__ == "__main__":
    q_in, q_out = corral.Queue(), corral.Queue()
    proc = corral.Process(target=mirror, args=(q_in, q_out))
    proc.start()
    q_in.put(Point(1, 2))
    r = q_out.get(timeout=20)
    print(type(r) is Point, r.x, r.y, proc.result(timeout=20))
"""

_MAIN_WITHOUT_GUARD = """
import corral

def f():
    return 1

p = corral.Process(target=f)
p.start()
try:
    print("result", p.result(timeout=20))
except corral.WorkerLostError as e:
    print("lost", e.exitcode)
"""


def _run_script(tmp_path, text: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(text)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=40, cwd=tmp_path)


def test_functions_and_classes_of_a_script_main_module_work_in_the_child(tmp_path):
    done = _run_script(tmp_path, _MAIN_WITH_CLASSES)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "the child warned or printed"
    # Instances of __main__.Point cross both ways and come back as Point.
    assert done.stdout.split() == ["True", "2", "1", "__mp_main__"]


def test_a_script_without_the_main_guard_fails_clearly_instead_of_recursing(tmp_path):
    done = _run_script(tmp_path, _MAIN_WITHOUT_GUARD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["lost", "1"]
    assert "if __name__ == '__main__':" in done.stderr


# -- a forked child always leaves through os._exit -----------------------------------------

_FORK_WITH_BROKEN_STDIO = """
import atexit, os, sys
import corral

MARKS = sys.argv[1]

def mark(what):
    with open(MARKS, "a") as f:
        f.write(f"{what} {os.getpid()}\\n")

def ok():
    mark("target")
    return 7

def fails():
    raise ValueError("from the child")

def huge_exit():
    sys.exit(2**40 + 3)  # out of C int range: os._exit(2**40 + 3) itself raises

if __name__ == "__main__":
    atexit.register(mark, "atexit")
    if sys.argv[2] == "none":
        sys.stdout = sys.stderr = None
    else:
        sys.stdout.close()
        sys.stderr.close()
    for target in (ok, fails, huge_exit):
        p = corral.Process(target=target, start_method="fork")
        try:
            p.start()
        finally:
            mark("after-start")  # only the parent's program may get here
        try:
            outcome = repr(p.result(timeout=20))
        except BaseException as e:
            outcome = type(e).__name__
        mark(f"{target.__name__}={outcome},exitcode={p.exitcode}")
"""


@pytest.mark.parametrize("stdio", ["none", "closed"])
def test_a_forked_child_leaves_through_os_exit_when_stdio_is_none_or_closed(tmp_path, stdio):
    # The flush before os._exit raised, so the child returned from start()
    # into its parent's program (and ran its atexit handlers).
    script, marks = tmp_path / "script.py", tmp_path / "marks.txt"
    script.write_text(_FORK_WITH_BROKEN_STDIO)
    done = subprocess.run([sys.executable, str(script), str(marks), stdio], capture_output=True, text=True, timeout=40)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in marks.read_text().splitlines()]
    parent = {pid for what, pid in lines if what.startswith("huge_exit=")}
    assert len(parent) == 1, lines
    (parent,) = parent
    assert [what for what, pid in lines if pid != parent] == ["target"], lines
    assert [what for what, pid in lines if pid == parent] == [
        "after-start",
        "ok=7,exitcode=0",
        "after-start",
        "fails=ValueError,exitcode=1",
        "after-start",
        "huge_exit=SystemExit,exitcode=3",
        "atexit",
    ], lines


def test_a_forked_child_leaves_its_parents_other_children_alone(start):
    # A start forgets the children that have exited; in a forked child the
    # inherited set was the parent's, so the child read the result of a
    # sibling that ended after the fork (from the inherited socket) and the
    # parent lost it.
    here, there = corral.Pipe()
    sibling = start(_workers.recv_and_return, there)
    forked = start(_workers.start_a_child_once_gone, sibling.pid, "nested", start_method="fork")
    here.send("sibling's")
    assert forked.result(timeout=30) == "nested"
    assert sibling.result(timeout=30) == "sibling's"


_OS_FORK_CHILD_EXITS_NORMALLY = """
import os, sys
import corral
import _workers

if __name__ == "__main__":
    d = corral.Process(target=_workers.sleep_then_return, args=(30, 1), daemon=True)
    d.start()
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # runs the atexit handlers it inherited
    os.waitpid(pid, 0)
    d.join(1)  # a SIGTERM the child sent would have ended it by now
    print("alive" if d.exitcode is None else f"exitcode {d.exitcode}")
    d.kill()
    d.join(10)
"""


def test_an_os_fork_child_leaving_normally_does_not_stop_its_parents_children(tmp_path):
    # Its atexit handler terminated and joined the children it inherited,
    # which were its parent's (the daemon child ended with -15).
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "script.py"
    script.write_text(_OS_FORK_CHILD_EXITS_NORMALLY)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=40, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["alive"]


def test_a_spawned_child_dead_before_its_bootstrap_is_started_and_lost_not_a_start_error(monkeypatch, start):
    # start() raised BrokenPipeError from the bootstrap send: a child that
    # was created and died looked like one that could not be created.
    real = corral.process._core.spawn

    def spawn_then_kill(*args):
        child = real(*args)
        child.signal(signal.SIGKILL)
        assert wait_until(lambda: pid_gone(child.pid), 10), "the SIGKILLed child runs on"
        return child

    monkeypatch.setattr(corral.process._core, "spawn", spawn_then_kill)
    p = start(square, 3)
    p.join(20)
    assert p.exitcode == -signal.SIGKILL
    with pytest.raises(corral.WorkerLostError) as info:
        p.result(timeout=20)
    assert info.value.exitcode == -9


def _use_queue(q):
    return q.get(timeout=10)


def _use_lock(lock):
    assert lock.acquire(timeout=10)
    lock.release()
    return "unlocked"


def _use_pipe_end(conn):
    assert conn.poll(10)
    return conn.recv()


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize(
    "target, arg, use, expected",
    [
        (_workers.return_a_queue_holding, ("inside",), _use_queue, "inside"),
        (_workers.return_a_corral_lock, (), _use_lock, "unlocked"),
        (_workers.return_a_pipe_end_holding, ("inside",), _use_pipe_end, "inside"),
    ],
    ids=["queue", "lock", "pipe_end"],
)
def test_a_result_holding_descriptors_is_loaded_after_the_child_returns(start, method, target, arg, use, expected):
    # The child left right after sending its result, taking with it the
    # broker the parent fetches the descriptors from: result() raised
    # WorkerLostError "exited with code 0" (p16: 10/10 fork, 15/20 spawn).
    # Three rounds, as the spawn case lost the race only most of the time.
    for _ in range(3):
        p = start(target, *arg, start_method=method)
        assert use(p.result(timeout=30)) == expected
        assert p.exitcode == 0


def test_a_result_holding_descriptors_asked_for_too_late_is_a_clear_error_not_a_lost_worker(monkeypatch, start):
    monkeypatch.setattr(corral.process, "RESULT_LOAD_WAIT", 0.1)  # inherited by the forked child
    p = start(_workers.return_a_queue_holding, "inside", start_method="fork")
    assert wait_until(lambda: pid_gone(p.pid), 20), "the child waits for ever"
    with pytest.raises(RuntimeError, match="returned a result .*could not be loaded here") as info:
        p.result(timeout=20)
    assert not isinstance(info.value, corral.WorkerLostError)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_result_the_parent_cannot_load_raises_the_loading_error_as_cause(monkeypatch, start, method):
    monkeypatch.setenv("CORRAL_TEST_PARENT", str(os.getpid()))
    p = start(_workers.return_unloadable_in_parent, start_method=method)
    with pytest.raises(RuntimeError, match="could not be loaded here") as info:
        p.result(timeout=30)
    assert not isinstance(info.value, corral.WorkerLostError)
    assert isinstance(info.value.__cause__, ValueError)
    assert p.exitcode == 0


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_queue_with_a_full_holder_table_makes_start_raise_valueerror_in_the_parent(method):
    # 1024 live holders without 1024 processes: each thread of this process
    # has its own id and /proc/<tid>/stat (a start time), which the holder
    # table takes as a live process.
    q = corral.Queue()
    stop = threading.Event()
    ids: list[int] = []
    lock = threading.Lock()

    def hold() -> None:
        with lock:
            ids.append(threading.get_native_id())
        stop.wait(30)

    old = threading.stack_size(64 * 1024)
    threads = [threading.Thread(target=hold, daemon=True) for _ in range(1023)]
    try:
        for t in threads:
            t.start()
    finally:
        threading.stack_size(old)
    try:
        assert wait_until(lambda: len(ids) == 1023, 20)
        for tid in ids:  # this process holds the 1024th slot since it made q
            q._q.add_holder(tid)
        with pytest.raises(ValueError, match="live processes hold this queue"):
            q._q.add_holder(1)  # init: alive, not a holder yet
        marker = corral.Queue()
        p = corral.Process(target=_workers.produce, args=(marker, 1), start_method=method)
        p2 = corral.Process(target=_workers.produce, args=(q, 1), start_method=method)
        p.start()  # a queue with room: starts
        assert marker.get(timeout=20) == 0
        p.join(20)
        with pytest.raises(ValueError, match="live processes hold this queue"):
            p2.start()
        assert not p2.is_alive()
        assert q.qsize() == 0, "the target ran although start() failed"
        stop.set()
        for t in threads:
            t.join(20)
        # Once the holders are gone, the same Process object starts.
        p2.start()
        assert q.get(timeout=20) == 0
        p2.join(20)
        assert p2.exitcode == 0
    finally:
        stop.set()
