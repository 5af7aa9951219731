"""Compare finished runs honestly: accuracy with its uncertainty, and whether a gap is real.

    fashionlab compare runs/A runs/B runs/C --plot curves.png

Each run's test accuracy comes with a 95% Wilson interval. Every pair of runs scored on the
same test images gets an exact McNemar test on per-image correctness (from the run's
predictions.safetensors). Runs whose configs differ only in train.seed are grouped and
summarised as mean ± std over seeds, the honest way to quote a recipe's accuracy.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashionlab import callable_module, data, runs, stats
from fashionlab import config as cfg
from fashionlab.errors import UserError


@dataclass
class Entry:
    """One run's row of the comparison table."""

    run: runs.Run
    model: str
    params: int
    epochs: int
    seconds: float
    accuracy: float
    interval: tuple[float, float]
    correct: np.ndarray | None
    labels: np.ndarray | None
    group: str
    seed: int | None


@dataclass
class Comparison:
    entries: list[Entry]
    pairs: list[tuple[int, int, stats.McNemar]] = field(default_factory=list)
    unpaired: list[tuple[int, int]] = field(default_factory=list)
    groups: list[tuple[str, list[int], float, float]] = field(default_factory=list)

    def __str__(self) -> str:
        return format_comparison(self)


def seed_group(run: runs.Run) -> str:
    """A digest of everything that sets the result except the seed: equal digests = same recipe
    on the same data (the files' SHA-256, or the folder for runs that did not record them)."""
    config = copy.deepcopy(run.config)
    config.get("train", {}).pop("seed", None)
    recorded = run.info.get("data", {})
    return cfg.digest({**config, "baseline": run.info.get("baseline", {}),
                       "data": data.by_content(recorded.get("sha256") or {})
                       or recorded.get("path", "")})


def entry(run: runs.Run) -> Entry:
    m = run.metrics
    correct = labels = None
    if (run.path / "predictions.safetensors").exists():
        probs, labels = run.predictions()
        correct = probs.argmax(1) == labels
        accuracy = float(correct.mean()) if len(labels) else math.nan
        interval = stats.wilson_interval(int(correct.sum()), len(labels))
    else:
        accuracy, interval = float(m.get("test_accuracy", math.nan)), (math.nan, math.nan)
    return Entry(run, run.config.get("model", {}).get("name") or run.name,
                 int(m.get("params", 0)), int(m.get("epochs_run", 0)),
                 float(m.get("train_seconds", math.nan)), accuracy, interval, correct, labels,
                 seed_group(run), run.config.get("train", {}).get("seed"))


def compare(items: list[runs.Run | str | Path]) -> Comparison:
    """Table rows, pairwise McNemar tests and seed groups for finished runs."""
    loaded = [r if isinstance(r, runs.Run) else runs.load_run(r) for r in items]
    seen: set[Path] = set()
    for r in loaded:  # a run against itself: a test of nothing, and a seed group of one seed
        if r.path.resolve() in seen:
            raise UserError(f"{r.path} is listed twice")
        seen.add(r.path.resolve())
    result = Comparison([entry(r) for r in loaded])
    es = result.entries
    for i in range(len(es)):
        for j in range(i + 1, len(es)):
            a, b = es[i], es[j]
            if a.labels is not None and b.labels is not None and np.array_equal(a.labels,
                                                                                  b.labels):
                result.pairs.append((i, j, stats.mcnemar(a.correct, b.correct)))
            else:
                result.unpaired.append((i, j))
    by_group: dict[tuple, list[int]] = {}
    for i, e in enumerate(es):  # one recipe's seeds, scored on the same test images
        test_set = None if e.labels is None else (len(e.labels), e.labels.tobytes())
        by_group.setdefault((e.group, test_set), []).append(i)
    for members in by_group.values():
        seeds = {es[i].seed for i in members}
        if len(members) > 1 and len(seeds) == len(members):
            mean, std = stats.mean_std([es[i].accuracy for i in members])
            result.groups.append((es[members[0]].model, members, mean, std))
    return result


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 100:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)  # round first: 239.6 s is 4 min 00 s
    return f"{minutes} min {rest:02d} s"


def format_comparison(c: Comparison) -> str:
    lines = [f"{'#':>2}  {'run':<34} {'model':<22} {'params':>10} {'epochs':>6} {'time':>10}"
             "  test accuracy [95% CI]"]
    for i, e in enumerate(c.entries, 1):
        low, high = e.interval
        ci = f"[{low:.4f}, {high:.4f}]" if not math.isnan(low) else "(no predictions)"
        lines.append(f"{i:>2}  {e.run.name[:34]:<34} {e.model[:22]:<22} {e.params:>10,} "
                     f"{e.epochs:>6} {duration(e.seconds):>10}  {e.accuracy:.4f} {ci}")
    if c.pairs:
        n = len(c.entries[c.pairs[0][0]].labels)
        lines += ["", f"exact McNemar test on per-image correctness ({n:,} test images; "
                  "b = only the first right, c = only the second right):"]
        for i, j, t in c.pairs:
            verdict = "differ (p < 0.05)" if t.p_value < 0.05 else "no significant difference"
            lines.append(f"  #{i + 1} vs #{j + 1}:  b = {t.only_a:<5} c = {t.only_b:<5} "
                         f"p = {t.p_text:<9} {verdict}")
        if len(c.pairs) > 1:
            lines.append(f"  ({len(c.pairs)} tests: for a 5% family-wise error rate use "
                         f"p < {0.05 / len(c.pairs):.2g}, Bonferroni)")
    for i, j in c.unpaired:
        lines.append(f"  #{i + 1} vs #{j + 1}: not tested (different test sets or no predictions)")
    if c.groups:
        lines += ["", "same config, different seeds (mean ± sample std of test accuracy):"]
        for model, members, mean, std in c.groups:
            ids = ", ".join(f"#{i + 1}" for i in members)
            lines.append(f"  {model}: {mean:.4f} ± {std:.4f} over {len(members)} seeds ({ids})")
    return "\n".join(lines)


def overlay(c: Comparison, path: str | Path) -> Path:
    """Save the curves of every run with a history in one figure (format from the suffix)."""
    from fashionlab import plots

    path = runs.output_file(path, runs.FIGURES)
    fig = plots.overlay_figure([(f"#{i} {e.model}", e.run.history)
                                for i, e in enumerate(c.entries, 1) if e.run.history])
    return plots.save(fig, path.with_suffix(""), (path.suffix.lstrip(".") or "png",))[0]


callable_module(__name__)  # fashionlab.compare(runs) is this module's compare()
