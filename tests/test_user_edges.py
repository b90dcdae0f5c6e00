"""Small things a new user trips on (issue 14): a clear error for a
timeout that is not a number, for a missing optional dependency, a thread
pool initializer failure logged as the stdlib logs it, ``python -m corral
info | head`` without a traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures.thread import BrokenThreadPool

import pytest

import corral


def _script(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("kind", ["threads", "processes"])
@pytest.mark.parametrize("bad", ["5", [5], True])
def test_a_timeout_that_is_not_a_number_is_a_type_error(kind: str, bad: object) -> None:
    pool = corral.ThreadPoolExecutor(1) if kind == "threads" else corral.ProcessPoolExecutor(1)
    with pool:
        with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
            pool.options(timeout=bad).submit(abs, -1)  # type: ignore[arg-type]
        assert pool.options(timeout=5).submit(abs, -1).result(timeout=60) == 1


@pytest.mark.parametrize(
    ("blocked", "code", "extra"),
    [
        ("ray", "corral.RayExecutor()", "ray"),
        ("distributed", "corral.DaskExecutor()", "dask"),
        ("numpy", "__import__('corral.__main__').__main__.main(['demo', '--quick'])", "demo"),
        ("sklearn", "__import__('corral.__main__').__main__.main(['demo', '--quick'])", "demo"),
    ],
)
def test_a_missing_optional_dependency_names_the_pip_install(blocked: str, code: str, extra: str) -> None:
    # sys.modules[name] = None makes `import name` raise ImportError, as when
    # the package is not installed.
    out = _script(f"import sys; sys.modules[{blocked!r}] = None\nimport corral\n{code}")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError") and f"pip install 'corral[{extra}]'" in last, out.stderr


def test_a_failing_thread_pool_initializer_is_logged_at_critical_as_the_stdlib_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def init() -> None:
        raise ValueError("no model file")

    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        with corral.ThreadPoolExecutor(1, initializer=init) as pool:
            with pytest.raises(BrokenThreadPool):
                pool.submit(abs, -1).result(timeout=60)
    records = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert [r.levelno for r in records] == [logging.CRITICAL]
    assert records[0].getMessage() == "Exception in initializer:"
    assert records[0].exc_info is not None and isinstance(records[0].exc_info[1], ValueError)


def test_info_into_a_closed_pipe_ends_without_a_traceback() -> None:
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first line is written
    try:
        out = subprocess.run(
            [sys.executable, "-m", "corral", "info"], stdout=w, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(w)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.returncode == 1


def test_every_public_method_of_the_public_classes_has_a_docstring() -> None:
    classes = [
        corral.Event,
        corral.Lock,
        corral.RLock,
        corral.Semaphore,
        corral.BoundedSemaphore,
        corral.Condition,
        corral.Barrier,
        corral.Queue,
        corral.SimpleQueue,
        corral.Connection,
        corral.Process,
        corral.ThreadPoolExecutor,
        corral.ProcessPoolExecutor,
        corral.Future,
    ]
    missing = [
        f"{cls.__name__}.{name}"
        for cls in classes
        for name in dir(cls)
        if not name.startswith("_")
        and callable(getattr(cls, name))
        and not (getattr(getattr(cls, name), "__doc__", None) or "").strip()
    ]
    assert not missing, missing


def test_dask_executor_takes_a_client_or_a_cluster_positionally() -> None:
    distributed = pytest.importorskip(
        "distributed", reason="dask[distributed] is not installed (pip install 'corral[dask]')"
    )
    with distributed.LocalCluster(
        n_workers=1, processes=False, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        with corral.DaskExecutor(cluster) as ex:
            assert ex.submit(abs, -3).result(timeout=60) == 3
        with distributed.Client(cluster) as client:
            with corral.DaskExecutor(client) as ex:
                assert ex.submit(abs, -4).result(timeout=60) == 4
            assert client.status == "running"  # a client given is left running
            with pytest.raises(TypeError, match="once"):
                corral.DaskExecutor(client, client=client)
