"""A/B timings behind defaults: allocator, optimizers, penalties, ReLU, convolutions, flatten.

    nice .venv/bin/python bench/ab.py alloc weil-cnn duan-lenet5
    nice .venv/bin/python bench/ab.py optimizer weil-fc
    nice .venv/bin/python bench/ab.py penalty duan-fc korssjoen-fc
    nice .venv/bin/python bench/ab.py relu weil-cnn fast
    .venv/bin/python bench/ab.py conv korssjoen-cnn-maxpool --threads 2
    .venv/bin/python bench/ab.py pool weil-cnn --threads 2 --steps 100 --rounds 7
    .venv/bin/python bench/ab.py im2col weil-cnn --threads 2 --steps 100 --rounds 7
    .venv/bin/python bench/ab.py flatten weil-cnn --threads 2 --steps 100 --rounds 9
    .venv/bin/python bench/ab.py whole duan-lenet5 --threads 2 --steps 100 --rounds 9
    .venv/bin/python bench/ab.py order duan-lenet5 quick-cnn --threads 2 --steps 100 --rounds 9
    .venv/bin/python bench/ab.py stepper weil-fc duan-lenet5 --threads 2 --steps 200 --rounds 9
    .venv/bin/python bench/ab.py convbf16 duan-lenet5 weil-cnn --threads 2 --steps 200 --rounds 9
    .venv/bin/python bench/ab.py trace weil-cnn duan-lenet5 --threads 2 --steps 200 --rounds 9

Both variants live in one process and run in alternating rounds (A, B, A, B ...), so that a
shared machine's contention hits both alike; the median round counts. One thread unless
--threads says otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_step import make_step  # noqa: E402

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def alloc_variants(config: dict) -> dict:
    """glibc's default (128 KiB mmap threshold) vs what hardware.keep_freed_memory sets."""
    libc = ctypes.CDLL("libc.so.6")
    step = make_step(config, True)

    def variant(mmap: int, trim: int):
        def run() -> None:
            libc.mallopt(M_MMAP_THRESHOLD, mmap)
            libc.mallopt(M_TRIM_THRESHOLD, trim)
            step()
        return run

    return {"glibc default": variant(128 << 10, 128 << 10),
            "keep freed (32 MiB / 1 GiB)": variant(32 << 20, 1 << 30)}


def optimizer_variants(config: dict) -> dict:
    """torch's CPU default (a Python loop over parameters) vs foreach vs fused Adam."""
    from fashionlab import optim

    def adam(flag: dict):
        return lambda params, train: torch.optim.Adam(params, lr=1e-3, eps=optim.KERAS_EPSILON,
                                                      **flag)

    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True},
             "fused": {"fused": True}}
    return {name: make_step(config, False, make_optimizer=adam(flag), stepper=False)
            for name, flag in flags.items()}


def penalty_variants(config: dict) -> dict:
    """Kernel penalties through autograd vs their gradient added directly, vs none at all."""
    return {name: make_step(config, False, penalty=name)
            for name in ("autograd", "direct", "none")}


def relu_variants(config: dict) -> dict:
    """ReLU writing a new tensor vs overwriting its input (models.build's choice where safe),
    channels-last, with the allocator settings training uses."""
    from fashionlab import hardware

    hardware.keep_freed_memory()
    return {name: make_step(config, True, relu_in_place=flag)
            for name, flag in (("new-tensor", False), ("in-place", True))}


def conv_variants(config: dict) -> dict:
    """oneDNN for every convolution (channels-last) vs train.conv = "auto", which sends the
    large ones through the DFT (fashionlab.convs), with the allocator settings training uses."""
    from fashionlab import hardware

    hardware.keep_freed_memory()
    return {name: make_step(config, True, conv=name) for name in ("direct", "auto")}


