"""Would a moving average of the weights (train.ema) help a recipe? One run answers for several
decays at once, paired: the same batches, the same live weights.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ema.py bench/frontier/c11.toml --seed 1

Trains the spec once (it must hold out a validation split) while keeping an exponential
moving average of the weights for each decay in --decays, all fed by the same live weights,
then scores the live weights and every average on the validation images, with the recipe's
own test-time views. Batch norm's running statistics are the live model's in every copy, as
the loop does with `train.ema`. The run folder is the loop's usual one (its test score is the
first decay's); read this script's table, not that score, to choose.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch

from fashionlab import config as cfg
from fashionlab import data, hardware, inference, models, runs

loop = importlib.import_module("fashionlab.train")  # the module; fashionlab.train is callable
EMA = loop.EMA  # the loop's own, kept: main() puts Averages in its place
KEPT: list[Averages] = []


class Averages(EMA):
    """The loop's EMA, plus more decays updated from the same live weights."""

    extra: tuple[float, ...] = ()

    def __init__(self, module: torch.nn.Module, decay: float):
        super().__init__(module, decay)
        self.others = {d: EMA(module, d) for d in self.extra}
        KEPT.append(self)

    @torch.no_grad()
    def update(self) -> None:
        super().update()
        for other in self.others.values():
            other.update()

    def sync_buffers(self) -> None:
        super().sync_buffers()
        for other in self.others.values():
            other.sync_buffers()

    def models(self) -> dict[str, torch.nn.Module]:
        return {"live weights": self.source, f"ema {self.decay:g}": self.module,
                **{f"ema {d:g}": e.module for d, e in self.others.items()}}


def validation_scores(spec: str | dict, seed: int, decays: list[float], out: str,
                      overrides: list[str] = (), data_dir: str | None = None
                      ) -> tuple[Path, dict[str, float]]:
    """Train once with every decay kept; validation accuracy % of the live weights and each
    average, under the spec's own test-time views."""
    overrides = [f"train.seed={seed}", f"train.ema={decays[0]}", *overrides]
    config = cfg.resolve(spec, None, overrides)
    if config["data"]["val"] == "none":  # say so before training, not after
        raise SystemExit("the spec holds out no validation images (data.val)")
    Averages.extra = tuple(decays[1:])
    loop.EMA = Averages
    try:
        run_dir = loop.train(spec, overrides=overrides, data_dir=data_dir, out=out, quiet=True)
    finally:
        loop.EMA = EMA
    kept = KEPT.pop()
    config = runs.load_run(run_dir).config  # what ran, a recipe's [bf16] keys applied
    dev = hardware.device()
    t = loop.to_tensors(data.load(data_dir, config["data"]["dataset"]), config["data"]["val"],
                        seed, dev)
    net = models.build(config["model"]["layers"])
    precision = hardware.resolve_precision(config["train"]["precision"], dev, net.conv_flops)
    channels_last = hardware.use_channels_last(config["train"]["channels_last"], net.is_conv)
    return run_dir, {
        name: 100 * inference.loss_and_accuracy(
            inference.logits(module, t.x_val, config, dev, precision, channels_last), t.y_val)[1]
        for name, module in kept.models().items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", help="recipe name or spec file, with a validation split")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--decays", default="0.999,0.998,0.995,0.99",
                   help="comma-separated; the first is the run folder's own train.ema")
    p.add_argument("--out", default="/tmp/ema", help="where the run folder goes")
    p.add_argument("--set", action="append", default=[], help="config override, key=value")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    hardware.keep_freed_memory()
    run_dir, scores = validation_scores(args.spec, args.seed,
                                        [float(d) for d in args.decays.split(",")], args.out,
                                        args.set, args.data_dir)
    print(f"CPU: {hardware.cpu_description()}, torch {torch.__version__}; {args.spec} seed "
          f"{args.seed}, run {run_dir}")
    print("| weights | validation acc % |\n|---|---|")
    for name, acc in scores.items():
        print(f"| {name} | {acc:.2f} |")


if __name__ == "__main__":
    main()
