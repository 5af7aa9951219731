"""fashionlab compare RUN RUN... [--plot FILE]"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare runs: accuracy intervals, McNemar tests",
                       description="One table of finished runs with 95% Wilson intervals, exact "
                       "McNemar tests for every pair scored on the same test images, and "
                       "mean ± std for runs that differ only in their seed.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    p.add_argument("--plot", metavar="FILE", help="also draw all runs' curves in one figure "
                   "(.png or .svg)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab import runs
    from fashionlab.compare import compare, overlay

    plot = runs.output_file(args.plot, runs.FIGURES) if args.plot else None
    result = compare(args.runs)
    print(result)
    if plot:
        print(f"\ncurves: {overlay(result, plot)}")
    return 0
