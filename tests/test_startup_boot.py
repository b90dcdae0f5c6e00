"""A spawned child and the fork server boot without importing
``multiprocessing`` (``_child._prepare``) unless the program does; what
``multiprocessing.spawn.prepare`` sets there (name, authkey, start method,
original directory) is set once the child imports it. Runs in a fresh
interpreter: a program that has not imported multiprocessing, with a fork
server of its own."""

from __future__ import annotations

import textwrap
from typing import Any

from test_startup import _run_script

_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import corral

    def state():
        before = [m in sys.modules for m in ("multiprocessing", "socket", "subprocess")]
        import importlib.util
        assert importlib.util.find_spec("multiprocessing") is not None  # looked up, not loaded
        import multiprocessing
        import multiprocessing.process
        cur = multiprocessing.current_process()
        return before, [
            cur.name, bytes(cur.authkey), multiprocessing.get_start_method(allow_none=True),
            multiprocessing.process.ORIGINAL_DIR, sys.modules["__mp_main__"] is sys.modules["__main__"],
        ]

    if __name__ == "__main__":
        print("multiprocessing" in sys.modules)
        with corral.ProcessPoolExecutor(1) as pool:
            server = pool.submit(state).result(timeout=60)
        p = corral.Process(target=state, name="the-child")
        p.start()
        spawned = p.result(timeout=60)
        import multiprocessing
        import multiprocessing.process
        key = bytes(multiprocessing.current_process().authkey)
        want = [multiprocessing.get_start_method(allow_none=True), multiprocessing.process.ORIGINAL_DIR, True]
        print(server[0], server[1][0], server[1][1] == key, server[1][2:] == want)
        print(spawned[0], spawned[1][0], spawned[1][1] == key, spawned[1][2:] == want)
    """
)


def test_a_spawned_child_and_the_fork_server_import_multiprocessing_only_if_used(tmp_path: Any) -> None:
    # Old code: '[True, True, True]' (multiprocessing.spawn.prepare's
    # import, 8-10 ms of CPU before the server's first worker).
    out = _run_script(tmp_path, _SCRIPT)
    assert out[:3] == [
        "False",
        "[False, False, False] corral-forkserver True True",
        "[False, False, False] the-child True True",
    ], out
