"""The process pool's three faults of the outside review (stop 21), each
across real processes: a result message that cannot be read (it must end
only its own task, the rest of its batch arrives, the results thread
lives), Ctrl-C while workers of a spawn or fork-server pool hang importing
``__main__`` (the user gets KeyboardInterrupt at once, nothing is left
running, no replacement is started), and a fork server killed from outside
(relaunched, the task it cost retried, nothing leaked)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

import _pool_tasks as t
import corral
from corral import _forkserver
from _helpers import _current_syscall, pid_gone, proc_state, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))

# -- 2. Ctrl-C while workers hang importing __main__ --------------------------

HANGING_MAIN = """
import os, sys, time
import corral

if __name__ != "__main__":
    # A spawned worker (or the fork server) imports this file as
    # __mp_main__: no guard, and its top level never ends.
    with open(os.environ["BOOT_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(1)

pool = corral.ProcessPoolExecutor(2, start_method=sys.argv[1])
if sys.argv[2] == "result":  # Ctrl-C in the block, waiting for a result
    with pool:
        pool.submit(abs, -1).result()
elif sys.argv[2] == "exit":  # Ctrl-C while the block's exit waits for the task
    with pool:
        pool.submit(abs, -1)
else:  # Ctrl-C in a plain shutdown(wait=True) with nothing to run
    pool.shutdown(wait=True)
"""


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` that still run (not zombies)."""
    left = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and not pid_gone(int(name)):
            left.append(int(name))
    return left


def _in_futex_wait(pid: int) -> bool:
    """The main thread of ``pid`` sleeps in futex (a lock, a join, a
    result): the script reached its blocking call."""
    call = _current_syscall(pid, pid)
    return call is not None and call[0] in (202, 98)


@pytest.mark.parametrize(
    "method, where, group",
    [
        ("spawn", "result", False),
        ("spawn", "result", True),
        ("spawn", "exit", False),
        ("spawn", "shutdown", False),
        ("forkserver", "result", False),
        ("forkserver", "result", True),
    ],
)
def test_ctrl_c_while_workers_hang_importing_main_stops_everything_at_once(
    tmp_path: Any, method: str, where: str, group: bool
) -> None:
    # Before the fix: the with block's exit (or the exit hook) waited for
    # the booting workers for ever, replacements were started after the
    # interrupt (group), and a fork server stuck booting cost 10 s.
    script = os.path.join(str(tmp_path), "hangs.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(HANGING_MAIN))
    log = os.path.join(str(tmp_path), "boot.log")
    open(log, "w").close()

    def booted() -> list[str]:
        with open(log) as f:
            return f.read().split()

    booting = 2 if method == "spawn" else 1  # the fork server hangs, not its workers
    proc = subprocess.Popen(
        [sys.executable, script, method, where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, BOOT_LOG=log),
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: len(booted()) == booting, 60), "the workers never began to boot"
        assert wait_until(lambda: _in_futex_wait(proc.pid), 60), "the script never blocked"
        sent = time.monotonic()
        if group:  # as a terminal's Ctrl-C: the workers get it too
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert wait_until(lambda: not _session(proc.pid), 30), f"left running: {_session(proc.pid)}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err
    # Generous for a loaded machine: it is milliseconds when idle.
    assert took < 8, f"took {took:.1f} s to stop"
    if not group:
        assert len(booted()) == booting, "a worker was started after the interrupt"


