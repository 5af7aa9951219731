"""fashionlab quickstart: what `make run` does: a small FC net and a small CNN, end to end."""

from __future__ import annotations

import argparse

from fashionlab.cli import add_data_dir

RECIPES = ("quick-fc", "quick-cnn")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train a small FC net and a small CNN (a few minutes)",
                       description="Train the quick-fc and quick-cnn recipes on the real data "
                       "and print their test accuracies.")
    p.add_argument("--out", metavar="DIR", help="parent folder of the run folders (default runs/)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or epoch lines")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab import data, hardware, signals
    from fashionlab.runs import load_run
    from fashionlab.train import train

    ds = data.load(args.data_dir)
    print(f"data: {ds.source} ({ds.path}), verified: {'yes' if ds.verified else 'no'}")
    print(f"cpu:  {hardware.cpu_description()}")
    results = []
    for name in RECIPES:
        signals.raise_pending(f"before {name}")
        if not args.quiet:
            print(f"\n== {name}")
        run = load_run(train(name, data_dir=args.data_dir, out=args.out, quiet=args.quiet))
        results.append((name, run))
    print(f"\n{'recipe':<12}{'test accuracy':>15}{'s/epoch':>10}  run folder")
    for name, run in results:
        m = run.metrics
        print(f"{name:<12}{m['test_accuracy']:>15.4f}{m['seconds_per_epoch']:>10.1f}  {run.path}")
    return 0
