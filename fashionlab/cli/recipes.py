"""fashionlab recipes [PATTERN]"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the named recipes (the reports' experiments)",
                       description="List every shipped recipe: name, report, description, the "
                       "report's claimed test accuracy and the model's parameter count.")
    p.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help="glob or substring of the name, e.g. 'weil' or 'bas-cnn-*'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab.reproduce import catalogue

    entries = catalogue(args.pattern)
    width = max(len(e["name"]) for e in entries)
    print(f"{'recipe':<{width}}  {'report':<32}  {'claimed':>9}  {'params':>10}  description")
    for e in entries:
        claimed = (f"{100 * e['claimed_test_accuracy']:.2f}" if e["claimed_test_accuracy"]
                   else f"val {100 * e['claimed_val_accuracy']:.2f}"
                   if e["claimed_val_accuracy"] else "-")
        print(f"{e['name']:<{width}}  {e['report'] or '-':<32}  {claimed:>9}  "
              f"{e['params']:>10,}  {e['description']}")
    return 0
