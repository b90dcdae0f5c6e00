"""Pool start-up side by side: corral.ProcessPoolExecutor against
concurrent.futures (fork, spawn, forkserver), multiprocessing.Pool and
MPIRE, two workers each, in one run, reported as ratios.

    python benches/bench_startup.py [--rounds N] [--markdown FILE]
                                    [--old-python PATH] [--no-numpy]

Every measurement runs in a fresh interpreter (this script run with
``--one``), as a user's program does: it imports numpy (a user's script
does; ``--no-numpy`` leaves it out), then times, with default arguments:

1. Pool start to first result: from creating the pool to the result of one
   tiny task.
2. The same for a second pool in the same program (the first one shut
   down): what a program that makes several pools pays after the first.
3. An initializer that takes 0.5 s (``time.sleep``, a "model load") and
   400 tasks of 0.5 ms of pure-Python CPU each through the default ``map``:
   makespan from creating the pool to the last result. Ideal with two
   workers: 0.5 s + 400 x 0.5 ms / 2 = 0.60 s.
4. Case 3 for a second pool in the same program.
5. Case 3 with an initializer that computes for 0.5 s of CPU and a task
   function of a module (sent by reference: no cloudpickle needed), what a
   worker's background import of cloudpickle must not slow down
   (``corral._worker._Prefetch``). Ideal: 0.5 s of the initializer's CPU
   + 0.1 s.

Implementations are interleaved round by round (one fresh process each), so
a machine shared with other work loads them alike; the table gives the
median and the range over the rounds, and the median CPU time (user +
system) the case cost in all the program's processes (its fork server and
workers too: this script is their subreaper, so it reaps those that outlive
the program and counts them), over the CPU of the same program creating no
pool (``baseline``, measured each round): unlike wall times, that does not
stretch with the machine's load. ``--old-python`` adds corral's rows
run by another interpreter (an older build: A/B in the same run).

The measured interpreters load compiled bytecode, as a program using an
installed corral does (pip compiles a wheel's modules; the standard
library's and numpy's are compiled already): the development environment
sets ``PYTHONDONTWRITEBYTECODE`` (``make``), which would make every fresh
interpreter compile corral's modules from source (15-20 ms of CPU in each
of the fork server, a spawned worker and the parent), a cost only corral's
rows would pay. They write it to a private folder (``PYTHONPYCACHEPREFIX``),
filled by one untimed run per interpreter before the first round.
``--compile-each-run`` measures the old way.

``--path`` prints instead case 3's path to the workers' first task, piece
by piece (wall times from the ``ProcessPoolExecutor()`` call, median and
range over the rounds, each a fresh interpreter): the fork server ready,
each worker forked, its initializer's start and end, its first task's
function loaded (a function of ``__main__``: cloudpickle), its first task,
the last result; and the floor of a design that starts a fresh interpreter
(``python -c "import numpy"`` started at the same instant, its exit).

``--phases`` prints instead where the first pool's start spends its CPU
(a load-independent view of cases 1 and 3: on a busy machine the wall
times are these, stretched): each phase is a fresh interpreter importing
what that step of the fork server's boot imports, CPU time (user + system)
median and minimum over 7 runs, and the parent's own CPU from creating
the pool to its first result.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

# The harness's own modules (argparse, statistics, json, subprocess,
# tempfile, shutil) and the peers' (concurrent.futures, multiprocessing) are
# imported where they are used, not here: this module is the measured
# program's ``__main__``, which the fork servers and the spawned workers
# import again (as ``__mp_main__``), and a user's program does not import
# them (11-13 ms of CPU in each such process, measured 2026-12-07, numpy
# imported: every row but fork paid them).

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import corral  # noqa: E402
from _pool_tasks import calibrate_spin, spin, square  # noqa: E402

WORKERS = 2
INIT_SECONDS = 0.5
INIT_TASKS = 400
TASK_SECONDS = 0.0005
IDEAL = INIT_SECONDS + INIT_TASKS * TASK_SECONDS / WORKERS

START = "1. pool start to first result"
START2 = "2. the same, second pool in the program"
INIT = (
    f"3. {INIT_SECONDS} s initializer + {INIT_TASKS} x {TASK_SECONDS * 1e3:g} ms CPU tasks,"
    f" makespan (ideal {IDEAL:.2f} s)"
)
INIT2 = "4. case 3, second pool in the program"
INIT_CPU = "5. case 3, the initializer computing, a named task function"
CASES = (START, START2, INIT, INIT2, INIT_CPU)


def sleep_init(seconds: float) -> None:
    """The initializer: a 0.5 s "model load"."""
    time.sleep(seconds)


def cpu_init(seconds: float) -> None:
    """Case 5's initializer: ``seconds`` of this thread's CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        spin(1000)


