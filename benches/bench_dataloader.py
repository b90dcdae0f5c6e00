"""corral.DataLoader against torch's DataLoader (or, without torch, a
``multiprocessing.Pool.imap`` loader written as a user writes it) and the
same loop with no workers, side by side in one run.

    python benches/bench_dataloader.py [--quick] [--markdown FILE]

Written as a user writes it: default arguments but ``batch_size`` and
``num_workers=2``; a map-style dataset whose ``__getitem__`` does the work;
the loop reads each batch's shape. Cases:

- small: 60,000 28x28 uint8 images, per-sample float conversion and flip
  in NumPy, batch 256 (samples/s over a whole epoch, workers started by
  the epoch as they are without ``persistent_workers``);
- large: 320 samples of 3x512x512 float32 (from uint8 images), batch 16
  (GB/s of batches received over an epoch);
- for both, the same loop with no workers: the dataset's own work
  (``__getitem__`` + collate) in one process. Two workers on two cores
  cannot beat twice that rate (and the parent's loop needs CPU too);
- for both, the CPU time of an epoch (medians): the main process's and
  its workers' (counted once they have exited, before the next epoch);
- first batch: seconds from making the loader to holding its first batch,
  in a fresh interpreter per measure, for the start methods fork and
  forkserver (small dataset);
- second epoch with ``persistent_workers=True``: seconds to the first batch
  of epoch 2;
- parent RSS: peak resident memory of the parent over a large-sample
  epoch whose loop reads every batch (``batch.sum()``), minus its resident
  memory before the loader (fresh interpreter).

The fresh-interpreter measures import both loaders' modules before the
clock starts (torch's comes with ``import torch``; ``corral.DataLoader`` is
imported on first use).

The implementations take turns, round after round; each reports the
median of its rounds (range in brackets).
"""

import argparse
import faulthandler
import gc
import importlib.util
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

import corral
from _report import emit, heading, table

HAS_TORCH = importlib.util.find_spec("torch") is not None
if HAS_TORCH:
    import torch
    import torch.utils.data


class Digits:
    """60,000 28x28 uint8 images; a sample is the image as float32 in
    [0, 1], flipped left-right, and its label."""

    def __init__(self, n: int = 60_000) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        self.labels = rng.integers(0, 10, size=n)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        img = self.images[i].astype(np.float32) / 255.0
        return img[:, ::-1].copy(), int(self.labels[i])


class Photos:
    """320 3x512x512 uint8 images; a sample is the image as float32 (3 MiB)."""

    def __init__(self, n: int = 320) -> None:
        rng = np.random.default_rng(1)
        self.images = rng.integers(0, 256, size=(n, 3, 512, 512), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.images[i].astype(np.float32) / 255.0


# --------------------------------------------------------- the peer without torch

_mp_dataset: Any = None


def _mp_batch(indices: list[int]) -> Any:
    samples = [_mp_dataset[i] for i in indices]
    if isinstance(samples[0], tuple):
        return np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])
    return np.stack(samples)


def mp_loader(dataset: Any, batch_size: int, method: str | None = None) -> Iterable[Any]:
    """A multiprocessing.Pool.imap loader as a user writes it (the dataset
    a global the forked workers inherit; each epoch its own pool)."""
    global _mp_dataset
    _mp_dataset = dataset
    batches = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        yield from pool.imap(_mp_batch, batches)


# --------------------------------------------------------- the loaders


def loaders(
    dataset: Any, batch_size: int, method: str | None = None, **kw: Any
) -> dict[str, Callable[[], Iterable[Any]]]:
    """Name -> a function that makes one epoch's loader."""
    out: dict[str, Callable[[], Iterable[Any]]] = {
        "corral.DataLoader": lambda: corral.DataLoader(
            dataset, batch_size=batch_size, num_workers=2, multiprocessing_context=method, **kw
        ),
    }
    if HAS_TORCH:
        out["torch DataLoader"] = lambda: torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=2, multiprocessing_context=method, **kw
        )
    else:
        out["multiprocessing.Pool.imap"] = lambda: mp_loader(dataset, batch_size, method)
    return out


def shape_of(batch: Any) -> Any:
    return (batch[0] if isinstance(batch, (list, tuple)) else batch).shape


def children() -> set[int]:
    """This process's child processes now."""
    kids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                kids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return kids


