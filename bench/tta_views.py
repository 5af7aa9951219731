"""Would averaging more test-time views than the mirror image help a finished run?

    .venv/bin/python bench/tta_views.py RUN [RUN ...]            # validation images
    .venv/bin/python bench/tta_views.py RUN --split test         # only once a view is chosen

Scores each run folder's final weights on its own validation split (the run's `data.val`)
under four test-time views, logits averaged: the image alone; image + mirror (what
`train.tta_flip` does); those two at the 4 one-pixel shifts as well (10 views); and at all 8
(18 views). A shift moves the raw image and fills the edge with black, as training's
`augment.translate` does.
"""

from __future__ import annotations

import argparse
import os

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--split", choices=("val", "test"), default="val")
    args = p.parse_args(argv)
    hardware.keep_freed_memory()
    hardware.configure_threads()
    print(f"CPU: {hardware.cpu_description()}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"| run | split | {' | '.join(VIEWS)} |")
    print(f"|---|---|{'---|' * len(VIEWS)}")
    cache: dict[str, data.DataSet] = {}
    for path in args.runs:
        trained = inference.load_trained(path, "fp32")
        dataset = trained.config["data"]["dataset"]
        if dataset not in cache:
            cache[dataset] = data.load(dataset=dataset)
        ds = cache[dataset]
        if args.split == "test":
            x, y = ds.test_x, ds.test_y
        else:
            _, val = data.split(len(ds.train_x), trained.config["data"]["val"],
                                trained.config["train"]["seed"])
            if not len(val):
                raise SystemExit(f"{path}: the run held out no validation images")
            x, y = ds.train_x[val], ds.train_y[val]
        acc = view_accuracies(trained, torch.from_numpy(x), torch.from_numpy(y).long())
        shown = " | ".join(f"{a:.2f}" for a in acc.values())
        print(f"| {trained.run.path.name} | {args.split} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
