"""The build as installed (the development build in `make test`, each wheel
in `make wheel-test`) and the Makefile's installs.

- A thread that waits in the extension while the interpreter exits is ended
  by CPython with `pthread_exit`, whose unwinding runs through the
  extension's Rust frames. A wheel linked by zig once carried its own copy of
  LLVM's libunwind, which read glibc's unwinder (libgcc_s) state wrongly: every
  such exit was a segfault. `make wheel` links the extension to libgcc_s.
- `make demo` must not install Ray or Dask (a first `make demo` took minutes
  installing the test extras the demo does not use).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXIT_WHILE_A_THREAD_WAITS = """
import threading
import corral

event = corral.Event()
started = threading.Event()

def wait_over_and_over():
    started.set()
    while True:
        event.wait(0.0001)   # releases the GIL and takes it back, over and over

threading.Thread(target=wait_over_and_over, daemon=True).start()
assert started.wait(30)
"""


def test_the_interpreter_exits_cleanly_while_a_daemon_thread_waits_in_the_extension(tmp_path: Path) -> None:
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_A_THREAD_WAITS],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, (out.returncode, out.stderr)


@pytest.mark.skipif(shutil.which("make") is None or not (ROOT / "Makefile").exists(), reason="needs make, a checkout")
def test_make_demo_installs_the_demo_extra_and_no_ray_or_dask(tmp_path: Path) -> None:
    # -n: print what a first `make demo` would run, against a venv that does
    # not exist yet (a fresh machine), without running it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    out = subprocess.run(
        ["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "install-extra" not in out.stdout  # the variable was expanded
    assert "' demo\n" in out.stdout, out.stdout
    for heavy in ("ray", "dask", "' test\n"):
        assert heavy not in out.stdout, out.stdout
