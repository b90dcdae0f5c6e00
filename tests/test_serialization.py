"""What crosses a process boundary: exceptions that do not pickle as
themselves, corral objects in the arguments of a retried task, messages of
thousands of buffers, a received raw buffer sent on, and functions of a
``__main__`` that has no file (``python -``, ``python -c``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import _workers as w
import corral
from _helpers import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


# -- exceptions --------------------------------------------------------------


def test_pool_an_exception_whose_init_takes_other_arguments_keeps_its_type_and_attributes(pool) -> None:
    f = pool.submit(w.raise_coded_error, 7, "disk full", "while saving")
    with pytest.raises(w.CodedError, match="disk full") as info:
        f.result(timeout=30)
    assert info.value.code == 7
    assert info.value.args == ("disk full",)
    assert info.value.__notes__ == ["while saving"]
    assert isinstance(info.value.__cause__, corral.RemoteTraceback)
    assert "raise_coded_error" in str(info.value.__cause__)


def test_pool_an_exception_with_a_python_new_wanting_other_arguments_keeps_its_type(pool) -> None:
    with pytest.raises(w.PairError, match="a/b") as info:
        pool.submit(w.raise_pair_error, "a", "b").result(timeout=30)
    assert info.value.pair == ("a", "b")


def test_pool_an_exception_group_keeps_the_types_of_what_it_holds(pool) -> None:
    with pytest.raises(ExceptionGroup, match="batch failed") as info:
        pool.submit(w.raise_group_of_coded_errors, 9).result(timeout=30)
    first, second = info.value.exceptions
    assert type(first) is w.CodedError and first.code == 9 and first.args == ("first",)
    assert type(second) is ValueError


def test_pool_an_exception_that_refers_to_itself_keeps_its_type_and_the_cycle(pool) -> None:
    with pytest.raises(w.SelfRefError) as info:
        pool.submit(w.raise_self_ref_error).result(timeout=30)
    assert info.value.me is info.value
    assert info.value.code == 3


def test_pool_an_unpicklable_attribute_is_dropped_and_named_in_a_note(pool) -> None:
    with pytest.raises(w.UnpicklableError, match="with a lock") as info:
        pool.submit(w.raise_unpicklable_error, "with a lock").result(timeout=30)
    assert not hasattr(info.value, "lock")
    assert info.value.__notes__ == ["corral: attribute 'lock' (lock) could not be pickled and was dropped"]


def test_pool_map_raises_the_rebuilt_exception_at_its_item(pool) -> None:
    got = []
    with pytest.raises(w.CodedError) as info:
        for v in pool.map(w.raise_coded_error, [1, 2], ["first", "second"], chunksize=2):
            got.append(v)
    assert got == [] and info.value.code == 1


def test_pool_an_exception_type_that_cannot_travel_comes_back_as_runtime_error_naming_it(pool) -> None:
    with pytest.raises(RuntimeError, match=r"_workers.raise_untravelable_error.<locals>.LocalError: x") as info:
        pool.submit(w.raise_untravelable_error, "x").result(timeout=30)
    assert "cannot be pickled" in info.value.__notes__[0]
    assert pool.submit(w.add, 1, 2).result(timeout=30) == 3


# -- a __main__ without a file -----------------------------------------------

_STDIN_SCRIPT = """
import corral

SCALE = 3


class Box:
    def __init__(self, v):
        self.v = v


def sq(x):
    return Box(x * x * SCALE)


if __name__ == "__main__":
    for method in ("spawn", "forkserver"):
        with corral.ProcessPoolExecutor(2, start_method=method) as p:
            print(method, [b.v for b in p.map(sq, range(4))])
    proc = corral.Process(target=sq, args=(5,))
    proc.start()
    print("process", proc.result(timeout=30).v)
