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
from test_forkserver_relaunch import _PRELUDE as _RELAUNCH_PRELUDE
from test_startup import _run_script

_PRELUDE = _RELAUNCH_PRELUDE + "import gc, io\n"

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


#: A server that starts a thread only in the server (the program's child),
#: not in its probe (the server's child): the server retires.
_LAZY = (
    "import os, time, _thread\n"
    "if os.getppid() == int(os.environ['CORRAL_PROBE_PARENT']):\n"
    "    _thread.start_new_thread(time.sleep, (100,))\n"
)

#: A worker request whose "spawned" reply is never acknowledged (as when
#: the parent's start_workers raises between the reply and the ack); its
#: worker exits at once (``_worker.main`` is called with wrong arguments);
#: then the server retires. Prints the reply, whether the server left, and
#: its exit code.
_UNACKED = textwrap.dedent(
    _PRELUDE
    + """
_forkserver.QUIET_SECONDS = 0.05

if __name__ == "__main__":
    os.environ["CORRAL_PROBE_PARENT"] = str(os.getpid())
    server = _forkserver._Server([], ["probe_lazy"])
    args = (None, io.BytesIO(), io.BytesIO())
    server.requests = 1
    server.conn.send_bytes(server._lend(1, ("spawn", 1, args, _forkserver.Surroundings.here())))
    reply = server._reply(time.monotonic() + 60)
    assert wait_until(lambda: pid_gone(reply[2]), 60), "the worker did not exit"
    assert wait_until(lambda: server.threaded == "probe_lazy", 60), "the server never imported probe_lazy"
    print(reply[0], wait_until(lambda: not server.proc.is_alive(), 15), server.proc.exitcode)
    server.stop()
"""
)


def test_a_retired_server_leaves_though_a_worker_was_never_acknowledged(tmp_path: Any) -> None:
    # The retired server left only once no pid was left unacknowledged: a
    # reply whose ack never came kept it up until the program exited
    # ("spawned False None").
    out = _run_script(tmp_path, _UNACKED, probes={"probe_lazy": _LAZY})
    assert out[0] == "spawned True 0", out
