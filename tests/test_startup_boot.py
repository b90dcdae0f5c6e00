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


_LOGGING = textwrap.dedent(
    """
    import io, logging, sys
    import corral

    def log():
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(processName)s"))
        logger = logging.getLogger("corral-test-child")
        logger.addHandler(handler)
        logger.warning("one")
        logger.warning("two")
        return out.getvalue().split()

    if __name__ == "__main__":
        p = corral.Process(target=log, name="the-child")
        p.start()
        print(p.result(timeout=60))
    """
)


def test_a_spawned_childs_log_records_carry_its_name(tmp_path: Any) -> None:
    # logging names a record's process from multiprocessing, which the
    # child no longer imports at its start: its records said "MainProcess".
    out = _run_script(tmp_path, _LOGGING)
    assert out[:1] == ["['the-child', 'the-child']"], out


_ZIPPED = textwrap.dedent(
    """
    import os, sys, zipfile
    import corral

    def imports():
        import multiprocessing
        import csv  # another module of the archive that served multiprocessing
        return csv.__name__, multiprocessing.current_process().name

    if __name__ == "__main__":
        # multiprocessing and csv served by one zipimporter (a program run
        # from a zip archive, or with one on sys.path).
        std = os.path.dirname(os.__file__)
        archive = os.path.join(os.getcwd(), "lib.zip")
        with zipfile.ZipFile(archive, "w") as z:
            for folder, _, files in os.walk(os.path.join(std, "multiprocessing")):
                for f in files:
                    if f.endswith(".py"):
                        path = os.path.join(folder, f)
                        z.write(path, os.path.relpath(path, std))
            z.write(os.path.join(std, "csv.py"), "csv.py")
        sys.path.insert(0, archive)
        p = corral.Process(target=imports, name="zipped")
        p.start()
        print(p.result(timeout=60))
    """
)


def test_a_child_whose_multiprocessing_comes_from_a_zip_imports_the_rest_of_it(tmp_path: Any) -> None:
    # The finder wrapped the zipimporter serving multiprocessing, which
    # serves every module of the archive: the child's later "import csv"
    # ran multiprocessing's settings on csv (AttributeError).
    out = _run_script(tmp_path, _ZIPPED)
    assert out[:1] == ["('csv', 'zipped')"], out
