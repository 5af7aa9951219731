"""fashionlab train RECIPE|FILE.toml [options]"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fashionlab.cli import add_data_dir
from fashionlab.cli.plot import after_run
from fashionlab.hardware import DEVICES

FLAGS = {  # option -> config key
    "epochs": "train.epochs", "batch_size": "train.batch_size", "optimizer": "train.optimizer",
    "lr": "train.lr", "val": "data.val", "seed": "train.seed", "precision": "train.precision",
    "engine": "train.engine", "dataset": "data.dataset",
}


CHANCE_LEVEL = 0.15  # 10 classes: guessing scores 10%, a net that learned anything far more


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a recipe or a model spec",
                       description="Train a named recipe (see `fashionlab recipes`) or a TOML "
                       "spec file; every run writes its own folder.")
    p.add_argument("source", nargs="?", metavar="RECIPE|FILE",
                   help="recipe name or path to a spec TOML")
    p.add_argument("--model", metavar="FILE", help="spec TOML (same as giving FILE)")
    p.add_argument("--epochs", type=int, help="train.epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="train.batch_size (default: the recipe's)")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "rmsprop"])
    p.add_argument("--lr", type=float, help="learning rate (default: Keras's for the optimizer)")
    p.add_argument("--val", metavar="SPEC",
                   help="validation split: first:N | last:F | fraction:F | none")
    p.add_argument("--seed", type=int, help="train.seed: same seed, same numbers on a machine")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 only where the CPU or GPU does it natively fast")
    p.add_argument("--engine", choices=["torch", "numpy"],
                   help="numpy: the hand-written backpropagation (FC nets, CPU)")
    p.add_argument("--dataset", choices=["fashion-mnist", "any"],
                   help="any: other IDX/CSV data, unverified (same as --set data.dataset=any)")
    p.add_argument("--device", choices=DEVICES, help="where to train (default: "
                   "$FASHIONLAB_DEVICE, else auto: the GPU when PyTorch sees one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. train.lr=0.01 or model.layers.1.units=512")
    p.add_argument("--out", metavar="DIR", help="parent folder of the run folder (default runs/)")
    p.add_argument("--resume", metavar="RUN", help="continue an unfinished run folder")
    p.add_argument("--force", action="store_true", help="resume even if config or code changed")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or epoch lines")
    p.add_argument("--no-plots", action="store_true", help="skip the figures in RUN/plots")
    p.add_argument("--seeds", metavar="N|LIST", help="train several seeds, 5 (= 1..5) or "
                   "1,2,3, in one group folder with a group.json (mean ± std)")
    p.add_argument("--distributed", action="store_true", help="data-parallel over the "
                   "processes torchrun starts (gloo on CPU, NCCL on GPU); see docs/scale.md")
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
    if source is not None and args.resume is not None:
        raise UserError("--resume continues a run with its saved config: drop RECIPE|FILE "
                        "(options and --set still apply, with --force)")
    if args.lr == 0:  # in a spec, lr = 0 stands for the default; typed here, it is a slip
        raise UserError("--lr 0 would never move the weights; leave --lr out for the "
                        "optimizer's default (sgd 0.01, else 0.001)")
    if args.force and args.resume is None:
        raise UserError("--force goes with --resume (a new run has nothing to force)")
    if args.device:  # the env var carries the choice to every part, and to torchrun's ranks
        os.environ["FASHIONLAB_DEVICE"] = args.device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not args.distributed:
        raise UserError(f"started as one of {world} processes (torchrun) without --distributed: "
                        "each would train the whole model alone; add --distributed")
    if args.resume is not None and (Path(args.resume) / "group.json").is_file():
        return _resume_group(args)
    finished = args.resume is not None and load_run(args.resume, require_finished=False).finished
    if finished:
        print(f"{args.resume} is already finished; nothing to resume (to train it longer, "
              f"start a new run: fashionlab train {Path(args.resume) / 'config.toml'} "
              "--epochs N)", file=sys.stderr)
    flags = {key: getattr(args, name) for name, key in FLAGS.items()}
    if args.seeds:
        return _seeds(args, source, flags)
    if args.distributed:
        from fashionlab import distributed

        distributed.setup()
    path = train(source, flags=flags, overrides=args.overrides, data_dir=args.data_dir,
                 out=args.out, quiet=args.quiet, resume=args.resume, force=args.force)
    if path is None:  # a distributed run's other ranks: rank 0 reports
        return 0
    run = load_run(path)
    m = run.metrics
    print(f"run: {path}")
    print(f"test accuracy: {m['test_accuracy']:.4f}  test loss: {m['test_loss']:.4f}  "
          f"epochs: {m['epochs_run']}  {m['seconds_per_epoch']:.1f} s/epoch")
    if not finished and m["test_accuracy"] < CHANCE_LEVEL:
        print(f"warning: test accuracy {m['test_accuracy']:.1%} is chance level (10 classes): "
              "the net learned nothing; a learning rate far too high or too low is the usual "
              "cause", file=sys.stderr)
    if args.resume and "--no-plots" in run.info.get("command", "").split():
        args.no_plots = True  # as the run was started
    if not finished:  # a finished run has its figures, or was asked for none
        after_run(run, args)
    return 0


def _resume_group(args: argparse.Namespace) -> int:
    """`--resume GROUP`: the group's own config and seeds; options would split the group."""
    from fashionlab import seeds
    from fashionlab.errors import UserError

    given = [name for name, key in FLAGS.items() if getattr(args, name) is not None]
    if given or args.overrides or args.seeds or args.distributed:
        raise UserError("--resume GROUP finishes the seeds with the config they began with: "
                        "drop other options")
    group = seeds.resume_group(args.resume, quiet=args.quiet, force=args.force,
                               data_dir=args.data_dir)
    print(f"group: {group}")
    print(seeds.format_group(group))
    return 0


def _seeds(args: argparse.Namespace, source: str, flags: dict) -> int:
    from fashionlab import seeds
    from fashionlab.errors import UserError

    if args.resume or args.distributed or args.seed is not None:
        raise UserError("--seeds runs new runs, one process each: drop --resume, "
                        "--distributed and --seed")
    group = seeds.train_seeds(source, seeds.parse_seeds(args.seeds), flags=flags,
                              overrides=args.overrides, data_dir=args.data_dir, out=args.out,
                              quiet=args.quiet)
    print(f"group: {group}")
    print(seeds.format_group(group))
    return 0
