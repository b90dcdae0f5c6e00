"""Process pools side by side: corral.ProcessPoolExecutor against
concurrent.futures, multiprocessing.Pool, joblib, MPIRE and Ray, two workers
each, in one run, reported as ratios.

    python benches/bench_pool.py [--quick] [--markdown FILE] [--skip NAME ...]

1. One submit per tiny task (square), all submitted, then all results
   waited for: tasks/s.
2. The default ``map`` (no chunksize given) over many tiny tasks: tasks/s.
3. Pure-Python tasks of about 1 ms each through the default ``map``:
   speedup over running them one after another in this process.
4. A 16 MiB float64 array to a worker and back (the worker returns
   ``arr * 2``), one round trip at a time: array bytes / seconds per round
   trip, beside the same call in a thread of this process (no transfer).
5. Pool start to first result, and shutdown: seconds.
6. An initializer that takes 0.5 s (a "model load"), then 400 tasks of
   5 ms that use what it loaded: makespan from pool creation to the last
   result, and its ratio to the ideal 0.5 s + 400 x 5 ms / 2.
7. One submit + result at a time (``pool.submit(f, i).result()`` in a
   loop, default arguments), with 2, 8, 32 and 64 workers on this machine:
   tasks/s must not fall as workers are added (case 1b is the same with
   the default number of workers).

``--cases 1,1b,2,7`` runs only those cases (7 starts its own pools).

Each implementation runs on its own: its pool is created (case 5 times
this), warmed up, measured in cases 1, 1b, 3 and 4 (best of a few runs), shut down
(timed); case 6 makes a new pool. Case 2 runs after the sessions, on a new
pool of each, all up at once, in interleaved rounds (median and range). A peer that is not installed, or that has
no API for a case, is skipped with a note.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import faulthandler
import functools
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral
from _pool_tasks import (
    ModelActor,
    calibrate_spin,
    double,
    load_model,
    mpire_load_model,
    mpire_use_model,
    spin,
    square,
    timed,
    use_model_corral,
    use_model_global,
)
from _report import emit, heading, table

# Peers are imported in main(), not here: a spawned worker re-imports this
# module as __mp_main__, and importing ray there would add its import time to
# the start-up of every fresh-interpreter pool measured.
np: Any = None
joblib: Any = None
mpire: Any = None
ray: Any = None
ActorPool: Any = None


def load_peers() -> None:
    """Imports numpy and the optional peers that are installed."""
    global np, joblib, mpire, ray, ActorPool
    try:
        import numpy as np
    except ImportError:  # case 4 needs it
        pass
    try:
        import joblib
    except ImportError:  # optional peer
        pass
    try:
        import mpire
    except ImportError:  # optional peer
        pass
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:  # optional peer, heavy: not in the bench extra
        pass


WORKERS = 2
INIT_SECONDS = 0.5  # case 6: the "model load"
INIT_TASKS = 400  # case 6: tasks of 5 ms each
START = mp.get_start_method()  # the stdlib pools' default; fork on Linux up to 3.13


class Unsupported(Exception):
    """The implementation has no API for this case."""


class Impl:
    """One pool implementation: a pool kept between start() and shutdown(),
    and the calls the cases make on it."""

    name = ""
    #: Its map sends one item per message: case 2 gives it fewer items
    #: (a rate is reported).
    slow_map = False

    def start(self) -> None: ...

    def first(self) -> int:
        """One tiny task, waited for (case 5 times start() + first())."""
        return self.submit_all(square, [3])[0]

    def submit_all(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """One submit per item, then every result."""
        raise Unsupported

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """The default map: no chunk size given."""
        raise Unsupported

    def busy_map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """Case 3's map (a pool without a map may do it another way)."""
        return self.map(fn, items)

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """One task, waited for."""
        return self.submit_all(fn, [arg])[0]

    def shutdown(self) -> None: ...

    def initializer_makespan(self, n: int) -> float:
        """Seconds from creating a pool whose initializer takes
        INIT_SECONDS to the last of n results of 5 ms tasks using it."""
        raise Unsupported


class Corral(Impl):
    name = f"corral.ProcessPoolExecutor({WORKERS})"

    def start(self) -> None:
        self.pool = corral.ProcessPoolExecutor(max_workers=WORKERS)

    def submit_all(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        futures = [self.pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn, items))

    def shutdown(self) -> None:
        self.pool.shutdown()

    def initializer_makespan(self, n: int) -> float:
        t0 = time.perf_counter()
        pool = corral.ProcessPoolExecutor(max_workers=WORKERS, initializer=load_model, initargs=(INIT_SECONDS,))
        out = list(pool.map(use_model_corral, range(n)))
        elapsed = time.perf_counter() - t0
        pool.shutdown()
        assert out[-1] == 3 * (n - 1)
        return elapsed


