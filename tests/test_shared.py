"""corral.share: a read-only array placed once in shared memory and read by
many tasks without a copy."""

from __future__ import annotations

import itertools

import pytest

import _pool_tasks as t
import corral

np = pytest.importorskip("numpy")


def test_shared_array_reaches_tasks_as_one_read_only_mapping_per_worker() -> None:
    data = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
    shared = corral.share(data)
    assert shared.shape == (1000, 1000) and shared.dtype == np.float32 and shared.nbytes == data.nbytes
    assert np.array_equal(np.asarray(shared), data)
    with corral.ProcessPoolExecutor(1) as pool:
        facts = list(pool.map(t.array_facts, itertools.repeat(shared, 20), chunksize=1))
        assert {f[0] for f in facts} == {float(data.sum())}
        assert len({f[1] for f in facts}) == 1, "every task read the same mapping"
        assert {f[2] for f in facts} == {False}
        assert {f[3] for f in facts} == {"ndarray"}
        assert pool.submit(t.try_write, shared).result(timeout=30).startswith("refused")


def test_shared_array_is_read_only_here_and_copies_non_contiguous_input() -> None:
    base = np.arange(20, dtype=np.int64).reshape(4, 5)
    shared = corral.share(base[:, ::2])
    assert shared.array.flags.c_contiguous
    assert np.array_equal(shared.array, base[:, ::2])
    with pytest.raises(ValueError):
        shared.array[0, 0] = 5
    base[0, 0] = 99  # the share is a copy
    assert shared[0, 0] == 0


def test_shared_array_through_a_queue_arrives_as_an_array() -> None:
    shared = corral.share(np.ones(10, dtype=np.float64))
    q = corral.Queue()
    q.put(shared)
    got = q.get(timeout=10)
    assert isinstance(got, np.ndarray) and got.sum() == 10.0


def test_bad_input_is_rejected() -> None:
    with pytest.raises(TypeError):
        corral.share(np.array([object()], dtype=object))
    empty = corral.share(np.zeros(0))
    assert empty.shape == (0,)


def test_numpy_array_of_a_shared_array_copies_on_request() -> None:
    shared = corral.share(np.arange(5))
    copy = np.array(shared)  # numpy asks for a copy
    assert copy.flags.writeable and not np.shares_memory(copy, shared.array)
    view = np.asarray(shared)
    assert np.shares_memory(view, shared.array)
