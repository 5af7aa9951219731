"""fashionlab summary RECIPE|FILE.toml"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print a model's layers, shapes and parameter counts",
                       description="Build a model from a recipe or spec (no training) and "
                       "print a Keras-style table.")
    p.add_argument("source", metavar="RECIPE|FILE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key first, e.g. model.layers.1.units=512")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab import config, models
    from fashionlab.train import bf16_net, check_nets

    resolved = config.resolve(args.source, overrides=args.overrides)
    check_nets(resolved)
    print(models.summary(models.build(resolved["model"]["layers"])))
    wide = bf16_net(resolved)
    if wide is not None:
        print(f"\nWhere it trains in bf16, the recipe's [bf16] model:\n{models.summary(wide)}")
    return 0
