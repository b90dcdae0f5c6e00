"""``python -m corral info``: what this installation is and can do."""

from __future__ import annotations

import importlib.util
import os
import platform
import resource

from . import _core
from .process import START_METHODS


def report() -> str:
    """A few lines describing the build, the machine and optional peers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    peers = ["numpy", "faster_fifo", "joblib", "mpire", "ray", "dask", "tqdm"]
    have = [p for p in peers if importlib.util.find_spec(p) is not None]
    lines = [
        f"corral {_core.__version__} ({'debug' if _core.DEBUG_BUILD else 'release'} build)",
        f"python {platform.python_version()} on {platform.system()} {platform.release()} {platform.machine()}",
        f"cores: {os.cpu_count()}",
        f"start methods: {', '.join(START_METHODS)}",
        "pool start methods: spawn, fork, forkserver (with preload)",
        "shared memory: memfd (anonymous, freed by the kernel with its last holder)",
        f"open file limit: {soft} (hard {hard})",
        f"optional peers installed: {', '.join(have) or 'none'}",
    ]
    return "\n".join(lines)
