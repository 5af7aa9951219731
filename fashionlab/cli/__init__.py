"""The `fashionlab` command: a thin face over the Python API.

    fashionlab --help

Each subcommand lives in its own module here with `register(subparsers)`; heavy imports
happen inside the command, so `--help` is instant. Exit codes: 0 ok, 2 bad input or config
(one line on stderr), 1 other failure, 130 on Ctrl-C (143 on SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fashionlab import __version__
from fashionlab.errors import UserError

COMMANDS = ["train", "evaluate", "summary", "data", "quickstart", "recipes", "show", "reproduce",
            "plot", "compare", "baseline", "report", "sweep", "predict", "export", "serve"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fashionlab", description="Build, train, evaluate and compare "
                    "image classifiers on Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"fashionlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"fashionlab.cli.{name}").register(sub)
    return parser


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR", help="folder with the IDX or CSV files "
                   "(default: $FASHIONLAB_DATA, then /usr/share/datasets/fashion-mnist)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from fashionlab import signals

    signals.clear_pending()
    try:
        return args.func(args) or 0
    except UserError as e:
        if args.debug:
            raise
        print(f"fashionlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # exit 130 (SIGINT) or 143 (SIGTERM), as shells report
        run_dir = getattr(e, "run_dir", None)
        command = getattr(e, "resume_command", None) or (
            f"fashionlab train --resume {run_dir}" if run_dir else None)
        resume = f"; resume with: {command}" if command else ""
        print(f"fashionlab: {str(e) or 'interrupted'}{resume}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except BrokenPipeError:  # `fashionlab ... | head` closed our output: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the machine said no (permissions, a full or read-only disk, ...)
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"fashionlab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: say so in one line unless --debug
        if args.debug:
            raise
        print(f"fashionlab: internal error: {type(e).__name__}: {e} "
              "(rerun as `fashionlab --debug ...` for the traceback)", file=sys.stderr)
        return 1
