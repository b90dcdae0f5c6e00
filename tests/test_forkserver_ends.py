"""How a fork server's end is seen by the parent: a dead server's pipe and
reader go at once, also when no successor follows (``ForkServer._revive``,
``_count_death``), and a retired server leaves once its workers are gone,
one whose pid the parent never acknowledged included (``serve``). Each runs
in a fresh interpreter (``_run_script``): its own server, killed or retired
there, and its constants changed, without touching this process's."""

from __future__ import annotations

import textwrap
from typing import Any

from corral import _forkserver
from test_startup import _run_script

_PRELUDE = """
import gc, io, os, signal, sys, threading, time
sys.path.insert(0, {here!r})
sys.path.insert(0, {mods!r})
import corral
from corral import _core, _forkserver
from _helpers import pid_gone, wait_until
"""

#: Rounds of a pool whose server is killed each time it forked a worker,
#: before the worker boots, until the pool breaks (``RELAUNCH_LIMIT``
#: deaths in a row; a later pool's count starts with the death it finds).
#: Prints per round the kills, whether the last server's pipe is closed,
#: whether a killed server's pipe descriptor is still open, whether no
#: reader thread runs, and how many descriptors the parent holds.
_KILLED_AT_EACH_START = textwrap.dedent(
    _PRELUDE
    + """
from concurrent.futures.process import BrokenProcessPool

def boot():
    time.sleep(60)  # never boots while the server lives

def children(pid):
    try:
        with open(f"/proc/{{pid}}/task/{{pid}}/children") as f:
            return f.read().split()
    except OSError:
        return []

def readers():
    return [t for t in threading.enumerate() if t.name == "corral-forkserver-reader"]

def identity(fd):
    st = os.fstat(fd)
    return (fd, st.st_dev, st.st_ino)

def fds():
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            found.add(identity(int(name)))
        except OSError:
            continue  # the listing's own descriptor
    return found

if __name__ == "__main__":
    pipes = set()  # each killed server's end of its pipe
    for round in range(3):
        pool = corral.ProcessPoolExecutor(1, initializer=boot)
        server = pool._forkserver
        kills = []
        stop = threading.Event()

        def killer():
            while not stop.is_set() and len(kills) < _forkserver.RELAUNCH_LIMIT:
                current = server._server
                proc = current.proc
                if proc.pid not in kills and proc.is_alive() and children(proc.pid):
                    pipes.add(identity(current.conn.fileno()))
                    os.kill(proc.pid, signal.SIGKILL)
                    kills.append(proc.pid)
                time.sleep(0.002)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        try:
            pool.submit(abs, -2).result(timeout=120)
            print("ran")
        except BrokenProcessPool:
            pass
        stop.set()
        th.join(30)
        pool.shutdown(wait=True)
        del pool
        gc.collect()
        print(len(kills), server._server.conn.closed, bool(pipes & fds()), wait_until(lambda: not readers(), 30),
              len(fds()))
"""
)


def test_a_dead_servers_pipe_is_closed_when_no_successor_follows(tmp_path: Any) -> None:
    # _revive counted the death before it stopped the dead server: the
    # count's RuntimeError (RELAUNCH_LIMIT deaths in a row) left its pipe
    # open until the next pool's revive ("3 False True True 8").
    out = _run_script(tmp_path, _KILLED_AT_EACH_START)
    limit = _forkserver.RELAUNCH_LIMIT
    rows = [line.split() for line in out[:3]]
    assert [r[:4] for r in rows] == [[str(n), "True", "False", "True"] for n in (limit, limit - 1, limit - 1)], out
    assert len({r[4] for r in rows}) == 1, out  # as many descriptors after each round
