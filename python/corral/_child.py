"""Entry of a child started by ``corral.Process``:
``python -m corral._child BOOT_FD PARENT_PID``.

The parent sends two messages on the bootstrap socket: the preparation data
of ``multiprocessing.spawn`` (sys.path, working directory, the main module
to import as ``__mp_main__``), then the pickled ``Process``. The child runs
it (``process.run_in_child``) and sends back ``("ok", value)`` or
``("err", exception)``; if that message holds descriptors, it waits for the
parent's acknowledgement (``Process._read_outcome``) before it exits, as the
parent fetches them from its broker.

The preparation is ``multiprocessing.spawn.prepare``'s (``_prepare``),
without importing ``multiprocessing`` (8-10 ms of CPU, with the ``socket``,
``selectors`` and ``subprocess`` modules it imports, on the path of every
spawned child and of the fork server to its first worker) unless the
program does: what ``prepare`` sets in ``multiprocessing`` itself (this
process's name and authkey, the start method, the original directory) is
set when it is first imported (``_MultiprocessingState``), in this process
or in a worker the fork server forks.

Nothing imports this module: run as ``__main__``, it must not be in
``sys.modules`` already (runpy would warn), so ``process`` holds the
child's side of ``start`` and this file only reads the bootstrap.
"""

from __future__ import annotations

import importlib.machinery
import os
import runpy
import sys
import types
from typing import Any

from . import _core, _pickle, process
from .connection import Connection


class _MultiprocessingState:
    """A ``sys.meta_path`` finder that applies, once ``multiprocessing`` is
    imported (the package's code has run: its ``process`` and ``context``
    modules are loaded), what ``multiprocessing.spawn.prepare`` sets
    there from the parent's preparation data, and leaves
    ``sys.meta_path``. The parent's key authenticates this process to the
    parent's managers and listeners, as in a stdlib child."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        """The spec the other finders find for ``multiprocessing``, its
        loader running ``apply`` after the package's code; None for any
        other module. It stays in ``sys.meta_path`` until then: a spec
        only looked up (``importlib.util.find_spec``) loads nothing."""
        if name != "multiprocessing":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            # A loader may serve other modules (a zipimporter serves every
            # module of its archive; multiprocessing's own submodules load
            # while the package's code runs): only the package applies,
            # and the loader is its own again once it has run.
            if module.__name__ != "multiprocessing":
                run(module)
                return
            try:
                run(module)
            finally:
                if loader.__dict__.get("exec_module") is exec_module:
                    del loader.exec_module
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
            self.apply(module)

        loader.exec_module = exec_module
        return spec

    def apply(self, mp: Any) -> None:
        """``prepare``'s settings of ``multiprocessing`` (3.11-3.13)."""
        data = self.data
        mp_process: Any = sys.modules["multiprocessing.process"]
        if "name" in data:
            mp_process.current_process().name = data["name"]
        if "authkey" in data:
            mp_process.current_process().authkey = data["authkey"]
        if "orig_dir" in data:
            mp_process.ORIGINAL_DIR = data["orig_dir"]
        if "start_method" in data:
            mp.set_start_method(data["start_method"], force=True)


def _prepare(data: dict[str, Any]) -> None:
    """``multiprocessing.spawn.prepare(data)`` (the same in 3.11-3.13),
    ``multiprocessing``'s own settings left to ``_MultiprocessingState``.
    ``prepare`` itself if ``multiprocessing`` is imported already, or
    if the parent set multiprocessing's logging (its ``util`` module), or if
    the package's loader cannot be wrapped."""
    if "sys_path" in data:
        sys.path = data["sys_path"]
    if "sys_argv" in data:
        sys.argv = data["sys_argv"]
    # Where the parent's sys.path finds it: a plain source or bytecode
    # file's loader, made for this spec alone, is the one wrapped.
    spec = importlib.machinery.PathFinder.find_spec("multiprocessing")
    if (
        "multiprocessing" in sys.modules
        or data.get("log_to_stderr")
        or "log_level" in data
        or spec is None
        or type(spec.loader) not in (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)
    ):
        import multiprocessing.spawn as mp_spawn

        mp_spawn.prepare(data)
        return
    sys.meta_path.insert(0, _MultiprocessingState(data))
    _name_log_records()
    if "dir" in data:
        os.chdir(data["dir"])
    if "init_main_from_name" in data:
        _fixup_main_from_name(data["init_main_from_name"])
    elif "init_main_from_path" in data:
        _fixup_main_from_path(data["init_main_from_path"])


def _name_log_records() -> None:
    """``logging`` names a record's process from ``multiprocessing``
    (``LogRecord.processName``: "MainProcess" while it is not imported):
    the first record made in this process imports it, so that record and
    every later one carry this process's name (``_MultiprocessingState``
    applies it), as in a child that prepared with ``multiprocessing``. A
    record factory that gives way to the one it replaced at its first call
    (one set meanwhile by the program stays)."""
    import logging

    previous = logging.getLogRecordFactory()

    def first_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        if logging.getLogRecordFactory() is first_record:
            logging.setLogRecordFactory(previous)
        import multiprocessing  # noqa: F401

        return previous(*args, **kwargs)

    logging.setLogRecordFactory(first_record)


#: The ``__main__`` modules replaced by the parent's (as
#: ``multiprocessing.spawn.old_main_modules``: kept alive).
_old_main_modules: list[types.ModuleType] = []


def _fixup_main_from_name(mod_name: str) -> None:
    """``multiprocessing.spawn._fixup_main_from_name``: the parent's main
    module (``python -m NAME``) run again as ``__mp_main__`` and made this
    process's ``__main__``, unless it is a package's ``__main__``."""
    current_main = sys.modules["__main__"]
    if mod_name == "__main__" or mod_name.endswith(".__main__"):
        return
    if getattr(current_main.__spec__, "name", None) == mod_name:
        return
    _old_main_modules.append(current_main)
    main_module = types.ModuleType("__mp_main__")
    main_content = runpy.run_module(mod_name, run_name="__mp_main__", alter_sys=True)
    main_module.__dict__.update(main_content)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main_module


def _fixup_main_from_path(main_path: str) -> None:
    """``multiprocessing.spawn._fixup_main_from_path``: the parent's script
    run again as ``__mp_main__`` and made this process's ``__main__``
    (``runpy.run_path``: its functions keep the globals of that run, see
    ``_worker._main_globals``), unless it is IPython's launcher."""
    current_main = sys.modules["__main__"]
    main_name = os.path.splitext(os.path.basename(main_path))[0]
    if main_name == "ipython":
        return
    if getattr(current_main, "__file__", None) == main_path:
        return
    _old_main_modules.append(current_main)
    main_module = types.ModuleType("__mp_main__")
    main_content = runpy.run_path(main_path, run_name="__mp_main__")
    main_module.__dict__.update(main_content)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main_module


def main(argv: list[str]) -> int:
    """Reads the bootstrap from descriptor ``argv[1]`` and runs the
    ``Process`` it holds; 1 at once if ``argv[2]`` is not the parent's pid
    (the parent died before this child started)."""
    boot_fd, parent = int(argv[1]), int(argv[2])
    if os.getppid() != parent:
        return 1
    conn = Connection(_core.Connection.from_fd(boot_fd, True, True))
    prep = _pickle.loads(conn.recv_bytes())
    process._bootstrapping = True
    try:
        _prepare(prep)
    finally:
        process._bootstrapping = False
    proc = _pickle.loads(conn.recv_bytes())
    return process.run_in_child(proc, conn)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