class StdlibExecutor(Impl):
    name = f"concurrent.futures.ProcessPoolExecutor({WORKERS}), {START} (default)"
    slow_map = True

    def start(self) -> None:
        self.pool = cf.ProcessPoolExecutor(WORKERS)

    def submit_all(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        futures = [self.pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn, items))  # chunksize=1

    def shutdown(self) -> None:
        self.pool.shutdown()

    def initializer_makespan(self, n: int) -> float:
        t0 = time.perf_counter()
        pool = cf.ProcessPoolExecutor(WORKERS, initializer=load_model, initargs=(INIT_SECONDS,))
        out = list(pool.map(use_model_global, range(n)))
        elapsed = time.perf_counter() - t0
        pool.shutdown()
        assert out[-1] == 3 * (n - 1)
        return elapsed


class StdlibPool(Impl):
    name = f"multiprocessing.Pool({WORKERS}), {START} (default)"

    def start(self) -> None:
        self.pool = mp.Pool(WORKERS)

    def submit_all(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        pending = [self.pool.apply_async(fn, (x,)) for x in items]
        return [r.get() for r in pending]

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self.pool.map(fn, items)  # chunksize = len / (4 x workers)

    def shutdown(self) -> None:
        self.pool.close()
        self.pool.join()

    def initializer_makespan(self, n: int) -> float:
        t0 = time.perf_counter()
        pool = mp.Pool(WORKERS, initializer=load_model, initargs=(INIT_SECONDS,))
        out = pool.map(use_model_global, range(n))
        elapsed = time.perf_counter() - t0
        pool.close()
        pool.join()
        assert out[-1] == 3 * (n - 1)
        return elapsed


class Joblib(Impl):
    name = f"joblib.Parallel(n_jobs={WORKERS}), loky"

    def start(self) -> None:
        # Entered once, as joblib advises for repeated calls; the loky
        # workers then stay up between calls.
        self.par = joblib.Parallel(n_jobs=WORKERS)
        self.par.__enter__()

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self.par(joblib.delayed(fn)(x) for x in items)  # batch_size="auto"

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return self.par([joblib.delayed(fn)(arg)])[0]

    def first(self) -> int:
        return self.call(square, 3)

    def shutdown(self) -> None:
        # joblib itself leaves its workers idle for 300 s, for the next
        # call; stopping them is what is timed here.
        workers = self.par._backend._workers
        self.par.__exit__(None, None, None)
        workers.shutdown(wait=True)

    def initializer_makespan(self, n: int) -> float:
        t0 = time.perf_counter()
        with joblib.Parallel(n_jobs=WORKERS, initializer=load_model, initargs=(INIT_SECONDS,)) as par:
            out = par(joblib.delayed(use_model_global)(i) for i in range(n))
            elapsed = time.perf_counter() - t0
            workers = par._backend._workers
        workers.shutdown(wait=True)
        assert out[-1] == 3 * (n - 1)
        return elapsed


class Mpire(Impl):
    name = f"mpire.WorkerPool({WORKERS}, keep_alive=True), {START}"

    def start(self) -> None:
        # keep_alive: without it MPIRE starts new workers for every map.
        self.pool = mpire.WorkerPool(WORKERS, keep_alive=True)

    def first(self) -> int:
        # Through map, not apply: MPIRE 2.10 workers started by apply_async
        # then fail a map of the same function ("takes 1 positional argument
        # but 2 were given"); started by map, they do both.
        return self.pool.map(square, [3])[0]

    def submit_all(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        pending = [self.pool.apply_async(fn, (x,)) for x in items]
        return [r.get() for r in pending]

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self.pool.map(fn, items)

    def shutdown(self) -> None:
        self.pool.stop_and_join()

    def initializer_makespan(self, n: int) -> float:
        t0 = time.perf_counter()
        pool = mpire.WorkerPool(WORKERS, use_worker_state=True)
        out = pool.map(mpire_use_model, range(n), worker_init=functools.partial(mpire_load_model, seconds=INIT_SECONDS))
        elapsed = time.perf_counter() - t0
        pool.terminate()
        assert out[-1] == 3 * (n - 1)
        return elapsed


class Ray(Impl):
    name = f"Ray local, ray.init(num_cpus={WORKERS})"

    def start(self) -> None:
        _ray_init()
        self.remote: dict[Callable[..., Any], Any] = {}

    def submit_all(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        remote_fn = self.remote.get(fn) or self.remote.setdefault(fn, ray.remote(fn))
        return ray.get([remote_fn.remote(x) for x in items])

    def busy_map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self.submit_all(fn, items)  # Ray has no map

    def shutdown(self) -> None:
        ray.shutdown()

    def initializer_makespan(self, n: int) -> float:
        # The cluster start is not counted (case 5 shows it); the actors,
        # Ray's way to keep per-worker state, are.
        _ray_init()
        try:
            t0 = time.perf_counter()
            actors = [ray.remote(ModelActor).remote(INIT_SECONDS) for _ in range(WORKERS)]
            out = list(ActorPool(actors).map(lambda a, x: a.run.remote(x), range(n)))
            elapsed = time.perf_counter() - t0
        finally:
            ray.shutdown()
        assert out[-1] == 3 * (n - 1)
        return elapsed


def _ray_init() -> None:
    # No dashboard: it is not part of running tasks, and takes seconds to start.
    ray.init(num_cpus=WORKERS, include_dashboard=False, logging_level="ERROR", log_to_driver=False)


def implementations(notes: list[str]) -> list[Impl]:
    impls: list[Impl] = [Corral(), StdlibExecutor(), StdlibPool()]
    for module, cls, pip in ((joblib, Joblib, "joblib"), (mpire, Mpire, "mpire"), (ray, Ray, "ray")):
        if module is None:
            notes.append(f"{pip} is not installed: its rows are skipped (pip install {pip}).")
            print(f"note: {pip} is not importable, skipped")
        else:
            impls.append(cls())
    return impls


# Case names, in report order.
SUBMIT = "1. one submit per tiny task, then all results"
ONE_BY_ONE = "1b. one submit + result at a time, tiny task"
MAP = "2. default map over tiny tasks"
SPIN = "3. ~1 ms pure-Python tasks, default map, speedup over serial"
ARRAY = "4. 16 MiB float64 array to a worker and back, one at a time"
START_CASE = "5a. pool start to first result"
STOP_CASE = "5b. shutdown"
INIT = f"6. {INIT_SECONDS} s initializer + {INIT_TASKS} x 5 ms tasks, makespan"
SCALE_WORKERS = (2, 8, 32, 64)
SCALE = [f"7. one submit + result at a time, {n} workers" for n in SCALE_WORKERS]
HIGHER_IS_BETTER = {
    SUBMIT: True,
    ONE_BY_ONE: True,
    MAP: True,
    SPIN: True,
    ARRAY: True,
    START_CASE: False,
    STOP_CASE: False,
    INIT: False,
}
HIGHER_IS_BETTER.update(dict.fromkeys(SCALE, True))


def best(fn: Callable[[], float], repeat: int, higher_is_better: bool = True) -> float:
    runs = [fn() for _ in range(repeat)]
    return max(runs) if higher_is_better else min(runs)


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.repeat = 2 if quick else 3
        self.submit = 2_000 if quick else 20_000
        self.one_by_one = 1_000 if quick else 5_000
        self.map = 100_000 if quick else 1_000_000
        self.map_slow = 5_000 if quick else 20_000  # chunksize-1 maps
        self.map_rounds = 3 if quick else 5  # case 2, interleaved
        self.spin = 1_000 if quick else 2_000
        self.array_trips = 5 if quick else 20
        self.array_bytes = 16 << 20


def one_by_one(impl: Impl, n: int, repeat: int) -> float:
    """Tasks/s of ``n`` tiny tasks, each submitted once the last result is in."""
    for i in range(200):  # warm-up
        impl.call(square, i)

    def run() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            assert impl.call(square, i) == i * i
        return n / (time.perf_counter() - t0)

    return best(run, repeat)


def session(
    impl: Impl,
    sz: Sizes,
    spin_n: int,
    serial_s: float,
    arr: Any,
    results: dict[str, dict[str, tuple[float, str]]],
    cases: set[str] | None = None,
) -> None:
    """Runs cases 1-5 on one pool of ``impl``; results[case][name] = (value, text)."""

    def record(case: str, value: float, text: str) -> None:
        results.setdefault(case, {})[impl.name] = (value, text)
        print(f"  {case:62s} {text}")

    def attempt(case: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Unsupported:
            print(f"  {case:62s} skipped: no API for it")
        except Exception as e:  # one failing case must not lose the rest of the report
            traceback.print_exc()
            results.setdefault(case, {})[impl.name] = (float("nan"), f"failed: {type(e).__name__}")

    print(impl.name)
    t0 = time.perf_counter()
    try:
        impl.start()
        assert impl.first() == 9
    except Exception as e:  # e.g. corral's Python side ahead of its build
        traceback.print_exc()
        for case in (SUBMIT, MAP, SPIN, ARRAY, START_CASE, STOP_CASE):
            results.setdefault(case, {})[impl.name] = (float("nan"), f"failed to start: {type(e).__name__}")
        return
    t = time.perf_counter() - t0
    record(START_CASE, t, f"{t:.3f} s")

    def submit_case() -> None:
        items = list(range(sz.submit))
        impl.submit_all(square, items[:500])  # warm-up

        def run() -> float:
            t = timed(lambda: _check(impl.submit_all(square, items), items))
            return len(items) / t

        rate = best(run, sz.repeat)
        record(SUBMIT, rate, f"{rate / 1e3:.1f} k tasks/s")

    def one_by_one_case() -> None:
        if not isinstance(impl, (Corral, StdlibExecutor, StdlibPool)):
            raise Unsupported  # the peers' per-task round trip: their own benches
        rate = one_by_one(impl, sz.one_by_one, sz.repeat)
        record(ONE_BY_ONE, rate, f"{rate / 1e3:.1f} k tasks/s")

    def spin_case() -> None:
        impl.busy_map(spin, [spin_n] * 20)  # warm-up
        items = [spin_n] * sz.spin
        seconds = best(lambda: timed(lambda: impl.busy_map(spin, items)), sz.repeat, higher_is_better=False)
        speedup = serial_s / seconds
        record(SPIN, speedup, f"{speedup:.2f}x ({seconds:.2f} s)")

    def array_case() -> None:
        if arr is None:
            raise Unsupported
        impl.call(double, arr)  # warm-up

        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(sz.array_trips):
                out = impl.call(double, arr)
                assert out.shape == arr.shape and out[1] == 2.0
            return arr.nbytes / ((time.perf_counter() - t0) / sz.array_trips)

        rate = best(run, sz.repeat)
        record(ARRAY, rate, f"{rate / 1e9:.2f} GB/s ({arr.nbytes / rate * 1e3:.1f} ms per round trip)")

    for case, fn in ((SUBMIT, submit_case), (ONE_BY_ONE, one_by_one_case), (SPIN, spin_case)):
        if cases is None or case.split(".")[0] in cases:
            attempt(case, fn)
    if cases is None or "4" in cases:
        attempt(ARRAY, array_case)

    t0 = time.perf_counter()
    impl.shutdown()
    t = time.perf_counter() - t0
    record(STOP_CASE, t, f"{t:.3f} s")


def map_case(impls: list[Impl], sz: Sizes, results: dict[str, dict[str, tuple[float, str]]]) -> None:
    """Case 2, interleaved: a new pool per implementation, all up at once,
    each round maps once on each, in a rotating order, so that every
    implementation sees the machine's same moments. (Run in each one's
    session, one after the other, corral's and multiprocessing.Pool's
    best-of-3 came from different minutes of a shared machine: 0.62x to
    1.49x in consecutive runs of a few seconds, while the same maps
    interleaved in one process gave 1.23-1.59x per round.) The result is the
    median over the rounds, with the range; each round's ratio to corral is
    printed."""
    print(MAP)
    mapping: list[Impl] = []
    for old in impls:
        if type(old).map is Impl.map:
            print(f"  {old.name:62s} skipped: no API for it")
            continue
        impl = type(old)()
        try:
            impl.start()
            # Warm-up: one map of the measured size (a pool that learns
            # from its maps starts each round where a user's repeated map
            # would; the median is then of steady rounds).
            impl.map(square, list(range(sz.map_slow if impl.slow_map else sz.map)))
            mapping.append(impl)
        except Exception as e:
            traceback.print_exc()
            results.setdefault(MAP, {})[impl.name] = (float("nan"), f"failed: {type(e).__name__}")
    rates: dict[str, list[float]] = {impl.name: [] for impl in mapping}
    inputs = {n: list(range(n)) for n in {sz.map, sz.map_slow}}
    try:
        for r in range(sz.map_rounds):
            order = mapping[r % len(mapping) :] + mapping[: r % len(mapping)] if mapping else []
            for impl in order:
                items = inputs[sz.map_slow if impl.slow_map else sz.map]
                t0 = time.perf_counter()
                _check(impl.map(square, items), items)
                rates[impl.name].append(len(items) / (time.perf_counter() - t0))
    finally:
        for impl in mapping:
            impl.shutdown()
    ours = rates.get(Corral.name)
    for impl in mapping:
        r = rates[impl.name]
        if not r:
            continue
        n = sz.map_slow if impl.slow_map else sz.map
        med = statistics.median(r)
        text = f"{med / 1e3:.1f} k tasks/s ({min(r) / 1e3:.0f}-{max(r) / 1e3:.0f}, {len(r)} rounds)"
        results.setdefault(MAP, {})[impl.name] = (med, text + (f" ({n} items)" if n != sz.map else ""))
        per_round = ""
        if ours and impl.name != Corral.name:
            per_round = "  corral vs this per round: " + " ".join(f"{a / b:.2f}" for a, b in zip(ours, r, strict=True))
        print(f"  {impl.name:62s} {text}{per_round}")


def _check(out: list[int], items: list[int]) -> None:
    assert len(out) == len(items) and out[-1] == items[-1] ** 2, (len(out), out[-1:])


def thread_array(sz: Sizes, arr: Any) -> float:
    """Case 4's limit: double(arr) in a thread of this process."""
    with cf.ThreadPoolExecutor(1) as pool:
        pool.submit(double, arr).result()

        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(sz.array_trips):
                pool.submit(double, arr).result()
            return arr.nbytes / ((time.perf_counter() - t0) / sz.array_trips)

        return best(run, sz.repeat)


def initializer_case(impls: list[Impl], ideal: float, results: dict[str, dict[str, tuple[float, str]]]) -> None:
    """Case 6, a new pool for each implementation."""
    print(f"{INIT} (ideal {ideal:.2f} s)")
    for impl in impls:
        try:
            v = impl.initializer_makespan(INIT_TASKS)
        except Unsupported:
            print(f"  {impl.name:62s} skipped: no API for it")
            continue
        except Exception as e:
            traceback.print_exc()
            results.setdefault(INIT, {})[impl.name] = (float("nan"), f"failed: {type(e).__name__}")
            continue
        results.setdefault(INIT, {})[impl.name] = (v, f"{v:.2f} s ({v / ideal:.2f}x ideal)")
        print(f"  {impl.name:62s} {v:.2f} s")


def scale_case(sz: Sizes, results: dict[str, dict[str, tuple[float, str]]]) -> None:
    """Case 7: corral and multiprocessing.Pool, a new pool per size, the
    sizes interleaved so that both see the machine's same moments."""
    global WORKERS
    saved = WORKERS
    try:
        for n, case in zip(SCALE_WORKERS, SCALE, strict=True):
            print(case)
            for cls in (Corral, StdlibPool):
                WORKERS = n
                impl = cls()
                try:
                    impl.start()
                    rate = one_by_one(impl, sz.one_by_one, sz.repeat)
                    text = f"{rate / 1e3:.1f} k tasks/s"
                except Exception as e:
                    traceback.print_exc()
                    rate, text = float("nan"), f"failed: {type(e).__name__}"
                finally:
                    impl.shutdown()
                results.setdefault(case, {})[cls.name] = (rate, text)
                print(f"  {cls.name:62s} {text}")
    finally:
        WORKERS = saved


def report_rows(results: dict[str, dict[str, tuple[float, str]]], unbuilt: bool) -> list[tuple[str, str, str, str]]:
    """Table rows, case by case, each peer's with how many times better corral does."""
    rows: list[tuple[str, str, str, str]] = []
    for case, higher in HIGHER_IS_BETTER.items():
        by_name = results.get(case, {})
        ours = by_name.get(Corral.name, (float("nan"), ""))[0]
        if unbuilt:
            rows.append((case, Corral.name, "not built yet", "—"))
        for name, (v, text) in by_name.items():
            if name == Corral.name:
                rows.append((case, name, text, "—"))
                continue
            r = ours / v if higher else v / ours
            rows.append((case, name, text, ratio_text(r) if r == r else "—"))  # r != r: NaN, no corral figure
    return rows


def ratio_text(r: float) -> str:
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def main() -> None:
    load_peers()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tasks and repeats")
    ap.add_argument("--markdown", metavar="FILE", help="append the results to FILE")
    ap.add_argument(
        "--skip", metavar="NAME", action="append", default=[], help="leave out implementations whose name contains NAME"
    )
    ap.add_argument(
        "--cases", metavar="LIST", help="comma-separated cases to run (1, 1b, 2, 3, 4, 5, 6, 7); default all"
    )
    args = ap.parse_args()
    cases = None if args.cases is None else {c.strip() for c in args.cases.split(",")}
    sz = Sizes(args.quick)
    # A pool that hangs must not hang the bench (nor `make bench`) for ever.
    faulthandler.dump_traceback_later(300 if args.quick else 1200, exit=True)
    skipped: list[str] = []
    impls = [i for i in implementations(skipped) if not any(k.lower() in i.name.lower() for k in args.skip)]

    spin_n = calibrate_spin(1e-3)
    # Best of 3, as each pool's run is its best: the VM's speed drifts by 10% and more.
    serial_s = min(timed(lambda: [spin(spin_n) for _ in range(sz.spin)]) for _ in range(3))
    print(
        f"{sz.spin} x spin({spin_n}) serially in this process: {serial_s:.2f} s"
        f" ({serial_s / sz.spin * 1e3:.2f} ms each)"
    )
    arr = np.arange(sz.array_bytes // 8, dtype=np.float64) if np is not None else None

    results: dict[str, dict[str, tuple[float, str]]] = {}
    unbuilt = not hasattr(corral, "ProcessPoolExecutor") and any(isinstance(i, Corral) for i in impls)
    if unbuilt:
        print(f"{Corral.name}: not built yet")
        impls = [i for i in impls if not isinstance(i, Corral)]
    for impl in impls:
        if cases is None or cases - {"2", "6", "7"}:
            session(impl, sz, spin_n, serial_s, arr, results, cases)
    if cases is None or "2" in cases:
        map_case(impls, sz, results)

    thread_name = "concurrent.futures.ThreadPoolExecutor(1): same call in this process, no transfer (the limit)"
    if arr is not None and (cases is None or "4" in cases):
        rate = thread_array(sz, arr)
        results.setdefault(ARRAY, {})[thread_name] = (
            rate,
            f"{rate / 1e9:.2f} GB/s ({arr.nbytes / rate * 1e3:.1f} ms per call)",
        )
    else:
        skipped.append("numpy is not installed: case 4 is skipped.")

    ideal = INIT_SECONDS + INIT_TASKS * 0.005 / WORKERS
    if cases is None or "6" in cases:
        initializer_case(impls, ideal, results)
    if cases is None or "7" in cases:
        scale_case(sz, results)
    rows = report_rows(results, unbuilt)

    notes = [
        f"Two workers each on {os.cpu_count()} cores. 'corral vs this' is how many times better corral does "
        "(above 1: corral is faster).",
        "Start methods: corral and joblib (loky) start fresh interpreters; the stdlib pools and MPIRE use "
        f"{START}, the default here, kept.",
        f"Case 1: {sz.submit} tasks; submit / apply_async / .remote per task. joblib has no per-task submit.",
        f"Cases 1b and 7: {sz.one_by_one} tasks, each submitted once the previous result is in "
        "(submit(f, i).result() / apply_async(f, (i,)).get()); case 7 makes a new pool per size, "
        f"on {os.cpu_count()} cores (its rows name the pools' classes; the case says how many workers).",
        f"Case 2: {sz.map} items; concurrent.futures' map sends one item per message (chunksize=1), "
        f"so it gets {sz.map_slow}. Ray has no map (case 1 is its way). The pools map in interleaved rounds "
        f"({sz.map_rounds}): median (min-max).",
        f"Case 3: {sz.spin} tasks of spin({spin_n}), serially {serial_s:.2f} s in this process "
        f"({serial_s / sz.spin * 1e3:.2f} ms each, best of 3); "
        "Ray runs one remote call per task.",
        "Case 4: GB/s is array bytes / seconds per round trip (16 MiB went each way). joblib hands the input "
        "over as a memory-mapped file (its default above 1 MB), Ray through its object store.",
        "Case 5b: joblib's workers otherwise stay idle for 300 s; its row times stopping them.",
        f"Case 6: the clock starts before the pool is created; ideal {ideal:.2f} s. MPIRE keeps the model in its "
        "worker_state, Ray in an actor per worker (ActorPool; the cluster start is not counted), the stdlib pools "
        "and joblib in a module global.",
        *skipped,
    ]
    emit([heading("Process pools"), "", *[f"- {n}" for n in notes], "", *table(rows)], args.markdown)


if __name__ == "__main__":
    main()
