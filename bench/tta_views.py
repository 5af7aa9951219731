"""Would averaging more test-time views than the mirror image help a finished run?

    .venv/bin/python bench/tta_views.py RUN [RUN ...]            # validation images
    .venv/bin/python bench/tta_views.py RUN --split test         # only once a view is chosen
    .venv/bin/python bench/tta_views.py --arm c13 'runs/c13-s*/2026*' --arm tr1 'runs/tr1-s*/2026*'

Scores each run folder's final weights on its own validation split (the run's `data.val`)
under four test-time views, logits averaged: the image alone; image + mirror (what
`train.tta_flip` does); those two at the 4 one-pixel shifts as well (10 views); and at all 8
(18 views). A shift moves the raw image and fills the edge with black, as training's
`augment.translate` does.

With `--arm NAME GLOB` (repeatable) the runs come in named groups, e.g. one setting over
several seeds, and a summary follows: each view's mean ± std per arm, and each arm minus the
first on the runs they share (same seed, same held-out images), with how many of those
differences are above zero. Pairing matters: seeds move accuracy as much as the settings do.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics

import torch

from fashionlab import data, hardware, inference
from fashionlab.augment import shift

SHIFTS8 = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
VIEWS = {  # name: (pixel offsets, mirror too)
    "alone": ([(0, 0)], False),
    "flip": ([(0, 0)], True),
    "flip+shift4": ([(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)], True),
    "flip+shift8": (SHIFTS8, True),
}


def scored_images(trained: inference.Trained, split: str, cache: dict[str, data.DataSet]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's test images, or its own held-out ones (its `data.val` and seed), as uint8
    images and int64 labels; cache keeps each data set loaded once across runs."""
    dataset = trained.config["data"]["dataset"]
    if dataset not in cache:
        cache[dataset] = data.load(dataset=dataset)
    ds = cache[dataset]
    if split == "test":
        x, y = ds.test_x, ds.test_y
    else:
        _, val = data.split(len(ds.train_x), trained.config["data"]["val"],
                            trained.config["train"]["seed"])
        if not len(val):
            raise SystemExit(f"{trained.run.path}: the run held out no validation images")
        x, y = ds.train_x[val], ds.train_y[val]
    return torch.from_numpy(x), torch.from_numpy(y).long()


def view_accuracies(trained: inference.Trained, x: torch.Tensor, y: torch.Tensor
                    ) -> dict[str, float]:
    """Accuracy % per view; turns the run's own test-time views off so each is only its own."""
    trained.config["train"].update(tta_flip=False, tta_shift=0)
    z = {(dx, dy, f): trained.logits(shift(x, dx, dy).flip(-1) if f else shift(x, dx, dy))
         for dx, dy in SHIFTS8 for f in (False, True)}
    out = {}
    for view, (offsets, mirror) in VIEWS.items():
        total = sum(z[(dx, dy, f)] for dx, dy in offsets for f in (False, True)[:1 + mirror])
        out[view] = 100 * (total.argmax(1) == y).float().mean().item()
    return out


def _spread(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def paired_summary(rows: list[tuple[str, tuple, dict[str, float]]]) -> list[str]:
    """Markdown lines from (arm, pairing key, accuracies) rows; arms in first-seen order."""
    arms: dict[str, dict[tuple, dict[str, float]]] = {}
    for arm, key, acc in rows:
        arms.setdefault(arm, {})[key] = acc
    first = next(iter(arms.values()))
    out = [f"| arm | runs | {' | '.join(VIEWS)} |", f"|---|---|{'---|' * len(VIEWS)}"]
    for arm, runs in arms.items():
        out.append(f"| {arm} | {len(runs)} | "
                   + " | ".join(_spread([a[v] for a in runs.values()]) for v in VIEWS) + " |")
    out += ["", f"| arm minus {next(iter(arms))} | pairs | {' | '.join(VIEWS)} |",
            f"|---|---|{'---|' * len(VIEWS)}"]
    for arm, runs in list(arms.items())[1:]:
        shared = [k for k in runs if k in first]
        if not shared:
            out.append(f"| {arm} | 0 |{' - |' * len(VIEWS)}")
            continue
        cells = []
        for v in VIEWS:
            d = [runs[k][v] - first[k][v] for k in shared]
            cells.append(f"{statistics.mean(d):+.2f} ({sum(x > 0 for x in d)}/{len(d)} above 0)")
        out.append(f"| {arm} | {len(shared)} | {' | '.join(cells)} |")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", help="run folders")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--arm", nargs=2, action="append", default=[], metavar=("NAME", "GLOB"),
                   help="a named group of run folders (a quoted glob); repeat to compare")
    args = p.parse_args(argv)
    runs = [("", path) for path in args.runs]
    for name, pattern in args.arm:
        found = sorted(glob.glob(pattern))
        if not found:
            p.error(f"--arm {name}: no run folder matches {pattern}")
        runs += [(name, path) for path in found]
    if not runs:
        p.error("give run folders, or --arm NAME GLOB")
    hardware.keep_freed_memory()
    hardware.configure_threads()
    print(f"CPU: {hardware.cpu_description()}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"| arm | run | split | {' | '.join(VIEWS)} |")
    print(f"|---|---|---|{'---|' * len(VIEWS)}")
    cache: dict[str, data.DataSet] = {}
    rows = []
    for arm, path in runs:
        trained = inference.load_trained(path, "fp32")
        acc = view_accuracies(trained, *scored_images(trained, args.split, cache))
        shown = " | ".join(f"{a:.2f}" for a in acc.values())
        print(f"| {arm} | {trained.run.path.name} | {args.split} | {shown} |", flush=True)
        rows.append((arm, (trained.config["train"]["seed"], trained.config["data"]["val"]), acc))
    if args.arm:
        print("", *paired_summary(rows), sep="\n")


if __name__ == "__main__":
    main()
