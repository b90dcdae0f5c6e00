"""A message of a ``get_many`` batch that cannot be read (a corrupt arena
block, no memory for its bytes) ends alone: the messages before it are
returned, its error is raised by the next call, the ones after it come at
the calls after that. Before, the messages after it were dropped, lost, and
their arena blocks stayed held for the life of the queue."""

from __future__ import annotations

import gc
import os

import pytest

import corral

#: Large enough that every message's in-band part is an arena block.
BIG = 256 * 1024


def _fill(q: corral.Queue, n: int) -> list[bytes]:
    items = [bytes([i]) * BIG for i in range(n)]
    for item in items:
        q.put(item)
    assert q.qsize() == n
    return items


def test_a_message_that_cannot_be_read_ends_alone_and_the_rest_of_its_batch_comes_next() -> None:
    q: corral.Queue = corral.Queue()
    items = _fill(q, 5)
    q._q._corrupt_next_get(2)
    assert q.get_many(10, timeout=10) == items[:2]
    assert q.qsize() == 3  # the failed message and the two after it
    with pytest.raises(corral.CorruptDataError):
        q.get_many(10, timeout=10)
    assert not q.empty()
    assert q.get_many(10, timeout=10) == items[3:]
    assert q.empty()
    assert q._q.arena_used() == 0, "a block of the batch was left held"


def test_the_first_message_of_a_batch_failing_raises_at_once_and_keeps_the_others() -> None:
    q: corral.Queue = corral.Queue()
    items = _fill(q, 4)
    q._q._corrupt_next_get(0)
    with pytest.raises(corral.CorruptDataError):
        q.get_many(10, timeout=10)
    # The others are held by this handle, served before the ring, in order,
    # at most max_items at a time.
    q.put(b"later")
    assert q.get(timeout=10) == items[1]
    assert q.get_many(1, timeout=10) == [items[2]]
    assert q.get_many(10, timeout=10) == [items[3]]
    assert q.get(timeout=10) == b"later"
    assert q._q.arena_used() == 0


def test_messages_held_by_a_dropped_handle_give_their_blocks_back() -> None:
    q: corral.Queue = corral.Queue()
    _fill(q, 4)
    other = corral.Queue._from_core(corral._core.SharedQueue.from_fd(os.dup(q._q.fileno())))
    other._q._corrupt_next_get(0)
    with pytest.raises(corral.CorruptDataError):
        other.get_many(10, timeout=10)
    assert q._q.arena_used() > 0  # three messages held by `other`
    del other
    gc.collect()
    assert q._q.arena_used() == 0
