"""fashionlab report RUN... -o report.html"""

from __future__ import annotations

import argparse

from fashionlab.cli import add_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML study report",
                       description="One HTML file (figures inline, works offline, printable): "
                       "data, comparison with significance tests, and each run's command, "
                       "model, curves, confusion matrix, per-class scores and mistakes.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    p.add_argument("-o", "--output", metavar="FILE", default="report.html",
                   help="HTML file to write (default report.html)")
    p.add_argument("--title", default="Fashion-MNIST study")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab.report import write

    path = write(args.runs, args.output, args.title, args.data_dir)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
