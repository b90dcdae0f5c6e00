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


def _run_script(
    tmp_path: Any,
    template: str,
    *argv: str,
    probes: dict[str, str] | None = None,
    runner: tuple[str, ...] = (),
    **fields: Any,
) -> list[str]:
    """Runs ``template`` as a program in a fresh interpreter (``runner``
    before it, if any) and returns its output lines, once it exited 0.
    The template is formatted with ``here`` (the tests' folder), ``mods``
    (a folder holding ``probes``: module name -> code) and ``fields``."""
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, code in (probes or {}).items():  # "pkg/__init__": a package
        (mods / f"{name}.py").parent.mkdir(exist_ok=True)
        (mods / f"{name}.py").write_text(code)
    script = tmp_path / "main.py"
    script.write_text(template.format(here=HERE, mods=str(mods), **fields))
    r = subprocess.run([*runner, sys.executable, str(script), *argv], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout.split("\n")


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
    dead = old._proc.pid
    os.kill(dead, signal.SIGKILL)
    assert wait_until(lambda: not old.alive(), 20)
    with corral.ProcessPoolExecutor(1) as pool:
        # Relaunched under the same handle (ForkServer.revive).
        assert pool._forkserver is not None and pool._forkserver._proc.pid != dead
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
        corral._forkserver.QUIET_SECONDS = 0.1  # this pool never pauses
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
    out = _run_script(tmp_path, _PRELOAD_SCRIPT, probes=_PROBES)
    # The module that raised, the one that exited and the one that hung
    # (past PRELOAD_SECONDS) were skipped; the server lives and imported
    # the next one, which its workers then have.
    assert out[:3] == ["[False, False, False, True]", "True", "49"], out


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
        # While idle the server probes the parent's modules in forked
        # children (a pipe and a pidfd each, for a moment): in a parent with
        # many modules imported (the whole suite) one may be open at either
        # count. A leak stays; a probe ends.
        assert wait_until(lambda: fds() <= before + 2, 30), (before, fds())


_IDLE_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {here!r})
    sys.path.insert(0, {mods!r})
    import corral
    import corral._forkserver as fs
    import _pool_tasks as t

    def wait_for(predicate, what):
        deadline = time.monotonic() + 60
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    def server_files(prefix):
        return [n for n in os.listdir({mods!r}) if n.startswith(prefix) and n != prefix + str(os.getpid())]

    def children(pid):
        with open(f"/proc/{{pid}}/task/{{pid}}/children") as f:
            return [int(c) for c in f.read().split()]

    def import_them(names):
        import importlib
        return [importlib.import_module(n).VALUE for n in names]

    def main():
        fs.PRELOAD_SECONDS = {limit}
        os.environ["CORRAL_PROBE_PARENT"] = str(os.getpid())
        # Imported after __main__ was read: only the server's idle
        # imports meet them, in this order.
        {imports}
        {body}

    if __name__ == "__main__":
        main()
    """
)

_OUTSIDE = "import os, sys, time\nif os.environ.get('CORRAL_PROBE_PARENT') != str(os.getpid()):\n"
_MARK = "    open(os.path.join(os.path.dirname(__file__), f'{}-{{os.getpid()}}'), 'w').close()\n"
# Each writes "<name>-<pid>" into its folder when imported outside the parent.
_IDLE_PROBES = {
    # Ends any process but the parent (the server's probe child).
    "probe_kills": _OUTSIDE + _MARK.format("kills") + "    os._exit(3)\n",
    "probe_segv": _OUTSIDE + _MARK.format("segv") + "    import signal\n    os.kill(os.getpid(), signal.SIGSEGV)\n",
    # Ends only the parent's child (the server itself), not the probe.
    "probe_kills_server": "import os\nif os.getppid() == int(os.environ['CORRAL_PROBE_PARENT']):\n"
    + _MARK.format("kills")
    + "    os._exit(3)\n",
    "probe_fine": _OUTSIDE + _MARK.format("fine") + "VALUE = 1\n",
    # Waits (outside the parent) until the parent creates "go".
    "probe_slow": _OUTSIDE + "    here = os.path.dirname(__file__)\n"
    "    deadline = time.monotonic() + 100\n"
    "    while not os.path.exists(os.path.join(here, 'go')) and time.monotonic() < deadline:\n"
    "        time.sleep(0.02)\n" + _MARK.format("slow"),
    # As torch: refuses a second import in a process that began one (a
    # C extension's global), then takes long (until "go" exists).
    "probe_once": "import os, sys, time\n"
    "if getattr(sys, '_probe_once_started', False):\n"
    "    raise ImportError('probe_once can only be initialized once per process')\n"
    "sys._probe_once_started = True\n"
    "VALUE = 2\n"
    "deadline = time.monotonic() + 100\n"
    "while os.environ.get('CORRAL_PROBE_PARENT') != str(os.getpid()) and time.monotonic() < deadline:\n"
    "    if os.path.exists(os.path.join(os.path.dirname(__file__), 'go')):\n"
    "        break\n"
    "    time.sleep(0.02)\n",
    # The same, raising part-way the first time it is imported outside the parent.
    "probe_raises_once": "import os, sys\n"
    "if getattr(sys, '_probe_raises_once_started', False):\n"
    "    raise ImportError('probe_raises_once can only be initialized once per process')\n"
    "sys._probe_raises_once_started = True\n"
    "VALUE = 3\n"
    "if os.environ.get('CORRAL_PROBE_PARENT') != str(os.getpid()):\n"
    "    try:\n"
    "        os.close(os.open(os.path.join(os.path.dirname(__file__), 'raised'), os.O_CREAT | os.O_EXCL))\n"
    "    except FileExistsError:\n"
    "        pass\n"
    "    else:\n"
    "        raise RuntimeError('part-way')\n",
}

_KILLS_BODY = """
        with corral.ProcessPoolExecutor(1) as kept:
            first = kept.submit(t.pid).result(timeout=60)
            server = kept._forkserver
            dead = server._proc
            wait_for(lambda: not dead.is_alive(), "the server never imported probe_kills_server")
            # Its worker died with it; the kept pool gets a new one, from a
            # new server under the same handle, without the module.
            second = kept.submit(t.pid).result(timeout=60)
            print(second != first, server._proc is not dead, server.alive())
        with corral.ProcessPoolExecutor(1) as later:
            print(later._forkserver is server, later.submit(t.square, 3).result(timeout=60))
        wait_for(lambda: "fine-" + str(server._proc.pid) in server_files("fine-"),
                 "the new server never imported probe_fine")
        print(server.alive(), sorted(fs._lethal), len(server_files("kills-")))
