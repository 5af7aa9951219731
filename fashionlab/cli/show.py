"""fashionlab show RECIPE|FILE.toml"""

from __future__ import annotations

import argparse
import sys


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

    resolved = config.resolve(args.source, overrides=args.overrides)
    print(config.dumps(resolved), end="")
    if config.bf16_keys(resolved):  # say which half of the recipe this machine would run
        from fashionlab import hardware, models

        net = models.build(resolved["model"]["layers"])
        precision = hardware.resolve_precision(resolved["train"]["precision"],
                                               hardware.device(), net.conv_flops)
        print(f"here ({hardware.cpu_description()}) it trains in {precision}: the [bf16] keys "
              f"{'apply' if precision == 'bf16' else 'do not apply'}", file=sys.stderr)
    return 0
