"""Every ```python block of README.md runs as printed: each is written to a
file in an empty temporary directory and run there by a fresh interpreter
(as a user who pastes it into `snippet.py`), with a timeout. A block that
needs an optional package (numpy, Ray, Dask) is skipped, with the reason,
where that package is missing. Each function a block defines is also used
in it, so a block cannot pass by defining `main()` and never calling it."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# What a block needs beyond corral, found by what it says: (text, module, extra).
NEEDS = [
    ("import numpy", "numpy", "numpy"),
    ("import torch", "torch", "corral[torch]"),
    ("RayExecutor(", "ray", "corral[ray]"),
    ("DaskExecutor(", "distributed", "corral[dask]"),
]


def _blocks() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = _blocks()


def test_the_readme_has_python_blocks() -> None:
    # The pattern must keep finding the blocks: a README reformatted so that
    # none matches would otherwise pass every test below by running none.
    assert len(BLOCKS) >= 5, BLOCKS


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_every_function_a_block_defines_is_used(line: int, code: str) -> None:
    tree = ast.parse(code, filename=f"README.md:{line}")
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert defined <= used, f"README.md:{line} defines {sorted(defined - used)} and never uses them"


@pytest.mark.timeout(300)  # a block may start a local Ray and a Dask cluster on a loaded machine
@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_every_python_block_runs_as_printed(line: int, code: str, tmp_path: Path) -> None:
    for text, module, extra in NEEDS:
        if text in code and importlib.util.find_spec(module) is None:
            pytest.skip(f"README.md:{line} needs {module} (pip install {extra})")
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    # The block runs in the empty directory, so it finds corral installed,
    # not the checkout; no bar drawing to a terminal.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        out = subprocess.run(
            [sys.executable, script.name],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"README.md:{line} did not finish within 240 s; output so far:\n{e.stdout}\n{e.stderr}")
    assert out.returncode == 0, f"README.md:{line} failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}"