def work_n(n: int) -> int:
    """``spin(n)``: the task of case 3."""
    return spin(n)


# -- one implementation: start a pool, run the case, shut it down ------------


def _corral(method: str | None) -> Any:
    def make(initializer: Any = None, initargs: tuple[Any, ...] = ()) -> Any:
        kw: dict[str, Any] = {} if method is None else {"start_method": method}
        return corral.ProcessPoolExecutor(WORKERS, initializer=initializer, initargs=initargs, **kw)

    return make


def _stdlib(method: str | None) -> Any:
    def make(initializer: Any = None, initargs: tuple[Any, ...] = ()) -> Any:
        import concurrent.futures as cf
        import multiprocessing as mp

        ctx = None if method is None else mp.get_context(method)
        return cf.ProcessPoolExecutor(WORKERS, mp_context=ctx, initializer=initializer, initargs=initargs)

    return make


class _MpPool:
    """multiprocessing.Pool with the executor calls the cases make."""

    def __init__(self, initializer: Any = None, initargs: tuple[Any, ...] = ()) -> None:
        import multiprocessing as mp

        self.pool = mp.Pool(WORKERS, initializer=initializer, initargs=initargs)

    def submit(self, fn: Any, x: Any) -> Any:
        r = self.pool.apply_async(fn, (x,))
        return type("R", (), {"result": lambda self: r.get()})()

    def map(self, fn: Any, items: Any) -> Any:
        return self.pool.map(fn, items)

    def shutdown(self) -> None:
        self.pool.close()
        self.pool.join()


class _Mpire:
    """MPIRE's WorkerPool: its initializer is ``worker_init`` of ``map``."""

    def __init__(self, initializer: Any = None, initargs: tuple[Any, ...] = ()) -> None:
        import mpire

        self.pool = mpire.WorkerPool(WORKERS)
        self.init = None if initializer is None else (lambda: initializer(*initargs))

    def submit(self, fn: Any, x: Any) -> Any:
        out = self.pool.map(fn, [x])
        return type("R", (), {"result": lambda self: out[0]})()

    def map(self, fn: Any, items: Any) -> Any:
        return self.pool.map(fn, items, worker_init=self.init)

    def shutdown(self) -> None:
        self.pool.terminate()


IMPLS: dict[str, Any] = {
    "corral (default)": _corral(None),
    "corral spawn": _corral("spawn"),
    "corral fork": _corral("fork"),
    "ProcessPoolExecutor fork": _stdlib("fork"),
    "ProcessPoolExecutor spawn": _stdlib("spawn"),
    "ProcessPoolExecutor forkserver": _stdlib("forkserver"),
    "multiprocessing.Pool (default)": lambda **kw: _MpPool(**kw),
    "MPIRE (default)": lambda **kw: _Mpire(**kw),
}
#: The implementations each case compares (the first is corral's default).
ROWS = {
    START: list(IMPLS),
    START2: ["corral (default)", "ProcessPoolExecutor forkserver", "ProcessPoolExecutor fork"],
    INIT: [
        "corral (default)",
        "ProcessPoolExecutor fork",
        "ProcessPoolExecutor forkserver",
        "multiprocessing.Pool (default)",
        "MPIRE (default)",
    ],
    INIT2: ["corral (default)", "ProcessPoolExecutor forkserver", "ProcessPoolExecutor fork"],
    INIT_CPU: ["corral (default)", "ProcessPoolExecutor forkserver", "multiprocessing.Pool (default)"],
}


