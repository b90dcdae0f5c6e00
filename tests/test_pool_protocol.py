"""The process pool's protocol between Python and the core: task messages
decoded by the core (a bad header is an error, not a misread), results
encoded by the core, events as typed objects, task ids numbered by the core
(an event may come before the submitting thread registered its task), and a
chunk the core refuses failing its map at that chunk's place."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import threading
import time

import pytest

import _pool_tasks as t
import corral
from corral import _core
from corral import pool as pool_mod

_EVENTS = (
    _core.TaskDone,
    _core.TaskLost,
    _core.TaskCancelled,
    _core.TaskRejected,
    _core.WorkerExited,
    _core.InitFailed,
    _core.PoolBroken,
    _core.PoolClosed,
)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"CRLT",  # shorter than a header
        b"XXXX" + bytes(28) + b"args",  # wrong magic
        b"CRLT\x07" + bytes(27),  # unknown kind
        b"CRLT\x00\x00\x00\x00" + bytes(16) + (1000).to_bytes(4, "little") + bytes(4),  # function past the end
    ],
)
def test_a_task_message_with_a_bad_header_is_refused(message: bytes) -> None:
    with pytest.raises(corral.CorruptDataError):
        _core.TaskMessage.decode(message)


def test_a_worker_sends_only_the_statuses_of_a_worker() -> None:
    assert len(_core.encode_result(1, "ok", 0, 5, b"x")) > 1
    for status in ("wake", "done", ""):
        with pytest.raises(ValueError):
            _core.encode_result(1, status, 0, 0, b"")


def test_events_are_frozen_classes_that_python_cannot_forge() -> None:
    for cls in _EVENTS:
        with pytest.raises(TypeError):
            cls()


def test_ids_come_from_the_core_in_submission_order() -> None:
    with corral.ProcessPoolExecutor(1) as pool:
        futs = [pool.submit(abs, -i) for i in range(50)]
        ids = [f._task for f in futs]
        assert ids == sorted(ids) and len(set(ids)) == 50 and ids[0] >= 1
        assert [f.result(timeout=60) for f in futs] == list(range(50))
        assert not pool._handlers, "every finished task is unregistered"


def test_results_that_come_before_their_task_is_registered_still_resolve_it() -> None:
    # Several threads submit tiny tasks at once: a result often reaches the
    # pump while its submitter is between the core's submit and the
    # registration of the future. Each must still be resolved.
    n_threads, per_thread = 4, 400
    with corral.ProcessPoolExecutor(2) as pool:
        start = threading.Barrier(n_threads)
        out: list[list[cf.Future[int]]] = [[] for _ in range(n_threads)]

        def submitter(k: int) -> None:
            start.wait(timeout=30)
            out[k] = [pool.submit(abs, -(k * per_thread + i)) for i in range(per_thread)]

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
            assert not th.is_alive()
        futs = [f for fs in out for f in fs]
        _, not_done = cf.wait(futs, timeout=60)
        assert not not_done, f"{len(not_done)} futures never resolved"
        assert sorted(f.result() for f in futs) == list(range(n_threads * per_thread))
        assert len({f._task for f in futs}) == n_threads * per_thread


def test_a_worker_fed_a_corrupt_task_message_is_replaced_and_the_pool_goes_on() -> None:
    with corral.ProcessPoolExecutor(1) as pool:
        assert pool.submit(abs, -1).result(timeout=60) == 1
        restarts = pool.stats()["workers"][0]["restarts"]
        tasks = pool._workers.queues[0]
        assert tasks is not None
        tasks._q.put(b"not a task message", [], True, 10)
        deadline = time.monotonic() + 60
        while pool.stats()["workers"][0]["restarts"] == restarts:
            assert time.monotonic() < deadline, "the worker kept running after a corrupt task message"
            time.sleep(0.01)
        assert pool.submit(abs, -2).result(timeout=60) == 2


def test_a_chunk_the_core_cannot_send_fails_its_map_at_that_place(monkeypatch: pytest.MonkeyPatch) -> None:
    np = pytest.importorskip("numpy")
    # Task queues with a small arena: a 4 MiB argument cannot be sent.
    monkeypatch.setattr(pool_mod, "Queue", functools.partial(pool_mod.Queue, arena_bytes=1 << 20))
    with corral.ProcessPoolExecutor(1) as pool:
        small = np.zeros(10, dtype=np.uint8)
        big = np.zeros(4 << 20, dtype=np.uint8)
        with pytest.raises(ValueError, match="could not be sent to a worker"):
            pool.submit(len, big).result(timeout=60)
        results = pool.map(len, [small, small, big, small], chunksize=1)
        assert next(results) == 10
        assert next(results) == 10
        with pytest.raises(ValueError, match="could not be sent to a worker"):
            next(results)
        assert pool.submit(len, small).result(timeout=60) == 10, "the pool goes on"


def test_a_chunk_lost_with_its_worker_fails_its_map_with_worker_lost() -> None:
    with corral.ProcessPoolExecutor(1) as pool:
        results = pool.map(t.exit_now, [7], chunksize=1)
        with pytest.raises(corral.WorkerLostError, match="exit code 7"):
            next(results)
        assert list(pool.map(abs, [-1, -2], chunksize=1)) == [1, 2], "the pool goes on"


def test_events_carry_named_fields() -> None:
    # The pump's events, observed by wrapping its handler.
    seen: list[object] = []
    with corral.ProcessPoolExecutor(1) as pool:
        original = pool._on_event

        def spy(ev: object, wake: list[_core.Sleeper]) -> bool:
            seen.append(ev)
            return original(ev, wake)

        pool._on_event = spy  # type: ignore[method-assign]
        fut = pool.submit(abs, -3)
        assert fut.result(timeout=60) == 3
    done = [e for e in seen if isinstance(e, _core.TaskDone)]
    assert [(e.task, e.status) for e in done] == [(fut._task, "ok")]
    assert done[0].busy_ns >= 0 and isinstance(done[0].buffers, list)
    with pytest.raises(AttributeError):
        done[0].status = "raised"  # type: ignore[misc]
    assert isinstance(seen[-1], _core.PoolClosed)
    exits = [e for e in seen if isinstance(e, _core.WorkerExited)]
    assert [(e.slot, e.cause, e.respawn) for e in exits] == [(0, "stopped", False)]
