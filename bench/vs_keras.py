"""fashionlab vs tf.keras on the reports' models: seconds per epoch and test accuracy.

    nice .venv/bin/python bench/vs_keras.py --epochs 1 --out docs/bench/vs_keras.md

Each model is trained with the same layers, optimizer, batch size, epochs, split and seed in
tf.keras (bench/keras_side.py, in its own venv bench/.venv-keras, installed on first use) and
in fashionlab, one after the other in one run on one machine, alternating which goes first.
Both get the same intra-op thread count. Exits 1 if fashionlab is slower on any model.
Report 002's CNN (0.65 GFLOP per image) trains by default on a subset (--cnn002-images).
With --seeds, every model trains once per seed on each side: one seed's accuracy differs
between frameworks by about as much as between seeds, so equal accuracy is a claim about
means (the table gives mean +- std and each seed's figures).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / ".venv-keras"
TENSORFLOW = "tensorflow-cpu==2.21.0"
MODELS = {  # report model -> fashionlab recipe
    "000-fc": "weil-fc", "000-cnn": "weil-cnn",
    "001-fc": "duan-fc", "001-lenet5": "duan-lenet5",
    "002-fc": "korssjoen-fc", "002-cnn": "korssjoen-cnn-maxpool",
}
# what --set may change: settings bench/keras_side.py translates to Keras
SETTABLE = {"train.optimizer": ("adam", "sgd", "rmsprop"), "train.lr": None,
            "train.momentum": None, "train.nesterov": None, "train.batch_size": None}


def keras_python() -> Path:
    """The Keras venv's interpreter, creating the venv and installing TensorFlow if needed."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", TENSORFLOW], check=True)
    return python


def subset_dir(folder: Path, n_train: int, n_test: int) -> Path:
    """The first n_train training and n_test test images of the real data, as an IDX set."""
    from fashionlab import data

    ds = data.load()
    arrays = {"train-images-idx3-ubyte": ds.train_x[:n_train],
              "train-labels-idx1-ubyte": ds.train_y[:n_train],
              "t10k-images-idx3-ubyte": ds.test_x[:n_test],
              "t10k-labels-idx1-ubyte": ds.test_y[:n_test]}
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        header = struct.pack(">HBB", 0, 0x08, array.ndim)
        header += b"".join(struct.pack(">I", d) for d in array.shape)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return folder


def run_keras(python: Path, config: dict, epochs: int, seed: int, data_dir: str | None,
              threads: int) -> dict:
    job = {"layers": config["model"]["layers"], "train": config["train"], "epochs": epochs,
           "val": config["data"]["val"], "normalize": config["data"]["normalize"],
           "seed": seed, "data_dir": data_dir, "threads": threads,
           "dataset": config["data"]["dataset"]}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([str(python), str(ROOT / "bench" / "keras_side.py")],
                          input=json.dumps(job), capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"keras side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_fashionlab(recipe: str, epochs: int, seed: int, data_dir: str | None, out: Path,
                   overrides: list[str]) -> dict:
    from fashionlab import runs
    from fashionlab.train import train

    run_dir = train(recipe, flags={"train.epochs": epochs, "train.seed": seed},
                    data_dir=data_dir, out=str(out), quiet=True, overrides=overrides)
    run = runs.load_run(run_dir)
    return {"seconds": [row["seconds"] for row in run.history],
            "test_accuracy": run.metrics["test_accuracy"]}


