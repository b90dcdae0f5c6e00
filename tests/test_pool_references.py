"""What a process pool keeps of a task once its outcome is delivered:
nothing (CPython's ``test_free_reference``), and what a ``map`` that
timed out leaves running: only the task a worker had started."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import _pool_tasks as t
import corral
from _helpers import wait_until
from corral import _core


def _all_dead(refs: list[weakref.ref[Any]]) -> bool:
    gc.collect()
    return all(r() is None for r in refs)


def test_a_released_future_keeps_no_callable_argument_or_result(pool: corral.ProcessPoolExecutor) -> None:
    # A function without a closure: the pool memoizes its pickle, and must
    # not keep the function alive for it.
    fn = lambda d: t.Dummy(d.n + 1)  # noqa: E731
    arg = t.Dummy(1)
    f = pool.submit(fn, arg)
    res = f.result(timeout=30)
    assert res.n == 2
    refs = [weakref.ref(fn), weakref.ref(arg), weakref.ref(res)]
    del fn, arg, res, f
    # The results thread may still be leaving the call that ended the future.
    assert wait_until(lambda: _all_dead(refs), timeout=10), [r() for r in refs]


def test_options_submit_keeps_nothing_either(pool: corral.ProcessPoolExecutor) -> None:
    arg = t.Dummy(3)
    f = pool.options(timeout=30, retries=1).submit(t.make_dummy, arg.n)
    res = f.result(timeout=30)
    refs = [weakref.ref(arg), weakref.ref(res)]
    del arg, res, f
    assert wait_until(lambda: _all_dead(refs), timeout=10), [r() for r in refs]


def _peak_alive(results: Iterator[t.Dummy], ordered: bool) -> int:
    """The most yielded results alive at once while ``results`` (2,000
    ``make_dummy`` results) is read and each is dropped."""
    alive: weakref.WeakSet[t.Dummy] = weakref.WeakSet()
    peak = count = 0
    for r in results:
        if ordered:
            assert r.n == count
        count += 1
        alive.add(r)
        del r
        peak = max(peak, len(alive))
    assert count == 2000
    return peak


@pytest.mark.parametrize("chunksize", [None, 1, 64])
def test_map_releases_each_result_once_yielded(pool: corral.ProcessPoolExecutor, chunksize: int | None) -> None:
    peak = _peak_alive(pool.map(t.make_dummy, range(2000), chunksize=chunksize), ordered=True)
    assert peak == 0, f"{peak} yielded results were still alive at once"


def test_a_chunk_of_scalars_and_objects_releases_each_object_once_yielded(pool: corral.ProcessPoolExecutor) -> None:
    # Only a chunk of scalars alone is yielded whole (_core.pack_scalars).
    alive: weakref.WeakSet[t.Dummy] = weakref.WeakSet()
    peak = i = 0
    for r in pool.map(t.int_or_dummy, range(2000)):  # not enumerate: its tuple keeps r
        if i % 2:
            assert r.n == i
            alive.add(r)
        else:
            assert r == i
        del r
        i += 1
        peak = max(peak, len(alive))
    assert i == 2000
    assert peak == 0, f"{peak} yielded results were still alive at once"


class _Int(int):
    """An int subclass: its values may hold anything."""


@pytest.mark.parametrize(
    ("values", "scalars"),
    [
        ([1, 2**70, -3], True),
        ([2**63, 0], True),
        ([-(2**63) - 1], True),
        ([1.5, float("nan")], True),
        ([None, None], True),
        ([True, False], True),
        ([1j], True),
        ([], False),
        ([1, 2.0], False),
        ([True, 1], False),
        ([_Int(1)], False),
        ([1, _Int(2)], False),
        (["text"], False),
        ([0, t.Dummy(1)], False),
    ],
)
def test_pack_scalars_says_whether_values_are_one_exact_scalar_type(values: list[Any], scalars: bool) -> None:
    assert _core.pack_scalars(values) is scalars


@pytest.mark.parametrize(
    "values",
    [[0], [1, -1, 2**63 - 1, -(2**63)], list(range(-5, 300)), [x * x for x in range(500_000, 520_000)]],
)
def test_pack_scalars_packs_exact_64_bit_ints_and_unpack_ints_gives_them_back(values: list[int]) -> None:
    packed = _core.pack_scalars(values)
    assert type(packed) is bytes and len(packed) == 8 * len(values)
    back = _core.unpack_ints(packed)
    assert back == values and all(type(v) is int for v in back)


def test_unpack_ints_refuses_a_partial_int() -> None:
    with pytest.raises(ValueError, match="8 bytes each"):
        _core.unpack_ints(b"\x00" * 7)


@pytest.mark.parametrize(
    "values",
    [[2**63, 1], [True, False], [1, True], [1, 2.5], [-(2**63), 2**63 - 1, 0]],
)
def test_map_of_ints_comes_back_with_values_and_types_as_returned(
    pool: corral.ProcessPoolExecutor, values: list[Any]
) -> None:
    out = list(pool.map(t.identity, values))
    assert out == values and [type(v) for v in out] == [type(v) for v in values]


def test_imap_unordered_releases_each_result_once_yielded(pool: corral.ProcessPoolExecutor) -> None:
    peak = _peak_alive(pool.imap_unordered(t.make_dummy, range(2000)), ordered=False)
    assert peak == 0, f"{peak} yielded results were still alive at once"


@pytest.mark.parametrize("ordered", [True, False])
def test_a_finished_map_keeps_no_callable_or_input(pool: corral.ProcessPoolExecutor, ordered: bool) -> None:
    fn = lambda d: d.n  # noqa: E731
    items = [t.Dummy(i) for i in range(50)]
    refs = [weakref.ref(fn)] + [weakref.ref(d) for d in items]
    it = pool.map(fn, items) if ordered else pool.imap_unordered(fn, items)
    assert sorted(it) == list(range(50))
    del fn, items  # `it`, exhausted, is still held
    assert wait_until(lambda: _all_dead(refs), timeout=10), sum(r() is not None for r in refs)
    assert list(it) == []


def test_map_timeout_cancels_the_tasks_not_started(tmp_path: Any) -> None:
    go = corral.Event()
    paths = [str(tmp_path / f"ran-{i}") for i in range(6)]
    with corral.ProcessPoolExecutor(1) as p:
        # The first task runs until `go`; the others are queued behind it.
        it = p.map(t.wait_or_touch, [go] * 7, [None, *paths], timeout=0.5, chunksize=1)
        with pytest.raises(TimeoutError):
            next(it)
        go.set()
        # One worker takes its tasks in order: once this one ran, any task
        # of the map that was not cancelled has run too.
        assert p.submit(t.square, 3).result(timeout=30) == 9
    assert [os.path.exists(path) for path in paths] == [False] * 6


def test_map_timeout_with_default_chunks_cancels_the_tasks_not_started(tmp_path: Any) -> None:
    go = corral.Event()
    paths = [str(tmp_path / f"ran-{i}") for i in range(6)]
    with corral.ProcessPoolExecutor(1) as p:
        it = p.map(t.wait_or_touch, [go] * 7, [None, *paths], timeout=0.5)
        with pytest.raises(TimeoutError):
            next(it)
        go.set()
        assert p.submit(t.square, 3).result(timeout=30) == 9
    assert [os.path.exists(path) for path in paths] == [False] * 6


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_a_sized_map_starts_with_larger_chunks_unless_each_has_a_timeout(timeout: float | None) -> None:
    # Before the first measure, a map of known length sends len / (64 x
    # workers) items per chunk; with a timeout per chunk, one item, as
    # before (a chunk of many slow items would run past it).
    go = corral.Event()
    n = 10_000
    with corral.ProcessPoolExecutor(1) as p:
        it = p.options(timeout=timeout).map(t.wait_or_touch, [go] * n, [None] * n)
        (st,) = list(p._streams)
        with st.lock:
            sizes = [size for _, size, _ in st.inflight.values()]
        go.set()
        assert list(it) == [None] * n
    if timeout is not None:
        assert sizes and set(sizes) == {1}, sizes
    else:
        assert sizes and sizes[0] == n // 64 and min(sizes) > n // 128, sizes


@pytest.mark.parametrize("seq", [range(3000), list(range(3000)), tuple(range(3000))])
def test_map_of_a_sequence_sends_its_slices(seq: Any) -> None:
    # A list, tuple or range is cut in slices (a range's travel as three
    # numbers), not read item by item into new lists.
    with corral.ProcessPoolExecutor(1) as p:
        it = p.map(t.square, seq, chunksize=100)
        (st,) = list(p._streams)
        chunks = [chunk for _, _, chunk in st.inflight.values()]
        assert chunks and all(type(c) is type(seq) and len(c) == 100 for c in chunks)
        assert list(it) == [x * x for x in range(3000)]
        assert list(p.map(t.square, seq)) == [x * x for x in range(3000)]
        assert sorted(p.imap_unordered(t.square, seq[:10])) == [x * x for x in range(10)]


def test_a_builtin_bound_to_an_object_sends_its_current_state(pool: corral.ProcessPoolExecutor) -> None:
    items = [1]
    count = items.count  # a builtin method bound to the list
    assert pool.submit(count, 1).result(timeout=30) == 1
    items.append(1)
    assert pool.submit(count, 1).result(timeout=30) == 2


def test_a_sequence_map_sends_the_next_chunks_while_the_consumer_is_away() -> None:
    # The results thread sends a list/tuple/range's next slices as results
    # come in, up to a window of unread results; a generator's items are
    # read by the consumer only.
    with corral.ProcessPoolExecutor(1) as p:
        it = p.map(t.square, range(200), chunksize=1)
        (st,) = list(p._streams)
        window = corral._core.chunks_in_flight(1, 1)
        assert st.items_sent == window
        assert wait_until(lambda: st.items_sent > window, timeout=30), st.items_sent
        assert wait_until(lambda: st.inbox.qsize() > window, timeout=30)
        assert st.items_sent <= 2 * window + 1
        assert list(it) == [x * x for x in range(200)]

        gen = p.map(t.square, (x for x in range(200)), chunksize=1)
        (st,) = list(p._streams)
        assert wait_until(lambda: st.inbox.qsize() == window, timeout=30)
        assert st.items_sent == window
        assert list(gen) == [x * x for x in range(200)]


def test_a_generator_map_reads_no_further_ahead_of_a_slow_consumer() -> None:
    # The consumer's fill counts unread results in the window: it counted
    # only the chunks in flight, so each next() after the workers caught up
    # read a whole window more (a consumer slower than the workers: 274,260
    # items read ahead after 3 s, was 470).
    with corral.ProcessPoolExecutor(1) as p:
        gen = p.map(t.square, (x for x in range(10_000)), chunksize=1)
        (st,) = list(p._streams)
        window = corral._core.chunks_in_flight(1, 1)
        for consumed in range(1, 6):
            assert next(gen) == (consumed - 1) ** 2
            assert wait_until(lambda: not st.inflight, timeout=30)  # the workers caught up
            assert st.items_sent <= consumed + window, (consumed, st.items_sent, window)
        assert list(gen) == [x * x for x in range(5, 10_000)]
