"""The from-scratch engine: dense networks in NumPy, backprop written by hand (report 003).

    fashionlab train bodapati-task1              # its recipe sets train.engine = "numpy"
    fashionlab train quick-fc --engine numpy

Report 003's task 1 is a network trained without a framework; this engine makes it runnable
and checkable (the math is in numpy_net.py). It imports no torch, so it needs none to run,
and it writes the same run folder as the torch engine, weights under torch's state_dict names
and shapes, so `evaluate`, `compare` and the plots work on its runs unchanged. Options it
cannot honour are refused by name rather than ignored.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from fashionlab import config as cfg
from fashionlab import data, hardware, numpy_net, runs, signals
from fashionlab.errors import DivergedError, SpecError
from fashionlab.numpy_net import Net

CHECKPOINT = "checkpoint.safetensors"


def _evaluate(net: Net, images: np.ndarray, labels: np.ndarray, config: dict):
    if len(labels) == 0:
        return math.nan, math.nan, np.zeros((0, numpy_net.NUM_CLASSES), np.float32)
    z = numpy_net.logits(net, images, config)
    loss, _ = numpy_net.cross_entropy(z, labels)
    return loss, float((z.argmax(1) == labels).mean()), z


def _blas_threads() -> int | None:
    """One BLAS thread unless the user chose: a batch's matmuls are too small to split, and on
    a busy machine (measured: 2 cores, load 7) two threads made each step 10x slower."""
    chosen = any(v in os.environ for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    return None if chosen else 1


def check_config(config: dict) -> None:
    """Refuse, in one line, every option this engine would otherwise silently ignore."""
    t = config["train"]
    unsupported = [(t["optimizer"] != "sgd", f"train.optimizer = {t['optimizer']!r} (only sgd)"),
                   (t["schedule"] != "constant", f"train.schedule = {t['schedule']!r}"),
                   (t["warmup_epochs"] > 0, "train.warmup_epochs"), (t["ema"] > 0, "train.ema"),
                   (t["tta_shift"] > 0, "train.tta_shift"),
                   (t["patience"] > 0, "train.patience (early stopping)"),
                   (t["precision"] == "bf16", "train.precision = 'bf16'"),
                   (os.environ.get("FASHIONLAB_DEVICE") == "cuda", "--device cuda (CPU only)"),
                   *((v != 0, f"augment.{k}") for k, v in config["augment"].items())]
    for bad, what in unsupported:
        if bad:
            raise SpecError(f"the numpy engine does not support {what}; "
                            "use train.engine = \"torch\"")


def _save_checkpoint(run_dir: Path, net: Net, velocity: dict, rngs: dict, loop: dict) -> None:
    arrays = {**{f"model.{k}": v for k, v in net.params.items()},
              **{f"velocity.{k}": v for k, v in velocity.items()}}
    state = {"loop": loop, "rng": {k: g.bit_generator.state for k, g in rngs.items()}}
    runs.write_tensors(run_dir / CHECKPOINT, arrays,
                       {"format": "fashionlab-numpy-checkpoint", "state": json.dumps(state)})


def _load_checkpoint(run_dir: Path, net: Net, velocity: dict, rngs: dict) -> dict | None:
    if not (run_dir / CHECKPOINT).exists():
        return None
    arrays, state = runs.read_checkpoint(run_dir / CHECKPOINT, "fashionlab-numpy-checkpoint",
                                         "the numpy engine")
    for key, value in arrays.items():
        part, name = key.split(".", 1)
        (net.params if part == "model" else velocity)[name] = value
    for name, g in rngs.items():
        g.bit_generator.state = state["rng"][name]
    return state["loop"]


def train(config: dict, data_dir: str | None = None, out: str | None = None,
          quiet: bool = False, hooks: list = (), resume: str | Path | None = None) -> Path:
    """Train a resolved config on this engine; return the finished run folder."""
    check_config(config)
    seed = config["train"]["seed"]
    init_rng, *rest = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    rngs = dict(zip(("order", "dropout"), rest, strict=True))
    net = numpy_net.build(config["model"]["layers"], init_rng)
    ds = (data.for_config(data_dir, config["data"]) if resume is None
          else data.of_run(runs.read_info(Path(resume)), config, data_dir))
    train_idx, val_idx = data.split(len(ds.train_y), config["data"]["val"], seed)
    velocity: dict[str, np.ndarray] = {}
    loop = {"epoch": 0, "history": [], "best": math.nan, "best_epoch": 0, "seconds": 0.0}
    if resume is None:
        run_dir = runs.create(config["model"]["name"] or "run", out)
        runs.start(run_dir, cfg.dumps(config), {
            "name": config["model"]["name"], "engine": "numpy", "seed": seed,
            "config_digest": cfg.digest(config), "device": "cpu", "precision": "fp32",
            "cpu": hardware.cpu_description(),
            "numpy": np.__version__, "params": net.size,
            "data": data.provenance(ds)})
    else:
        run_dir = Path(resume)
        runs.resumed(run_dir, (run_dir / CHECKPOINT).exists())
        loop = _load_checkpoint(run_dir, net, velocity, rngs) or loop
    def fit(interrupt: signals.Flag) -> None:
        # overflow warnings are noise: a non-finite loss is caught and reported in one line
        with threadpool_limits(_blas_threads(), user_api="blas"), np.errstate(
                over="ignore", invalid="ignore"):
            _fit(net, config, ds, train_idx, val_idx, velocity, rngs, loop, run_dir, quiet,
                 hooks, interrupt)

    signals.guarded(run_dir, fit)
    return run_dir


def _fit(net: Net, config: dict, ds: data.DataSet, train_idx: np.ndarray, val_idx: np.ndarray,
         velocity: dict, rngs: dict, loop: dict, run_dir: Path, quiet: bool,
         hooks: list, interrupt: signals.Flag) -> None:
    t, lr = config["train"], cfg.learning_rate(config["train"])
    a, b = data.normalizer(config["data"]["normalize"])
    x_all = ds.train_x[train_idx].reshape(len(train_idx), -1).astype(np.float32) * a + b
    y_all = ds.train_y[train_idx].astype(np.int64)
    n, batch = len(y_all), t["batch_size"]
    steps = math.ceil(n / batch)  # the last, partial batch is kept, as Keras does
    show = not quiet and sys.stderr.isatty()
    for epoch in range(loop["epoch"] + 1, t["epochs"] + 1):
        start, loss_sum, correct = time.perf_counter(), 0.0, 0
        perm = rngs["order"].permutation(n)
        for step in tqdm(range(steps), desc=f"epoch {epoch}/{t['epochs']}", disable=not show,
                         leave=False, unit="step"):
            if interrupt.signum is not None:  # drop the partial epoch; the last one is saved
                raise interrupt.error(f"during epoch {epoch} (last saved: epoch {loop['epoch']})")
            idx = perm[step * batch:(step + 1) * batch]
            z, tape = numpy_net.forward(net, x_all[idx], rngs["dropout"])
            loss, dz = numpy_net.cross_entropy(z, y_all[idx], t["label_smoothing"])
            grads = numpy_net.backward(net, tape, dz)
            loss += numpy_net.penalty(net, grads)
            if not math.isfinite(loss):
                kept = f"epoch {epoch - 1} kept in {run_dir}" if epoch > 1 else "no epoch finished"
                raise DivergedError(f"training diverged: loss became {loss} at epoch {epoch}, "
                                    f"step {step + 1} (lr {lr:g}); lower the learning rate "
                                    f"({kept})")
            numpy_net.sgd_step(net, grads, velocity, t, lr)
            loss_sum += loss * len(idx)
            correct += int((z.argmax(1) == y_all[idx]).sum())
        val_loss, val_acc, _ = _evaluate(net, ds.train_x[val_idx], ds.train_y[val_idx], config)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "loss": loss_sum / n, "accuracy": correct / n,
               "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr, "seconds": seconds}
        loop["history"].append(row)
        loop["epoch"], loop["seconds"] = epoch, loop["seconds"] + seconds
        value = row[t["monitor"]]
        if not math.isnan(value) and (math.isnan(loop["best"]) or (
                value > loop["best"] if t["monitor"] == "val_accuracy" else value < loop["best"])):
            loop["best"], loop["best_epoch"] = value, epoch
        runs.write_history(run_dir, loop["history"])
        _save_checkpoint(run_dir, net, velocity, rngs, loop)
        if not quiet:
            tqdm.write(runs.epoch_line(row, t["epochs"]), file=sys.stderr)
        for hook in hooks:
            hook(run_dir, epoch, row)
    test_loss, test_acc, z = _evaluate(net, ds.test_x, ds.test_y, config)
    runs.write_tensors(run_dir / "model.safetensors", net.params,
                       {"format": "fashionlab-weights", "config_digest": cfg.digest(config)})
    e = np.exp(z - z.max(1, keepdims=True))
    runs.save_predictions(run_dir, e / e.sum(1, keepdims=True), ds.test_y)
    runs.write_json(run_dir / "metrics.json", {
        "test_accuracy": test_acc, "test_loss": test_loss, "epochs_run": loop["epoch"],
        "train_seconds": loop["seconds"],
        "seconds_per_epoch": loop["seconds"] / max(1, loop["epoch"]),
        "val_accuracy": loop["history"][-1]["val_accuracy"] if loop["history"] else math.nan,
        "best_epoch": loop["best_epoch"], "params": net.size, "flops_per_image": net.flops})
    runs.set_state(run_dir, "finished")
