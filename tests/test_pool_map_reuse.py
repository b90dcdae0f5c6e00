"""What a process pool's ``map`` remembers between calls (the chunk sizer
of its function) and what that lets it read ahead (issue 13, the stop-22
review's leftovers)."""

import gc
import itertools
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import _pool_tasks as t
import corral


class Scaler:
    """A bound method to map (a new object at each ``obj.scale``)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def scale(self, x: int) -> int:
        return x * self.k


@pytest.fixture(scope="module")
def pool() -> Iterator[corral.ProcessPoolExecutor]:
    with corral.ProcessPoolExecutor(2) as p:
        yield p


def _stream_of(pool: corral.ProcessPoolExecutor, fn: Any) -> Any:
    (st,) = [s for s in list(pool._streams) if s.fn is fn or s.fn == fn]
    return st


def test_a_bound_method_reuses_its_sizer_without_keeping_its_object(pool: corral.ProcessPoolExecutor) -> None:
    # The sizer was keyed on the callable's identity, held weakly: a bound
    # method, new at each ``obj.scale``, never found the one its last map
    # measured.
    obj = Scaler(3)
    assert list(pool.map(obj.scale, range(20_000))) == [3 * x for x in range(20_000)]
    sizer = pool._sizer(obj.scale)
    assert pool._sizer(obj.scale) is sizer
    it = pool.map(obj.scale, range(100_000))
    assert _stream_of(pool, obj.scale).sizer is sizer
    assert sum(it) == 3 * sum(range(100_000))
    del it
    assert pool._sizer(Scaler(3).scale) is not sizer, "another object's method measures afresh"
    ref = weakref.ref(obj)
    del obj
    gc.collect()
    assert ref() is None, "the remembered sizer keeps no object alive"


def test_an_endless_map_of_a_measured_function_reads_little_ahead_of_its_first_item(
    pool: corral.ProcessPoolExecutor,
) -> None:
    # A map over an endless generator of a function mapped before read
    # ahead by its learned chunk from the first item (221 k items in the
    # stop-22 review's run): the read-ahead now follows the consumer.
    assert list(pool.map(t.square, range(300_000)))[-1] == 299_999**2
    assert pool._sizer(t.square).next() > 1_000
    read = itertools.count()

    def endless() -> Iterator[int]:
        for i in itertools.count():
            next(read)
            yield i

    it = pool.map(t.square, endless())
    assert next(it) == 0
    st = _stream_of(pool, t.square)
    with st.lock:
        sent = st.items_sent
    assert sent <= 2 * st._window() + 1, sent
    # Read on, it reaches large chunks again: not one item per chunk.
    assert sum(itertools.islice(it, 200_000)) == sum(x * x for x in range(1, 200_001))
    assert st.sent < 2_000, (st.sent, st.items_sent)
    del it
