"""Rerun the reports' experiments by name and set each claim beside what we measure.

    fashionlab reproduce weil --seeds 3 -o docs/reproduction/weil.md

A report's recipes are those whose [recipe] report field names it (or starts with the given
author prefix), so a recipe file dropped into fashionlab/recipes/ joins `reproduce all` with no
list to update. The table is rewritten after every finished recipe, so stopping a long
reproduction keeps the rows already measured (and every run folder); with `resume`, running
the same command again reuses the finished runs and resumes the interrupted one.
"""

from __future__ import annotations

import datetime
import fnmatch
import math
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fashionlab import config as cfg
from fashionlab import hardware, models, runs, signals
from fashionlab.errors import DivergedError, UserError

COLUMNS = ("recipe", "claimed test", "measured test", "claimed val", "measured val",
           "difference (points)", "epochs", "s/epoch")


@dataclass
class Row:
    """One recipe's runs over all seeds; accuracies are fractions."""

    recipe: str
    claimed_test: float
    claimed_val: float
    epochs: int                       # epochs each run trained
    full_epochs: int                  # the recipe's own setting
    test: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    failed: str = ""                  # why a run did not finish (e.g. diverged)

    @property
    def capped(self) -> bool:
        return self.epochs < self.full_epochs


def header(name: str) -> dict:
    """A recipe's [recipe] table, unresolved (cheap: no model is built)."""
    doc, _ = cfg.read_source(name)
    return {**cfg.DEFAULTS["recipe"], **doc.get("recipe", {})}


def catalogue(pattern: str | None = None) -> list[dict]:
    """Every recipe matching a glob or substring, with its claim and parameter count."""
    out = []
    for name in cfg.recipe_names():
        if pattern and not (fnmatch.fnmatch(name, pattern) or pattern in name):
            continue
        config = cfg.resolve(name)
        out.append({"name": name, **config["recipe"], "engine": config["train"]["engine"],
                    "params": models.build(config["model"]["layers"]).params})
    if pattern and not out:
        raise UserError(f"no recipe matches {pattern!r}; `fashionlab recipes` lists them all")
    return out


def select(report: str) -> list[str]:
    """Recipes of one report (`all`, its report field or a prefix such as `weil`), or recipes
    named by a glob such as `bas-ann-*` or one exact name."""
    names = cfg.recipe_names()
    if report in names or any(c in report for c in "*?["):
        chosen = fnmatch.filter(names, report)
        if chosen:
            return chosen
    chosen, reports = [], set()
    for name in names:
        field_ = header(name)["report"]
        if field_:
            reports.add(field_)
        if field_ and (report == "all" or field_.startswith(report)):
            chosen.append(name)
    if not chosen:
        known = ", ".join(sorted(reports)) or "none"
        raise UserError(f"no recipe reproduces a report matching {report!r} (reports: {known}; "
                        "or use all)")
    return chosen


def _cost(name: str, overrides: list[str], max_epochs: int | None) -> int:
    """Forward FLOPs x epochs: cheap recipes run first, so their rows arrive early."""
    config = cfg.resolve(name, overrides=overrides)
    epochs = min(config["train"]["epochs"], max_epochs or config["train"]["epochs"])
    return models.build(config["model"]["layers"]).flops * epochs


RESUMABLE = ("finished", "interrupted", "running")  # not diverged or failed: those would again


def earlier_run(parent: Path, config: dict) -> Path | None:
    """A run folder under `parent` of exactly this config (same digest, so same seed and
    epochs): the finished one if any, else the latest unfinished one that can go on."""
    found = []
    for path in sorted(parent.glob(f"*-{config['model']['name']}*")):
        try:
            info = runs.read_info(path)
        except UserError:
            continue
        if (info.get("name") == config["model"]["name"] and info.get("state") in RESUMABLE
                and info.get("config_digest") == cfg.digest(config)):
            found.append((info["state"] == "finished", path.name, path))
    return max(found)[2] if found else None


def run_recipe(name: str, seeds: int = 1, max_epochs: int | None = None,
               overrides: list[str] = (), out: str | None = None,
               data_dir: str | None = None, quiet: bool = False, resume: bool = False,
               force: bool = False) -> Row:
    """Train one recipe `seeds` times (seeds recipe seed, +1, ...) and collect its figures;
    with `resume`, a run of the same config already in `out` is reused or resumed instead
    (`force`: even if the code changed since it started)."""
    from fashionlab.train import train

    config = cfg.resolve(name, overrides=overrides)
    full = config["train"]["epochs"]
    epochs = min(full, max_epochs) if max_epochs else full
    row = Row(name, config["recipe"]["claimed_test_accuracy"],
              config["recipe"]["claimed_val_accuracy"], epochs, full)
    for i in range(seeds):
        signals.raise_pending(f"before {name} seed {config['train']['seed'] + i}")
        if not quiet:
            print(f"== {name} seed {config['train']['seed'] + i}", file=sys.stderr)
        last = [f"train.epochs={epochs}", f"train.seed={config['train']['seed'] + i}"]
        earlier = resume and earlier_run(runs.parent(out),
                                         cfg.resolve(name, overrides=[*overrides, *last]))
        if earlier and not quiet:
            print(f"{name}: going on from {earlier}", file=sys.stderr)
        try:
            if earlier:
                path = train(name, resume=earlier, data_dir=data_dir, quiet=quiet, force=force)
            else:
                path = train(name, overrides=[*overrides, *last], data_dir=data_dir, out=out,
                             quiet=quiet)
        except DivergedError as e:
            row.failed = str(e)
            break
        metrics = runs.load_run(path).metrics
        row.runs.append(path)
        row.test.append(metrics["test_accuracy"])
        row.val.append(metrics.get("val_accuracy", math.nan))
        row.seconds_per_epoch.append(metrics.get("seconds_per_epoch", math.nan))
    return row


