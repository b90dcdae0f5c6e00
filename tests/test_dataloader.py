"""corral.DataLoader: torch's DataLoader semantics (argument errors, order,
batching, seeding, worker info, iterable datasets), crash isolation (a
killed worker costs its batch a retry, an error re-raises at its position),
timeouts, no leaks over epochs, batches received without a copy. NumPy
only; the comparison with torch's own DataLoader runs in a subprocess when
torch is importable (so this process never imports torch: the other tests
see numpy batches)."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import OrderedDict, namedtuple
from collections.abc import Mapping
from typing import Any

import pytest

import corral
from _datasets import FailsAt
from corral.dataloader import WorkerInfo, default_collate

np = pytest.importorskip("numpy")

TIMEOUT = 60
HERE = os.path.dirname(os.path.abspath(__file__))
Pair = namedtuple("Pair", "x y")


class Squares:
    """A map-style dataset: sample i is (float32 array of 3 values, i)."""

    def __init__(self, n: int = 50) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return np.full(3, i * i, dtype=np.float32), i


class WhoLoads:
    """Sample i says which process and worker loaded it and what the
    worker's random generators drew."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> Any:
        import random

        info = corral.get_worker_info()
        return {
            "pid": os.getpid(),
            "id": -1 if info is None else info.id,
            "seed": -1 if info is None else info.seed % 2**31,
            "random": random.random(),
            "numpy": float(np.random.random()),
            "init": _INIT.get("id", -1),
        }


_INIT: dict[str, int] = {}


def record_init(worker: int) -> None:
    _INIT["id"] = worker


class KillsOnce:
    """Loading sample ``bad`` the first time SIGKILLs the worker (a marker
    file says it happened)."""

    def __init__(self, bad: int, marker: str, n: int = 40) -> None:
        self.bad, self.marker, self.n = bad, marker, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == self.bad and not os.path.exists(self.marker):
            with open(self.marker, "w"):
                pass
            os.kill(os.getpid(), signal.SIGKILL)
        return i


class Blocks:
    """Sample 0 blocks on an event nobody sets."""

    def __init__(self) -> None:
        self.never = corral.Event()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        if i == 0:
            self.never.wait(TIMEOUT)
        return i


class Stream:
    """An iterable dataset of 0..n-1 that its workers split by
    ``get_worker_info``; ``bad``: the item that raises, ``kill``: the item
    at which the worker SIGKILLs itself."""

    def __init__(self, n: int = 23, bad: int = -1, kill: int = -1) -> None:
        self.n, self.bad, self.kill = n, bad, kill

    def __iter__(self) -> Any:
        info = corral.get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(start, self.n, step):
            if i == self.bad:
                raise ValueError(f"item {i} is broken")
            if i == self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            yield i