"""

_CRASH_BODY = """
        with corral.ProcessPoolExecutor(1) as pool:
            first = pool.submit(t.pid).result(timeout=60)
            server = pool._forkserver
            spid = server._proc.pid
            # The server met the two lethal modules first: their probes died.
            wait_for(lambda: "fine-" + str(spid) in server_files("fine-"), "the server never imported probe_fine")
            print(pool.submit(t.pid).result(timeout=60) == first, server._proc.pid == spid, server.alive())
            print(sorted(fs._lethal), len(server_files("kills-")), len(server_files("segv-")))
"""

_ONCE_BODY = """
        with corral.ProcessPoolExecutor(1) as pool:
            first = pool.submit(t.pid).result(timeout=60)
            server = pool._forkserver
            spid = server._proc.pid
            # probe_fine comes last: the server is done with the others.
            wait_for(lambda: "fine-" + str(spid) in server_files("fine-"), "the server never imported probe_fine")
            open(os.path.join({mods!r}, "go"), "w").close()
            with corral.ProcessPoolExecutor(1) as fresh:  # forked now
                print(fresh.submit(import_them, ["probe_once", "probe_raises_once", "probe_fine"]).result(timeout=60))
            print(server._proc.pid == spid, server.alive())
"""

_SLOW_BODY = """
        with corral.ProcessPoolExecutor(1) as pool:
            # The server imports probe_slow only once the first pool's
            # worker is forked: its result comes while "go" is missing.
            print(pool.submit(t.square, 5).result(timeout=60), server_files("slow-"))
            spid = pool._forkserver._proc.pid
            worker = pool.submit(t.pid).result(timeout=60)
            # Its probe runs beside the worker; once the server imported
            # the module, only the worker is left among its children (the
            # probe was reaped: no zombie).
            wait_for(lambda: len(children(spid)) == 2, "the server never probed probe_slow")
            open(os.path.join({mods!r}, "go"), "w").close()
            wait_for(lambda: "slow-" + str(spid) in server_files("slow-"), "the server never imported probe_slow")
            # (then corral's submodules this program imported are probed)
            wait_for(lambda: children(spid) == [worker], "a probe was left behind")
            print(pool._forkserver.alive(), True)
