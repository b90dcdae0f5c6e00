"""A/B of ``corral.DataLoader`` between two corral builds, beside torch's
DataLoader and the same loop with no workers, interleaved in one run.

    python benches/ab_dataloader.py --old PATH [--new PATH] [--rounds N] [--torch] [--case small|large]

Two servers are started with this interpreter, one importing corral from
``--old`` (a checkout's ``python`` folder holding its built extension,
e.g. ``/work/main/python``), one from ``--new`` (default: this checkout's).
Each makes bench_dataloader's dataset (``small``: 60k 28x28 images, batch
256; ``large``: 320 3x512x512 float32, batch 16) and, with ``--torch``,
imports torch first, as a training script does. Every round runs one
epoch of each implementation, in an order reversed every other round, so
that all see the machine's same moments: corral old and new with 2
workers (fork, non-persistent: each epoch starts its workers), the new
build's loop with no workers and, with ``--torch``, torch's DataLoader.
Per epoch a server reports the wall time and the CPU of its main process
and of the epoch's workers (counted once they have exited; that wait is
not timed). Printed: medians (range over the rounds) and, per round, each
build's ratio to the no-worker loop of that round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def serve(case: str, with_torch: bool) -> None:
    """The server: one epoch per line read ("corral", "none", "torch")."""
    if with_torch:
        import torch
        import torch.utils.data
    sys.path.insert(0, HERE)
    import bench_dataloader as b
    import corral

    ds: Any = b.Digits() if case == "small" else b.Photos()
    bs = 256 if case == "small" else 16

    def make(kind: str) -> Any:
        if kind == "corral":
            return corral.DataLoader(ds, batch_size=bs, num_workers=2)
        if kind == "torch":
            return torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=2)
        return corral.DataLoader(ds, batch_size=bs)

    for kind in ("corral", "none", "torch") if with_torch else ("corral", "none"):
        b.epoch(lambda kind=kind: make(kind))  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        kind = line.strip()
        print(json.dumps(b.epoch(lambda kind=kind: make(kind))), flush=True)


def main() -> None:
    """Runs the A/B and prints its table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="PYTHONPATH of the old build (its python folder)")
    ap.add_argument("--new", default=os.path.join(os.path.dirname(HERE), "python"), help="PYTHONPATH of the new build")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--torch", action="store_true", help="import torch in the servers and run torch's DataLoader")
    ap.add_argument("--case", choices=("small", "large"), default="small")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.case, args.torch)
        return
    servers = {}
    for build, path in (("old", args.old), ("new", args.new)):
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--old", "-", "--case", args.case]
        env = dict(os.environ, PYTHONPATH=path)
        p = subprocess.Popen(
            cmd + (["--torch"] if args.torch else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert p.stdin is not None and p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {build} server did not start")
        servers[build] = p
    runs = [("old", "corral"), ("new", "corral"), ("new", "none")] + ([("new", "torch")] if args.torch else [])
    got: dict[tuple[str, str], list[tuple[float, float, float]]] = {r: [] for r in runs}
    for i in range(args.rounds):
        for build, kind in runs if i % 2 == 0 else runs[::-1]:
            p = servers[build]
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(kind + "\n")
            p.stdin.flush()
            got[(build, kind)].append(tuple(json.loads(p.stdout.readline())))  # type: ignore[arg-type]
    for p in servers.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    n = 60_000 if args.case == "small" else 320

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"

    base = statistics.median(t for t, _, _ in got[("new", "none")])
    print(f"case {args.case}, torch imported: {args.torch}, {args.rounds} rounds, load {os.getloadavg()[0]:.1f}")
    for (build, kind), xs in got.items():
        print(
            f"{build:3s} {kind:6s}  k samples/s {med([n / t / 1e3 for t, _, _ in xs])}"
            f"  wall ms {med([t * 1e3 for t, _, _ in xs])}"
            f"  CPU ms main {med([c * 1e3 for _, c, _ in xs])} + workers {med([w * 1e3 for _, _, w in xs])}"
            f"  vs no workers {base / statistics.median(t for t, _, _ in xs):.2f}x"
        )
    for build in ("old", "new"):
        ratios = [none[0] / mine[0] for mine, none in zip(got[(build, "corral")], got[("new", "none")], strict=True)]
        print(f"{build} corral vs no workers, per round: " + " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
