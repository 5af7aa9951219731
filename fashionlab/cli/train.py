"""fashionlab train RECIPE|FILE.toml [options]"""

from __future__ import annotations

import argparse
import sys

from fashionlab.cli import add_data_dir

FLAGS = {  # option -> config key
    "epochs": "train.epochs", "batch_size": "train.batch_size", "optimizer": "train.optimizer",
    "lr": "train.lr", "val": "data.val", "seed": "train.seed", "precision": "train.precision",
    "engine": "train.engine",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a recipe or a model spec",
                       description="Train a named recipe (see `fashionlab recipes`) or a TOML "
                       "spec file; every run writes its own folder.")
    p.add_argument("source", nargs="?", metavar="RECIPE|FILE",
                   help="recipe name or path to a spec TOML")
    p.add_argument("--model", metavar="FILE", help="spec TOML (same as giving FILE)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "rmsprop"])
    p.add_argument("--lr", type=float, help="learning rate (default: Keras's for the optimizer)")
    p.add_argument("--val", metavar="SPEC",
                   help="validation split: first:N | last:F | fraction:F | none")
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--engine", choices=["torch", "numpy"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. train.lr=0.01 or model.layers.1.units=512")
    p.add_argument("--out", metavar="DIR", help="parent folder of the run folder (default runs/)")
    p.add_argument("--resume", metavar="RUN", help="continue an unfinished run folder")
    p.add_argument("--force", action="store_true", help="resume even if config or code changed")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or epoch lines")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab.errors import UserError
    from fashionlab.runs import load_run
    from fashionlab.train import train

    if args.source and args.model:
        raise UserError("give either RECIPE|FILE or --model FILE, not both")
    source = args.source or args.model
    if source is None and args.resume is None:
        raise UserError("name a recipe or a spec file (fashionlab recipes lists them)")
    flags = {key: getattr(args, name) for name, key in FLAGS.items()}
    path = train(source, flags=flags, overrides=args.overrides, data_dir=args.data_dir,
                 out=args.out, quiet=args.quiet, resume=args.resume, force=args.force)
    run = load_run(path)
    if args.resume and run.info.get("reason") != "resumed":
        print(f"{path} is already finished", file=sys.stderr)
    m = run.metrics
    print(f"run: {path}")
    print(f"test accuracy: {m['test_accuracy']:.4f}  test loss: {m['test_loss']:.4f}  "
          f"epochs: {m['epochs_run']}  {m['seconds_per_epoch']:.1f} s/epoch")
    return 0