def children_cpu() -> float:
    """CPU seconds of this process's exited (reaped) children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def epoch(make: Callable[[], Iterable[Any]]) -> tuple[float, float, float]:
    """One epoch: its seconds, the main process's CPU seconds and its
    workers' (once they have exited: at most 10 s more, not timed)."""
    before = children()
    ch0, c0 = children_cpu(), time.process_time()
    t0 = time.perf_counter()
    for batch in make():
        shape_of(batch)
        del batch
    t = time.perf_counter() - t0
    cpu = time.process_time() - c0
    gc.collect()
    deadline = time.monotonic() + 10
    while children() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    return t, cpu, children_cpu() - ch0


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def throughput(rounds: int) -> tuple[list[tuple[str, str, str, str]], dict[str, float]]:
    rows = []
    headline: dict[str, float] = {}
    small, large = Digits(), Photos()
    cases = [
        ("small: 60k 28x28 images, batch 256, 2 workers", small, 256, "k samples/s", lambda t: len(small) / t / 1e3),
        (
            "large: 320 3x512x512 float32, batch 16, 2 workers",
            large,
            16,
            "GB/s",
            lambda t: len(large) * 3 * 512 * 512 * 4 / t / 1e9,
        ),
    ]
    for case, ds, bs, unit, rate in cases:
        impls = loaders(ds, bs)
        # The dataset's own work (__getitem__ + collate) in this process:
        # 2 workers on 2 cores cannot beat twice this rate (the ceiling).
        impls["no workers (the same loop in this process)"] = lambda ds=ds, bs=bs: corral.DataLoader(ds, batch_size=bs)
        for make in impls.values():  # warm-up
            epoch(make)
        times: dict[str, list[float]] = {n: [] for n in impls}
        cpus: dict[str, list[tuple[float, float]]] = {n: [] for n in impls}
        for _ in range(rounds):
            for name, make in impls.items():
                t, cpu, workers = epoch(make)
                times[name].append(t)
                cpus[name].append((cpu, workers))
        mine = rate(median(times["corral.DataLoader"]))
        for name in impls:
            r = rate(median(times[name]))
            lo, hi = rate(max(times[name])), rate(min(times[name]))
            main_ms = median([c for c, _ in cpus[name]]) * 1e3
            workers_ms = median([w for _, w in cpus[name]]) * 1e3
            cpu = f"CPU/epoch {main_ms:.0f} ms main + {workers_ms:.0f} ms workers"
            headline[f"{case.split(':')[0]}/{name}"] = r
            rows.append((case, name, f"{r:.2f} {unit} ({lo:.2f}-{hi:.2f}); {cpu}", f"{mine / r:.2f}x"))
    return rows, headline


# --------------------------------------------------------- fresh-interpreter measures

_PROBE = r"""
import json, os, sys, time
sys.path.insert(0, {here!r})
what, name, method = sys.argv[1], sys.argv[2], sys.argv[3]
if {torch!r}:
    import torch
import numpy as np
import bench_dataloader as b
import corral.dataloader  # both loaders' modules loaded before the clock (torch's by import torch)
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
if what == "first":
    ds = b.Digits()
    t0 = time.perf_counter()
    it = iter(b.loaders(ds, 256, method)[name]())
    next(it)
    print(json.dumps(time.perf_counter() - t0), flush=True)
    del it
elif what == "second":
    ds = b.Digits()
    loader = b.loaders(ds, 256, method, persistent_workers=True)[name]()
    for batch in loader:
        pass
    t0 = time.perf_counter()
    next(iter(loader))
    print(json.dumps(time.perf_counter() - t0), flush=True)
    del loader
elif what == "rss":
    ds = b.Photos()
    before = rss()
    peak = before
    for batch in b.loaders(ds, 16, method)[name]():
        float(batch.sum())  # the loop reads the batch
        peak = max(peak, rss())
        del batch
    print(json.dumps(peak - before), flush=True)
"""


def probe(what: str, name: str, method: str) -> float:
    """One measure in a fresh interpreter, in its own process group (killed
    afterwards: a peer's worker or server left behind cannot hold the run)."""
    code = _PROBE.format(here=os.path.dirname(os.path.abspath(__file__)), torch=HAS_TORCH)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, what, name, method], stdout=out, stderr=err, start_new_session=True
        )
        try:
            rc = proc.wait(300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        err.seek(0)
        text = out.read()
        if rc != 0 or not text.strip():
            raise RuntimeError(f"{what} {name} {method}: {err.read()[-2000:]}")
    return float(json.loads(text.strip().splitlines()[-1]))


def fresh(rounds: int) -> list[tuple[str, str, str, str]]:
    rows = []
    names = list(loaders(None, 1))
    measures = [
        ("first batch, fork (small)", "first", "fork", "s"),
        ("first batch, forkserver (small)", "first", "forkserver", "s"),
        ("second epoch's first batch, persistent_workers (small)", "second", "fork", "s"),
        ("parent RSS over an epoch (large, prefetch 2)", "rss", "fork", "MB"),
    ]
    for case, what, method, unit in measures:
        got: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(rounds):
            for n in names:
                got[n].append(probe(what, n, method))
        mine = median(got["corral.DataLoader"])
        for n in names:
            m = median(got[n])
            if unit == "MB":
                result = f"{m / 1e6:.0f} MB ({min(got[n]) / 1e6:.0f}-{max(got[n]) / 1e6:.0f})"
            else:
                result = f"{m * 1e3:.0f} ms ({min(got[n]) * 1e3:.0f}-{max(got[n]) * 1e3:.0f})"
            # lower is better: the ratio says how many times less corral takes
            rows.append((case, n, result, f"{m / mine:.2f}x" if mine > 0 else "-"))
    return rows


def main() -> None:
    """Runs every case and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--markdown", metavar="FILE", help="append the results to FILE")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(1800, exit=True)
    rounds = 3 if args.quick else 5
    rows, _ = throughput(rounds)
    rows += fresh(3 if args.quick else 5)
    peer = "torch's DataLoader" if HAS_TORCH else "a multiprocessing.Pool.imap loader (torch is not installed)"
    lines = [
        heading("DataLoader"),
        "",
        f"- {os.cpu_count()} cores; corral.DataLoader against {peer}, default arguments but "
        "batch_size and num_workers=2, start method fork unless the row says; "
        f"{rounds} rounds taking turns, median (range of the rounds).",
        "- Throughput rows: 'corral vs this' is how many times faster corral is. First-batch, second-epoch "
        "and RSS rows (fresh interpreter each): how many times less corral takes (above 1: corral is better).",
        "",
        *table(rows),
    ]
    emit(lines, args.markdown)


if __name__ == "__main__":
    main()