"""


def _run_idle(
    tmp_path: Any, imports: str, body: str, limit: float = 120.0, probes: dict[str, str] = _IDLE_PROBES
) -> list[str]:
    # The body goes into main(), after the template's first indentation.
    body = textwrap.indent(textwrap.dedent(body.format(mods=str(tmp_path / "mods"))).strip(), "    ")[4:]
    return _run_script(tmp_path, _IDLE_SCRIPT, probes=probes, imports=imports, body=body, limit=limit)


def test_a_module_that_kills_the_server_in_an_idle_import_is_left_out_of_its_replacement(tmp_path: Any) -> None:
    # The fallback for a module that kills the server but not its probe:
    # the server died importing it, and every later server imported it
    # again and died: no pool worked again in that program.
    out = _run_idle(tmp_path, "import probe_kills_server, probe_fine", _KILLS_BODY)
    assert out[:3] == ["True True True", "True 9", "True ['probe_kills_server'] 1"], out


def test_a_module_that_crashes_its_idle_import_leaves_the_server_and_its_workers_alive(tmp_path: Any) -> None:
    # The server imported it itself: it died (os._exit, SIGSEGV), and its
    # workers with it; its replacement was started without the module.
    out = _run_idle(tmp_path, "import probe_kills, probe_segv, probe_fine", _CRASH_BODY)
    assert out[:2] == ["True True True", "[] 1 1"], out


def test_an_idle_import_cut_off_or_raising_part_way_leaves_the_server_whole(tmp_path: Any) -> None:
    # The server imported them itself: the alarm cut probe_once off (as
    # torch on a loaded machine), probe_raises_once raised part-way, both
    # after setting their "started" flag: every worker forked later
    # failed to import them ("can only be initialized once per process").
    out = _run_idle(tmp_path, "import probe_once, probe_raises_once, probe_fine", _ONCE_BODY, limit=2.0)
    assert out[:2] == ["[2, 3, 1]", "True True"], out


_THREAD_PROBES = {
    "probe_pkg/__init__": "VALUE = 4\n",
    "probe_pkg/sub": _OUTSIDE + _MARK.format("sub"),
    # A native thread (no Python thread state): pthread_create of sleep().
    "probe_pkg/native": _OUTSIDE + _MARK.format("native") + "    import ctypes\n"
    "    libc = ctypes.CDLL(None)\n"
    "    tid = ctypes.c_ulong()\n"
    "    sleep = ctypes.cast(libc.sleep, ctypes.c_void_p)\n"
    "    libc.pthread_create(ctypes.byref(tid), None, sleep, ctypes.c_void_p(1000))\n",
    "probe_pkg/pythread": _OUTSIDE + _MARK.format("pythread") + "    import threading\n"
    "    threading.Thread(target=threading.Event().wait, daemon=True).start()\n",
    "probe_pkg/zlast": _OUTSIDE + _MARK.format("last"),
    # A top-level module starting a Python thread.
    "probe_thread": _OUTSIDE + _MARK.format("topthread") + "    import threading\n"
    "    threading.Thread(target=threading.Event().wait, daemon=True).start()\n",
    # One starting it with _thread: the thread runs (and shows) only once
    # it gets the GIL, after the import (stop 23's review: the probe missed it).
    "probe_rawthread": _OUTSIDE + _MARK.format("rawthread") + "    import _thread, time\n"
    "    def spin():\n"
    "        while True:\n"
    "            time.sleep(0.05)\n"
    "    _thread.start_new_thread(spin, ())\n",
}

_THREAD_BODY = """
        def loaded(names):
            return [n in sys.modules for n in names]

        with corral.ProcessPoolExecutor(1) as pool:
            pool.submit(t.pid).result(timeout=60)
            spid = pool._forkserver._proc.pid
            pkg = os.path.join({mods!r}, "probe_pkg")
            wait_for(lambda: "last-" + str(spid) in os.listdir(pkg), "the server never imported probe_pkg.zlast")
            kinds = ("sub", "native", "pythread", "topthread", "rawthread")
            # Each was probed; the server imported only the submodule that
            # starts no thread, and runs one thread.
            marks = os.listdir({mods!r}) + os.listdir(pkg)
            print([sum(m.startswith(k + "-") for m in marks) for k in kinds],
                  [k for k in kinds if f"{{k}}-{{spid}}" in marks])
            print(len(os.listdir(f"/proc/{{spid}}/task")), pool._forkserver.alive())
            with corral.ProcessPoolExecutor(1) as fresh:  # forked now: with what the server imported
                names = ["probe_pkg.sub", "probe_pkg.native", "probe_pkg.pythread"]
                print(fresh.submit(loaded, names).result(timeout=60))
