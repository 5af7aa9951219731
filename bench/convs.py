"""One convolution layer, forward + backward: oneDNN vs the DFT as matmuls vs torch.fft.

    .venv/bin/python bench/convs.py --out docs/bench/convs.md

The evidence behind fashionlab.convs' rule (5x5 and larger kernels, 32+ input channels):
each row is a layer shape from the recipes or near the rule's edges, timed in alternating
rounds (direct, dft, fft, direct, ...), median of the rounds, with the DFT's largest error
relative to the direct output. The torch.fft column is the first design, kept for the
record of why the transforms are matmuls.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from fashionlab import convs, hardware

# batch, in, out, size, kernel, pad: report 002's CNN (three), LeNet-5's, fast's, the edges.
SHAPES = [(32, 1, 128, 28, 5, 2), (32, 128, 256, 14, 5, 2), (32, 256, 512, 7, 5, 2),
          (256, 128, 256, 14, 5, 2), (256, 256, 512, 7, 5, 2), (32, 6, 16, 14, 5, 0),
          (128, 32, 64, 14, 3, 1), (128, 128, 128, 7, 3, 1), (32, 16, 32, 14, 5, 2),
          (32, 32, 64, 14, 5, 2), (32, 64, 128, 14, 7, 3)]


def fft_conv2d(x: torch.Tensor, weight: torch.Tensor, pad: int) -> torch.Tensor:
    """The same correlation through torch.fft.rfft2 (no bias)."""
    b, c, h, w = x.shape
    o = weight.shape[0]
    n, m = h + 2 * pad, w + 2 * pad
    xf = torch.fft.rfft2(x, s=(n, m)).permute(2, 3, 0, 1).reshape(-1, b, c)
    wf = torch.fft.rfft2(weight, s=(n, m)).conj().permute(2, 3, 1, 0).reshape(-1, c, o)
    y = torch.fft.irfft2(torch.bmm(xf, wf).reshape(n, m // 2 + 1, b, o).permute(2, 3, 0, 1),
                         s=(n, m))
    return torch.roll(y, (pad, pad), (2, 3))[:, :, :h, :w]


def layer_row(b: int, c: int, o: int, size: int, k: int, pad: int, rounds: int) -> str:
    """One table row: the three algorithms timed in alternating rounds."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c, o, k, padding=pad)
    x = torch.randn(b, c, size, size, requires_grad=True)
    x_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    mats = convs.transforms(size, size, k, k, pad, pad, x.device)
    w, bias = conv.weight, conv.bias
    runs = {"direct": lambda: F.conv2d(x_last, w, bias, padding=pad),
            "dft": lambda: convs.conv2d(x, w, bias, mats),
            "fft": lambda: fft_conv2d(x, w, pad)}
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, forward in runs.items():
            forward().square().sum().backward()  # warm
            start = time.perf_counter()
            forward().square().sum().backward()
            times[key].append((time.perf_counter() - start) * 1000)
    with torch.no_grad():
        want = F.conv2d(x, w, bias, padding=pad)
        err = ((convs.conv2d(x, w, bias, mats) - want).abs().max() / want.abs().max()).item()
    med = {key: statistics.median(v) for key, v in times.items()}
    auto = "DFT" if convs.suits(conv, "auto") else "oneDNN"
    return (f"| {b} | {c} -> {o} | {size}x{size} | {k}x{k} | {med['direct']:.1f} "
            f"| {med['dft']:.1f} | {med['direct'] / med['dft']:.2f}x | {med['fft']:.1f} "
            f"| {err:.1e} | {auto} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=hardware.thread_count())
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hardware.keep_freed_memory()
    lines = [f"CPU: {hardware.cpu_description()}; load average "
             f"{os.getloadavg()[0]:.1f}; {datetime.date.today()}, torch {torch.__version__}. "
             f"ms per forward + backward, median of {args.rounds} rounds.", "",
             "| batch | in -> out | size | kernel | oneDNN ms | DFT ms | DFT speed-up "
             "| torch.fft ms | DFT max rel. error | auto picks |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for shape in SHAPES:
        lines.append(layer_row(*shape, args.rounds))
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(argv or sys.argv[1:])
        Path(args.out).write_text("# One convolution layer\n\n" + "\n".join(lines)
                                  + f"\n\nCommand: `bench/convs.py {command}`\n")


if __name__ == "__main__":
    main()
