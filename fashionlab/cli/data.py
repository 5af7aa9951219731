"""fashionlab data info"""

from __future__ import annotations

import argparse

from fashionlab.cli import add_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect the data set", description="Data set commands.")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = dsub.add_parser("info", help="source, path, checksums, counts and class balance",
                           description="Load the data set and print where it came from, "
                           "whether its checksums match, and its class balance.")
    info.add_argument("--dataset", choices=["fashion-mnist", "any"], default="fashion-mnist",
                      help="any: other IDX/CSV data, unverified (default: %(default)s)")
    add_data_dir(info)
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from fashionlab import data

    ds = data.load(args.data_dir, args.dataset)
    print(f"source:   {ds.source}")
    print(f"path:     {ds.path}")
    print(f"verified: {'yes, SHA-256 of all four files match' if ds.verified else 'no'}"
          + (" (of the decompressed contents; CSV: of the set of rows)" if ds.files else ""))
    for name, digest in ds.files.items():
        print(f"  {name:<30} sha256 {digest[:16]}...")
    print(f"train:    {len(ds.train_y)} images {ds.train_x.shape[1]}x{ds.train_x.shape[2]}")
    print(f"test:     {len(ds.test_y)} images")
    train_counts, test_counts = data.class_counts(ds.train_y), data.class_counts(ds.test_y)
    print(f"{'class':<14}{'train':>8}{'test':>8}")
    for name, a, b in zip(ds.classes, train_counts, test_counts, strict=True):
        print(f"{name:<14}{a:>8}{b:>8}")
    return 0
