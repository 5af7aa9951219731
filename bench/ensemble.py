"""Would averaging several finished runs beat one? What limits `fast` and `best`.

    .venv/bin/python bench/ensemble.py RUN [RUN ...]              # validation images
    .venv/bin/python bench/ensemble.py RUN [RUN ...] --split test

Scores each run folder's final weights (with the run's own test-time views, fp32) on its
held-out images, then the ensembles of its first 2, 3, ... runs: log-probabilities averaged.
Runs are grouped by held-out split (`data.val`, and the seed for a random one), since
only runs scored on the same images can be averaged. If independently seeded nets gain
little together, their errors are the same images, and more of the same net (or more seeds
of it) cannot reach much further.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

from fashionlab import data, hardware, inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tta_views import scored_images  # noqa: E402


def ensemble_accuracies(log_probs: list[torch.Tensor], y: torch.Tensor) -> list[float]:
    """Accuracy % of the first n members averaged, for n = 1 .. len(log_probs)."""
    total = torch.zeros_like(log_probs[0])
    out = []
    for z in log_probs:
        total += z
        out.append(100 * (total.argmax(1) == y).float().mean().item())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--split", choices=("val", "test"), default="val")
    args = p.parse_args(argv)
    hardware.keep_freed_memory()
    hardware.configure_threads()
    print(f"CPU: {hardware.cpu_description()}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    cache: dict[str, data.DataSet] = {}
    groups: dict[tuple, tuple[torch.Tensor, list[torch.Tensor], list[str]]] = {}
    for path in args.runs:
        trained = inference.load_trained(path, "fp32")
        x, y = scored_images(trained, args.split, cache)
        val = "test" if args.split == "test" else trained.config["data"]["val"]
        if val.startswith("fraction"):  # a seeded random split: other seeds, other images
            val += f" (seed {trained.config['train']['seed']})"
        key = (trained.config["data"]["dataset"], val)
        _, members, names = groups.setdefault(key, (y, [], []))
        members.append(torch.log_softmax(trained.logits(x), 1))
        names.append(trained.run.path.name)
    for key, (y, members, names) in groups.items():
        single = [100 * (z.argmax(1) == y).float().mean().item() for z in members]
        print(f"\n{key[0]}, {key[1]}: {len(y)} images\n")
        print("| n | run n | run n alone % | runs 1..n averaged % | minus their mean alone |")
        print("|---|---|---|---|---|")
        rows = zip(names, single, ensemble_accuracies(members, y), strict=True)
        for n, (name, alone, together) in enumerate(rows, 1):
            print(f"| {n} | {name} | {alone:.2f} | {together:.2f} | "
                  f"{together - statistics.mean(single[:n]):+.2f} |")


if __name__ == "__main__":
    main()
