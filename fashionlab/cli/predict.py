"""fashionlab predict RUN IMAGE|DIR... [--json] [--top-k 3] [--save-preprocessed DIR]"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify your own photos with a trained run",
                       description="Classify image files (PNG, JPEG, WebP, GIF, BMP). Each photo "
                       "is made to look like Fashion-MNIST first: inverted if the background is "
                       "light, cropped to the object, longest side 28 px, centred on black.")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("paths", metavar="IMAGE|DIR", nargs="+",
                   help="image files or folders (walked; hidden files skipped)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="classes shown per image (default: 3)")
    p.add_argument("--save-preprocessed", metavar="DIR",
                   help="also write each 28x28 model input as a PNG into DIR")
    p.set_defaults(func=run)


def image_files(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Files named on the command line, plus every non-hidden file under each folder (sorted).

    Links are not followed out of a folder: a link resolving outside it is reported instead.
    """
    files, problems = [], []
    for arg in paths:
        top = Path(arg)
        if not top.is_dir():
            files.append(top)
            continue
        root = top.resolve()
        for folder, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(n for n in names if not n.startswith(".")):
                path = Path(folder, name)
                if not path.resolve().is_relative_to(root):
                    problems.append(f"{path}: links outside {top}, skipped")
                else:
                    files.append(path)
    return files, problems


def safe_name(index: int, path: Path) -> str:
    """A file name that cannot escape the output folder: index prefix, tame characters only."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_")[:60] or "image"
    return f"{index:04d}-{stem}.png"


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from fashionlab import photos
    from fashionlab.errors import UserError
    from fashionlab.inference import load_trained

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    trained = load_trained(args.run)
    files, problems = image_files(args.paths)
    good, inputs = [], []
    for path in files:
        try:
            inputs.append(photos.load(path))
            good.append(path)
        except UserError as e:
            problems.append(f"{e}, skipped")
    for line in problems:
        print(f"fashionlab: {line}", file=sys.stderr)
    if not good:
        raise UserError("no readable images to predict")
    if args.save_preprocessed:
        out = Path(args.save_preprocessed)
        out.mkdir(parents=True, exist_ok=True)
        for i, (path, image) in enumerate(zip(good, inputs, strict=True)):
            (out / safe_name(i, path)).write_bytes(photos.to_png(image))
    probs = trained.probabilities(np.stack(inputs))
    results = [photos.prediction(str(path), p, trained.classes) for path, p in zip(good, probs,
                                                                          strict=True)]
    if args.json:
        print("[\n" + ",\n".join(json.dumps(r) for r in results) + "\n]")  # a record a line
    else:
        print(table(results, trained.classes, min(args.top_k, len(trained.classes))))
    return 2 if problems else 0


def table(results: list[dict], classes: tuple[str, ...], k: int) -> str:
    width = max(len("file"), *(len(r["file"]) for r in results))
    head = "  ".join(f"{f'#{i + 1}':<18}" for i in range(k)).rstrip()
    lines = [f"{'file':<{width}}  {head}"]
    for r in results:
        top = sorted(range(len(classes)), key=lambda c: -r["probabilities"][c])[:k]
        cells = "  ".join(f"{classes[c]:<12} {r['probabilities'][c]:5.3f}" for c in top)
        lines.append(f"{r['file']:<{width}}  {cells}")
    return "\n".join(lines)
