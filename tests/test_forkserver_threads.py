"""The fork server forks every worker from a single thread: a module whose
idle import starts a thread is not imported there (its probe sees the
thread, whatever its target), and a server whose own import started one
its probe's did not (a module starting it lazily, or only in the server)
forks no more: a new server, without that module, forks the next workers,
while the old one reaps its workers and leaves. Each scenario runs in a
fresh interpreter (its own server)."""

from __future__ import annotations

import textwrap
from typing import Any

from test_startup import _run_script

_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {here!r})
    sys.path.insert(0, {mods!r})
    import corral
    import corral._forkserver as fs
    import _pool_tasks as t
    from _helpers import wait_until

    MODS = {mods!r}

    def marked(prefix, pid):
        return f"{{prefix}}-{{pid}}" in os.listdir(MODS)

    def threads(pid):
        return len(os.listdir(f"/proc/{{pid}}/task"))

    def parent_of(pid):
        with open(f"/proc/{{pid}}/stat") as f:
            text = f.read()
        return int(text[text.rfind(")") + 2 :].split()[1])

    def ppid_of_worker():
        return os.getppid()

    def main():
        os.environ["CORRAL_PROBE_PARENT"] = str(os.getpid())
        # Imported after __main__ was read: only the server's idle imports
        # meet them, in this order.
        {imports}
        {body}

    if __name__ == "__main__":
        main()
    """
)

#: Writes "<name>-<pid>" in its folder when imported outside the program.
_MARK = (
    "import os, sys, time, _thread, threading\n"
    "if os.environ.get('CORRAL_PROBE_PARENT') != str(os.getpid()):\n"
    "    open(os.path.join(os.path.dirname(__file__), '{}-' + str(os.getpid())), 'w').close()\n"
)

_PROBES = {
    # Python threads running a builtin: no frame, so sys._current_frames()
    # missed the first; a native thread is allowed for a top-level package
    # (a BLAS pool), so /proc/self/task did not tell.
    "probe_rawbuiltin": _MARK.format("rawbuiltin") + "    _thread.start_new_thread(time.sleep, (100,))\n",
    "probe_builtin": _MARK.format("builtin")
    + "    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()\n",
    "probe_fine": _MARK.format("fine") + "VALUE = 1\n",
}

_BUILTIN_BODY = """
with corral.ProcessPoolExecutor(1) as pool:
    pool.submit(t.pid).result(timeout=60)
    spid = pool._forkserver._proc.pid
    assert wait_until(lambda: marked("fine", spid), 60), "the server never imported probe_fine"
    # Both were probed (a marker from the probe), neither imported by the
    # server, which runs one thread.
    print([marked(k, spid) for k in ("rawbuiltin", "builtin")],
          sum(n.startswith("rawbuiltin-") for n in os.listdir(MODS)), threads(spid))
"""


def test_the_probe_sees_a_thread_whose_target_is_a_builtin(tmp_path: Any) -> None:
    # probe_rawbuiltin's probe passed (its thread has no frame, and a
    # top-level package may start native threads): the server imported
    # it and forked every later worker from a process running two threads.
    body = textwrap.indent(textwrap.dedent(_BUILTIN_BODY).strip(), "    ")[4:]
    out = _run_script(
        tmp_path, _SCRIPT, probes=_PROBES, imports="import probe_rawbuiltin, probe_builtin, probe_fine", body=body
    )
    assert out[0] == "[False, False] 1 1", out


_LAZY_PROBES = {
    # Starts a thread only in the server (the program's child), not in the
    # probe (the server's child): its probe passes.
    "probe_lazy": "import os, time, _thread\n"
    "if os.getppid() == int(os.environ['CORRAL_PROBE_PARENT']):\n"
    "    open(os.path.join(os.path.dirname(__file__), 'lazy-' + str(os.getpid())), 'w').close()\n"
    "    _thread.start_new_thread(time.sleep, (100,))\n",
}

_LAZY_BODY = """
first = corral.ProcessPoolExecutor(1)
worker = first.submit(t.pid).result(timeout=60)
server = first._forkserver
old = server._proc
assert wait_until(lambda: marked("lazy", old.pid) and threads(old.pid) == 2, 60), "the server never imported probe_lazy"
with corral.ProcessPoolExecutor(1) as fresh:
    # Forked by a new server, which did not import the module.
    ppid = fresh.submit(ppid_of_worker).result(timeout=60)
    print(ppid != old.pid, ppid == server._proc.pid, marked("lazy", ppid), sorted(fs._lethal))
    if ppid == old.pid:  # forked by the server running a second thread
        sys.stdout.flush()
        os._exit(0)
# The old server still reaps its worker, which still runs tasks; it
# leaves once that worker is gone.
print(first.submit(t.pid).result(timeout=60) == worker, parent_of(worker) == old.pid)
first.shutdown(wait=True)
print(wait_until(lambda: not old.is_alive(), 60), old.exitcode, server.alive())
"""


def test_a_server_whose_own_import_started_a_thread_forks_no_more(tmp_path: Any) -> None:
    # The server counted no thread after its own import: it forked every
    # later worker while running a second thread.
    body = textwrap.indent(textwrap.dedent(_LAZY_BODY).strip(), "    ")[4:]
    out = _run_script(tmp_path, _SCRIPT, probes=_LAZY_PROBES, imports="import probe_lazy", body=body)
    assert out[:3] == ["True True False ['probe_lazy']", "True True", "True 0 True"], out