class _ReluAvgPool(torch.autograd.Function):
    """ReLU (in place, as models.build does after a conv) then a 2x2 average pool, with one
    backward: upsample the pooled gradient and mask it, instead of the pool's zero fill and
    scatter followed by the ReLU's threshold_backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        x.clamp_min_(0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)
        return torch.nn.functional.avg_pool2d(x, 2, 2), x

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _unused) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        up = torch.nn.functional.interpolate(grad * 0.25, scale_factor=2, mode="nearest")
        return torch.ops.aten.threshold_backward(up, y, 0)


class _FusedReluAvgPool(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReluAvgPool.apply(x)[0]


def _fuse_relu_pool(module: torch.nn.Module) -> torch.nn.Module:
    """The same net with every ReLU followed by a 2x2/2 average pool as one fused layer."""
    flat, out = [m for block in module for m in block], []
    for m in flat:
        pool = isinstance(m, torch.nn.AvgPool2d) and m.kernel_size in (2, (2, 2)) and (
            m.stride in (2, (2, 2))) and not m.padding
        if pool and out and isinstance(out[-1], torch.nn.ReLU):
            out[-1] = _FusedReluAvgPool()
        else:
            out.append(m)
    return torch.nn.Sequential(*out)


def pool_variants(config: dict) -> dict:
    """ReLU and average pool as separate modules (fashionlab's) vs _ReluAvgPool, channels-last,
    with the allocator settings training uses."""
    from fashionlab import hardware

    hardware.keep_freed_memory()
    return {"separate": make_step(config, True),
            "fused": make_step(config, True, rewrite=_fuse_relu_pool)}


class _Im2colConv2d(torch.nn.Conv2d):
    """A convolution of a one-channel image as one matmul of its k x k patches (rows: output
    pixels, columns: kh kw taps) with the kernels: the product comes out channels-last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o, c, kh, kw = self.weight.shape
        ph, pw = self.padding
        xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
        b, ho, wo = x.shape[0], xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
        cols = xp.unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5).reshape(
            b * ho * wo, c * kh * kw)
        w = self.weight.reshape(o, -1).t()
        y = cols @ w if self.bias is None else torch.addmm(self.bias, cols, w)
        return y.view(b, ho, wo, o).permute(0, 3, 1, 2)


def _im2col_first_conv(module: torch.nn.Module) -> torch.nn.Module:
    for m in module.modules():
        if (type(m) is torch.nn.Conv2d and m.in_channels == 1 and m.stride == (1, 1)
                and m.groups == 1 and not isinstance(m.padding, str)):
            m.__class__ = _Im2colConv2d
    return module


def im2col_variants(config: dict) -> dict:
    """The first (one-channel) convolution in oneDNN vs as one im2col matmul, channels-last,
    with the allocator settings training uses."""
    from fashionlab import hardware

    hardware.keep_freed_memory()
    return {"onednn": make_step(config, True),
            "im2col": make_step(config, True, rewrite=_im2col_first_conv)}


def _torch_flatten(module: torch.nn.Module) -> torch.nn.Module:
    from fashionlab import models

    for block in module:
        for i, layer in enumerate(block):
            if isinstance(layer, models.Flatten):
                block[i] = torch.nn.Flatten()
    return module


def flatten_variants(config: dict) -> dict:
    """torch's nn.Flatten, whose gradient comes back channels-first, vs models.Flatten, which
    hands it back channels-last like its input; channels-last, allocator settings as in
    training."""
    from fashionlab import hardware

    hardware.keep_freed_memory()
    return {"nn.Flatten": make_step(config, True, rewrite=_torch_flatten),
            "models.Flatten": make_step(config, True)}


def whole_variants(config: dict) -> dict:
    """A convolution whose kernel covers its whole input (LeNet-5's 5x5 on 5x5 -> 120) in
    oneDNN (train.conv = direct) vs as one matmul (auto: convs.WholeInputConv2d),
    channels-last, allocator settings as in training."""
    from fashionlab import hardware

    hardware.keep_freed_memory()
    return {"onednn": make_step(config, True, conv="direct"),
            "matmul": make_step(config, True)}


def _activation_before_pool(module: torch.nn.Module) -> torch.nn.Module:
    """Undo models._pool_before_activation: each moved activation back before its pool."""
    from fashionlab import models

    for a, b in itertools.pairwise(module):
        if (len(a) > 1 and isinstance(a[-1], torch.nn.MaxPool2d) and len(b) == 1
                and isinstance(b[0], models.MONOTONE)):
            a[-1], b[0] = b[0], a[-1]
    return module


