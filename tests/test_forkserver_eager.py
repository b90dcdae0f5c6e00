"""The fork server imports cloudpickle (``_forkserver.EAGER``) right after
it forked its first workers: a later pool's workers load a function of
``__main__`` (sent by value) without importing it after their
initializer. Runs in a fresh interpreter: a server of its own, started
before the program imported cloudpickle."""

from __future__ import annotations

import textwrap
from typing import Any

from test_startup import _run_script

_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    sys.path.insert(0, {mods!r})
    import corral
    import _pool_tasks as t
    from _helpers import wait_until
    from has_module import has_module

    if __name__ == "__main__":
        print("cloudpickle" in sys.modules)  # not before the server started
        with corral.ProcessPoolExecutor(1) as first:
            first.submit(t.square, 2).result(timeout=60)
            server = first._forkserver._server
            # Soon (0.2 s without a request), not after the quiet second of the idle imports.
            print(wait_until(lambda: "cloudpickle" in server.imported, 30), server.imported[:1])
        with corral.ProcessPoolExecutor(1) as later:
            # A module's function, pickled by reference: loading it needs no cloudpickle.
            print(later.submit(has_module, "cloudpickle").result(timeout=60))
    """
)

_HAS_MODULE = "import sys\n\ndef has_module(name):\n    return name in sys.modules\n"


def test_the_fork_server_imports_cloudpickle_once_it_forked_its_first_workers(tmp_path: Any) -> None:
    # Each worker imported cloudpickle itself, after its initializer, to
    # load its first task's function of __main__ (8-20 ms before that task).
    out = _run_script(tmp_path, _SCRIPT, probes={"has_module": _HAS_MODULE})
    assert out[:3] == ["False", "True ['cloudpickle']", "True"], out