"""


def _run_python(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=50, env=env, cwd=HERE
    )


def test_a_script_read_from_stdin_runs_its_functions_in_pools_and_processes() -> None:
    r = _run_python(["-"], stdin=_STDIN_SCRIPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["spawn [0, 3, 12, 27]", "forkserver [0, 3, 12, 27]", "process 75"]


def test_a_script_given_with_dash_c_runs_its_functions_in_pools_and_processes() -> None:
    r = _run_python(["-c", _STDIN_SCRIPT])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["spawn [0, 3, 12, 27]", "forkserver [0, 3, 12, 27]", "process 75"]


# -- corral objects in the arguments of a re-run task ------------------------


def test_a_retried_task_gets_its_queue_pipe_end_and_lock_again(tmp_path) -> None:
    q, lock = corral.Queue(), corral.Lock()
    here, there = corral.Pipe()
    with corral.ProcessPoolExecutor(2, retries=2) as p:
        f = p.submit(w.use_channels_then_die_once, q, there, lock, str(tmp_path / "died"))
        assert f.result(timeout=30) == "second run"
    first, second = q.get(timeout=10), q.get(timeout=10)
    assert first != second  # two workers, the first one killed
    assert [here.recv(), here.recv()] == ["attempt", "attempt"]


def test_broker_registrations_of_task_arguments_end_with_the_task(tmp_path) -> None:
    q = corral.Queue()
    base = corral._core.shared_fd_count()
    with corral.ProcessPoolExecutor(1, retries=1) as p:
        # Done after a re-run.
        here, there = corral.Pipe()
        assert p.submit(w.use_channels_then_die_once, q, there, corral.Lock(), str(tmp_path / "m")).result(30)
        assert corral._core.shared_fd_count() == base
        # Lost: the run and its retry died.
        with pytest.raises(corral.WorkerLostError):
            p.submit(w.die_always_with, q).result(timeout=30)
        # The worker replacing the dead one may still be starting: its
        # queues go to the fork server through the broker once, by then.
        assert wait_until(lambda: corral._core.shared_fd_count() == base, 30), corral._core.shared_fd_count()
        # Cancelled before a worker took it.
        gate = corral.Event()
        blocker = p.submit(gate.wait, 30)
        queued = p.submit(w.put_items, q, [1])
        assert queued.cancel()
        gate.set()
        assert blocker.result(timeout=30) is True
        # Map chunks.
        assert list(p.map(w.put_items, [q] * 6, [[i] for i in range(6)], chunksize=2)) == [1] * 6
        assert corral._core.shared_fd_count() == base
    assert corral._core.shared_fd_count() == base


def test_a_task_whose_arguments_fail_to_pickle_leaves_no_registration() -> None:
    q = corral.Queue()
    base = corral._core.shared_fd_count()
    with corral.ProcessPoolExecutor(1) as p:
        with pytest.raises(TypeError):
            p.submit(w.put_items, q, [__import__("threading").Lock()])
        assert corral._core.shared_fd_count() == base


# -- messages of thousands of buffers ----------------------------------------


def test_a_default_map_of_a_fast_function_returning_tiny_arrays_works(pool) -> None:
    # The audit's case: the automatic chunk size put over 4,095 results in
    # one chunk (how many depends on the machine's speed).
    out = list(pool.map(w.empty_array, range(20_000)))
    assert len(out) == 20_000 and all(a.shape == (1,) for a in out)
    # The same, made certain: 5,000 arrays in each chunk's result.
    out = list(pool.map(w.one_element_array, range(10_000), chunksize=5_000))
    assert [int(a[0]) for a in out] == list(range(10_000))


def test_a_queue_item_of_5000_small_arrays_round_trips() -> None:
    np = pytest.importorskip("numpy")
    q = corral.Queue()
    q.put([np.full(3, i) for i in range(5000)])
    got = q.get(timeout=10)
    assert len(got) == 5000 and all(int(a[2]) == i for i, a in enumerate(got))


def test_a_queue_item_of_5000_arena_sized_arrays_round_trips_as_views_and_frees_them() -> None:
    np = pytest.importorskip("numpy")
    q = corral.Queue()
    arrays = [np.full(64 * 1024 // 8, i, dtype=np.int64) for i in range(5000)]
    q.put(arrays)
    del arrays
    got = q.get(timeout=30)
    assert len(got) == 5000 and all(int(a[0]) == i and int(a[-1]) == i for i, a in enumerate(got))
    assert q._q.arena_used() >= 4999 * 64 * 1024  # views on shared memory, not copies
    del got
    assert q._q.arena_used() == 0


def test_past_max_buffers_the_largest_stay_out_of_band_and_the_rest_go_in_band() -> None:
    np = pytest.importorskip("numpy")
    q = corral.Queue(ring_bytes=64 << 10)
    limit = q._q.max_buffers
    assert 100 < limit < 1000
    assert corral.Queue()._q.max_buffers >= corral._pickle.MAX_BUFFERS
    big = np.arange(1 << 17, dtype=np.int64)  # 1 MiB, last in the item
    item = [np.full(1024, i, dtype=np.int64) for i in range(limit)] + [big]
    _, buffers = corral._pickle.dumps(item, limit)
    assert len(buffers) == limit and max(memoryview(b).nbytes for b in buffers) == big.nbytes
    q.put(item)
    got = q.get(timeout=10)
    assert all(int(a[0]) == i for i, a in enumerate(got[:-1])) and np.array_equal(got[-1], big)


# -- a received raw buffer ---------------------------------------------------


def test_a_received_raw_pickle_buffer_is_bytes_like_and_can_be_sent_on() -> None:
    import pickle

    q, other = corral.Queue(), corral.Queue()
    data = bytes(range(256)) * 4096  # 1 MiB
    q.put(pickle.PickleBuffer(bytearray(data)))
    x = q.get(timeout=10)
    assert len(x) == len(data) and bytes(x) == data and memoryview(x).nbytes == len(data)
    q.put(x)
    other.put(x)
    assert bytes(q.get(timeout=10)) == data and bytes(other.get(timeout=10)) == data
    assert bytes(pickle.loads(pickle.dumps(x))) == data  # protocol 4: a bytearray
    del x
    assert q._q.arena_used() == 0 and other._q.arena_used() == 0


def test_a_raw_pickle_buffer_travels_through_another_process_and_back(start) -> None:
    import pickle

    there, back = corral.Queue(), corral.Queue()
    p = start(w.forward, there, back, 2)
    big, small = bytes(range(256)) * 4096, b"small raw buffer"
    there.put(pickle.PickleBuffer(bytearray(big)))
    there.put(pickle.PickleBuffer(bytearray(small)))
    assert bytes(back.get(timeout=20)) == big and bytes(back.get(timeout=20)) == small
    assert p.result(timeout=20) == ["ShmBlock", "bytearray"]


# -- bytes-like messages ------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_large_bytes_like_message_travels_out_of_band_and_arrives_as_its_own_type(kind) -> None:
    data = kind(bytes(range(256)) * 4096)  # 1 MiB
    stream, buffers = corral._pickle.dumps(data)
    assert len(stream) < 100 and len(buffers) == 1  # the payload is not in the stream
    q = corral.Queue()
    q.put(data)
    got = q.get(timeout=10)
    assert type(got) is kind and got == data
    assert q._q.arena_used() == 0  # copied out of the block, which is freed at once
    if kind is bytearray:
        got[0] = 7  # a real, writable bytearray


def test_a_small_bytes_message_and_a_bytes_subclass_stay_in_the_stream() -> None:
    class Tagged(bytes):
        pass

    for item in (b"x" * (corral._pickle.OUT_OF_BAND_MIN - 1), Tagged(b"y" * 100_000)):
        stream, buffers = corral._pickle.dumps(item)
        assert buffers == [] and len(stream) > len(item)
        q = corral.Queue()
        q.put(item)
        got = q.get(timeout=10)
        assert type(got) is type(item) and got == item


def test_a_memoryview_message_arrives_as_bytes_large_out_of_band_and_small_or_strided_as_before() -> None:
    q = corral.Queue()
    source = bytearray(range(256)) * 4096
    view = memoryview(source).cast("I", (1024, 256))
    stream, buffers = corral._pickle.dumps(view)
    assert len(stream) < 100 and len(buffers) == 1
    q.put(view)
    got = q.get(timeout=10)
    assert type(got) is bytes and got == bytes(source)
    assert q._q.arena_used() == 0
    for small in (memoryview(b"small"), memoryview(bytearray(100))[::2]):
        q.put(small)  # as cloudpickle sends a memoryview (pickle refuses one)
        assert q.get(timeout=10) == small.tobytes()


def test_a_pool_task_returning_large_bytes_or_a_bytearray_gives_that_type_back(pool) -> None:
    data = bytes(range(256)) * 4096
    got = pool.submit(bytes, data).result(timeout=30)
    assert type(got) is bytes and got == data
    got = pool.submit(bytearray, data).result(timeout=30)
    assert type(got) is bytearray and got == data


def test_large_bytes_and_bytearray_travel_through_another_process_and_back(start) -> None:
    there, back = corral.Queue(), corral.Queue()
    p = start(w.forward, there, back, 2)
    big = bytes(range(256)) * 4096
    there.put(big)
    there.put(bytearray(big))
    assert back.get(timeout=20) == big
    got = back.get(timeout=20)
    assert type(got) is bytearray and got == big
    assert p.result(timeout=20) == ["bytes", "bytearray"]


def test_a_process_started_with_an_array_argument_gets_it(start) -> None:
    np = pytest.importorskip("numpy")
    p = start(w.array_sum, np.ones(100_000))
    assert p.result(timeout=20) == 100_000.0