"""


def test_the_server_imports_public_submodules_but_none_whose_import_starts_a_thread(tmp_path: Any) -> None:
    # The server imported the parent's top-level packages only: a second
    # pool whose tasks need sklearn.linear_model imported it in each
    # worker (stage 5 of the demo lost to fork). A module whose import
    # starts a thread would leave the server, which forks every worker,
    # multithreaded.
    imports = (
        "import probe_pkg.sub, probe_pkg.native, probe_pkg.pythread, probe_thread, probe_rawthread, probe_pkg.zlast"
    )
    out = _run_idle(tmp_path, imports, _THREAD_BODY, probes=_THREAD_PROBES)
    assert out[:3] == ["[2, 1, 1, 1, 1] ['sub']", "1 True", "[True, False, False]"], out


def test_a_slow_module_does_not_delay_the_first_pools_workers(tmp_path: Any) -> None:
    # The server began its idle imports right after "ready", before the
    # first pool's spawn request: the first result waited for the import.
    out = _run_idle(tmp_path, "import probe_slow", _SLOW_BODY)
    assert out[:2] == ["25 []", "True True"], out


_LIGHT_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    import corral

    # (cloudpickle is loaded in the workers: the task is a function of __main__)
    HEAVY = ["asyncio", "concurrent.futures", "corral.pool", "corral.cluster", "corral.deadlock",
             "corral.synchronize", "corral.threads", "numpy"]

    def heavy_loaded():
        return [m for m in HEAVY if m in sys.modules]

    if __name__ == "__main__":
        print(heavy_loaded())
        for method in ("spawn", "forkserver"):
            with corral.ProcessPoolExecutor(1, start_method=method) as pool:
                print(pool.submit(heavy_loaded).result(timeout=60))
    """
)


def test_import_corral_and_a_worker_load_none_of_the_heavy_modules(tmp_path: Any) -> None:
    # A program that only imports corral loads the extension and the
    # exceptions; its workers (spawned, or forked by the server, which
    # imports that program as __mp_main__) load what running a task needs:
    # no asyncio, no thread pool, no engines, no numpy.
    assert _run_script(tmp_path, _LIGHT_SCRIPT)[:3] == ["[]", "[]", "[]"]


