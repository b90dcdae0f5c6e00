"""Issue 13's case 3 as a stranger writes it: numpy imported at the top of
the program, a sleeping "model load" initializer, a pure-Python task of
0.5 ms, ``ex.map`` over 400 items, the pool with its defaults and two
workers (ideal 0.60 s). Unlike ``bench_startup.py`` (whose measured
program imports numpy at run time, as the issue's harness evidently did),
the fork server, and every spawned worker, import numpy before the first
task here: what bounds a design that starts a fresh interpreter.

    python benches/stranger_case3.py [--rounds N] [--old-python PATH]

Each run is a fresh interpreter running this file as its program
(``--one IMPL N``); the implementations take turns round by round; prints
the median and range of each, and for corral's default the fork server's
boot (``boot_seconds``). ``--old-python``: another build's interpreter,
run with ``PYTHONPATH`` unset (its own checkout).
"""

import os
import sys
import time

import numpy as np

MODEL = None


def load_model() -> None:
    """The initializer: a 0.5 s "model load"."""
    global MODEL
    time.sleep(0.5)
    MODEL = np.ones(4)


def work(n: int) -> int:
    """The task: pure-Python CPU."""
    s = 0
    for i in range(n):
        s += i * i
    return s


def one(impl: str, n: int) -> str:
    """One run in this fresh interpreter: '<makespan ms> <server boot ms>'."""
    boot = 0.0
    t0 = time.perf_counter()
    if impl.startswith("corral"):
        from corral import ProcessPoolExecutor

        kw = {"start_method": "fork"} if impl == "corral-fork" else {}
        with ProcessPoolExecutor(2, initializer=load_model, **kw) as ex:
            list(ex.map(work, [n] * 400))
            t1 = time.perf_counter()
            if ex._forkserver is not None:
                boot = ex._forkserver._server.boot_seconds or 0.0
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor as PPE

        with PPE(2, mp_context=mp.get_context(impl), initializer=load_model) as ex:
            list(ex.map(work, [n] * 400))
            t1 = time.perf_counter()
    return f"{(t1 - t0) * 1e3:.1f} {boot * 1e3:.1f}"


def main() -> None:
    import argparse
    import statistics
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--old-python", default=None)
    ap.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(one(args.one[0], int(args.one[1])))
        return
    t = time.perf_counter()
    work(20000)
    n = int(20000 * 0.0005 / (time.perf_counter() - t))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runs = [("corral (default)", sys.executable, "corral"), ("corral fork", sys.executable, "corral-fork")]
    if args.old_python:
        runs.append(("corral (default), old build", args.old_python, "corral"))
    runs += [(f"ProcessPoolExecutor {m}", sys.executable, m) for m in ("fork", "forkserver", "spawn")]
    res: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in runs}
    for r in range(args.rounds + 1):  # the first round fills the bytecode caches, untimed
        for name, python, impl in runs:
            e = dict(env, PYTHONPYCACHEPREFIX=f"/tmp/corral-stranger-pyc-{abs(hash(python))}")
            if python != sys.executable:
                e.pop("PYTHONPATH", None)
            out = subprocess.run(
                [python, os.path.abspath(__file__), "--one", impl, str(n)],
                capture_output=True,
                text=True,
                timeout=300,
                env=e,
            )
            if out.returncode != 0:
                print(f"{name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            if r:
                ms, boot = map(float, out.stdout.split())
                res[name].append((ms, boot))
    print(
        f"case 3 as a stranger writes it, 0.5 ms tasks (n={n}), ideal 600 ms; median (range) over {args.rounds} rounds"
    )
    for name, v in res.items():
        if not v:
            continue
        ms = sorted(m for m, _ in v)
        line = f"{name:30s} {statistics.median(ms):6.0f} ms ({ms[0]:.0f}-{ms[-1]:.0f})"
        boots = [b for _, b in v if b]
        if boots:
            line += f", fork server ready {statistics.median(boots):.0f} ms ({min(boots):.0f}-{max(boots):.0f})"
        print(line)


if __name__ == "__main__":
    main()