class Big:
    """Samples of 1 MiB: a batch of 4 is born in the worker's shared memory."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> Any:
        return np.full((256, 1024), i, dtype=np.float32)


def flat(batches: list[Any]) -> list[int]:
    return [int(v) for b in batches for v in np.asarray(b).ravel()]


# ------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"batch_sampler": [[0]], "batch_size": 2}, "mutually exclusive"),
        ({"batch_sampler": [[0]], "shuffle": True}, "mutually exclusive"),
        ({"batch_sampler": [[0]], "sampler": [0]}, "mutually exclusive"),
        ({"batch_sampler": [[0]], "drop_last": True}, "mutually exclusive"),
        ({"sampler": [0], "shuffle": True}, "mutually exclusive"),
        ({"prefetch_factor": 2}, "prefetch_factor option could only be specified in multiprocessing"),
        ({"persistent_workers": True}, "persistent_workers option needs num_workers > 0"),
        ({"num_workers": -1}, "num_workers option should be non-negative"),
        ({"timeout": -1}, "timeout option should be non-negative"),
        ({"batch_size": None, "drop_last": True}, "mutually exclusive with drop_last"),
        ({"batch_size": 0}, "batch_size should be a positive integer"),
        ({"num_workers": 1, "multiprocessing_context": "thread"}, "valid start method"),
        ({"seed": 1, "generator": np.random.default_rng(1)}, "not both"),
    ],
)
def test_argument_errors_are_torchs(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        corral.DataLoader(Squares(), **kwargs)


def test_an_iterable_dataset_refuses_shuffle_and_samplers() -> None:
    for kwargs in ({"shuffle": True}, {"sampler": [0]}, {"batch_sampler": [[0]]}):
        with pytest.raises(ValueError, match="IterableDataset: expected unspecified"):
            corral.DataLoader(Stream(), **kwargs)


def test_progress_draws_a_bar_over_the_batches() -> None:
    pytest.importorskip("tqdm", reason="progress= needs tqdm (pip install tqdm)")
    import io

    out = io.StringIO()
    batches = list(corral.DataLoader(Squares(50), batch_size=8, num_workers=2, progress={"file": out}))
    assert len(batches) == 7
    assert "7/7" in out.getvalue()


def test_progress_of_a_wrong_type_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match="progress"):
        corral.DataLoader(Squares(), progress=3)  # type: ignore[arg-type]


# ------------------------------------------------------------ map-style


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_in_sampler_order_and_twice(workers: int) -> None:
    loader = corral.DataLoader(Squares(50), batch_size=8, num_workers=workers)
    assert len(loader) == 7
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 7
        xs, idx = batches[0]
        assert xs.shape == (8, 3) and xs.dtype == np.float32 and idx.dtype == np.int64
        assert [int(i) for _, b in batches for i in b] == list(range(50))
        assert np.array_equal(np.concatenate([x for x, _ in batches])[:, 0], np.arange(50) ** 2)


def test_drop_last_batch_sampler_and_no_batching() -> None:
    assert len(corral.DataLoader(Squares(50), batch_size=8, drop_last=True)) == 6
    assert [b.tolist() for _, b in corral.DataLoader(Squares(50), batch_size=8, drop_last=True, num_workers=2)][
        -1
    ] == list(range(40, 48))
    loader = corral.DataLoader(Squares(10), batch_sampler=[[3, 1], [9], [0, 0, 2]], num_workers=2)
    assert len(loader) == 3
    assert [b.tolist() for _, b in loader] == [[3, 1], [9], [0, 0, 2]]
    single = list(corral.DataLoader(Squares(5), batch_size=None, num_workers=2))
    assert [i for _, i in single] == [0, 1, 2, 3, 4]
    assert single[2][0].shape == (3,)
    custom = list(
        corral.DataLoader(Squares(6), batch_size=4, sampler=[5, 4, 3], collate_fn=lambda s: [i for _, i in s])
    )
    assert custom == [[5, 4, 3]]


def test_shuffle_with_a_seed_is_reproducible_and_differs_per_epoch() -> None:
    def order(loader: corral.DataLoader) -> list[int]:
        return [int(i) for _, b in loader for i in b]

    a = corral.DataLoader(Squares(40), batch_size=5, shuffle=True, seed=7, num_workers=2)
    b = corral.DataLoader(Squares(40), batch_size=5, shuffle=True, seed=7)
    first, again = order(a), order(a)
    assert sorted(first) == list(range(40)) and first != list(range(40))
    assert first != again, "a new order each epoch"
    assert order(b) == first and order(b) == again
    gen = corral.DataLoader(Squares(40), batch_size=5, shuffle=True, generator=np.random.default_rng(3))
    assert sorted(order(gen)) == list(range(40))


def test_default_collate_of_structures() -> None:
    batch = default_collate([{"a": Pair(1, 2.5), "b": [np.zeros(2), "s"]}, {"a": Pair(3, 4.5), "b": [np.ones(2), "t"]}])
    assert isinstance(batch["a"], Pair)
    assert batch["a"].x.tolist() == [1, 3] and batch["a"].x.dtype == np.int64
    assert batch["a"].y.dtype == np.float64
    assert batch["b"][0].shape == (2, 2) and batch["b"][1] == ["s", "t"]
    assert default_collate([(1, True), (2, False)])[1].dtype == np.bool_
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [3]])
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(TypeError, match="default_collate"):
        default_collate([object()])


class Record(dict):  # type: ignore[type-arg]
    """A dict subclass a user's dataset returns."""


class Frozen(Mapping):  # type: ignore[type-arg]
    """A read-only mapping that is built from a dict."""

    def __init__(self, d: dict[str, Any]) -> None:
        self._d = dict(d)

    def __getitem__(self, k: str) -> Any:
        return self._d[k]

    def __iter__(self) -> Any:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


class Mappings:
    def __init__(self, kind: type) -> None:
        self.kind = kind

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        return self.kind({"x": np.full(2, i), "y": i})


