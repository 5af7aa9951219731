"""fashionlab sweep RECIPE --space SPACE.toml --trials N | fashionlab sweep show [STUDY]"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fashionlab.cli import add_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="search hyperparameters with Optuna (or `sweep show STUDY`)",
        usage="fashionlab sweep RECIPE --space FILE --trials N [options]\n"
              "       fashionlab sweep show [STUDY] --storage PATH|URL [options]",
        description="Search recipe keys for the best validation accuracy; each trial is a "
        "run folder under the sweep folder. Start the same command on several processes or "
        "machines (same --storage) to share the work; rerun it to resume. "
        "`fashionlab sweep show [STUDY] --storage S` prints the best trials.")
    p.add_argument("words", nargs="+", metavar="RECIPE|show [STUDY]",
                   help="recipe name or spec TOML to sweep, or `show` and a study name")
    p.add_argument("--space", metavar="FILE", help="search space TOML (see examples/)")
    p.add_argument("--trials", type=int, help="finished trials the study should hold")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the recipe's)")
    p.add_argument("--storage", metavar="PATH|URL",
                   help="journal file (default: SWEEP_FOLDER/study.journal), "
                   "postgresql://user@host/db (many machines) or sqlite:///FILE (one worker)")
    p.add_argument("--study", metavar="NAME", help="study name (default: RECIPE-SPACE)")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default: sweeps/STUDY)")
    p.add_argument("--pruner", choices=["median", "none"], default="median",
                   help="stop trials below the median at the same epoch (default)")
    p.add_argument("--top", type=int, default=5, help="show: how many best trials to list")
    p.add_argument("--plot", metavar="FILE", help="show: history plot (default: "
                   "SWEEP_FOLDER/history.png, or STUDY-history.png here)")
    p.add_argument("--write-recipe", metavar="FILE",
                   help="show: write the best trial's config as a recipe TOML")
    p.add_argument("--quiet", "-q", action="store_true", help="no line per trial")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab.errors import UserError

    if args.words[0] == "show":
        if len(args.words) > 2:
            raise UserError("usage: fashionlab sweep show [STUDY] --storage PATH|URL")
        return _show(args, args.words[1] if len(args.words) == 2 else None)
    if len(args.words) > 1:
        raise UserError(f"sweep takes one recipe, got {' '.join(args.words)}")
    if not args.space or args.trials is None:
        raise UserError("a sweep needs --space FILE and --trials N")
    from fashionlab import sweep, sweep_results

    try:
        study = sweep.sweep(args.words[0], args.space, args.trials, epochs=args.epochs,
                            storage=args.storage, study=args.study, out=args.out,
                            data_dir=args.data_dir, pruner=args.pruner,
                            log=(lambda line: None) if args.quiet else
                            lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt as e:  # the study resumes, not the trial's run: rerun the sweep
        e.resume_command = "fashionlab " + shlex.join(_argv(args))
        raise
    print(sweep_results.show(study, args.top))
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line that goes on with this sweep."""
    out = ["sweep", args.words[0], "--space", args.space, "--trials", str(args.trials)]
    for flag, value in (("--epochs", args.epochs), ("--storage", args.storage),
                        ("--study", args.study), ("--out", args.out),
                        ("--data-dir", args.data_dir)):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--pruner", args.pruner] if args.pruner != "median" else [])


def _show(args: argparse.Namespace, name: str | None) -> int:
    from fashionlab import runs
    from fashionlab import sweep_results as results
    from fashionlab.errors import UserError

    if not args.storage:
        raise UserError("sweep show needs --storage (the sweep's journal file or database URL)")
    plot = runs.output_file(args.plot, runs.FIGURES) if args.plot else None
    recipe = runs.output_file(args.write_recipe, (".toml",)) if args.write_recipe else None
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    study = results.load_study(name, args.storage)
    print(results.show(study, args.top))
    if not any(t.value is not None for t in study.trials):
        if recipe or args.plot:
            raise UserError("no trial of the study has finished: nothing to plot or write")
        return 0
    folder = Path(study.user_attrs.get("folder", "."))
    plot = plot or (
        folder / "history.png" if folder.is_dir() else Path(f"{study.study_name}-history.png"))
    print(f"history plot: {results.plot_history(study, plot)}")
    if recipe:
        from fashionlab import config as cfg

        runs.write_text(recipe, cfg.dumps(results.best_config(study)))
        print(f"best config written to {recipe}")
    return 0
