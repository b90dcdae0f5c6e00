"""``progress=`` of both pools' ``map`` and ``imap_unordered`` (issue 14):
True, a dict of tqdm options or a tqdm class; the bar counts items."""

from __future__ import annotations

import io
from typing import Any

import pytest

import corral

tqdm = pytest.importorskip("tqdm", reason="progress= needs tqdm (the test extra)")


def _square(x: int) -> int:
    return x * x


class _Recording(tqdm.tqdm):  # type: ignore[misc,name-defined]
    """A tqdm class that records every bar made and its final count."""

    made: list[_Recording] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("file", io.StringIO())
        self.options = dict(kwargs)
        super().__init__(*args, **kwargs)
        _Recording.made.append(self)


@pytest.fixture(params=["process", "thread"])
def executor(request: Any) -> Any:
    ex = corral.ProcessPoolExecutor(2) if request.param == "process" else corral.ThreadPoolExecutor(2)
    yield ex
    ex.shutdown(wait=True)


@pytest.mark.parametrize("how", ["map", "imap_unordered"])
def test_a_tqdm_class_counts_items_not_chunks_with_the_inputs_length(executor: Any, how: str) -> None:
    _Recording.made.clear()
    out = list(getattr(executor, how)(_square, range(1000), chunksize=50, progress=_Recording))
    assert sorted(out) == [x * x for x in range(1000)]
    (bar,) = _Recording.made
    assert (bar.total, bar.n) == (1000, 1000)


def test_a_dict_gives_tqdm_options_and_its_total_wins(executor: Any) -> None:
    out = io.StringIO()
    options = {"desc": "squares", "unit": "img", "file": out, "total": 7, "leave": True, "mininterval": 0}
    assert list(executor.map(_square, range(5), progress=options)) == [0, 1, 4, 9, 16]
    text = out.getvalue()
    assert "squares:" in text and "5/7" in text and "img" in text


def test_an_input_without_length_gives_a_bar_without_total(executor: Any) -> None:
    _Recording.made.clear()
    assert list(executor.map(_square, (x for x in range(20)), progress=_Recording)) == [x * x for x in range(20)]
    (bar,) = _Recording.made
    assert (bar.total, bar.n) == (None, 20)


def test_progress_of_another_type_raises_at_the_call(executor: Any) -> None:
    with pytest.raises(TypeError, match="progress must be True, a dict of tqdm options or a tqdm class"):
        executor.map(_square, range(3), progress="yes")
    assert list(executor.map(_square, range(3), progress=False)) == [0, 1, 4]