def test_every_public_name_resolves_lazily_and_is_listed() -> None:
    code = textwrap.dedent(
        """
        import sys, corral
        assert set(corral.__all__) <= set(dir(corral)), "dir() lists every public name"
        assert "RayExecutor" in dir(corral) and "DaskExecutor" in dir(corral)
        assert "corral.cluster" not in sys.modules
        ns = {}
        exec("from corral import *", ns)
        missing = [n for n in corral.__all__ if n not in ns]
        assert not missing, missing
        from corral.cluster import RayExecutor
        from corral.pool import ProcessPoolExecutor
        assert corral.RayExecutor is RayExecutor and corral.ProcessPoolExecutor is ProcessPoolExecutor
        assert corral.process is sys.modules["corral.process"], "a submodule as an attribute"
        try:
            corral.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("no AttributeError")
        assert not hasattr(corral, "__wrapped__")
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


def test_a_pools_first_workers_are_asked_of_the_server_in_one_exchange(monkeypatch: Any) -> None:
    # Every request is sent before the first reply is read: the server
    # forks the next worker while the parent watches the last one.
    from corral import _forkserver

    sent_before_reply: list[int] = []
    read = _forkserver._Server._reply

    def reply(self: Any, deadline: float | None = None) -> Any:
        sent_before_reply.append(self.requests)
        return read(self, deadline)

    with corral.ProcessPoolExecutor(1) as warm:  # the server is up before the pool is timed
        assert warm.submit(t.square, 2).result(timeout=60) == 4
        server = warm._forkserver
        assert server is not None
    before = server._server.requests
    monkeypatch.setattr(_forkserver._Server, "_reply", reply)
    with corral.ProcessPoolExecutor(3) as pool:
        assert pool._forkserver is server
        monkeypatch.setattr(_forkserver._Server, "_reply", read)
        assert sent_before_reply and set(sent_before_reply) == {before + 3}, (before, sent_before_reply)
        assert all(q is not None for q in pool._workers.queues)  # every slot has its worker
        assert _ppid(pool.submit(t.pid).result(timeout=60)) == server._proc.pid


_BOOT_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {mods!r})
    import corral
    import probe_modules

    NAMES = ["dataclasses", "cloudpickle", "multiprocessing.heap", "multiprocessing.connection", "ctypes"]

    if __name__ == "__main__":
        with corral.ProcessPoolExecutor(1) as pool:
            print(pool.submit(probe_modules.loaded, NAMES).result(timeout=60))
            print(probe_modules.loaded(NAMES[1:3]))  # the parent's, once its pool is up
        p = corral.Process(target=probe_modules.loaded, args=(NAMES[2:],))
        p.start()
        print(probe_modules.loaded(NAMES[2:3]))  # the parent's, after a spawned start
        print(p.result(timeout=60))
    """
)


def test_a_process_start_and_the_fork_server_load_only_what_they_use(tmp_path: Any) -> None:
    # Starting a child does not import multiprocessing's connection and
    # heap modules (their reducers matter only once they are imported),
    # the fork server's start does not import cloudpickle (its target is
    # named), and its own boot does not import dataclasses: each was on
    # the first pool's path to its first worker; nor does any of them
    # import ctypes (only a torch tensor's pickling uses it: 1.5-2.5 ms of
    # CPU in every process).
    probes = {"probe_modules": "import sys\n\ndef loaded(names):\n    return [n in sys.modules for n in names]\n"}
    out = _run_script(tmp_path, _BOOT_SCRIPT, probes=probes)
    want = ["[False, False, False, False, False]", "[False, False]", "[False]", "[False, False, False]"]
    assert out[:4] == want, out