def percent(values: list[float]) -> str:
    """Test accuracies as a percentage: mean +- std over seeds, or the one value."""
    from fashionlab import stats

    mean, std = stats.mean_std([100 * v for v in values])
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {std:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=0, help="epochs per model (0 = the recipe's)")
    p.add_argument("--seeds", default="",
                   help="comma-separated seeds, each model trained once per seed on each side "
                   "(default: the recipe's seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"change a setting on both sides (one of {', '.join(SETTABLE)}), "
                   "e.g. to see whether an accuracy gap follows the optimizer")
    p.add_argument("--max-epochs-002-cnn", type=int, default=1)
    p.add_argument("--cnn002-images", type=int, default=2000,
                   help="002-cnn trains on this many images, validates on 500 of them "
                   "and tests on 1000 (0 = the full set)")
    p.add_argument("--out", help="also write the table (markdown) to this file")
    args = p.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    if 0 < args.cnn002_images <= 500:
        p.error("--cnn002-images must be over 500: 500 of them are the validation set")
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SETTABLE or (SETTABLE[key] and value not in SETTABLE[key]):
            p.error(f"--set {item!r}: bench/keras_side.py translates only "
                    + ", ".join(f"{k}={'|'.join(v)}" if v else k for k, v in SETTABLE.items()))
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else []
    except ValueError:
        p.error(f"--seeds takes comma-separated integers, not {args.seeds!r}")

    from fashionlab import config as cfg
    from fashionlab import hardware
    from fashionlab.errors import UserError

    try:
        configs = {name: cfg.resolve(MODELS[name], overrides=args.set) for name in names}
    except UserError as e:
        p.error(str(e))
    hardware.configure_threads()
    import torch

    threads = torch.get_num_threads()
    python = keras_python()
    cpu = hardware.cpu_description()
    print(f"CPU: {cpu}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows, per_seed, slower, tensorflow = [], [], [], "?"
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            recipe = MODELS[name]
            config = configs[name]
            epochs = args.epochs or config["train"]["epochs"]
            data_dir, overrides, note = None, list(args.set), ""
            if name == "002-cnn":
                epochs = min(epochs, args.max_epochs_002_cnn)
                if args.cnn002_images:
                    data_dir = str(subset_dir(Path(tmp) / "subset", args.cnn002_images, 1000))
                    overrides += ["data.val=first:500", "data.dataset=any"]
                    note = f" ({args.cnn002_images} train images)"
                    config = cfg.resolve(recipe, overrides=overrides)
            seconds = {"keras": [], "fashionlab": []}
            accuracy = {"keras": [], "fashionlab": []}
            for j, seed in enumerate(seeds or [config["train"]["seed"]]):
                order = ("keras", "fashionlab") if (i + j) % 2 == 0 else ("fashionlab", "keras")
                for side in order:
                    if side == "keras":
                        done = run_keras(python, config, epochs, seed, data_dir, threads)
                        tensorflow = done.get("tensorflow", tensorflow)
                    else:
                        done = run_fashionlab(recipe, epochs, seed, data_dir, Path(tmp),
                                              overrides)
                    seconds[side] += done["seconds"]
                    accuracy[side].append(done["test_accuracy"])
                line = (f"| {name} | {seed} | {100 * accuracy['keras'][-1]:.2f} "
                        f"| {100 * accuracy['fashionlab'][-1]:.2f} |")
                per_seed.append(line)
                print(line, flush=True)
            k, f = (statistics.median(seconds[s]) for s in ("keras", "fashionlab"))
            gap = 100 * (statistics.mean(accuracy["fashionlab"])
                         - statistics.mean(accuracy["keras"]))
            row = (f"| {name}{note} | {recipe} | {epochs} | {k:.1f} | {f:.1f} | {k / f:.2f}x "
                   f"| {percent(accuracy['keras'])} | {percent(accuracy['fashionlab'])} "
                   f"| {gap:+.2f} |")
            rows.append(row)
            print(row, flush=True)
            if f > k:
                slower.append(name)
    n = len(seeds) or 1
    over = (f"mean ± std over {n} seeds ({args.seeds})" if n > 1
            else f"seed {seeds[0]}" if seeds else "one seed, the recipe's")
    table = "\n".join([
        f"CPU: {cpu}. {datetime.date.today()}, torch {torch.__version__}, "
        f"TensorFlow {tensorflow}; seconds per epoch are medians over epochs (and seeds) and "
        f"include the validation pass; test accuracy in %, {over}.", "",
        "| model | recipe | epochs | tf.keras s/epoch | fashionlab s/epoch | speed-up "
        "| tf.keras test % | fashionlab test % | difference |",
        "|---|---|---|---|---|---|---|---|---|", *rows])
    if n > 1:
        table += "\n\nPer seed:\n\n| model | seed | tf.keras test % | fashionlab test % |\n"
        table += "|---|---|---|---|\n" + "\n".join(per_seed)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"# fashionlab vs tf.keras\n\n{table}\n\nCommand: "
                                  f"`{' '.join(['bench/vs_keras.py', *(argv or sys.argv[1:])])}`\n")
    if slower:
        print(f"fashionlab is slower on: {', '.join(slower)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