@pytest.mark.parametrize("kind", [OrderedDict, Record, Frozen])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_batch_of_mappings_keeps_their_type_as_torchs(kind: type, workers: int) -> None:
    # torch's default_collate and default_convert rebuild a mapping as its
    # own type (a mutable one copied and updated); the worker's conversion
    # turned every mapping into a plain dict.
    batches = list(corral.DataLoader(Mappings(kind), batch_size=2, num_workers=workers))
    assert [type(b) for b in batches] == [kind, kind]
    assert batches[1]["x"].tolist() == [[2, 2], [3, 3]] and batches[1]["y"].tolist() == [2, 3]


# ------------------------------------------------------------ workers


def test_worker_info_seeds_and_worker_init_fn() -> None:
    assert corral.get_worker_info() is None
    loader = corral.DataLoader(WhoLoads(), batch_size=2, num_workers=2, worker_init_fn=record_init, seed=11)
    batches = list(loader)
    ids = {int(i) for b in batches for i in b["id"]}
    assert ids <= {0, 1} and ids
    pids = {int(p) for b in batches for p in b["pid"]}
    assert os.getpid() not in pids
    for b in batches:
        assert b["init"].tolist() == b["id"].tolist(), "worker_init_fn ran with the worker's id"
    seeds = {int(i): int(s) for b in batches for i, s in zip(b["id"], b["seed"], strict=True)}
    if len(seeds) == 2:
        assert (seeds[1] - seeds[0]) % 2**31 == 1, "seed = base seed + id"
    assert isinstance(WorkerInfo(0, 1, 0, None), WorkerInfo)


def test_worker_seeding_is_deterministic_from_the_seed() -> None:
    def draws(seed: int) -> list[float]:
        loader = corral.DataLoader(WhoLoads(), batch_size=4, num_workers=1, seed=seed)
        return [float(v) for b in loader for v in list(b["random"]) + list(b["numpy"])]

    a, b, c = draws(5), draws(5), draws(6)
    assert a == b
    assert a != c


def test_a_batch_that_raises_reraises_at_its_position_with_the_workers_traceback() -> None:
    seen: list[int] = []
    loader = corral.DataLoader(FailsAt(bad=13), batch_size=4, num_workers=2)
    with pytest.raises(KeyError, match="sample 13 is broken") as info:
        for b in loader:
            seen.extend(b.tolist())
    assert seen == list(range(12)), "the batches before the failing one arrive"
    chain = []
    e: BaseException | None = info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any("__getitem__" in s for s in chain), chain


def test_a_killed_worker_costs_its_batch_a_retry_not_the_epoch(tmp_path: Any) -> None:
    loader = corral.DataLoader(KillsOnce(bad=17, marker=str(tmp_path / "killed")), batch_size=4, num_workers=2)
    assert flat(list(loader)) == list(range(40))
    assert (tmp_path / "killed").exists()


def test_a_killed_worker_without_retries_raises_worker_lost(tmp_path: Any) -> None:
    loader = corral.DataLoader(KillsOnce(bad=5, marker=str(tmp_path / "k")), batch_size=4, num_workers=2, retries=0)
    with pytest.raises(corral.WorkerLostError):
        list(loader)


def test_timeout_raises_as_torch_and_the_workers_go() -> None:
    loader = corral.DataLoader(Blocks(), batch_size=1, num_workers=1, timeout=0.5)
    with pytest.raises(RuntimeError, match=r"DataLoader timed out after 0.5 seconds"):
        list(loader)


def test_persistent_workers_are_kept_across_epochs() -> None:
    def pids(loader: corral.DataLoader) -> set[int]:
        return {int(p) for b in loader for p in b["pid"]}

    before = _children()
    kept = corral.DataLoader(WhoLoads(), batch_size=2, num_workers=2, persistent_workers=True)
    first = pids(kept)
    # The loader's workers (forked: the default start method here). Not
    # ``first``: on a busy machine one worker may load every batch of an
    # epoch, and the other one the next epoch's.
    workers = _children() - before
    assert first <= workers, (first, workers)
    assert pids(kept) <= workers, "the same workers serve the second epoch"
    kept.shutdown()
    fresh = corral.DataLoader(WhoLoads(), batch_size=2, num_workers=2)
    assert pids(fresh).isdisjoint(pids(fresh)), "without persistent_workers each epoch starts new ones"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_every_start_method_loads(method: str) -> None:
    loader = corral.DataLoader(Squares(20), batch_size=6, num_workers=2, multiprocessing_context=method)
    assert [int(i) for _, b in loader for i in b] == list(range(20))