_QUEUED_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {here!r})
    import corral
    import corral._forkserver as fs
    import _pool_tasks as t

    if os.environ.get("CORRAL_FAIL_IN_SERVER") and os.environ["CORRAL_FAIL_IN_SERVER"] != str(os.getpid()):
        raise SystemExit(7)  # in the fork server, importing __main__

    if __name__ == "__main__":
        waits = []
        ready = fs._Server.await_ready

        def await_ready(self):
            waits.append((self.ready, self.requests))
            return ready(self)

        fs._Server.await_ready = await_ready
        if sys.argv[1] == "fail":
            os.environ["CORRAL_FAIL_IN_SERVER"] = str(os.getpid())
            for _ in range(2):  # and the next pool gets a new server, which fails the same way
                try:
                    corral.ProcessPoolExecutor(2)
                except RuntimeError as e:
                    print("died importing this program's __main__" in str(e), "exit code 7" in str(e))
        else:
            with corral.ProcessPoolExecutor(2) as pool:
                print(pool.submit(t.square, 5).result(timeout=60))
            print(waits[0])
    """
)


def test_a_pools_first_requests_are_queued_while_its_server_boots(tmp_path: Any) -> None:
    # The pool does not wait for the new server's "ready" before it
    # prepares and sends its workers' requests: the server finds them
    # queued once it has imported __main__.
    assert _run_script(tmp_path, _QUEUED_SCRIPT, "ok")[:2] == ["25", "(False, 2)"]


def test_a_server_that_dies_importing_main_fails_the_pool_that_started_it_with_why(tmp_path: Any) -> None:
    # Its boot error reaches the pool's constructor, as when the pool
    # waited for the server; the next pool starts a new server.
    assert _run_script(tmp_path, _QUEUED_SCRIPT, "fail")[:2] == ["True True", "True True"]


_KILLED_BOOTING_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    sys.path.insert(0, {here!r})
    import corral
    import _pool_tasks as t

    if __name__ != "__main__" and "CORRAL_BOOT_FD" in os.environ and os.environ["CORRAL_PARENT"] != str(os.getpid()):
        # In the fork server, importing __main__: the parent's killer reads
        # this pid (as the OOM killer would pick it), then the import waits.
        os.write(int(os.environ["CORRAL_BOOT_FD"]), b"%d\\n" % os.getpid())
        threading.Event().wait(120)

    if __name__ == "__main__":
        r, w = os.pipe()
        os.set_inheritable(w, True)
        os.environ["CORRAL_PARENT"], os.environ["CORRAL_BOOT_FD"] = str(os.getpid()), str(w)

        def kill_server():
            with os.fdopen(r) as f:
                os.kill(int(f.readline()), signal.SIGKILL)

        threading.Thread(target=kill_server, daemon=True).start()
        try:
            corral.ProcessPoolExecutor(2, start_method="forkserver")
        except RuntimeError as e:
            print("killed by SIGKILL" in str(e), "a module they import" in str(e))
        del os.environ["CORRAL_BOOT_FD"]
        with corral.ProcessPoolExecutor(2, start_method="forkserver") as pool:  # a new server
            print(pool.submit(t.square, 5).result(timeout=60))
    """
)


def test_a_server_killed_while_booting_says_so_not_that_main_ends_it(tmp_path: Any) -> None:
    # A fork server SIGKILLed while it imported __main__ (the OOM killer, a
    # stray kill) was reported as "a module they import ends a process that
    # imports it again": the user went looking for a bad import.
    assert _run_script(tmp_path, _KILLED_BOOTING_SCRIPT)[:2] == ["True False", "25"]


