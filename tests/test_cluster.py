"""corral.RayExecutor and corral.DaskExecutor against real engines started
here: a local Ray (ray.init(num_cpus=2)) and a Dask LocalCluster of two
worker processes. Skipped, with the reason, when the engine is missing."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import importlib.util
import threading

import pytest

import _pool_tasks as t
import corral

ENGINES = []
if importlib.util.find_spec("ray") is not None:
    ENGINES.append("ray")
if importlib.util.find_spec("distributed") is not None:
    ENGINES.append("dask")


def _make(engine: str, **kw):
    if engine == "ray":
        return corral.RayExecutor(num_cpus=2, include_dashboard=False, log_to_driver=False, **kw)
    return corral.DaskExecutor(**kw)


@pytest.fixture(
    scope="module",
    params=ENGINES
    or [
        pytest.param(
            "none",
            marks=pytest.mark.skip(
                reason="neither ray nor dask[distributed] is installed (pip install corral[ray] / corral[dask])"
            ),
        )
    ],
)
def ex(request):
    pool = _make(request.param)
    yield pool
    # Bounded: a task the engine lost must not hang the rest of the run.
    closer = threading.Thread(target=pool.shutdown, kwargs={"wait": True}, daemon=True)
    closer.start()
    closer.join(120)
    assert not closer.is_alive(), "the executor's shutdown(wait=True) did not return within 120 s"


@pytest.mark.timeout(300)  # engines start, restart workers, retry: slow on a loaded machine
def test_submit_map_and_errors_keep_their_type(ex) -> None:
    assert ex.submit(t.add, 1, b=2, scale=3).result(timeout=60) == 9
    assert list(ex.map(t.square, range(20))) == [i * i for i in range(20)]
    assert sorted(ex.imap_unordered(t.square, range(10))) == sorted(i * i for i in range(10))
    with pytest.raises(ValueError, match="on the engine"):
        ex.submit(t.raise_value_error, "on the engine").result(timeout=60)
    assert ex.submit(lambda x: x + 1, 1).result(timeout=60) == 2


@pytest.mark.timeout(300)  # engines start, restart workers, retry: slow on a loaded machine
def test_large_arrays_and_futures_interoperate(ex) -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(1 << 18, dtype=np.float64)  # 2 MB: through the object store
    assert np.array_equal(ex.submit(t.double, arr).result(timeout=60), arr * 2)
    fs = [ex.submit(t.square, i) for i in range(6)]
    done, _ = cf.wait(fs, timeout=60)
    assert len(done) == 6
    assert sorted(f.result() for f in cf.as_completed(fs)) == [0, 1, 4, 9, 16, 25]

    async def main() -> int:
        return await ex.submit(t.square, 9)

    assert asyncio.run(main()) == 81


@pytest.mark.timeout(600)
def test_timeout_and_lost_worker(ex, tmp_path) -> None:
    with pytest.raises(TimeoutError):
        ex.options(timeout=0.5).submit(t.sleep_then, 10).result(timeout=60)
    # Dask runs a task that kills its worker on 4 workers in turn (its
    # allowed-failures is 3) before it reports the loss: 4 worker restarts,
    # slow on a loaded machine.
    with pytest.raises(corral.WorkerLostError):
        ex.submit(t.exit_now, 3).result(timeout=240)
    marker = str(tmp_path / "died-once")
    assert ex.options(retries=2).submit(t.die_once, marker).result(timeout=240) == "second try"
    assert ex.submit(t.square, 4).result(timeout=60) == 16


@pytest.mark.timeout(120)
def test_futures_are_corral_futures_and_kill_cancels_the_engine_task_with_or_without_a_timeout(ex) -> None:
    for f in (ex.submit(t.sleep_then, 30), ex.options(timeout=60).submit(t.sleep_then, 30)):
        assert isinstance(f, corral.Future)
        assert not f.running()
        assert f.kill() is True
        assert f.cancelled()
    assert list(ex.options(timeout=60).map(t.square, range(4))) == [0, 1, 4, 9]
    assert ex.submit(t.square, 5).result(timeout=60) == 25


@pytest.mark.parametrize("engine", ENGINES)
def test_initializer_is_refused_clearly(engine) -> None:
    cls = corral.RayExecutor if engine == "ray" else corral.DaskExecutor
    with pytest.raises(TypeError, match="initializer"):
        cls(initializer=t.model_init)


@pytest.mark.timeout(300)  # engines start, restart workers, retry: slow on a loaded machine
def test_map_goes_in_chunks_and_raises_at_the_failing_item(ex) -> None:
    import itertools

    assert list(ex.map(t.square, range(3000))) == [i * i for i in range(3000)]
    assert list(ex.map(t.add, range(50), range(50), chunksize=7)) == [2 * i for i in range(50)]
    got = []
    with pytest.raises(KeyError):
        for v in ex.map(t.fail_at, range(100), itertools.repeat(60), chunksize=8):
            got.append(v)
    assert got == list(range(60))
    with pytest.raises(ValueError):
        list(ex.map(t.square, range(3), chunksize=0))