def _first(make: Any) -> float:
    t0 = time.perf_counter()
    pool = make()
    assert pool.submit(square, 3).result() == 9
    t = time.perf_counter() - t0
    pool.shutdown()
    return t


def _makespan(make: Any, n: int, init: Any = sleep_init, task: Any = work_n) -> float:
    t0 = time.perf_counter()
    pool = make(initializer=init, initargs=(INIT_SECONDS,))
    out = list(pool.map(task, [n] * INIT_TASKS))
    t = time.perf_counter() - t0
    pool.shutdown()
    assert len(out) == INIT_TASKS
    return t


def one(impl: str, case: str, n: int) -> float:
    """Runs ``case`` once with ``impl`` in this (fresh) process
    (``baseline``: none, the program's CPU without a pool)."""
    make = IMPLS.get(impl)
    # Each pool class is looked up before the clock starts, as a program's
    # ``from corral import ProcessPoolExecutor`` at its top does (corral,
    # concurrent.futures and multiprocessing import their pool module at
    # that first use); not at this module's top, which the workers import.
    import concurrent.futures as cf
    import multiprocessing.pool  # noqa: F401

    corral.ProcessPoolExecutor, cf.ProcessPoolExecutor  # noqa: B018
    if make is None:  # the baseline
        return 0.0
    if case == START:
        return _first(make)
    if case == START2:
        _first(make)
        return _first(make)
    if case == INIT:
        return _makespan(make, n)
    if case == INIT_CPU:
        return _makespan(make, n, cpu_init, spin)
    _makespan(make, n)
    return _makespan(make, n)


# -- case 3's path to the first task, piece by piece (--path) ----------------


def _note(folder: str, what: str) -> None:
    """Appends ``what`` and the time (CLOCK_MONOTONIC: one clock for every
    process) to this process's file in ``folder``."""
    with open(os.path.join(folder, str(os.getpid())), "a") as f:
        f.write(f"{what} {time.monotonic()!r}\n")


def path_init(seconds: float, folder: str) -> None:
    """Case 3's initializer, noting its start and end and, for the first
    task, when its function is loaded (``_worker._load_function``)."""
    from corral import _worker

    _note(folder, "initializer start")
    load = _worker._load_function

    def timed_load(data: bytes) -> Any:
        _note(folder, "function load start")
        try:
            return load(data)
        finally:
            _note(folder, "function loaded")

    _worker._load_function = timed_load
    time.sleep(seconds)
    _note(folder, "initializer end")


_PATH_SEEN: list[bool] = []


def path_task(n: int) -> int:
    """Case 3's task (``work_n``, a function of ``__main__`` as there),
    noting the first one's start in each worker (in the folder the
    environment names: workers take the parent's)."""
    if not _PATH_SEEN:
        _PATH_SEEN.append(True)
        _note(os.environ["CORRAL_BENCH_PATH"], "first task start")
    return spin(n)


def _path_one(n: int) -> dict[str, Any]:
    """One case-3 run with its milestones (in a fresh interpreter:
    ``--one path``), seconds from the ``ProcessPoolExecutor()`` call."""
    import shutil
    import subprocess
    import tempfile
    import threading

    from corral import _core

    folder = tempfile.mkdtemp(prefix="corral-path-")
    forked: list[float] = []
    watch = _core.watch_external

    def watched(pid: int) -> Any:
        forked.append(time.monotonic())
        return watch(pid)

    _core.watch_external = watched
    floor: list[float] = []
    os.environ["CORRAL_BENCH_PATH"] = folder
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", "import numpy"])
    waiter = threading.Thread(target=lambda: (proc.wait(), floor.append(time.monotonic())), daemon=True)
    waiter.start()
    pool = corral.ProcessPoolExecutor(WORKERS, initializer=path_init, initargs=(INIT_SECONDS, folder))
    out = list(pool.map(path_task, [n] * INIT_TASKS))
    end = time.monotonic()
    server = pool._forkserver._server if pool._forkserver is not None else None
    pool.shutdown()
    waiter.join(60)
    assert len(out) == INIT_TASKS
    marks: dict[str, list[float]] = {}
    for name in os.listdir(folder):
        mine: dict[str, float] = {}
        with open(os.path.join(folder, name)) as f:
            for line in f:
                what, at = line.rsplit(" ", 1)
                marks.setdefault(what, []).append(float(at) - t0)
                mine.setdefault(what, float(at))
        if "function loaded" in mine and "function load start" in mine:
            marks.setdefault(LOAD, []).append(mine["function loaded"] - mine["function load start"])
    shutil.rmtree(folder, ignore_errors=True)
    if server is not None and server.boot_seconds is not None:
        marks["fork server ready"] = [server.started + server.boot_seconds - t0]
    marks["worker forked (parent has its pid)"] = [t - t0 for t in forked]
    marks["last result (makespan)"] = [end - t0]
    marks["floor: python -c 'import numpy' started at the same instant, exit"] = [t - t0 for t in floor]
    return marks


