"""Typing (issue 14): the signatures of corral's public names as
``inspect`` shows them, ``worker_state(kind)``, and what mypy infers and
rejects in user code (tests/typing/; ``make lint`` also runs
``mypy --strict`` there)."""

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import corral

ROOT = Path(__file__).resolve().parent.parent


def _public_callables() -> list[tuple[str, Any]]:
    """Every public name of ``corral.__all__`` that has a signature, and the
    public methods of the public classes (inherited ones included)."""
    out: list[tuple[str, Any]] = []
    for name in corral.__all__:
        obj = getattr(corral, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            # An exception's signature is BaseException's (*args): none to check.
            continue
        if isinstance(obj, type):
            out.append((name, obj))
            for attr in dir(obj):
                if attr.startswith("_") and attr not in ("__init__", "__new__", "__call__", "__enter__"):
                    continue
                member = getattr(obj, attr)
                if callable(member) and not isinstance(member, type):
                    out.append((f"{name}.{attr}", member))
        elif callable(obj):
            out.append((name, obj))
    return out


PUBLIC = _public_callables()


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_signatures_show_no_private_parameter_sentinel_or_string(name: str, obj: Any) -> None:
    sig = inspect.signature(obj)
    for p in sig.parameters.values():
        assert not (p.name.startswith("_") and p.name not in ("self", "cls")), f"{name}{sig}: private {p.name}"
        assert p.default is not Ellipsis, f"{name}{sig}: {p.name}=Ellipsis"
        assert not isinstance(p.annotation, str), f"{name}{sig}: {p.name} annotated with a string"
    assert not isinstance(sig.return_annotation, str), f"{name}{sig}: return annotated with a string"
    assert inspect.signature(obj, eval_str=True) == sig


def test_the_signatures_a_user_reads() -> None:
    assert str(inspect.signature(corral.Lock)) == "() -> Self"
    assert str(inspect.signature(corral.Lock.acquire)) == "(self, /, blocking=True, timeout=-1)"
    assert str(inspect.signature(corral.RLock.acquire)) == "(self, /, blocking=True, timeout=-1)"
    assert list(inspect.signature(corral.Event).parameters) == []
    submit = inspect.signature(corral.ThreadPoolExecutor.submit)
    assert [p.kind for p in submit.parameters.values()][1:] == [
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]
    assert corral.Future[int].__origin__ is corral.Future  # type: ignore[attr-defined]
    assert corral.ThreadFuture is corral.Future


def _state_as(kind: type) -> object:
    return corral.worker_state(kind)


def test_worker_state_checks_the_kind_asked_for() -> None:
    with corral.ThreadPoolExecutor(1, initializer=dict, initargs=({"k": 1},)) as pool:
        assert pool.submit(corral.worker_state).result(timeout=30) == {"k": 1}
        assert pool.submit(_state_as, dict).result(timeout=30) == {"k": 1}
        with pytest.raises(TypeError, match="the worker state is a dict, not a list"):
            pool.submit(_state_as, list).result(timeout=30)
    with pytest.raises(RuntimeError, match="only available"):
        corral.worker_state(dict)


def _mypy(*args: str) -> tuple[str, int]:
    # A subprocess: mypy's api is not meant to run twice in one process.
    env = dict(os.environ, MYPYPATH=str(ROOT / "python"))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", ROOT / "pyproject.toml", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    return proc.stdout + proc.stderr, proc.returncode


def test_mypy_infers_the_types_of_results_and_rejects_wrong_arguments(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is a lint tool (make lint installs it)")
    # One mypy run over the samples (which must pass, every ignore in
    # sample_errors.py being needed) and over a file of reveal_type calls.
    reveal = tmp_path / "reveal.py"
    reveal.write_text(
        textwrap.dedent(
            """
            import corral

            def square(x: int) -> int:
                return x * x

            def join(a: str, b: bytes) -> str:
                return a + b.decode()

            async def forms(pool: corral.ThreadPoolExecutor, procs: corral.ProcessPoolExecutor) -> None:
                reveal_type(pool.submit(square, 2))
                reveal_type(procs.submit(square, 2).result())
                reveal_type(procs.options(timeout=1.0).submit(square, 2))
                reveal_type(pool.map(square, range(3)))
                reveal_type(procs.map(join, ["a"], [b"b"]))
                reveal_type(pool.imap_unordered(square, [1]))
                reveal_type(pool.options(timeout=1.0).map(square, [1]))
                reveal_type(await pool.run_async(square, 2))
                reveal_type(pool.map_async(square, [1]))
                reveal_type(await pool.submit(square, 2))
                reveal_type(corral.worker_state(dict))
                pool.submit(square, "x")
            """
        )
    )
    out, code = _mypy(str(ROOT / "tests" / "typing"), str(reveal))
    revealed = [line.split('Revealed type is "')[1].rstrip('"') for line in out.splitlines() if "Revealed type" in line]
    assert revealed == [
        "corral._executor.Future[int]",
        "int",
        "corral._executor.Future[int]",
        "typing.Iterator[int]",
        "typing.Iterator[str]",
        "typing.Iterator[int]",
        "typing.Iterator[int]",
        "int",
        "typing.AsyncIterator[int]",
        "int",
        "dict[Any, Any]",
    ], out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1, out
    assert 'Argument 2 to "submit" of "Executor" has incompatible type "str"; expected "int"' in errors[0], out
    assert code == 1
