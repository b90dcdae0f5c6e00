"""A small message's put + get on one corral.Queue, and send + recv on one
corral.Pipe, in one process: the CPU time per round trip (``time.process_time``,
load-independent), builds taking turns round after round, each round a
fresh interpreter. For changes to the put/send path itself (a test or a
block added to every put costs it directly).

    python benches/ab_put.py [--rounds N] [--n N] [--size BYTES] [--old-python PATH]

``--old-python``: the other build's interpreter (run with ``PYTHONPATH``
unset: its own checkout). Prints, per build and case, the median and range
over the rounds, in nanoseconds per round trip, and the new/old ratio of
the medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

_PROBE = r"""
import json, sys, time
import corral
n, size = int(sys.argv[1]), int(sys.argv[2])
msg = b"x" * size
out = {}
def per_round_trip(put, get):
    for _ in range(2000):
        put(msg); get()
    t = time.process_time()
    for _ in range(n):
        put(msg); get()
    return (time.process_time() - t) / n * 1e9
q = corral.Queue()
out["queue put+get"] = per_round_trip(q.put, q.get)
a, b = corral.Pipe()
out["pipe send+recv"] = per_round_trip(a.send, b.recv)
print(json.dumps(out))
"""


def _run(python: str, n: int, size: int, clean: bool) -> dict[str, float]:
    env = dict(os.environ)
    if clean:
        env.pop("PYTHONPATH", None)
    r = subprocess.run([python, "-c", _PROBE, str(n), str(size)], capture_output=True, text=True, env=env, check=True)
    result: dict[str, float] = json.loads(r.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=200_000, help="round trips per measure")
    ap.add_argument("--size", type=int, default=100, help="message bytes")
    ap.add_argument("--old-python", metavar="PATH", help="the old build's interpreter")
    args = ap.parse_args()
    builds = [("new", sys.executable, False)]
    if args.old_python:
        builds.insert(0, ("old", args.old_python, True))
    seen: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in builds}
    for _ in range(args.rounds):
        for label, python, clean in builds:
            for case, ns in _run(python, args.n, args.size, clean).items():
                seen[label].setdefault(case, []).append(ns)
    for case in seen["new"]:
        medians = {}
        for label, _, _ in builds:
            v = sorted(seen[label][case])
            medians[label] = statistics.median(v)
            print(f"{case:16} {label:4} {medians[label]:7.0f} ns (range {v[0]:.0f}-{v[-1]:.0f})")
        if "old" in medians:
            print(f"{case:16} new/old {medians['new'] / medians['old']:.3f}")


if __name__ == "__main__":
    main()
