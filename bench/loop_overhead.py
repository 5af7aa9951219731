"""Does the training loop cost more than its bare step? One epoch of fashionlab.train vs the
same number of bench/profile_step.py steps, alternating, in one process.

    .venv/bin/python bench/loop_overhead.py weil-cnn --rounds 3
    python3 bench/loop_overhead.py fast --rounds 3     # on a GPU machine: the CUDA loop

Both run where fashionlab.train would (hardware.device: FASHIONLAB_DEVICE, or else the GPU
if there is one), at the precision it would pick.

The loop's epoch (history's seconds) also holds the shuffle, the metrics, the divergence check
and the validation pass; the bare step is slice, normalise, forward, loss, backward, optimizer.
If the two are equal within the machine's noise, there is nothing left to cut around the step.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_step import make_step  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    from fashionlab import config as cfg
    from fashionlab import data, hardware, models, runs
    from fashionlab.train import train

    hardware.configure_threads()
    config = cfg.resolve(args.recipe)
    train_idx, _ = data.split(len(data.load().train_y), config["data"]["val"],
                              config["train"]["seed"])
    steps = math.ceil(len(train_idx) / config["train"]["batch_size"])
    net = models.build(config["model"]["layers"])
    dev = hardware.device()
    precision = hardware.resolve_precision(config["train"]["precision"], dev, net.conv_flops)
    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
    channels_last = hardware.use_channels_last(config["train"]["channels_last"], net.is_conv)
    step = make_step(config, channels_last, dev=dev, precision=precision)
    for _ in range(20):
        step()
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{where} ({precision}); CPU: {hardware.cpu_description()}; {steps} steps per epoch",
          flush=True)
    for r in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = train(args.recipe, flags={"train.epochs": 1}, out=tmp, quiet=True)
            loop = runs.load_run(run_dir).history[0]["seconds"]
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        bare = time.perf_counter() - start
        print(f"round {r}: loop epoch {loop:.2f} s ({loop / steps * 1000:.2f} ms/step, with the "
              f"validation pass)  bare steps {bare:.2f} s ({bare / steps * 1000:.2f} ms/step)",
              flush=True)


if __name__ == "__main__":
    main()
