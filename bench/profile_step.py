"""Where a training step's time goes, per recipe, and channels-last vs contiguous, interleaved.

    nice .venv/bin/python bench/profile_step.py weil-cnn duan-lenet5 --steps 100 --ops 8
    nice .venv/bin/python bench/profile_step.py weil-cnn --threads 1,2 --convs
    .venv/bin/python bench/profile_step.py duan-lenet5 weil-cnn --layouts channels_last \
        --batches 8,16,32,64,128 --steps 50 --rounds 7

Runs the loop body of fashionlab.train (slice, float, normalise, forward, loss, backward,
Adam step) on random uint8 images at the recipe's batch size. Variants are timed in rounds
A, B, A, B... so that a shared machine's contention hits both alike; the median round counts.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F

from fashionlab import config as cfg
from fashionlab import convs, hardware, models, optim
from fashionlab.inference import as_input


def make_step(config: dict, channels_last: bool, compiled: bool | str = False,
              make_optimizer=None, penalty: str = "direct", relu_in_place: bool = True,
              conv: str = "auto", rewrite=None, dev: torch.device | None = None,
              precision: str = "fp32", stepper: bool = True):
    """One training step as a closure; make_optimizer(params, train) replaces fashionlab's.

    compiled: torch.compile the module, True for the default mode or a mode's name.
    penalty: how kernel penalties enter, "direct" (fashionlab's), "autograd" or "none".
    relu_in_place=False undoes models.build's in-place ReLUs; conv is train.conv;
    rewrite(module) -> module swaps layers for an alternative being timed.
    dev and precision: where the model and data live (CPU by default) and the autocast.
    stepper=False calls opt.step() instead of optim.stepper's direct fused Adam(W) step.
    """
    dev = dev or torch.device("cpu")
    torch.manual_seed(0)
    net = models.build(config["model"]["layers"])
    module = rewrite(net.module) if rewrite else net.module
    for m in module.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = m.inplace and relu_in_place
    convs.convert(module, conv, dev, precision)
    convs.whole_input(net, conv, dev)
    module = module.to(dev)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    opt = (make_optimizer or optim.make_optimizer)(module.parameters(), config["train"])
    opt_step = optim.stepper(opt) if stepper else opt.step
    mode = compiled if isinstance(compiled, str) else None
    fwd = torch.compile(module, mode=mode) if compiled else module
    batch = config["train"]["batch_size"]
    images = torch.randint(0, 256, (batch * 8, 1, 28, 28), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 10, (batch * 8,), device=dev)
    state = {"i": 0}

    def step() -> None:
        i = state["i"] = (state["i"] + 1) % 8
        x = as_input(images[i * batch:(i + 1) * batch].float(), config, channels_last)
        with hardware.autocast(dev, precision):
            z = fwd(x)
        loss = F.cross_entropy(z.float(), labels[i * batch:(i + 1) * batch])
        if net.penalties and penalty == "autograd":
            loss = loss + models.penalty(net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if net.penalties and penalty == "direct":
            models.add_penalty_grads(net)
        opt_step()

    return step


def time_rounds(steps: dict, n: int, rounds: int, threads: list[int],
                sync=lambda: None) -> dict[str, float]:
    """Median ms per step of each variant x thread count, over interleaved rounds of n steps.
    sync() waits for queued work (torch.cuda.synchronize on a GPU) at each round's ends."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {f"{k}/{t}t": [] for k in steps for t in threads}
    for _ in range(rounds):
        for (name, step), t in ((s, t) for s in steps.items() for t in threads):
            torch.set_num_threads(t)
            sync()
            start = time.perf_counter()
            for _ in range(n):
                step()
            sync()
            times[f"{name}/{t}t"].append((time.perf_counter() - start) / n * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def profile_ops(step, n: int, top: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def conv_ms(step, n: int) -> dict[str, float]:
    """oneDNN's own execution time per step for each convolution primitive (ONEDNN_VERBOSE),
    summed by kind and shape: the part of a step that more threads or a better conv kernel
    could shorten, against the step's wall time around it."""
    import tempfile

    from torch.backends import mkldnn

    for _ in range(3):
        step()
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile("w+") as log:
        os.dup2(log.fileno(), 1)  # oneDNN prints from C: catch its file descriptor
        try:
            with mkldnn.verbose(mkldnn.VERBOSE_ON):
                for _ in range(n):
                    step()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = [line.split(",") for line in log if ",exec," in line and "convolution" in line]
    out: dict[str, float] = {}
    for f in lines:
        key = f"{f[7]} {f[-2]} ({f[6]})"  # direction, shape and oneDNN's implementation
        out[key] = out.get(key, 0.0) + float(f[-1]) / n
    return out


def fixed_and_per_image(ms: dict[str, float], sizes: dict[str, int]) -> str:
    """Least-squares step time = fixed + per image x batch, per variant and thread count:
    the fixed part is what a bigger batch spreads over more images and a small one cannot."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for key, v in ms.items():
        variant, threads = key.rsplit("/", 1)
        base = variant.rsplit(" b", 1)[0]
        groups.setdefault(f"{base}/{threads}", []).append((sizes[variant], v))
    lines = []
    for key, points in groups.items():
        xs, ys = zip(*points, strict=True)
        slope, fixed = statistics.linear_regression(xs, ys)
        lines.append(f"  {key}: {fixed:.2f} ms fixed + {slope * 100:.2f} ms per 100 images "
                     f"({', '.join(f'{x}: {y:.2f}' for x, y in points)} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--steps", type=int, default=50, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ops", type=int, default=0, help="print the top N ops (torch.profiler)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--convs", action="store_true", help="split each step (channels-last) "
                   "into oneDNN's convolution time and the rest, per thread count")
    p.add_argument("--threads", default="", help="thread counts to compare, e.g. 1,2 "
                   "(default: what fashionlab picks)")
    p.add_argument("--precision", default="fp32", help="autocast for the forward pass: auto "
                   "(what training would pick), fp32, bf16, or a list such as fp32,bf16 to "
                   "time each variant under each, interleaved")
    p.add_argument("--layouts", default="contiguous,channels_last",
                   help="memory layouts to time for conv nets")
    p.add_argument("--batches", default="", help="batch sizes to time, e.g. 8,16,32,64 "
                   "(default: the recipe's), with a fit of step time = fixed + per image")
    args = p.parse_args(argv)
    precisions = args.precision.split(",")
    if not set(precisions) <= {"auto", "fp32", "bf16"}:
        p.error(f"--precision takes auto, fp32 or bf16, not {args.precision!r}")
    if args.batches and args.convs:
        p.error("--convs times the recipe's batch size: leave out --batches")
    hardware.configure_threads()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [
        torch.get_num_threads()]
    print(f"CPU: {hardware.cpu_description()}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name in args.recipes:
        config = cfg.resolve(name)
        net = models.build(config["model"]["layers"])
        layouts = args.layouts.split(",") if net.is_conv else ["contiguous"]
        batches = ([int(b) for b in args.batches.split(",")] if args.batches
                   else [config["train"]["batch_size"]])
        steps, sizes = {}, {}
        for requested in precisions:
            precision = hardware.resolve_precision(requested, torch.device("cpu"), net.conv_flops)
            tag = f" {precision}" if len(precisions) > 1 else ""
            ran = cfg.for_precision(config, precision)  # a recipe's [bf16] keys and net
            for layout, b in itertools.product(layouts, batches):
                cl = layout == "channels_last"
                at = dict(ran, train=dict(ran["train"], batch_size=b))
                key = layout + tag + (f" b{b}" if args.batches else "")
                steps[key], sizes[key] = make_step(at, cl, precision=precision), b
                if args.compile:
                    steps["compiled_" + key] = make_step(at, cl, compiled=True,
                                                         precision=precision)
                    sizes["compiled_" + key] = b
        ms = time_rounds(steps, args.steps, args.rounds, threads)
        shown = "  ".join(f"{k} {v:.2f} ms ({sizes[k.rsplit('/', 1)[0]] / v * 1000:.0f} img/s)"
                          for k, v in ms.items())
        label = f"batch {batches[0]} " if len(batches) == 1 else ""
        print(f"{name:<24} {label}{precision if len(precisions) == 1 else ''}  {shown}")
        if len(batches) > 1:
            print(fixed_and_per_image(ms, sizes))
        if args.convs and "channels_last" in steps:
            for t in threads:
                torch.set_num_threads(t)
                convs_ms = conv_ms(steps["channels_last"], args.steps)
                total = ms[f"channels_last/{t}t"]
                for key, v in sorted(convs_ms.items()):
                    print(f"  {t} thread(s)  {v:6.3f} ms  {key}")
                conv_total = sum(convs_ms.values())
                print(f"  {t} thread(s)  {conv_total:6.3f} ms in convolutions, "
                      f"{total - conv_total:6.3f} ms the rest of a {total:.2f} ms step")
        if args.ops:
            torch.set_num_threads(threads[0])
            print(profile_ops(list(steps.values())[-1], args.steps, args.ops))


if __name__ == "__main__":
    main()