def test_a_large_batch_is_received_without_a_copy() -> None:
    # A batch of 4 MiB is born in the worker's arena: the parent's array
    # views a shared-memory block (its base is no NumPy array).
    batches = list(corral.DataLoader(Big(), batch_size=4, num_workers=2))
    assert [int(b[0, 0, 0]) for b in batches] == [0, 4]
    for b in batches:
        assert not b.flags.owndata
        base = b
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        assert not isinstance(base, (np.ndarray, bytes)), type(base)


class Small:
    """28x28 float32 samples (3 KiB): a batch of 256 is 784 KiB, below the
    size from which a worker's arrays are born in shared memory. Each
    sample carries how many arrays its worker had sent without a copy."""

    def __len__(self) -> int:
        return 1024

    def __getitem__(self, i: int) -> Any:
        from corral import _core

        return np.full((28, 28), i, dtype=np.float32), _core.array_arena_stats().sent


def test_a_small_batch_is_born_in_shared_memory_and_sent_without_a_copy() -> None:
    # The default collate's batch of 784 KiB is made in the worker's result
    # arena (it was copied into it at send: ~60 us of a ~1 ms batch): the
    # worker's count of arrays sent without a copy grows by one per batch.
    batches = list(corral.DataLoader(Small(), batch_size=256, num_workers=1))
    assert [int(x[0, 0, 0]) for x, _ in batches] == [0, 256, 512, 768]
    assert [int(sent[0]) for _, sent in batches] == [0, 1, 2, 3]
    # In this process (no allocator installed) the collate is plain NumPy.
    x, _ = default_collate([Small()[i] for i in range(2)])
    assert x.flags.owndata and x.shape == (2, 28, 28)


def _holds_exit_until(release: Any, worker: int) -> None:
    # A non-daemon thread: a forked worker joins it before it exits.
    threading.Thread(target=release.wait, args=(TIMEOUT,)).start()


def test_an_epoch_ends_without_waiting_for_its_workers_to_exit(no_workers_yet: None) -> None:
    # The workers of an ended epoch leave while the loop goes on (the
    # epoch waited for their exit: 4-7 ms of both cores idle per epoch);
    # they are reaped all the same. Without the change the loop waits
    # until ``release`` is set by the guard timer, and no worker is left.
    import functools

    release = corral.Event()
    guard = threading.Timer(TIMEOUT / 2, release.set)
    guard.start()
    try:
        loader = corral.DataLoader(
            Squares(8), batch_size=4, num_workers=2, worker_init_fn=functools.partial(_holds_exit_until, release)
        )
        assert len(list(loader)) == 2
        assert not release.is_set() and _workers(), "the epoch waited for its workers to exit"
    finally:
        release.set()
        guard.cancel()
    assert _settled({"children": 0})["children"] == 0


# ------------------------------------------------------------ iterable


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_an_iterable_dataset_split_by_worker_info_yields_each_item_once(workers: int) -> None:
    loader = corral.DataLoader(Stream(23), batch_size=3, num_workers=workers)
    batches = [b.tolist() for b in loader]
    assert sorted(i for b in batches for i in b) == list(range(23))
    if workers == 2:
        # round-robin over the workers' streams, as torch
        assert batches[:4] == [[0, 2, 4], [1, 3, 5], [6, 8, 10], [7, 9, 11]]


def test_an_iterable_dataset_error_and_dead_worker() -> None:
    with pytest.raises(ValueError, match="item 9 is broken"):
        list(corral.DataLoader(Stream(23, bad=9), batch_size=2, num_workers=2))
    with pytest.raises(corral.WorkerLostError, match="position is lost"):
        list(corral.DataLoader(Stream(23, kill=9), batch_size=2, num_workers=2))


# ------------------------------------------------------------ shutdown and leaks


def _children() -> set[int]:
    me = str(os.getpid())
    kids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rfind(")") + 2 :].split()
            if fields[1] == me and fields[0] not in "ZX":
                kids.add(int(name))
    return kids


#: Children that are not a loader's workers (a fork server an earlier test started).
_OTHERS: set[int] = set()


def _workers() -> set[int]:
    return _children() - _OTHERS


def _counts() -> dict[str, int]:
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": len(os.listdir("/proc/self/task")),
        "children": len(_workers()),
    }


@pytest.fixture
def no_workers_yet() -> None:
    """Notes the children alive before the test (none of them its workers)."""
    _OTHERS.clear()
    _OTHERS.update(_children())


def _settled(target: dict[str, int]) -> dict[str, int]:
    from _helpers import wait_until

    now: dict[str, int] = {}

    def flat() -> bool:
        gc.collect()
        now.update(_counts())
        return all(now[k] <= target[k] for k in target)

    wait_until(flat, TIMEOUT)
    return now


