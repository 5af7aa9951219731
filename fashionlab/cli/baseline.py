"""fashionlab baseline logreg|svc|random-forest|knn|gradient-boosting [--train-size N]"""

from __future__ import annotations

import argparse

from fashionlab.cli import add_data_dir
from fashionlab.cli.plot import after_run

METHODS = ["logreg", "svc", "random-forest", "knn", "gradient-boosting"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="fit a classic scikit-learn model as a run",
                       description="Fit a scikit-learn classifier on flattened pixels and write "
                       "an ordinary run folder that compare and report accept.")
    p.add_argument("method", choices=METHODS)
    p.add_argument("--train-size", type=int, metavar="N", help="training images, a seeded "
                   "random subset (default: what fits in a minute or two; svc and "
                   "gradient-boosting 10000, logreg and random-forest 20000, knn all 60000)")
    p.add_argument("--seed", type=int, default=0,
                   help="picks the training subset and seeds the method (default: 0)")
    p.add_argument("--dataset", choices=["fashion-mnist", "any"], default="fashion-mnist",
                   help="any: other IDX/CSV data, unverified (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="parent folder of the run folder (default runs/)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures in RUN/plots")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or expected time")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab.baselines import run_baseline
    from fashionlab.runs import load_run

    path = run_baseline(args.method, args.train_size, args.data_dir, args.out, args.seed,
                        args.dataset, args.quiet)
    m = load_run(path).metrics
    print(f"run: {path}")
    print(f"test accuracy: {m['test_accuracy']:.4f}  test log loss: {m['test_loss']:.4f}  "
          f"fit: {m['train_seconds']:.1f} s on {m['train_size']:,} images")
    after_run(path, args)
    return 0
