"""fashionlab show RECIPE|FILE.toml"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a recipe's full resolved config as TOML",
                       description="Print the resolved TOML of a recipe (every option, defaults "
                       "included), ready to copy, edit and train with `fashionlab train FILE`.")
    p.add_argument("source", metavar="RECIPE|FILE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key before printing, e.g. train.epochs=3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab import config

    print(config.dumps(config.resolve(args.source, overrides=args.overrides)), end="")
    return 0