def reproduce(report: str = "all", seeds: int = 1, max_epochs: int | None = None,
              overrides: list[str] = (), out: str | None = None, data_dir: str | None = None,
              quiet: bool = False, on_row: Callable[[list[Row]], None] | None = None,
              resume: bool = False, force: bool = False) -> list[Row]:
    """Run every recipe of `report`, cheapest first; `on_row(rows so far)` follows each."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if max_epochs is not None and max_epochs < 1:
        raise UserError(f"--max-epochs must be at least 1, got {max_epochs}")
    names = sorted(select(report), key=lambda name: _cost(name, overrides, max_epochs))
    rows: list[Row] = []
    for name in names:
        rows.append(run_recipe(name, seeds, max_epochs, overrides, out, data_dir, quiet,
                               resume, force))
        if on_row:
            on_row(rows)
    return rows


def _percent(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def _difference(row: Row) -> str:
    """Measured minus claimed, on the split the report claims (test if it gives both), of the
    figures as the table prints them, so that a reader's subtraction agrees."""
    for claimed, measured, split in ((row.claimed_test, row.test, ""),
                                     (row.claimed_val, row.val, " (val)")):
        measured = [v for v in measured if not math.isnan(v)]
        if claimed and measured:
            shown = round(100 * statistics.fmean(measured), 2) - round(100 * claimed, 2)
            return f"{shown:+.2f}{split}"
    return "—"


def table_row(row: Row) -> list[str]:
    epochs = f"{row.epochs} of {row.full_epochs} (capped)" if row.capped else str(row.epochs)
    timed = [s for s in row.seconds_per_epoch if not math.isnan(s)]
    seconds = f"{statistics.fmean(timed):.1f}" if timed else "—"
    measured = _percent(row.test) + (f" (failed: {row.failed})" if row.failed else "")
    claim = [f"{100 * c:.2f}" if c else "—" for c in (row.claimed_test, row.claimed_val)]
    return [f"`{row.recipe}`", claim[0], measured, claim[1], _percent(row.val),
            _difference(row), epochs, seconds]


def cpu_was_shared(load: float) -> bool:
    """Read after training, the load average still counts our own threads (at most one per
    core), which alone bring it to about the core count: only the excess is other jobs'."""
    return load > hardware.usable_cores() + 0.5


def markdown(rows: list[Row], title: str, command: str, seeds: int = 1) -> str:
    """The reproduction table with what a reader needs to trust it: machine, date, command."""
    load = os.getloadavg()[0]
    # where the runs trained (a reused or resumed run may predate this process), else here
    machine = "; ".join(sorted({runs.machine(runs.read_info(p)) for r in rows
                                for p in r.runs})) or hardware.cpu_description()
    lines = [f"## {title}", "",
             f"- command: `{command}`",
             f"- machine: {machine}, torch {torch.__version__}",
             f"- date: {datetime.date.today().isoformat()}; load average {load:.1f} when "
             "written" + (" (above the core count: other jobs shared the CPU, so s/epoch is "
                          "inflated)" if cpu_was_shared(load) else ""),
             *_data_line(rows),
             f"- seeds: {seeds}" + (" (mean ± sample std)" if seeds > 1 else ""),
             "- accuracies in %; claimed figures are the report's; \"—\": none claimed "
             "(see `fashionlab show RECIPE` for why)"]
    if any(r.capped for r in rows):
        lines.append("- **epochs capped by --max-epochs: a quick look, not the reports' "
                     "full settings**")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _data_line(rows: list[Row]) -> list[str]:
    """Where the runs' images came from: a table measured on other files must say so, since
    its command line leaves local paths out."""
    seen = sorted({(d.get("path", "?"), bool(d.get("verified"))) for r in rows for p in r.runs
                   for d in [runs.read_info(p).get("data", {})] if d})
    if not seen:
        return []
    kinds = {True: "official Fashion-MNIST, checksums verified",
             False: "not the official Fashion-MNIST files"}
    text = "; ".join(f"{path} ({kinds[ok]})" for path, ok in seen)
    if all(ok for _, ok in seen):
        return [f"- data: {text}"]
    return [f"- **data: {text}: not comparable with the reports' figures**"]


def write_markdown(path: str | Path, text: str) -> None:
    runs.write_text(runs.output_file(path), text)
