"""fashionlab reproduce [REPORT|all] [--seeds N] [--max-epochs N] [-o table.md]"""

from __future__ import annotations

import argparse
import shlex

from fashionlab.cli import add_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="rerun a report's recipes; table of claimed vs measured",
                       description="Train every recipe of a report (matched on the recipe's "
                       "report field or a prefix such as 'weil') and print a Markdown table of "
                       "the report's claims beside the measured accuracies.")
    p.add_argument("report", nargs="?", default="all", metavar="REPORT|RECIPES|all",
                   help="report name or author prefix, or a recipe name or glob such as "
                   "'bas-ann-*' (default: all)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="runs per recipe (seeds recipe's, +1, ...); mean ± std when N > 1")
    p.add_argument("--max-epochs", type=int, metavar="N",
                   help="cap every recipe's epochs for a quick look (the table says so)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every recipe, e.g. train.precision=fp32")
    p.add_argument("--out", metavar="DIR", help="parent folder of the run folders (default runs/)")
    p.add_argument("-o", "--output", metavar="FILE.md",
                   help="also write the table here, rewritten after each recipe")
    p.add_argument("--resume", action="store_true",
                   help="reuse finished runs of the same config in --out and resume an "
                   "interrupted one (after a kill or Ctrl-C), instead of starting afresh")
    p.add_argument("--force", action="store_true",
                   help="with --resume: resume even if the code changed since the run started")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-epoch lines")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab import reproduce, runs
    from fashionlab.errors import UserError

    if args.force and not args.resume:
        raise UserError("--force goes with --resume (a new run has nothing to force)")
    if args.output:  # before hours of training, not after the first recipe
        runs.output_file(args.output)
    command = "fashionlab " + shlex.join(argv(args))
    title = f"Reproduction: {args.report}"

    def save(rows: list) -> None:  # rewritten after each recipe: a stop keeps the rows so far
        if args.output:
            reproduce.write_markdown(args.output, reproduce.markdown(rows, title, command,
                                                                     args.seeds))

    try:
        rows = reproduce.reproduce(args.report, args.seeds, args.max_epochs, args.overrides,
                                   args.out, args.data_dir, args.quiet, on_row=save,
                                   resume=args.resume, force=args.force)
    except KeyboardInterrupt as e:  # the table is reproduce's: it resumes the stopped run too
        where = [*(["--out", args.out] if args.out else []),
                 *(["--data-dir", args.data_dir] if args.data_dir else []),
                 *(["-o", args.output] if args.output else [])]
        e.resume_command = "fashionlab " + shlex.join([*argv(args), *where, "--resume"])
        raise
    text = reproduce.markdown(rows, title, command, args.seeds)  # once: it reads the load
    if args.output:
        reproduce.write_markdown(args.output, text)  # the file is exactly what is printed
    print(text, end="")
    return 0


def argv(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces this table (rebuilt, so it holds no local paths)."""
    out = ["reproduce", args.report]
    if args.seeds != 1:
        out += ["--seeds", str(args.seeds)]
    if args.max_epochs:
        out += ["--max-epochs", str(args.max_epochs)]
    for item in args.overrides:
        out += ["--set", item]
    return out