def test_fds_threads_and_processes_stay_flat_over_epochs_and_breaks(no_workers_yet: None) -> None:
    loader = corral.DataLoader(Squares(64), batch_size=4, num_workers=2)
    for _ in range(2):
        list(loader)
    before = _settled({"fds": 10**6, "threads": 10**6, "children": 0})
    for epoch in range(12):
        for i, _batch in enumerate(loader):
            if epoch % 3 == 2 and i == 2:
                break  # leaving mid-epoch stops its workers too
    after = _settled(before)
    assert after["children"] == 0, after
    assert after["fds"] <= before["fds"] + 2, (before, after)
    assert after["threads"] <= before["threads"] + 1, (before, after)


def test_dropping_a_loader_with_persistent_workers_stops_them(no_workers_yet: None) -> None:
    loader = corral.DataLoader(Squares(16), batch_size=4, num_workers=2, persistent_workers=True)
    list(loader)
    assert _workers()
    del loader
    assert _settled({"children": 0})["children"] == 0


def test_ctrl_c_in_the_loop_stops_the_workers(no_workers_yet: None) -> None:
    loader = corral.DataLoader(Blocks(), batch_size=1, num_workers=2)
    timer = threading.Timer(0.5, lambda: signal.raise_signal(signal.SIGINT))
    it = iter(loader)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(it)
    finally:
        timer.cancel()
    del it
    assert _settled({"children": 0})["children"] == 0


# ------------------------------------------------------------ torch


_TORCH_CHECKS = textwrap.dedent(
    """
    import torch, numpy as np, corral
    from torch.utils.data import DataLoader as TorchLoader, IterableDataset

    class DS(torch.utils.data.Dataset):
        def __len__(self): return 37
        def __getitem__(self, i): return {"x": torch.full((2, 3), float(i)), "n": np.int64(i), "f": i * 0.5}

    class It(IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info() or corral.get_worker_info()
            start, step = (0, 1) if info is None else (info.id, info.num_workers)
            return iter(range(start, 21, step))

    def same(a, b):
        assert type(a) is type(b), (type(a), type(b))
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (a, b)
        elif isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a: same(a[k], b[k])
        else:
            assert a == b

    if __name__ == "__main__":
        for workers in (0, 2):
            for kw in ({"batch_size": 5}, {"batch_size": 5, "drop_last": True}, {"batch_size": None}):
                ours = list(corral.DataLoader(DS(), num_workers=workers, **kw))
                theirs = list(TorchLoader(DS(), num_workers=workers, **kw))
                assert len(ours) == len(theirs)
                for a, b in zip(ours, theirs): same(a, b)
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        ours = [b["n"].tolist() for b in corral.DataLoader(DS(), batch_size=4, shuffle=True, generator=g1)]
        theirs = [b["n"].tolist() for b in TorchLoader(DS(), batch_size=4, shuffle=True, generator=g2)]
        assert ours == theirs, (ours, theirs)
        ours = [b.tolist() for b in corral.DataLoader(It(), batch_size=3, num_workers=2)]
        theirs = [b.tolist() for b in TorchLoader(It(), batch_size=3, num_workers=2)]
        assert ours == theirs, (ours, theirs)
        for kw in ({"shuffle": True}, {"sampler": [0]}):
            for cls in (corral.DataLoader, TorchLoader):
                try:
                    cls(It(), **kw)
                except ValueError:
                    pass
                else:
                    raise AssertionError((cls, kw))
        big = next(iter(corral.DataLoader(DS(), batch_size=4, num_workers=1, collate_fn=None)))
        assert isinstance(big["x"], torch.Tensor)
        print("torch checks passed")
    """
)


