"""Pool workers' NumPy arrays born in the result arena (``_shm_arrays``,
``numpy_alloc.rs``): a returned array travels without a copy, one the
worker still holds is copied, and every block is freed once."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import corral
from corral import _shm_arrays

np = pytest.importorskip("numpy")

import _array_tasks as t  # noqa: E402
from _helpers import wait_until  # noqa: E402

N = 2_000_000  # 16 MB of float64
TIMEOUT = 120


@pytest.fixture
def pool() -> corral.ProcessPoolExecutor:
    with corral.ProcessPoolExecutor(max_workers=1) as ex:
        ex.submit(t.stats).result(TIMEOUT)  # numpy imported, allocator in place
        yield ex


def arena_used(ex: corral.ProcessPoolExecutor) -> int:
    return int(ex._results._q.arena_used())


def test_a_returned_array_travels_without_a_copy_and_is_freed_by_the_parent(pool: corral.ProcessPoolExecutor) -> None:
    before = pool.submit(t.stats).result(TIMEOUT)
    out = pool.submit(t.double, np.ones(N)).result(TIMEOUT)
    assert out.shape == (N,) and (out == 2.0).all()
    live, _, sent, sent_bytes = pool.submit(t.stats).result(TIMEOUT)
    assert sent == before[2] + 1 and sent_bytes == before[3] + N * 8
    assert live == 0, "the sent block is the parent's, not the worker's"
    out[:] = 5.0  # writable, ours
    assert arena_used(pool) >= N * 8
    del out
    gc.collect()
    assert wait_until(lambda: arena_used(pool) == 0, TIMEOUT)


def test_an_array_the_worker_keeps_is_copied_so_the_worker_cannot_write_the_parents(
    pool: corral.ProcessPoolExecutor,
) -> None:
    before = pool.submit(t.stats).result(TIMEOUT)
    out = pool.submit(t.double_and_keep, np.ones(N)).result(TIMEOUT)
    assert pool.submit(t.stats).result(TIMEOUT)[2] == before[2], "a kept array is not handed over"
    assert pool.submit(t.overwrite_kept).result(TIMEOUT) == -1.0
    assert (out == 2.0).all(), "the worker's writes must not reach the parent's result"
    live = pool.submit(t.stats).result(TIMEOUT)[0]
    assert live == 1, "the kept array outlives its task in the arena"
    assert pool.submit(t.drop_kept).result(TIMEOUT) == 1
    assert pool.submit(t.stats).result(TIMEOUT)[0] == 0
    del out
    gc.collect()
    assert wait_until(lambda: arena_used(pool) == 0, TIMEOUT)


def test_a_view_and_its_base_in_one_result(pool: corral.ProcessPoolExecutor) -> None:
    a, view = pool.submit(t.pair, N).result(TIMEOUT)
    assert (a == np.arange(N)).all() and (view == np.arange(8, N)).all()
    assert pool.submit(t.stats).result(TIMEOUT)[0] == 0
    del a, view
    gc.collect()
    assert wait_until(lambda: arena_used(pool) == 0, TIMEOUT)


def test_realloc_moves_an_array_and_keeps_its_data(pool: corral.ProcessPoolExecutor) -> None:
    out = pool.submit(t.grown, N).result(TIMEOUT)
    assert (out == np.arange(N // 2)).all()
    assert pool.submit(t.stats).result(TIMEOUT)[0] == 0


def test_threads_in_the_worker_share_the_allocator(pool: corral.ProcessPoolExecutor) -> None:
    assert pool.submit(t.in_threads, 4, 20, 300_000).result(TIMEOUT)
    assert pool.submit(t.stats).result(TIMEOUT)[0] == 0


def test_a_child_forked_by_the_worker_never_frees_the_workers_blocks(pool: corral.ProcessPoolExecutor) -> None:
    assert pool.submit(t.fork_child_drops, N).result(TIMEOUT)
    assert pool.submit(t.stats).result(TIMEOUT)[0] == 0


def test_a_child_forked_by_the_worker_writes_its_own_copy_of_an_inherited_array(
    pool: corral.ProcessPoolExecutor,
) -> None:
    assert pool.submit(t.fork_child_writes, N).result(TIMEOUT) == (0.0, 7.0 * N)
    assert pool.submit(t.stats).result(TIMEOUT)[0] == 0


def test_a_child_forked_by_the_worker_resizes_an_inherited_array(pool: corral.ProcessPoolExecutor) -> None:
    assert pool.submit(t.fork_child_resizes, N).result(TIMEOUT) == "ok"
    assert pool.submit(t.stats).result(TIMEOUT)[0] == 0


def test_the_blocks_of_a_killed_worker_are_reclaimed_by_the_next(pool: corral.ProcessPoolExecutor) -> None:
    pid = pool.submit(t.keep_big, N).result(TIMEOUT)
    assert arena_used(pool) >= N * 8
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: pool.submit(os.getpid).result(TIMEOUT) != pid, TIMEOUT)
    assert wait_until(lambda: arena_used(pool) == 0, TIMEOUT)


def test_a_thousand_round_trips_keep_descriptors_memory_and_the_arena_flat() -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def rss() -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    n = 1 << 18  # 2 MiB
    with corral.ProcessPoolExecutor(max_workers=1) as ex:
        for _ in range(20):
            ex.submit(t.double, np.random.rand(n)).result(TIMEOUT)
        gc.collect()
        fd0, rss0, sent0 = fds(), rss(), ex.submit(t.stats).result(TIMEOUT)[2]
        for _ in range(1000):
            a = np.random.rand(n)
            out = ex.submit(t.double, a).result(TIMEOUT)
            assert out[0] == a[0] * 2
            del a, out
        gc.collect()
        live, _, sent, _ = ex.submit(t.stats).result(TIMEOUT)
        assert sent - sent0 == 1000 and live == 0
        assert wait_until(lambda: arena_used(ex) == 0, TIMEOUT)
        assert fds() <= fd0 + 2
        assert rss() - rss0 < 64 << 20


def _run(code: str) -> None:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_full_arena_or_a_spent_budget_falls_back_to_malloc() -> None:
    _run(
        """
        import numpy as np
        from corral import _core
        q = _core.SharedQueue(arena_bytes=40 << 20)
        assert _core.install_array_allocator(q, 1 << 20, 1 << 40)
        arrays = [np.full(2_000_000, float(i)) for i in range(4)]  # 64 MB: two fit
        assert _core.array_arena_stats().live_blocks == 2
        assert all((a == i).all() for i, a in enumerate(arrays))
        small = np.ones(1000)
        assert _core.array_arena_stats().live_blocks == 2, "small arrays use malloc"
        del arrays, small
        assert _core.array_arena_stats().live_blocks == 0 and q.arena_used() == 0
        z = np.zeros(2_000_000)
        assert (z == 0).all() and _core.array_arena_stats().live_blocks == 1
        del z
        assert not _core.install_array_allocator(_core.SharedQueue(), 1 << 20, 1 << 40), "one arena per process"
        """
    )
    _run(
        """
        import numpy as np
        from corral import _core
        q = _core.SharedQueue()
        assert _core.install_array_allocator(q, 1 << 20, 20 << 20)
        a, b = np.ones(2_000_000), np.ones(2_000_000)
        assert _core.array_arena_stats().live_blocks == 1, "past the budget: malloc"
        assert (a + b == 2).all()
        """
    )


def test_the_arena_bytes_of_other_processes_count_against_the_budget() -> None:
    _run(
        """
        from corral import _core
        import numpy as np
        q = _core.SharedQueue(arena_bytes=64 << 20)
        q.put(b"", [bytes(30 << 20)], True, None)  # another process's result on its way
        assert _core.install_array_allocator(q, 1 << 20, 40 << 20)
        a = np.ones(2_000_000)  # 16 MB: 46 MB of the arena in use would pass 40
        assert _core.array_arena_stats().live_blocks == 0, "the arena's use, not only ours, is bounded"
        q.get(True, 10)
        b = np.ones(2_000_000)
        assert _core.array_arena_stats().live_blocks == 1
        """
    )


def test_workers_keeping_arrays_alive_leave_room_for_a_large_result() -> None:
    # Under an address-space limit the arena is small; every worker keeps an
    # array as large as the arena's pressure point (a cache): together they
    # must not fill the arena, or the 32 MB result would wait for room for ever.
    _run(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        import numpy as np
        import corral
        from corral import _shm_arrays
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import _array_tasks as t
        W = 9
        with corral.ProcessPoolExecutor(W) as ex:
            per = _shm_arrays.pressure(ex._results._q) - (2 << 20)
            barrier = corral.Barrier(W)
            pids = [f.result(120) for f in [ex.submit(t.keep_until, per // 8, barrier) for _ in range(W)]]
            assert len(set(pids)) == W
            assert (ex.submit(t.make, 4_000_000).result(60) == 3.0).all()
        """
    )


def test_install_waits_for_numpy() -> None:
    _run(
        """
        import sys
        from corral import _core, _shm_arrays
        q = _core.SharedQueue()
        assert not _shm_arrays.install(q) and "numpy" not in sys.modules
        import numpy
        assert _shm_arrays.install(q) and _shm_arrays.install(q)
        """
    )
    assert _shm_arrays.MIN_BYTES <= 1 << 20


def test_a_result_born_in_the_arena_outlives_its_pool() -> None:
    with corral.ProcessPoolExecutor(max_workers=1) as ex:
        ex.submit(t.stats).result(TIMEOUT)
        out = ex.submit(t.make, N).result(TIMEOUT)
        assert ex.submit(t.stats).result(TIMEOUT)[2] == 1, "sent without a copy"
    assert (out == 3.0).all()
    out += 1
    assert out[-1] == 4.0
