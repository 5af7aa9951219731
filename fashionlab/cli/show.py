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


def check_builds(resolved: dict) -> None:
    """Build the model as `train` would, so that a bad layer is an error here too."""
    from fashionlab import models
    from fashionlab.train import check_config

    check_config(resolved)
    if resolved["train"]["engine"] == "numpy":
        import numpy as np

        from fashionlab import numpy_engine, numpy_net

        numpy_engine.check_config(resolved)
        numpy_net.build(resolved["model"]["layers"], np.random.default_rng(0))
    else:
        models.build(resolved["model"]["layers"])


def run(args: argparse.Namespace) -> int:
    from fashionlab import config

    resolved = config.resolve(args.source, overrides=args.overrides)
    check_builds(resolved)  # "ready to train" only if it would
    print(config.dumps(resolved), end="")
    train = resolved["train"]
    if not train["lr"]:  # stderr: the TOML on stdout stays the file to copy
        print(f"train.lr = 0 means {train['optimizer']}'s Keras default, "
              f"{config.learning_rate(train):g}", file=sys.stderr)
    if config.bf16_keys(resolved):  # say which half of the recipe this machine would run
        from fashionlab import hardware, models
        from fashionlab.train import bf16_net

        net = models.build(resolved["model"]["layers"])
        precision = hardware.resolve_precision(resolved["train"]["precision"],
                                               hardware.device(), net.conv_flops)
        line = (f"here ({hardware.cpu_description()}) it trains in {precision}: the [bf16] "
                f"keys {'apply' if precision == 'bf16' else 'do not apply'}")
        wide = bf16_net(resolved)  # both nets built: shapes checked
        if wide is not None:
            line += f" (its [bf16] model: {wide.params:,} parameters; the recipe's: {net.params:,})"
        print(line, file=sys.stderr)
    return 0