def test_semantics_match_torchs_dataloader(tmp_path: Any) -> None:
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            pytest.skip("torch is not installed (pip install torch): the comparison with its DataLoader needs it")
    except ValueError:
        pytest.skip("torch cannot be found")
    script = tmp_path / "torch_checks.py"
    script.write_text(_TORCH_CHECKS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    assert "torch checks passed" in done.stdout


# ------------------------------------------------------------ probe findings (s21)


def _run(tmp_path: Any, code: str, *args: str, timeout: float = 120) -> "subprocess.CompletedProcess[str]":
    """Runs ``code`` as a script in a fresh interpreter (a hang costs the
    test ``timeout`` seconds, never the suite)."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        return subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the script hung past {timeout} s: {e.stdout!r} {e.stderr!r}") from None


_NUMPY_RANDOM_BEFORE_THE_WORKERS = """
    import sys, numpy, corral

    class D:
        def __len__(self): return 4
        def __getitem__(self, i): return numpy.full(2, i)

    if __name__ == "__main__":
        assert "numpy.random" not in sys.modules  # NumPy 2 loads it on first use
        batches = [b.tolist() for b in corral.DataLoader(D(), batch_size=2, num_workers=2)]
        assert batches == [[[0, 0], [1, 1]], [[2, 2], [3, 3]]], batches
        assert "numpy.random" in sys.modules
        print("done", flush=True)
"""


def test_numpy_random_is_loaded_once_before_the_workers_fork(tmp_path: Any) -> None:
    # Each worker's seeding loaded numpy.random for itself, every epoch:
    # 20-60 ms of CPU per worker before its first batch, when the program
    # had not used np.random before the loop (first batch 44-102 ms -> 16-47).
    done = _run(tmp_path, _NUMPY_RANDOM_BEFORE_THE_WORKERS)
    assert done.returncode == 0 and "done" in done.stdout, done.stdout + done.stderr[-3000:]


_BREAK_PERSISTENT_STREAM = """
    import sys, corral

    class S:
        def __iter__(self):
            info = corral.get_worker_info()
            return iter(range(info.id, 1000, info.num_workers))

    if __name__ == "__main__":
        dl = corral.DataLoader(S(), batch_size=4, num_workers=2, persistent_workers=True,
                               multiprocessing_context=sys.argv[1], timeout=30)
        for i, b in enumerate(dl):
            if i == 1:
                break
        print("second epoch", sum(1 for _ in dl), flush=True)
        try:
            for i, b in enumerate(dl):
                if i == 2:
                    raise ValueError("loss is NaN")
        except ValueError:
            pass
        for i, b in enumerate(dl):
            if i == 3:
                break
        dl.shutdown()
        print("shut down", flush=True)
        for i, b in enumerate(corral.DataLoader(S(), batch_size=4, num_workers=2, persistent_workers=True,
                                                multiprocessing_context=sys.argv[1])):
            if i == 3:
                break
        # the interpreter exits with that loader's streams abandoned
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_breaking_out_of_a_persistent_iterable_epoch_stops_its_streams(tmp_path: Any, method: str) -> None:
    # F2/F7: the abandoned streams blocked in put() on their full queue:
    # the next epoch timed out, shutdown() and (forkserver) exit hung.
    done = _run(tmp_path, _BREAK_PERSISTENT_STREAM, method, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "second epoch 250" in done.stdout and "shut down" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_two_iterators_of_one_loader_are_independent(workers: int, persistent: bool) -> None:
    # F1: a second iter(loader) silently ended the first (zip(dl, dl) gave 0 pairs; torch 5).
    if persistent and not workers:
        pytest.skip("persistent_workers needs workers")
    dl = corral.DataLoader(list(range(10)), batch_size=2, num_workers=workers, persistent_workers=persistent)
    pairs = [(a.tolist(), b.tolist()) for a, b in zip(dl, dl, strict=True)]
    assert pairs == [([i, i + 1], [i, i + 1]) for i in range(0, 10, 2)]
    it1 = iter(dl)
    next(it1)
    it2 = iter(dl)
    assert flat(list(it1)) == list(range(2, 10))
    assert flat(list(it2)) == list(range(10))
    dl.shutdown()


def test_a_superseded_persistent_stream_epoch_raises_instead_of_ending_short() -> None:
    # F1, iterable + persistent_workers: the workers serve one epoch at a
    # time; the older iterator says so rather than stopping early.
    dl = corral.DataLoader(Stream(23), batch_size=3, num_workers=2, persistent_workers=True, timeout=TIMEOUT)
    it1 = iter(dl)
    next(it1)
    it2 = iter(dl)
    with pytest.raises(RuntimeError, match="ended by a newer iter"):
        next(it1)
    assert sorted(i for b in it2 for i in b.tolist()) == list(range(23))
    done = iter(dl)
    list(done)
    iter(dl)
    with pytest.raises(StopIteration):
        next(done)  # a finished epoch stays finished
    dl.shutdown()


class Augments:
    """Each sample draws from random and NumPy's global generator, as a
    random augmentation does."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> Any:
        import random

        return np.float64(i + random.random() + float(np.random.random()))


def test_a_seed_reproduces_per_sample_random_draws_whichever_worker_loads() -> None:
    # F5: batches go to whichever worker is free, so the draws depended on
    # scheduling (0-1 of 5 runs identical); now each batch seeds itself.
    def epoch(**kw: Any) -> list[list[float]]:
        return [b.tolist() for b in corral.DataLoader(Augments(), batch_size=4, seed=0, **kw)]

    first = epoch(num_workers=2)
    assert all(epoch(num_workers=2) == first for _ in range(3))
    assert epoch(num_workers=3) == first, "the worker count does not change the data either"
    assert epoch(num_workers=1, persistent_workers=True) == first
    assert len({round(v - int(v), 12) for b in first for v in b}) == 64, "every sample draws differently"


class Exits:
    """Sample 5 calls sys.exit(3) (a CLI helper inside dataset code)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        if i == 5:
            sys.exit(3)
        return i


class ExitingStream:
    def __iter__(self) -> Any:
        yield 1
        raise KeyboardInterrupt


def test_sys_exit_in_a_worker_raises_a_runtime_error_not_the_parents_exit() -> None:
    # F9: the SystemExit came back as such and ended the training process
    # silently with status 3 (torch: RuntimeError "worker exited unexpectedly").
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid \d+\) exited unexpectedly") as info:
        list(corral.DataLoader(Exits(), batch_size=None, num_workers=2))
    assert "sys.exit(3)" in str(info.value.__cause__), "the worker's traceback comes along"
    with pytest.raises(RuntimeError, match="exited unexpectedly.*KeyboardInterrupt"):
        list(corral.DataLoader(ExitingStream(), batch_size=None, num_workers=1))


@pytest.fixture
def torch_script(tmp_path: Any) -> Any:
    """Runs a script that uses torch in a fresh interpreter and checks that
    it printed "done" and exited 0 (skips when torch is not installed:
    this process never imports torch)."""
    import importlib.util

    try:
        if importlib.util.find_spec("torch") is None:
            pytest.skip("torch is not installed (pip install torch): this check runs torch in a subprocess")
    except ValueError:
        pytest.skip("torch cannot be found")

    def run(code: str, timeout: float) -> None:
        done = _run(tmp_path, code, timeout=timeout)
        assert done.returncode == 0 and "done" in done.stdout, done.stdout + done.stderr[-3000:]

    return run


_TORCH_OPS_AFTER_THE_PARENTS = """
    import torch, corral

    class D:
        def __len__(self): return 4
        def __getitem__(self, i):
            x = torch.randn(256, 256)
            return torch.tensor([float((x @ x).sum()), float(torch.get_num_threads())])

    if __name__ == "__main__":
        a = torch.randn(1000, 1000)
        a @ a  # the parent used torch's intra-op pool (a training step)
        for batch in corral.DataLoader(D(), batch_size=2, num_workers=2, multiprocessing_context="fork", timeout=30):
            assert batch[:, 1].tolist() == [1.0, 1.0], batch
        print("done", flush=True)
"""


_TORCH_WORKER_INFO = """
    import torch, corral
    from torch.utils.data import Dataset, IterableDataset, get_worker_info

    class Shards(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            k, n = (0, 1) if info is None else (info.id, info.num_workers)
            return iter(range(k, 12, n))

    class Who(Dataset):
        def __len__(self): return 6
        def __getitem__(self, i):
            theirs, ours = get_worker_info(), corral.get_worker_info()
            assert theirs.dataset is ours.dataset
            return [theirs.id, ours.id, theirs.num_workers, theirs.seed - ours.seed]

    if __name__ == "__main__":
        for method in ("fork", "spawn"):  # spawn: torch comes in with the dataset
            dl = corral.DataLoader(Shards(), batch_size=3, num_workers=2, multiprocessing_context=method,
                                   persistent_workers=True)
            items = [x for b in dl for x in b.tolist()]
            assert sorted(items) == list(range(12)), (method, items)
            dl.shutdown()
        for b in corral.DataLoader(Who(), batch_size=None, num_workers=2):
            assert b[0] == b[1] and b[2] == 2 and b[3] == 0, b
        assert get_worker_info() is None
        print("done", flush=True)
"""


_TORCH_DTYPES_AND_USER_COLLATE = """
    import torch, corral

    def where(t):
        for line in open("/proc/self/maps"):
            a, b = (int(x, 16) for x in line.split()[0].split("-"))
            if a <= t.data_ptr() < b:
                return " ".join(line.split()[5:]) or "anonymous"

    class T:
        def __len__(self): return 4
        def __getitem__(self, i):
            return torch.full((3,), float(i), dtype=torch.bfloat16), torch.full((2,), 1.0, dtype=torch.float8_e4m3fn)

    class Big:
        def __len__(self): return 8
        def __getitem__(self, i): return torch.full((512, 1024), float(i))

    def stack(s): return {"x": torch.stack(s)}

    if __name__ == "__main__":
        for workers in (0, 2):
            for bs in (2, None):
                ours = list(corral.DataLoader(T(), batch_size=bs, num_workers=workers))
                theirs = list(torch.utils.data.DataLoader(T(), batch_size=bs, num_workers=workers))
                assert len(ours) == len(theirs)
                for a, b in zip(ours, theirs):
                    assert type(a) is type(b) and len(a) == len(b), (a, b)
                    for x, y in zip(a, b):
                        assert x.dtype == y.dtype and torch.equal(x.float(), y.float()), (x, y)
        # F8: a tensor a collate_fn returns arrives in the queue's shared memory
        got = next(iter(corral.DataLoader(Big(), batch_size=4, num_workers=2, collate_fn=stack)))["x"]
        assert got[3, 0, 0] == 3.0 and "memfd:corral" in where(got), where(got)
        print("done", flush=True)
"""


_TORCH_MAPPINGS_KEEP_THEIR_TYPE = """
    import collections, torch, corral

    class Record(dict):
        pass

    class D:
        def __init__(self, kind): self.kind = kind
        def __len__(self): return 4
        def __getitem__(self, i): return self.kind(x=torch.full((2,), float(i)), y=i)

    if __name__ == "__main__":
        for kind in (collections.OrderedDict, Record):
            for workers in (0, 2):
                ours = list(corral.DataLoader(D(kind), batch_size=2, num_workers=workers))
                theirs = list(torch.utils.data.DataLoader(D(kind), batch_size=2, num_workers=workers))
                assert [type(b) for b in ours] == [type(b) for b in theirs] == [kind, kind], (ours, theirs)
                assert torch.equal(ours[1]["x"], theirs[1]["x"]) and ours[1]["y"].tolist() == [2, 3]
        print("done", flush=True)
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("script", "timeout"),
    [
        # F11: without torch.set_num_threads(1) in the worker (torch's worker
        # loop does it), a forked worker blocked for good in OpenMP.
        pytest.param(_TORCH_OPS_AFTER_THE_PARENTS, 120, id="fork_workers_run_torch_ops_after_the_parent_did"),
        # F12: torch.utils.data.get_worker_info() was None in corral's workers,
        # so a torch IterableDataset sharded the documented way read all twice.
        pytest.param(_TORCH_WORKER_INFO, 180, id="torchs_get_worker_info_agrees_in_the_workers"),
        # F10: Tensor.numpy() refuses bfloat16/float8: the default collate
        # raised TypeError (torch stacks them). F8: re-test with the torch
        # transport merged: a collate_fn's tensor is not copied into private memory.
        pytest.param(
            _TORCH_DTYPES_AND_USER_COLLATE, 180, id="bfloat16_float8_collate_as_torch_user_tensors_travel_shared"
        ),
        # Stop 23's review: the parent's conversion to tensors made every
        # mapping a plain dict (torch keeps an OrderedDict or a dict subclass).
        pytest.param(_TORCH_MAPPINGS_KEEP_THEIR_TYPE, 120, id="mappings_keep_their_type_with_torch"),
    ],
)
def test_torch_in_a_subprocess(torch_script: Any, script: str, timeout: float) -> None:
    torch_script(script, timeout)


@pytest.mark.parametrize("workers", [0, 2])
def test_no_batching_turns_a_tuple_sample_into_a_list_as_torch(workers: int) -> None:
    # F6: batch_size=None yielded tuple samples as tuples (torch's default_convert: lists).
    ds = [(i, float(i)) for i in range(3)]
    assert list(corral.DataLoader(ds, batch_size=None, num_workers=workers)) == [[0, 0.0], [1, 1.0], [2, 2.0]]
    assert list(corral.DataLoader([Pair(1, 2)], batch_size=None, num_workers=workers)) == [Pair(1, 2)]


def test_the_default_collate_without_numpy_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # F3: numpy is no dependency of corral: a bare ModuleNotFoundError came out of the collate.
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ImportError, match="pip install numpy"):
        next(iter(corral.DataLoader(list(range(10)), batch_size=2)))
    assert list(corral.DataLoader(list(range(4)), batch_size=2, collate_fn=list)) == [[0, 1], [2, 3]]
