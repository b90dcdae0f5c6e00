"""Pool start-up: the default start method (a fork server per program, kept
up for later pools), what the server imports for the workers, what a bad
import there does, that tasks do not wait for a worker still booting, and
that a server forking many workers leaks nothing.

Scenarios that need a fresh program (a server of their own) run a script in
a fresh interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import _pool_tasks as t
import corral
from _helpers import pid_gone, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return int(text[text.rfind(")") + 2 :].split()[1])


def test_the_default_start_method_is_a_fork_server_shared_by_later_pools() -> None:
    with corral.ProcessPoolExecutor(1) as first:
        assert first._start_method == "forkserver"
        server = first._forkserver
        assert server is not None
        worker = first.submit(t.pid).result(timeout=60)
        assert _ppid(worker) == server._proc.pid  # forked by the server
    # The first pool's shutdown left the server up; the next pool uses it.
    assert server.alive()
    with corral.ProcessPoolExecutor(2) as second:
        assert second._forkserver is server
        assert second.submit(t.square, 4).result(timeout=60) == 16
    # Explicit methods still work, and preload needs the fork server.
    with corral.ProcessPoolExecutor(1, start_method="spawn") as spawned:
        assert spawned._forkserver is None
        assert _ppid(spawned.submit(t.pid).result(timeout=60)) == os.getpid()
    with pytest.raises(ValueError, match="preload"):
        corral.ProcessPoolExecutor(1, start_method="spawn", preload=["json"])


def test_a_dead_fork_server_is_replaced_by_the_next_pool() -> None:
    with corral.ProcessPoolExecutor(1) as pool:
        old = pool._forkserver
        assert old is not None
        pool.submit(t.square, 1).result(timeout=60)
    os.kill(old._proc.pid, signal.SIGKILL)
    assert wait_until(lambda: not old.alive(), 20)
    with corral.ProcessPoolExecutor(1) as pool:
        assert pool._forkserver is not old
        assert pool.submit(t.square, 3).result(timeout=60) == 9


def test_tasks_do_not_wait_for_a_worker_still_in_its_initializer(tmp_path: Any) -> None:
    folder = str(tmp_path)

    def booting() -> set[int]:
        return {int(n[5:]) for n in os.listdir(folder) if n.startswith("boot-")}

    with corral.ProcessPoolExecutor(2, initializer=t.gated_init, initargs=(folder,)) as pool:
        assert wait_until(lambda: len(booting()) == 2, 60), "two workers booting"
        fast, slow = sorted(booting())
        open(os.path.join(folder, f"go-{fast}"), "w").close()
        # Every task runs on the ready worker while the other still
        # initializes: none is sent to it and left waiting there.
        futures = [pool.submit(t.pid) for _ in range(20)]
        assert {f.result(timeout=60) for f in futures} == {fast}
        open(os.path.join(folder, f"go-{slow}"), "w").close()


_PRELOAD_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {here!r})
    sys.path.insert(0, {mods!r})
    import corral
    import corral._forkserver
    import _pool_tasks as t

    def loaded(names):
        return [n in sys.modules for n in names]

    def main():
        corral._forkserver.PRELOAD_SECONDS = 1.0
        os.environ["CORRAL_PROBE_PARENT"] = str(os.getpid())
        # Imported after __main__ was read, so only the list of the
        # parent's modules brings them to the server.
        import probe_raises, probe_exits, probe_hangs, probe_fine
        names = ["probe_raises", "probe_exits", "probe_hangs", "probe_fine"]
        with corral.ProcessPoolExecutor(1, max_tasks_per_child=1) as pool:
            deadline = time.monotonic() + 60
            while True:
                seen = pool.submit(loaded, names).result(timeout=60)
                if seen[-1] or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            print(seen)
            print(pool._forkserver.alive())
            print(pool.submit(t.square, 7).result(timeout=60))

    if __name__ == "__main__":
        main()
    """
)

_PROBES = {
    # Each works in the parent and fails in the server (another pid).
    "probe_raises": "import os\nif os.environ.get('CORRAL_PROBE_PARENT') != str(os.getpid()):\n"
    "    raise RuntimeError('not here')\n",
    "probe_exits": "import os, sys\nif os.environ.get('CORRAL_PROBE_PARENT') != str(os.getpid()):\n    sys.exit(5)\n",
    "probe_hangs": "import os, time\nif os.environ.get('CORRAL_PROBE_PARENT') != str(os.getpid()):\n"
    "    time.sleep(3600)\n",
    "probe_fine": "VALUE = 1\n",
}


def test_the_server_imports_the_parents_modules_and_skips_those_that_fail(tmp_path: Any) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, code in _PROBES.items():
        (mods / f"{name}.py").write_text(code)
    script = tmp_path / "main.py"
    script.write_text(_PRELOAD_SCRIPT.format(here=HERE, mods=str(mods)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    # The module that raised, the one that exited and the one that hung
    # (past PRELOAD_SECONDS) were skipped; the server lives and imported
    # the next one, which its workers then have.
    assert r.stdout.split("\n")[:3] == ["[False, False, False, True]", "True", "49"], (r.stdout, r.stderr)


def test_a_fork_server_recycling_many_workers_reaps_them_and_keeps_its_descriptors() -> None:
    with corral.ProcessPoolExecutor(1, max_tasks_per_child=1) as pool:
        server = pool._forkserver
        assert server is not None
        spid = server._proc.pid

        def fds() -> int:
            return len(os.listdir(f"/proc/{spid}/fd"))

        def children() -> list[int]:
            with open(f"/proc/{spid}/task/{spid}/children") as f:
                return [int(c) for c in f.read().split()]

        for _ in range(20):  # warm-up
            pool.submit(t.square, 2).result(timeout=60)
        before = fds()
        workers = {pool.submit(t.pid).result(timeout=60) for _ in range(300)}
        assert len(workers) == 300
        # The retired workers are reaped by the server: at most the live
        # worker (and one retiring) is left among its children.
        assert wait_until(lambda: len(children()) <= 2 and all(not pid_gone(c) for c in children()), 30), children()
        assert all(pid_gone(w) for w in workers - set(children()))
        assert fds() <= before + 2, (before, fds())
