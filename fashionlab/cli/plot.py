"""fashionlab plot RUN [--out DIR]"""

from __future__ import annotations

import argparse

from fashionlab.cli import add_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a run's curves, confusion matrices and mistakes",
                       description="Write PNG and SVG figures of a finished run into RUN/plots: "
                       "curves, test and train confusion, per-class scores, samples, mistakes.")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--out", metavar="DIR", help="folder for the figures (default RUN/plots)")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab.plots import plot_run

    done = plot_run(args.run, data_dir=args.data_dir, out=args.out)
    report(done)
    return 0


def after_run(run, args: argparse.Namespace) -> None:
    """`train` and `baseline` draw a new run's figures unless --no-plots."""
    if args.no_plots:
        return
    from fashionlab.plots import plot_run

    report(plot_run(run, data_dir=args.data_dir))


def report(done) -> None:
    """Shared with `train` and `baseline`: where the figures went and what was skipped."""
    import sys

    if done.files:
        names = sorted({f.stem for f in done.files})
        print(f"plots: {done.files[0].parent}/ ({', '.join(names)}; png + svg)")
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
