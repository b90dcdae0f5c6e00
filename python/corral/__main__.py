"""``python -m corral``: ``demo`` (the main job), ``bench``, ``soak`` and ``info``."""

from __future__ import annotations

import argparse
import os
import sys

from ._bench import run as run_bench
from ._info import report
from .errors import missing_extra


def main(argv: list[str] | None = None) -> int:
    """Runs the subcommand named in ``argv`` (``sys.argv[1:]`` if None);
    returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m corral", description="corral command line")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job and compare it with the standard library")
    demo.add_argument("--quick", action="store_true", help="a smaller run (about 10 s on an idle 2-core machine)")
    demo.add_argument(
        "--out", metavar="DIR", default=None, help="where the table (demo.md) and chart (demo.png) go (./corral-demo)"
    )
    sub.add_parser("info", help="version, build and machine limits")
    bench = sub.add_parser("bench", help="run every peer benchmark; print ratios (needs a checkout)")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    bench.add_argument("--markdown", metavar="FILE", help="append the tables to FILE")
    bench.add_argument("--plot", metavar="PNG", help="draw the ratios (needs matplotlib)")
    bench.add_argument("--from", dest="source", metavar="FILE", help="plot the tables in FILE; run nothing")
    bench.add_argument(
        "--no-load", dest="load", action="store_false", help="skip the runs under load (a busy process per core)"
    )
    soak = sub.add_parser("soak", help="a pool and a queue under random SIGKILLs; checks every result (needs numpy)")
    soak.add_argument("--seconds", type=float, default=300.0, help="how long to run (default 300)")
    soak.add_argument("--seed", type=int, default=None, help="seed of the random choices (default: random)")
    soak.add_argument(
        "--tolerate", action="append", default=[], metavar="ISSUE", help="report a known, unfixed issue without failing"
    )
    args = ap.parse_args(argv)
    # demo and soak import numpy (and the demo scikit-learn) at their top,
    # which the package does not need: imported for their command only.
    if args.command == "demo":
        try:
            # The demo imports them where it trains, draws and shows bars: checked before it starts.
            import matplotlib  # noqa: F401
            import sklearn  # noqa: F401
            import tqdm  # noqa: F401

            from .demo.run import run
        except ImportError as e:
            raise missing_extra("python -m corral demo", "demo", e) from e

        return run(quick=args.quick, out=args.out)
    if args.command == "bench":
        return run_bench(args.quick, args.markdown, args.plot, args.source, load=args.load)
    if args.command == "soak":
        from ._soak import run as run_soak

        return run_soak(args.seconds, args.seed, tolerate=tuple(args.tolerate))
    try:
        print(report(), flush=True)
    except BrokenPipeError:
        # The reader left (`python -m corral info | head`): as the Python
        # docs advise, no traceback, and stdout pointed at /dev/null so the
        # interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
