"""Training-step time per recipe on a CUDA GPU: fp32 (TF32) vs bf16 autocast, channels-last vs
contiguous, and torch.compile (default and reduce-overhead modes) where asked.

    python bench/gpu.py fast best weil-cnn korssjoen-cnn-maxpool --compile fast

The step is bench/profile_step.py's (slice, normalise, forward, loss, backward, fused
optimizer) with the data on the GPU, as fashionlab.train keeps it. Each variant is timed in
interleaved rounds, synchronising only at a round's ends; the median round counts. "first"
is the wall time of the first three steps: cuDNN's autotuning, or compiling.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_step import make_step, time_rounds  # noqa: E402


def time_variants(steps: dict, n: int, rounds: int) -> dict[str, tuple[float, float]]:
    """(median ms per step, seconds of the first three steps) per variant."""
    first = {}
    for name, step in steps.items():
        start = time.perf_counter()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        first[name] = time.perf_counter() - start
    threads = torch.get_num_threads()
    ms = time_rounds(steps, n, rounds, [threads], sync=torch.cuda.synchronize)
    return {k: (ms[f"{k}/{threads}t"], first[k]) for k in steps}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--steps", type=int, default=100, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", default="", metavar="R1,R2",
                   help="recipes to also time under torch.compile (compiling takes a while)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device here")

    from fashionlab import config as cfg
    from fashionlab import hardware, models

    hardware.configure_threads()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(f"GPU: {props.name}, {props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
          f"host CPU: {hardware.cpu_description()}")
    compiled = set(filter(None, args.compile.split(",")))
    for name in args.recipes:
        config = cfg.resolve(name)
        last = models.build(config["model"]["layers"]).is_conv
        steps = {"fp32": make_step(config, last, dev=dev, precision="fp32"),
                 "bf16": make_step(config, last, dev=dev, precision="bf16")}
        if last:
            steps["bf16 contiguous"] = make_step(config, False, dev=dev, precision="bf16")
        if name in compiled:
            steps["bf16 compiled"] = make_step(config, last, True, dev=dev, precision="bf16")
            for precision in ("bf16", "fp32"):  # fp32: auto's choice on CUDA since 2026-11-30
                steps[f"{precision} reduce-overhead"] = make_step(
                    config, last, "reduce-overhead", dev=dev, precision=precision)
        batch = config["train"]["batch_size"]
        print(f"{name}  (batch {batch}, channels-last {'on' if last else 'n/a'})")
        for variant, (ms, first) in time_variants(steps, args.steps, args.rounds).items():
            print(f"  {variant:<22} {ms:7.3f} ms/step  {batch / ms * 1000:9.0f} img/s  "
                  f"first 3 steps {first:6.1f} s")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
