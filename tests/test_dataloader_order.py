"""corral.DataLoader's ``in_order=False`` (torch >= 2.6): batches are
yielded as they complete, so a slow batch does not hold back the others
(map-style and iterable datasets); and a worker's exception reaches the
loop with torch's context ("Caught ValueError in DataLoader worker process
1.") and the worker's traceback, from either kind of dataset. The slow
batch is slow by an event the test sets once later batches arrived, never
by a sleep."""

import traceback
from typing import Any

import pytest

import corral
from _datasets import FailsAt

np = pytest.importorskip("numpy")

TIMEOUT = 60


class HeldFirst:
    """Map-style: sample 0 waits for ``go`` (set by the loop); the others
    are their index."""

    def __init__(self, go: corral.Event, n: int = 24) -> None:
        self.go, self.n = go, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == 0 and not self.go.wait(TIMEOUT):
            raise TimeoutError("the loop never released sample 0")
        return i


class HeldStream:
    """Iterable: worker 0's stream waits for ``go`` before its first item;
    worker ``k`` yields ``k, k + num_workers, ...`` below ``n``."""

    def __init__(self, go: corral.Event, n: int = 24) -> None:
        self.go, self.n = go, n

    def __iter__(self) -> Any:
        info = corral.get_worker_info()
        assert info is not None
        if info.id == 0 and not self.go.wait(TIMEOUT):
            raise TimeoutError("the loop never released stream 0")
        return iter(range(info.id, self.n, info.num_workers))


def _values(batch: Any) -> list[int]:
    return [int(v) for v in np.asarray(batch).ravel()]


@pytest.mark.parametrize("dataset", [HeldFirst, HeldStream])
def test_out_of_order_yields_later_batches_while_a_slow_one_waits(dataset: Any) -> None:
    go = corral.Event()
    loader = corral.DataLoader(dataset(go), batch_size=2, num_workers=2, in_order=False, timeout=TIMEOUT)
    assert loader.in_order is False
    got: list[list[int]] = []
    for batch in loader:
        got.append(_values(batch))
        if len(got) == 3:
            go.set()  # only now can the slow batch (sample 0's) complete
    assert [0, 1] not in got[:3] and [0, 2] not in got[:3], got
    assert sorted(v for b in got for v in b) == list(range(24)), "every sample once"


def test_in_order_is_the_default_and_keeps_sampler_order() -> None:
    go = corral.Event()
    go.set()
    loader = corral.DataLoader(HeldFirst(go), batch_size=2, num_workers=2)
    assert loader.in_order is True
    assert [_values(b) for b in loader] == [[i, i + 1] for i in range(0, 24, 2)]


def test_out_of_order_without_workers_is_ignored_as_torch() -> None:
    go = corral.Event()
    go.set()
    loader = corral.DataLoader(HeldFirst(go), batch_size=2, in_order=False)
    assert [_values(b) for b in loader] == [[i, i + 1] for i in range(0, 24, 2)]


def test_out_of_order_timeout_raises_as_torch() -> None:
    go = corral.Event()  # never set: sample 0's batch never completes
    loader = corral.DataLoader(HeldFirst(go, n=2), batch_size=2, num_workers=1, in_order=False, timeout=0.5)
    with pytest.raises(RuntimeError, match=r"DataLoader timed out after 0.5 seconds"):
        list(loader)
    go.set()


class RaisingStream:
    """Iterable: worker 1's stream raises ValueError at its first item."""

    def __iter__(self) -> Any:
        info = corral.get_worker_info()
        assert info is not None
        if info.id == 1:
            raise ValueError("stream 1 is broken")
        return iter(range(4))


def _context(e: BaseException) -> str:
    """What the user reads: the exception printed with its notes and the
    worker's traceback (its cause)."""
    return "".join(traceback.format_exception(e))


@pytest.mark.parametrize("in_order", [True, False])
def test_an_iterable_stream_error_has_torchs_context_and_the_workers_traceback(in_order: bool) -> None:
    loader = corral.DataLoader(RaisingStream(), batch_size=2, num_workers=2, in_order=in_order, timeout=TIMEOUT)
    with pytest.raises(ValueError, match="stream 1 is broken") as info:
        list(loader)
    assert "Caught ValueError in DataLoader worker process 1." in getattr(info.value, "__notes__", []), _context(
        info.value
    )
    cause = info.value.__cause__
    assert cause is not None and "__iter__" in str(cause), _context(info.value)


@pytest.mark.parametrize("in_order", [True, False])
def test_a_map_style_error_has_torchs_context_naming_the_worker_that_ran_it(in_order: bool) -> None:
    loader = corral.DataLoader(
        FailsAt(bad=5, n=8, error=ValueError), batch_size=2, num_workers=2, in_order=in_order, timeout=TIMEOUT
    )
    with pytest.raises(ValueError, match="sample 5 is broken") as info:
        list(loader)
    notes = getattr(info.value, "__notes__", [])
    assert any(n in (f"Caught ValueError in DataLoader worker process {w}." for w in (0, 1)) for n in notes), notes
    assert "__getitem__" in str(info.value.__cause__)
