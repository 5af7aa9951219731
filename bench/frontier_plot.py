"""Accuracy vs minutes for finished runs: the frontier figure of docs/speed.md.

    .venv/bin/python bench/frontier_plot.py /tmp/frontier/*/* --out docs/figures/frontier.png

Each run is one point at (its training minutes, its test accuracy), labelled with its model
name; a run's validation accuracy after each epoch is drawn as a line, since that is what the
recipes were chosen on. Minutes are the loop's own (train + validation), without start-up.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", default="docs/figures/frontier.png")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fashionlab import hardware, runs

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cpu = None
    for path in args.runs:
        try:
            run = runs.load_run(path, require_finished=False)
        except Exception as e:  # a folder that is not a run: say so and go on
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        run_cpu = run.info.get("cpu") or ""
        threads = re.search(r"\d+ threads?", run_cpu)
        cpu = cpu or re.sub(r", \d+ threads?", "", run_cpu)
        minutes, total = [], 0.0
        for row in run.history:
            total += float(row["seconds"])
            minutes.append(total / 60)
        name = (f"{run.info.get('name') or Path(path).name} seed {run.info.get('seed', '?')}, "
                f"{len(run.history)} ep, {threads.group(0) if threads else '?'}, "
                f"{run.info.get('params', 0):,} params")
        val = [100 * float(row["val_accuracy"]) for row in run.history]
        has_val = not all(math.isnan(v) for v in val)  # a fit on all training images has none
        (line,) = ax.plot(minutes, val, alpha=0.5,
                          label=f"{name} (val, per epoch)" if has_val else f"{name} (no val split)")
        if run.metrics:
            acc = 100 * run.metrics["test_accuracy"]
            ax.scatter([minutes[-1]], [acc], color=line.get_color(), zorder=3)
            ax.annotate(f"test {acc:.2f}%", (minutes[-1], acc), fontsize=8,
                        xytext=(4, -10), textcoords="offset points")
    ax.axhline(94, color="grey", lw=0.8, ls="--")
    ax.axhline(95, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training minutes (loop time)")
    ax.set_ylabel("accuracy %")
    ax.set_title(f"Fashion-MNIST frontier on {cpu or hardware.cpu_description()}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