#: The --path row of each worker's own first function load (its duration).
LOAD = "first task's function load"
#: The --path milestones, in order.
PATH_MARKS = (
    "fork server ready",
    "worker forked (parent has its pid)",
    "initializer start",
    "initializer end",
    "function load start",
    "function loaded",
    "first task start",
    "last result (makespan)",
    "floor: python -c 'import numpy' started at the same instant, exit",
)


def path(pythons: list[str], rounds: int, n: int, env: dict[str, str] | None) -> list[str]:
    """The --path report (markdown lines): each milestone's first and
    last worker, median (range) over ``rounds`` fresh interpreters per
    python, interleaved."""
    import json
    import statistics
    import subprocess

    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in pythons}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}")
        for python in pythons:
            argv = [python, os.path.abspath(__file__), "--one", "path", INIT, str(n)]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
            if out.returncode != 0:
                print(f"  {python} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            runs[python].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{statistics.median(values) * 1e3:.0f} ({min(values) * 1e3:.0f}-{max(values) * 1e3:.0f})"

    lines = ["| milestone (ms from `ProcessPoolExecutor()`) | " + " | ".join(pythons) + " |"]
    lines.append("|---|" + "---|" * len(pythons))
    for mark in PATH_MARKS:
        for which, pick in (("first", min), ("last", max)):
            if which == "last" and mark in (PATH_MARKS[0], PATH_MARKS[-2], PATH_MARKS[-1]):
                continue
            cells = [cell([pick(m[mark]) for m in runs[p] if m.get(mark)]) for p in pythons]
            label = mark if mark in (PATH_MARKS[0], PATH_MARKS[-2], PATH_MARKS[-1]) else f"{mark}, {which} worker"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [cell([v for m in runs[p] for v in m.get(LOAD, ())]) for p in pythons]
    lines.append(f"| {LOAD} (each worker's, not from the start) | " + " | ".join(cells) + " |")
    return lines


# -- where the first pool's start spends its CPU (--phases) -------------------

#: Each step of the fork server's boot, as what a fresh interpreter imports
#: to reach it: the interpreter; corral's child entry and the server's own
#: modules (``python -m corral._child`` then the ``serve`` target); the
#: program's ``__main__`` (this file, as ``__mp_main__``).
PHASES = (
    ("interpreter start (python -c pass)", "pass"),
    ("+ the server's own boot (corral._child, corral._forkserver)", "import corral._child, corral._forkserver"),
    ("+ the program's __main__ (this script's imports)", "import corral._child, corral._forkserver, bench_startup"),
)


def _children_cpu(argv: list[str], env: dict[str, str] | None) -> float:
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, cwd=HERE, env=env, capture_output=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _parent_cpu() -> float:
    """In a fresh interpreter (``--one``): this process's CPU time from
    creating a default pool to its first result (the server's boot is
    another process: this is the parent's share)."""
    import multiprocessing.pool  # noqa: F401

    corral.ProcessPoolExecutor  # noqa: B018
    c0 = time.process_time()
    pool = corral.ProcessPoolExecutor(WORKERS)
    assert pool.submit(square, 3).result() == 9
    c = time.process_time() - c0
    pool.shutdown()
    return c


def phases(pythons: list[str], env: dict[str, str] | None, numpy: bool) -> list[str]:
    """The --phases report (markdown lines)."""
    import json
    import statistics
    import subprocess

    runs = 7
    lines = ["| phase | " + " | ".join(pythons) + " |", "|---|" + "---|" * len(pythons)]
    for label, code in PHASES:
        cells = []
        for python in pythons:
            vs = sorted(_children_cpu([python, "-c", code], env) for _ in range(runs))
            cells.append(f"{statistics.median(vs) * 1e3:.0f} ms (min {vs[0] * 1e3:.0f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for python in pythons:
        argv = [python, os.path.abspath(__file__), "--one", "parent-cpu", START, "0"] + (
            [] if numpy else ["--no-numpy"]
        )
        vs = []
        for _ in range(runs):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=True)
            vs.append(float(json.loads(r.stdout.strip().splitlines()[-1])))
        vs.sort()
        cells.append(f"{statistics.median(vs) * 1e3:.1f} ms (min {vs[0] * 1e3:.1f})")
    lines.append("| the parent's own CPU, pool creation to first result | " + " | ".join(cells) + " |")
    return lines


# -- the run ------------------------------------------------------------------


#: The ``--one`` implementation that makes no pool (the CPU baseline).
BASELINE = "baseline"


def _subreaper() -> None:
    """Makes this process the reaper of its descendants orphaned by a
    measured program's exit (its fork server and their workers, which die
    with it a moment later), so that their CPU time counts in
    ``RUSAGE_CHILDREN`` once ``_reap_orphans`` has reaped them."""
    import ctypes

    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _reap_orphans(limit: float = 30.0) -> None:
    """Reaps the measured program's orphaned descendants (``limit``
    seconds at most)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)


def _measure(
    python: str, impl: str, case: str, n: int, numpy: bool, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """(wall seconds the case took, CPU seconds of the whole program
    run: all its processes)."""
    import json
    import resource
    import subprocess

    argv = [python, os.path.abspath(__file__), "--one", impl, case, str(n)] + ([] if numpy else ["--no-numpy"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    _reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if r.returncode != 0:
        print(f"  {impl} / {case} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        return float("nan"), cpu
    return float(json.loads(r.stdout.strip().splitlines()[-1])), cpu


def _bytecode_env(compile_each_run: bool) -> tuple[dict[str, str] | None, str | None]:
    """The measured interpreters' environment and bytecode folder (see the
    module doc); (None, None): this one's, compiling in each."""
    import tempfile

    if compile_each_run:
        return None, None
    cache = tempfile.mkdtemp(prefix="corral-bench-pyc-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env, cache


def _side_report(args: Any, title: str, note: str, warm: Any, lines_of: Any) -> None:
    """A report beside the main table (``--phases``, ``--path``): this
    interpreter's and ``--old-python``'s, each first run once untimed by
    ``warm(python, env)`` (it fills the bytecode cache), then the table
    ``lines_of(pythons, env)``."""
    import shutil

    env, cache = _bytecode_env(args.compile_each_run)
    pythons = [sys.executable] + ([args.old_python] if args.old_python else [])
    try:
        for python in pythons:
            warm(python, env)
        table_lines = lines_of(pythons, env)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    from _report import emit, heading

    emit([heading(title), "", note, "", *table_lines], args.markdown)


def main() -> None:
    import argparse
    import json
    import shutil
    import statistics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--old-python", default=None, help="also run corral's rows with this interpreter (A/B)")
    ap.add_argument("--no-numpy", action="store_true", help="the measured programs do not import numpy")
    ap.add_argument("--cases", default="1234", help="which cases to run, e.g. 13")
    ap.add_argument(
        "--compile-each-run",
        action="store_true",
        help="do not cache bytecode: each interpreter compiles corral's modules (the environment as it is)",
    )
    ap.add_argument("--phases", action="store_true", help="where the first pool's start spends its CPU")
    ap.add_argument("--path", action="store_true", help="case 3's path to the first task, piece by piece")
    ap.add_argument("--corral-only", action="store_true", help="only corral's default rows (with --old-python: A/B)")
    ap.add_argument("--one", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.no_numpy:
        try:
            import numpy  # noqa: F401  (a user's program imports it: spawned workers import it again)
        except ImportError:
            pass
    if args.one:
        impl, case, n = args.one
        if impl == "path":
            print(json.dumps(_path_one(int(n))))
        else:
            print(json.dumps(_parent_cpu() if impl == "parent-cpu" else one(impl, case, int(n))))
        return

    try:
        import mpire  # noqa: F401
    except ImportError:
        print("note: mpire is not installed, its rows are skipped (pip install mpire)")
        for rows in ROWS.values():
            rows[:] = [r for r in rows if not r.startswith("MPIRE")]
    if args.phases:
        _side_report(
            args,
            "Pool start-up: CPU per phase of the first pool's start (benches/bench_startup.py --phases)",
            "CPU time (user + system), median (min) over 7 fresh interpreters each"
            f"{', compiling corral from source in each' if args.compile_each_run else ', bytecode cached'}.",
            lambda python, env: _children_cpu([python, "-c", PHASES[-1][1]], env),
            lambda pythons, env: phases(pythons, env, not args.no_numpy),
        )
        return
    if args.path:
        n = calibrate_spin(TASK_SECONDS)
        _side_report(
            args,
            "Pool start-up: case 3's path to the first task (benches/bench_startup.py --path)",
            f"Median (range) over {args.rounds} fresh interpreters each, interleaved; first / last of the two workers.",
            lambda python, env: _measure(python, "corral (default)", START, n, not args.no_numpy, env),
            lambda pythons, env: path(pythons, args.rounds, n, env),
        )
        return
    if args.corral_only:
        for rows in ROWS.values():
            rows[:] = [r for r in rows if r == "corral (default)"]
    n = calibrate_spin(TASK_SECONDS)
    cases = [c for c in CASES if c[0] in args.cases]
    runs: list[tuple[str, str, str]] = []  # (case, label, python)
    for case in cases:
        for impl in ROWS[case]:
            runs.append((case, impl, sys.executable))
            if args.old_python and impl == "corral (default)":
                runs.append((case, "corral (default), old build", args.old_python))
    env, cache = _bytecode_env(args.compile_each_run)
    pythons = sorted({python for _, _, python in runs})
    if cache is not None:
        for python in pythons:
            for impl in ("corral (default)", "corral spawn", "corral fork"):
                _measure(python, impl, START, n, not args.no_numpy, env)  # untimed: fills the cache
    _subreaper()
    values: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    baseline: dict[str, list[float]] = {}
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}")
            for python in pythons:
                baseline.setdefault(python, []).append(_measure(python, BASELINE, START, n, not args.no_numpy, env)[1])
            for case, label, python in runs:
                impl = "corral (default)" if label.startswith("corral (default)") else label
                v, cpu = _measure(python, impl, case, n, not args.no_numpy, env)
                values.setdefault((case, label), []).append(v)
                cpus.setdefault((case, label), []).append(cpu - statistics.median(baseline[python]))
                print(f"  {case[:40]:40s} {label:40s} {v * 1e3:8.1f} ms, CPU {cpus[(case, label)][-1] * 1e3:6.1f} ms")
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)

    from _report import emit, heading, table

    rows: list[tuple[str, str, str, str]] = []
    for case in cases:
        labels = [lb for (c, lb) in values if c == case]
        ours = statistics.median(values[(case, "corral (default)")])
        for label in labels:
            vs = values[(case, label)]
            med = statistics.median(vs)
            cpu = statistics.median(cpus[(case, label)])
            text = f"{med * 1e3:.0f} ms ({min(vs) * 1e3:.0f}-{max(vs) * 1e3:.0f}), CPU {cpu * 1e3:.0f} ms"
            rows.append((case, label, text, f"{med / ours:.2f}x"))
    lines = [
        heading("Pool start-up (benches/bench_startup.py)"),
        "",
        f"Median (range) over {args.rounds} rounds, each a fresh interpreter"
        f"{' importing numpy' if not args.no_numpy else ''}"
        f"{', compiling corral from source in each' if args.compile_each_run else ', bytecode cached'};"
        " lower is better;"
        " CPU: the median CPU time of all the program's processes over the same program making no pool;"
        " 'corral vs this' is this one's time over corral's default.",
        "",
        *table(rows),
    ]
    emit(lines, args.markdown)


if __name__ == "__main__":
    main()
