"""``python -m corral``: ``demo`` (the main job) and ``info``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m corral", description="corral command line")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job and compare it with the standard library")
    demo.add_argument("--quick", action="store_true", help="a smaller run (seconds)")
    sub.add_parser("info", help="version, build and machine limits")
    args = ap.parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        return run(quick=args.quick)
    from ._info import report

    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