def order_variants(config: dict) -> dict:
    """A monotone activation before its max pool (as the spec says) vs after it
    (models.build's order), channels-last, allocator settings as in training."""
    from fashionlab import hardware

    hardware.keep_freed_memory()
    return {"activation, pool": make_step(config, True, rewrite=_activation_before_pool),
            "pool, activation": make_step(config, True)}


def stepper_variants(config: dict) -> dict:
    """torch's Optimizer.step vs optim.stepper (the fused Adam/AdamW kernel called directly),
    channels-last for conv nets, allocator settings as in training."""
    from fashionlab import hardware, models

    hardware.keep_freed_memory()
    cl = models.build(config["model"]["layers"]).is_conv
    return {"Optimizer.step": make_step(config, cl, stepper=False),
            "optim.stepper": make_step(config, cl)}


def _bf16_convs(module: torch.nn.Module) -> torch.nn.Module:
    """Every convolution under bf16 autocast with its output cast back to fp32, so that only
    the convolutions' arithmetic is bf16; one that covers its whole input stays the fp32
    matmul training makes of it (convs.WholeInputConv2d)."""
    from fashionlab import convs

    class Bf16Conv2d(convs.WholeInputConv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if tuple(x.shape[2:]) == self.kernel_size and self.padding == (0, 0):
                return super().forward(x)
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return torch.nn.Conv2d.forward(self, x).float()

    for m in module.modules():
        if type(m) is torch.nn.Conv2d:
            m.__class__ = Bf16Conv2d
    return module


def _onednn_bf16_math(step):
    """step with oneDNN's fp32 convolutions computing in bf16 inside the kernel (PyTorch's
    torch.backends.mkldnn.conv.fp32_precision): tensors stay fp32, no casts are added."""
    flags = torch.backends.mkldnn.conv

    def run() -> None:
        before, flags.fp32_precision = flags.fp32_precision, "bf16"
        try:
            step()
        finally:
            flags.fp32_precision = before
    return run


def convbf16_variants(config: dict) -> dict:
    """fp32, bf16 autocast over the whole forward pass (--precision bf16), bf16 inside the
    convolutions only (autocast around each, its output cast back), and oneDNN's own bf16 math
    for fp32 convolutions; channels-last, allocator settings as in training."""
    from fashionlab import hardware

    hardware.keep_freed_memory()
    return {"fp32": make_step(config, True),
            "bf16": make_step(config, True, precision="bf16"),
            "bf16 convs only": make_step(config, True, rewrite=_bf16_convs),
            "oneDNN bf16 math": _onednn_bf16_math(make_step(config, True))}


class _Traced(torch.nn.Module):
    """The module run as a TorchScript trace made on its first input (after make_step's layout
    and layer conversions): the forward pass without Python per layer; autograd unchanged."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module, self.traced = module, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.traced is None:
            self.traced = torch.jit.trace(self.module, x, check_trace=False)
        return self.traced(x)


def trace_variants(config: dict) -> dict:
    """The forward pass in Python, layer by layer (fashionlab's), vs a TorchScript trace of it;
    fp32, channels-last for conv nets, allocator settings as in training."""
    from fashionlab import hardware, models

    hardware.keep_freed_memory()
    cl = models.build(config["model"]["layers"]).is_conv
    return {"eager": make_step(config, cl), "traced": make_step(config, cl, rewrite=_Traced)}


VARIANTS = {"alloc": alloc_variants, "optimizer": optimizer_variants,
            "penalty": penalty_variants, "relu": relu_variants, "conv": conv_variants,
            "pool": pool_variants, "im2col": im2col_variants, "flatten": flatten_variants,
            "whole": whole_variants, "order": order_variants, "stepper": stepper_variants,
            "convbf16": convbf16_variants, "trace": trace_variants}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=list(VARIANTS))
    p.add_argument("recipes", nargs="+")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    from fashionlab import config as cfg
    from fashionlab import hardware

    torch.set_num_threads(args.threads)
    print(f"CPU: {hardware.cpu_description()}", flush=True)
    for name in args.recipes:
        config = cfg.resolve(name)
        variants = VARIANTS[args.what](config)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for key, step in variants.items():
                step()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[key].append((time.perf_counter() - start) / args.steps * 1000)
        shown = "  ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in times.items())
        print(f"{name:<16} per step: {shown}", flush=True)


if __name__ == "__main__":
    main()
