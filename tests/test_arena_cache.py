"""A pool worker keeps its freed object arenas warm (``_core.keep_arenas``):
a task that frees megabytes of small objects does not fault them back in
for the next one (issue 13: a map chunk of a tiny function paid 15% of a
worker's CPU in page faults)."""

import os
import subprocess
import sys
import sysconfig
from typing import Any

import pytest

import corral

pytestmark = pytest.mark.skipif(
    os.environ.get("PYTHONMALLOC", "").startswith("malloc") or bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    reason="objects are not allocated by pymalloc here: it has no arenas to keep",
)

TIMEOUT = 120

_CHURN = """
import resource, sys
from corral import _core
limit = int(sys.argv[1])
assert _core.keep_arenas(limit)

def churn():
    # 8 MB of small objects (ints past the small-int cache), then freed.
    junk = [i * 1000 + 1_000_000 for i in range(250_000)]
    del junk

churn()
kept = _core.kept_arena_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(kept, faults)
"""


def _churn(limit: int) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, str(limit)], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    kept, faults = out.stdout.split()
    return int(kept), int(faults)


_LOWER = """
import resource, sys
from corral import _core
assert _core.keep_arenas(16 << 20)
junk = [i * 1000 + 1_000_000 for i in range(250_000)]
del junk
kept = _core.kept_arena_bytes()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
before = rss()
assert _core.keep_arenas(1 << 20)
print(kept, _core.kept_arena_bytes(), before - rss())
"""


def test_a_lower_limit_gives_back_the_kept_arenas_past_it() -> None:
    # keep_arenas(0) only changed the limit: the 16 MiB kept stayed
    # mapped and resident (stop 23's review).
    out = subprocess.run([sys.executable, "-c", _LOWER], capture_output=True, text=True, timeout=TIMEOUT, check=True)
    kept, left, given_back = (int(x) for x in out.stdout.split())
    assert kept >= 4 << 20, kept
    assert left <= 1 << 20, left
    assert given_back >= (kept - left) // 2, (kept, left, given_back)


def test_freed_arenas_are_kept_up_to_the_limit_and_not_faulted_in_again() -> None:
    kept, faults = _churn(16 << 20)
    assert 4 << 20 <= kept <= 16 << 20, kept
    # Five more rounds of 8 MB: ~2 k pages each without the cache.
    unkept, unkept_faults = _churn(0)
    assert unkept == 0
    assert unkept_faults > 5_000, unkept_faults
    assert faults < unkept_faults / 5, (faults, unkept_faults)


def test_a_pool_worker_keeps_its_freed_arenas() -> None:
    with corral.ProcessPoolExecutor(1) as pool:
        kept: Any = pool.submit(churn_then_kept_arena_bytes).result(TIMEOUT)
    assert 0 < kept <= corral._worker.ARENA_CACHE


def churn_then_kept_arena_bytes() -> int:
    """Frees 8 MB of small objects, then says how many bytes of freed
    arenas this worker keeps."""
    junk = [i * 1000 + 1_000_000 for i in range(250_000)]
    del junk
    return corral._core.kept_arena_bytes()