_PROBE_FORK_FAILS_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {here!r})
    sys.path.insert(0, {mods!r})
    import corral
    import corral._forkserver as fs
    import _pool_tasks as t

    if __name__ == "__mp_main__" and os.environ.get("CORRAL_PROBE_PARENT") not in (None, str(os.getpid())):
        # In the fork server: no process can be forked for the probe of
        # probe_kills (as when the machine is out of processes).
        real_fork = os.fork

        def fork():
            caller = sys._getframe(1)
            if caller.f_code.co_name == "_probe" and caller.f_locals.get("name") == "probe_kills":
                raise BlockingIOError(11, "Resource temporarily unavailable")
            return real_fork()

        os.fork = fork

    def server_files(prefix):
        return [n for n in os.listdir({mods!r}) if n.startswith(prefix) and n != prefix + str(os.getpid())]

    def children(pid):
        with open(f"/proc/{{pid}}/task/{{pid}}/children") as f:
            return [int(c) for c in f.read().split()]

    def wait_for(predicate, what):
        deadline = time.monotonic() + 40  # under pytest's 60 s
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    def main():
        fs.PRELOAD_SECONDS = 0.5
        os.environ["CORRAL_PROBE_PARENT"] = str(os.getpid())
        import probe_kills, probe_slow, probe_fine
        with corral.ProcessPoolExecutor(1) as pool:
            worker = pool.submit(t.pid).result(timeout=60)
            spid = pool._forkserver._proc.pid
            # probe_kills was skipped (no probe), probe_slow's probe ran
            # over and was killed, probe_fine was imported: by the same
            # server, whose worker lives on.
            wait_for(lambda: "fine-" + str(spid) in server_files("fine-"), "the server never imported probe_fine")
            print(pool._forkserver._proc.pid == spid, pool._forkserver.alive(), sorted(fs._lethal))
            print(pool.submit(t.pid).result(timeout=60) == worker, len(server_files("kills-")))
            # The killed probe was reaped: only the worker is left.
            wait_for(lambda: children(spid) == [worker], "a probe left behind")
            print("reaped")

    if __name__ == "__main__":
        main()
    """
)


def test_a_probe_that_cannot_be_forked_skips_its_module_and_the_server_serves_on(tmp_path: Any) -> None:
    # A fork failing in the server's idle import of probe_kills (EAGAIN)
    # ended the server's loop: the server died, and its workers with it.
    out = _run_script(tmp_path, _PROBE_FORK_FAILS_SCRIPT, probes=_IDLE_PROBES)
    assert out[:3] == ["True True []", "True 0", "reaped"], out


#: Runs the program after it (``python -c THIS python script``) as uid
#: 65534 without root's exemption from ``RLIMIT_NPROC``, keeping only the
#: right to read the root-owned files it needs (``CAP_DAC_READ_SEARCH``,
#: ambient: kept across ``execve`` by the program and the processes it
#: starts).
_UNPRIVILEGED = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_KEEPCAPS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH = 8, 47, 2, 2

    def check(r):
        if r != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    bit = 1 << CAP_DAC_READ_SEARCH
    check(libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)(Data(bit, bit, bit), Data(0, 0, 0))))
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0))
    os.execv(sys.argv[1], sys.argv[1:])
    """
)

_SPAWN_FORK_FAILS_SCRIPT = textwrap.dedent(
    """
    import os, resource, signal, sys
    sys.path.insert(0, {here!r})
    from concurrent.futures.process import BrokenProcessPool
    import corral
    import _pool_tasks as t

    def limit(pid, n):
        # The server's RLIMIT_NPROC: at 0, each fork it tries fails with
        # EAGAIN, as when this user is out of processes.
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NPROC)
        resource.prlimit(pid, resource.RLIMIT_NPROC, (n, hard))
        return soft

    def main():
        first = corral.ProcessPoolExecutor(1)
        worker = first.submit(t.pid).result(timeout=60)
        server = first._forkserver
        spid = server._proc.pid
        old = limit(spid, 0)
        try:
            corral.ProcessPoolExecutor(2)
        except OSError as e:  # the pool's constructor raises it, as a spawn that cannot fork
            print(type(e).__name__, e.errno, "fork server could not fork a worker" in str(e))
        # The first pool's replacement of a killed worker cannot start:
        # the pool breaks, as when a spawn fails.
        os.kill(worker, signal.SIGKILL)
        try:
            first.submit(t.square, 2).result(timeout=60)
        except BrokenProcessPool as e:
            print("broken", "could not start a worker process" in str(e))
        print(server.alive(), server._proc.pid == spid)
        limit(spid, old)
        with corral.ProcessPoolExecutor(2) as pool:  # the same server
            print(pool.submit(t.square, 7).result(timeout=60), pool._forkserver._proc.pid == spid)
        first.shutdown()

    if __name__ == "__main__":
        main()
    """
)


def test_a_worker_the_server_cannot_fork_fails_its_pool_start_and_the_server_serves_on(tmp_path: Any) -> None:
    # A real fork failure (RLIMIT_NPROC, which root ignores: as root the
    # program runs as uid 65534): os.fork raising EAGAIN in the server's
    # spawn path ended the server's loop. The server died with its
    # workers, and the next pool relaunched it.
    runner = (sys.executable, "-c", _UNPRIVILEGED) if os.geteuid() == 0 else ()
    out = _run_script(tmp_path, _SPAWN_FORK_FAILS_SCRIPT, runner=runner)
    assert out[:4] == ["BlockingIOError 11 True", "broken True", "True True", "49 True"], out
