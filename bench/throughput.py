"""Training and inference images/s per recipe, peak memory, and achieved vs peak TFLOP/s.

    nice .venv/bin/python bench/throughput.py weil-fc weil-cnn fast --out docs/bench/throughput.md

The peak is measured here: a square fp32 and bf16 matmul at the thread count fashionlab
uses. Achieved training TFLOP/s counts models.Net.flops x 3 (forward + two backward
matmuls) per image; inference counts x 1 per test-time view (10 for `fast`: the image, four
one-pixel shifts and the mirror of each), and its images/s count whole images, all views done.
Steps run the recipe's layout and precision choices (channels_last, precision, DFT
convolutions) on random images at the recipe's batch size.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_step import make_step  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int = 512, seconds: float = 3.0) -> float:
    """Best TFLOP/s of an n x n matmul over a few seconds (the best catches a quiet moment)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e12)
    return best


def images_per_second(run, batch: int, seconds: float) -> float:
    run()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        done += batch
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--seconds", type=float, default=10.0, help="timing per measurement")
    p.add_argument("--out", help="also write the table (markdown) to this file")
    args = p.parse_args(argv)

    from fashionlab import config as cfg
    from fashionlab import convs, hardware
    from fashionlab.inference import logits, views
    from fashionlab.train import prepare

    hardware.configure_threads()
    fp32, bf16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    cpu = hardware.cpu_description()
    lines = [f"CPU: {cpu}; load average {os.getloadavg()[0]:.1f}; {datetime.date.today()}, "
             f"torch {torch.__version__}. Matmul peak (512^2): fp32 {fp32:.4f} TFLOP/s, "
             f"bf16 {bf16:.4f} TFLOP/s.", "",
             "| recipe | MFLOPs/img | batch | precision | layout | train img/s | train TFLOP/s "
             "| % of peak | views | infer img/s | infer TFLOP/s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    dev = torch.device("cpu")
    for name in args.recipes:
        config = cfg.resolve(name)
        config, net, precision = prepare(config, dev)  # a recipe's [bf16] keys and net applied
        last = hardware.use_channels_last(config["train"]["channels_last"], net.is_conv)
        batch = config["train"]["batch_size"]
        conv = config["train"]["conv"]
        train_rate = images_per_second(make_step(config, last, conv=conv, precision=precision),
                                       batch, args.seconds)
        dft = convs.convert(net.module, conv, dev, precision)
        module = net.module.to(memory_format=torch.channels_last) if last else net.module
        images = torch.randint(0, 256, (config["train"]["eval_batch_size"], 28, 28),
                               dtype=torch.uint8)
        infer_rate = images_per_second(
            partial(logits, module, images, config, dev, precision, last), len(images),
            args.seconds)
        train_tflops = train_rate * net.flops * 3 / 1e12
        n_views = len(views(images[:1], config))
        peak = bf16 if precision == "bf16" else fp32
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        layout = ("channels-last" if last else "contiguous") + (f", {dft} DFT" if dft else "")
        row = (f"| {name} | {net.flops / 1e6:.2f} | {batch} | {precision} | {layout} "
               f"| {train_rate:,.0f} "
               f"| {train_tflops:.4f} | {100 * train_tflops / peak:.1f} | {n_views} "
               f"| {infer_rate:,.0f} "
               f"| {infer_rate * n_views * net.flops / 1e12:.4f} | {rss:,.0f} |")
        lines.append(row)
        print(row, flush=True)
    table = "\n".join(lines)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            f"# Throughput\n\n{table}\n\nPeak RSS is the process's high-water mark so far "
            f"(it only grows down the table).\n\nCommand: `bench/throughput.py "
            f"{' '.join(argv or sys.argv[1:])}`\n")


if __name__ == "__main__":
    main()
