"""A/B of the default ``map`` between two corral builds and
``multiprocessing.Pool.map``, interleaved in one run, idle or under load.

    python benches/ab_map.py --old PY [--new PY] [--rounds N] [--under-load] [--cases LIST]

Three servers are started, each holding one pool of two workers: corral
with the old build's interpreter (``--old``), corral with the new one
(``--new``, default this interpreter), and ``multiprocessing.Pool(2)``
(this interpreter). Every round runs each case on the three, one after
the other, in a rotating order, so that all see the machine's same
moments. Per map a server reports the wall time, the CPU its process and
its workers spent per item, and their context switches (voluntary: a sleep
the thread woke from; involuntary: preempted), summed over every thread.

Cases: ``tiny`` (``corral.Pool.map``/``multiprocessing.Pool.map`` of a
tiny function over ``range(400_000)``, bench_mp_pool's row), ``tiny1m``
(``ProcessPoolExecutor.map`` over a list of 1,000,000 items, bench_pool's
case 2, ``multiprocessing.Pool.map`` beside it), ``ms5`` (200 items of a
~5 ms pure-Python function through the default map: do workers wait
for the parent to hand them the next chunk?).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _pool_tasks import calibrate_spin, spin, square

CASES = {"tiny": 400_000, "tiny1m": 1_000_000, "ms5": 200}


def _task_stats(pid: int) -> tuple[float, int, int, float]:
    """CPU seconds, voluntary / involuntary context switches and seconds
    spent runnable but waiting for a CPU of process ``pid``, summed over
    its threads (0 if gone)."""
    cpu, vol, invol, queued = 0.0, 0, 0, 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait = f.read().split()[:2]  # ns on a CPU (finer than stat's ticks), ns runnable
                cpu += int(run) / 1e9
                queued += int(wait) / 1e9
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
    except OSError:
        pass
    return cpu, vol, invol, queued


def serve(tag: str, spin_n: int) -> None:
    """One pool; reads case names from stdin, answers a JSON line each."""
    import corral

    if tag == "mp":
        pool: Any = mp.Pool(2)
        ex: Any = pool
    else:
        pool = corral.Pool(2)
        ex = corral.ProcessPoolExecutor(2)
    items_1m = list(range(CASES["tiny1m"]))
    items_5ms = [spin_n] * CASES["ms5"]

    def run(case: str) -> None:
        if case == "tiny":
            out = pool.map(square, range(CASES[case]))
        elif case == "tiny1m":
            out = list(ex.map(square, items_1m))
        else:
            out = list(ex.map(spin, items_5ms)) if tag != "mp" else pool.map(spin, items_5ms)
        assert len(out) == CASES[case]

    for case in CASES:  # warm-up: workers up, functions loaded
        run(case)
    if tag == "mp":
        pids = {"tiny": [w.pid for w in pool._pool]}
        pids["tiny1m"] = pids["ms5"] = pids["tiny"]
    else:
        pids = {"tiny": [w["pid"] for w in pool._executor.stats()["workers"]]}
        pids["tiny1m"] = pids["ms5"] = [w["pid"] for w in ex.stats()["workers"]]
    print("ready", flush=True)
    for line in sys.stdin:
        case = line.strip()
        if not case:
            continue
        me0, ws0 = _task_stats(os.getpid()), [_task_stats(p) for p in pids[case]]
        t0 = time.perf_counter()
        run(case)
        t = time.perf_counter() - t0
        me1, ws1 = _task_stats(os.getpid()), [_task_stats(p) for p in pids[case]]
        n = CASES[case]
        w = [sum(b[i] - a[i] for a, b in zip(ws0, ws1, strict=True)) for i in range(4)]
        # A worker's wall time is spent on a CPU, runnable in the run queue
        # (the machine's load), or asleep: waiting for a task or for room.
        asleep = sum(t - (b[0] - a[0]) - (b[3] - a[3]) for a, b in zip(ws0, ws1, strict=True) if b[0] > 0)
        print(
            json.dumps(
                {
                    "rate": n / t,
                    "wall": t,
                    "parent_cpu_us": (me1[0] - me0[0]) / n * 1e6,
                    "workers_cpu_us": w[0] / n * 1e6,
                    "parent_vol": me1[1] - me0[1],
                    "parent_invol": me1[2] - me0[2],
                    "workers_vol": w[1],
                    "workers_invol": w[2],
                    "workers_queued_ms": w[3] * 1e3,
                    "workers_asleep_ms": asleep * 1e3,
                    "parent_queued_ms": (me1[3] - me0[3]) * 1e3,
                    # CPUs the pool's processes had on average during the map.
                    "cpus": (me1[0] - me0[0] + w[0]) / t,
                }
            ),
            flush=True,
        )
    pool.terminate()
    if ex is not pool:
        ex.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--spin", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--old", help="the old build's python")
    ap.add_argument("--new", default=sys.executable, help="the new build's python (default: this one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--under-load", action="store_true", help="a busy process per core meanwhile")
    ap.add_argument("--cases", default="tiny,tiny1m,ms5")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.spin)
        return
    cases = [c for c in args.cases.split(",") if c]
    spin_n = calibrate_spin(5e-3)
    here = os.path.abspath(__file__)
    specs = [("new", args.new, "corral"), ("mp", sys.executable, "mp")]
    if args.old:
        specs.insert(0, ("old", args.old, "corral"))
    servers = {}
    for name, py, tag in specs:
        servers[name] = subprocess.Popen(
            [py, here, "--serve", tag, "--spin", str(spin_n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(here),
        )
    for s in servers.values():
        assert s.stdout is not None and s.stdout.readline().strip() == "ready"
    from corral._bench import busy_load

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    names = list(servers)
    try:
        with busy_load(os.cpu_count() if args.under_load else 0):
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for case in cases:
                    for name in order:
                        s = servers[name]
                        assert s.stdin is not None and s.stdout is not None
                        s.stdin.write(case + "\n")
                        s.stdin.flush()
                        results.setdefault((case, name), []).append(json.loads(s.stdout.readline()))
    finally:
        for s in servers.values():
            assert s.stdin is not None
            s.stdin.close()
            s.wait()
    load = " under load" if args.under_load else ""
    print(f"median (min-max) of {args.rounds} rounds{load}; 5 ms items: spin({spin_n})")
    for case in cases:
        mp_rate = statistics.median(x["rate"] for x in results[(case, "mp")])
        for name in names:
            rs = results[(case, name)]
            rate = [x["rate"] for x in rs]
            ratios = [x["rate"] / y["rate"] for x, y in zip(rs, results[(case, "mp")], strict=True)]
            # Paired with the old build's map of the same round (adjacent in time).
            vs_old = ""
            if name == "new" and (case, "old") in results:
                paired = [x["rate"] / y["rate"] for x, y in zip(rs, results[(case, "old")], strict=True)]
                vs_old = f" vs old {statistics.median(paired):.2f}x;"
            med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
            unit = 1e3 if case == "ms5" else 1e6
            u = "k/s" if case == "ms5" else "M/s"
            print(
                f"{case:6s} {name:4s} {statistics.median(rate) / unit:6.3f} {u} ({min(rate) / unit:.3f}-"
                f"{max(rate) / unit:.3f}) vs mp {statistics.median(rate) / mp_rate:.2f}x"
                f" (per round {min(ratios):.2f}-{max(ratios):.2f});{vs_old}"
                f" CPU us/item parent {med['parent_cpu_us']:.3f} workers {med['workers_cpu_us']:.3f};"
                f" ctxsw parent {med['parent_vol']:.0f}v/{med['parent_invol']:.0f}i"
                f" workers {med['workers_vol']:.0f}v/{med['workers_invol']:.0f}i;"
                f" workers' ms runnable {med['workers_queued_ms']:.0f} asleep {med['workers_asleep_ms']:.0f};"
                f" parent's ms runnable {med['parent_queued_ms']:.0f}; CPUs used {med['cpus']:.2f}"
            )


if __name__ == "__main__":
    main()
