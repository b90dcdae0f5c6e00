"""A pool worker's result that holds corral objects (a Queue, a Lock, a Pipe
end) registers their descriptors with the worker's fd broker when it is
pickled; a result that then cannot be sent gives them back: the worker's
descriptors stay flat over many failed sends (they grew by one set each)."""

from __future__ import annotations

import os
from typing import Any

import pytest

import corral
from corral import _fds
from corral import pool as pool_mod

TIMEOUT = 60

#: The result arena of the pools below (the parent makes it): a result of
#: twice as much cannot be sent.
ARENA = 4 << 20


def corral_objects_and_too_much(_: Any = None) -> tuple[Any, ...]:
    """A result whose corral objects pickle first, then a part too large
    for the result arena."""
    reader, writer = corral.Pipe()
    return corral.Queue(), corral.Lock(), reader, writer, b"x" * (2 * ARENA)


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def small_arena_pool(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(pool_mod, "_RESULT_ARENA", ARENA)
    with corral.ProcessPoolExecutor(1) as pool:
        yield pool


def test_a_result_that_cannot_be_sent_gives_its_descriptors_back(small_arena_pool: Any) -> None:
    pool = small_arena_pool
    pid = pool.submit(os.getpid).result(TIMEOUT)

    def fail_once() -> None:
        with pytest.raises(ValueError, match="could not be sent to the parent"):
            pool.submit(corral_objects_and_too_much).result(TIMEOUT)
        # The worker is done with that task (its objects freed) once it
        # has run the next one.
        assert pool.submit(os.getpid).result(TIMEOUT) == pid

    fail_once()  # the broker's own descriptors (listener, thread) start here
    before = fds_of(pid)
    for _ in range(20):
        fail_once()
    assert fds_of(pid) == before
    # The worker's broker holds no registration (it held 4 descriptors per
    # failed send, the queue's, the lock's and the pipe's two ends: 15 open
    # grew to 95 over these 20).
    assert pool.submit(corral._core.shared_fd_count).result(TIMEOUT) == 0


def test_a_result_sent_keeps_its_descriptors_for_the_parent(small_arena_pool: Any) -> None:
    # The registrations of a result that left are not withdrawn: the
    # parent loads its objects.
    q = small_arena_pool.submit(corral.Queue).result(TIMEOUT)
    q.put("through the worker's queue")
    assert q.get(timeout=TIMEOUT) == "through the worker's queue"


def _export_null() -> int:
    """Registers /dev/null with this process's broker (one receiver);
    returns the token."""
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        handle = _fds.export_fd(fd)  # the broker keeps a duplicate
    finally:
        os.close(fd)
    return int(handle[3])


def test_a_sending_block_withdraws_only_when_it_raises() -> None:
    count = corral._core.shared_fd_count
    try:
        before = count()
        with _fds.sending():
            token = _export_null()
        assert count() == before + 1  # sent: kept for its receiver
        corral._core.unshare_fd(token)
        with pytest.raises(KeyError), _fds.sending():
            _export_null()
            assert count() == before + 1
            raise KeyError("the message did not leave")
        assert count() == before
        # Nested: the inner block's exports go with the outer message.
        with pytest.raises(KeyError), _fds.sending():
            with _fds.sending():
                _export_null()
            raise KeyError("the outer message did not leave")
        assert count() == before
    finally:
        _fds.settle(undo=True)
