"""torch CPU tensors through corral against torch.multiprocessing, side by
side in one run.

    python benches/bench_torch.py [--quick] [--markdown FILE]

Written as a user writes it, default arguments everywhere:

- Pool: a fresh 16 MB float32 tensor (``torch.rand(4_000_000)``) to a
  worker and back as ``t * 2``: ``corral.ProcessPoolExecutor().submit(double,
  t).result()`` against ``torch.multiprocessing.Pool().apply(double, (t,))``
  (its tensors travel as shared-memory files: the storage is copied into
  one, the receiver maps it), and corral with its tensor reducer turned off
  (torch's own pickling: the transport before this change, the A/B row).
  GB/s = 2 x 16 MB / seconds per call; the result is dropped before the next.
- Queue: a producer process puts fresh float32 tensors (one 3x224x224
  image, 602 KB; or 256 floats, 1 KB) into ``corral.Queue()`` /
  ``torch.multiprocessing.Queue()``; this process gets them. Timed from the
  producer's start signal to the last get; tensors/s and GB/s.

The implementations take turns, round after round; each reports the median
of its rounds (range after).
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
import corral._torch
from _report import emit, heading, table
from _torch_tasks import double, produce, without_reducer

N = 4_000_000  # float32: 16 MB
POOL_CASE = "16 MB float32 tensor to a worker and back (t * 2)"
QUEUE_CASES = {"image": ((3, 224, 224), 300), "small": ((256,), 3000)}


def pool_call(call: Callable[[Any], Any], torch: Any) -> float:
    """Seconds of one call on a fresh tensor, result dropped."""
    t = torch.rand(N)
    t0 = time.perf_counter()
    out = call(t)
    assert out.shape == t.shape
    del out
    t1 = time.perf_counter()
    del t
    gc.collect()
    return t1 - t0


class _Reducer:
    """Turns corral's tensor reducer off in this process for a block."""

    def __enter__(self) -> None:
        self.saved = corral._torch.pickler
        corral._torch.pickler = lambda base=None: None  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        corral._torch.pickler = self.saved  # type: ignore[method-assign]


def queue_run(kind: str, shape: tuple[int, ...], n: int, reducer: bool = True) -> float:
    """Seconds for ``n`` tensors of ``shape`` from a producer process."""
    if kind == "corral":
        q: Any = corral.Queue()
        go, done = corral.Event(), corral.Event()
        p: Any = corral.Process(target=produce, args=(q, go, done, n, shape, reducer))
    else:
        import torch.multiprocessing as tmp

        q, go, done = tmp.Queue(), tmp.Event(), tmp.Event()
        p = tmp.Process(target=produce, args=(q, go, done, n, shape))
    p.start()
    assert q.get(timeout=120) == "ready"
    t0 = time.perf_counter()
    go.set()
    for _ in range(n):
        t = q.get(timeout=120)
        assert t.shape == shape
        del t
    elapsed = time.perf_counter() - t0
    done.set()
    p.join(60)
    return elapsed


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main() -> None:
    """Runs the rounds and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--markdown", metavar="FILE", help="append the results to FILE")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(900, exit=True)
    try:
        import torch
        import torch.multiprocessing as tmp
    except ImportError:
        print("torch is not installed: nothing to measure (pip install 'corral[torch]')")
        return
    rounds, per_round = (3, 5) if args.quick else (5, 10)
    rows = []

    # -- pool -----------------------------------------------------------------
    ex = corral.ProcessPoolExecutor()
    before = corral.ProcessPoolExecutor(initializer=without_reducer)
    tpool = tmp.Pool()

    def old(t: Any) -> Any:
        with _Reducer():
            return before.submit(double, t).result()

    calls: dict[str, Callable[[Any], Any]] = {
        "corral.ProcessPoolExecutor": lambda t: ex.submit(double, t).result(),
        "torch.multiprocessing.Pool": lambda t: tpool.apply(double, (t,)),
        "corral.ProcessPoolExecutor, tensor reducer off (torch's pickling: before)": old,
    }
    for call in calls.values():  # warm-up: workers started, torch imported there
        for _ in range(2):
            pool_call(call, torch)
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            medians[name].append(median([pool_call(call, torch) for _ in range(per_round)]))
    ex.shutdown()
    before.shutdown()
    tpool.close()
    tpool.join()
    size = 2 * N * 4
    mine = size / median(medians["corral.ProcessPoolExecutor"])
    for name, ms in medians.items():
        rate = size / median(ms)
        result = (
            f"{rate / 1e9:.2f} GB/s ({size / max(ms) / 1e9:.2f}-{size / min(ms) / 1e9:.2f}; "
            f"{median(ms) * 1e3:.1f} ms per call)"
        )
        rows.append((POOL_CASE, name, result, f"{mine / rate:.2f}x"))

    # -- queue ----------------------------------------------------------------
    qrounds = 3 if args.quick else 5
    for shape, n in QUEUE_CASES.values():
        nbytes = 4
        for d in shape:
            nbytes *= d
        if args.quick:
            n //= 3
        case = f"Queue: {n} float32 tensors of {'x'.join(map(str, shape))} ({nbytes / 1e3:.0f} KB) from a producer"
        runs: dict[str, list[float]] = {"corral.Queue": [], "torch.multiprocessing.Queue": []}
        for _ in range(qrounds):
            runs["corral.Queue"].append(queue_run("corral", shape, n))
            runs["torch.multiprocessing.Queue"].append(queue_run("torch", shape, n))
        mine_q = n / median(runs["corral.Queue"])
        for name, secs in runs.items():
            rate = n / median(secs)
            result = (
                f"{rate:,.0f} tensors/s ({n / max(secs):,.0f}-{n / min(secs):,.0f}; {rate * nbytes / 1e9:.2f} GB/s)"
            )
            rows.append((case, name, result, f"{mine_q / rate:.2f}x"))

    lines = [
        heading("torch tensors: corral against torch.multiprocessing"),
        "",
        f"- Default arguments, {os.cpu_count()} cores, torch {torch.__version__}, torch.multiprocessing's sharing "
        f"strategy {tmp.get_sharing_strategy()!r}; pool: {rounds} rounds of {per_round} calls, taking turns "
        "(GB/s = 2 x 16 MB / median seconds per call); queue: "
        f"{qrounds} rounds, taking turns. Range of the rounds in brackets.",
        "- 'corral vs this' is how many times faster corral is (above 1: corral is faster).",
        "",
        *table(rows),
    ]
    emit(lines, args.markdown)


if __name__ == "__main__":
    main()
