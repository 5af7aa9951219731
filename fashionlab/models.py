"""Models are data: a list of Keras-like layer tables builds a `torch.nn.Module`.

    fashionlab summary weil-cnn

Each layer type below lists the keys it accepts and their Keras defaults; shapes are inferred
and checked, and parameters counted, before any training starts. The model returns logits: a
final softmax (as Keras models end) is fused into the cross-entropy loss, and applied by
`probabilities()` at prediction time. Models never choose their own device or dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fashionlab.config import suggest
from fashionlab.errors import SpecError

Shape = tuple[int, ...]  # one example's shape: (C, H, W) for images, (F,) for vectors
REQUIRED = object()
INPUT_SHAPE: Shape = (1, 28, 28)
NUM_CLASSES = 10
MAX_LAYER_PARAMS = 2**31  # 8 GiB of float32 in one layer: a typo, not a model

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),  # keras.activations.leaky_relu's default slope
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softmax": nn.Identity,  # only allowed last: fused into the loss
}
KERNEL_KEYS = {"activation": "linear", "kernel_initializer": "glorot_uniform",
               "use_bias": True, "l1": 0.0, "l2": 0.0, "kernel_constraint": ""}
POOL_KEYS = {"pool": 2, "strides": None, "padding": "valid"}  # strides: the pool's
LAYER_KEYS: dict[str, dict[str, Any]] = {
    "flatten": {},
    "dense": {"units": REQUIRED, **KERNEL_KEYS},
    "conv2d": {"filters": REQUIRED, "kernel": REQUIRED, "strides": 1, "padding": "valid",
               **KERNEL_KEYS},
    "maxpool": POOL_KEYS,
    "avgpool": POOL_KEYS,
    "global_avgpool": {},
    "dropout": {"rate": REQUIRED},
    "batchnorm": {"momentum": 0.99, "epsilon": 1e-3},  # Keras's defaults, not torch's
    "relu": {},
    "leaky_relu": {"alpha": 0.3},  # keras.layers.LeakyReLU's default slope
    "tanh": {},
    "sigmoid": {},
    "softmax": {},
}


@dataclass
class Row:
    """One line of the summary table."""

    name: str
    output: Shape
    params: int
    flops: int  # multiply-adds x 2, forward, per example


@dataclass
class Net:
    """The built module plus what the loop needs to know about it."""

    module: nn.Sequential
    rows: list[Row]
    penalties: list[tuple[nn.Parameter, float, float]] = field(default_factory=list)
    constraints: list[tuple[nn.Parameter, str, int]] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.rows)

    @property
    def is_conv(self) -> bool:
        return any(isinstance(m, nn.Conv2d) for m in self.module.modules())

    @property
    def conv_flops(self) -> int:
        return sum(r.flops for r in self.rows if r.name.endswith(": conv2d"))


class AvgPoolSame(nn.Module):
    """Keras's padding "same" average pool: zero padding split as TF splits it (the smaller
    half before), each window averaged over its real pixels only."""

    def __init__(self, pads: tuple[int, int, int, int], pool: tuple[int, int],
                 strides: tuple[int, int], size: tuple[int, int]):
        super().__init__()
        self.pads, self.pool, self.strides = pads, pool, strides
        ones = F.pad(torch.ones(1, 1, *size), pads)
        self.register_buffer("count", F.avg_pool2d(ones, pool, strides), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.avg_pool2d(F.pad(x, self.pads), self.pool, self.strides)
                / self.count.to(x.dtype))


def _same_pool(kind: str, pool: tuple[int, int], strides: tuple[int, int],
               size: tuple[int, int], out: tuple[int, int]) -> list[nn.Module]:
    """Pooling with padding "same", padded where TF pads: (out - 1) * stride + pool - size
    per axis, the smaller half before. With strides == pool and 0 or 1 pixel to pad (pool 2,
    every shipped recipe) that is all after, which torch's ceil_mode does without a copy."""
    totals = [max((o - 1) * s + k - n, 0)
              for o, s, k, n in zip(out, strides, pool, size, strict=True)]
    (top, bottom), (left, right) = [(t // 2, t - t // 2) for t in totals]
    if top == left == 0 and strides == pool:  # windows past the edge see real pixels only
        return [nn.MaxPool2d(pool, ceil_mode=True) if kind == "maxpool"
                else nn.AvgPool2d(pool, ceil_mode=True)]
    pads = (left, right, top, bottom)
    if kind == "maxpool":
        return [nn.ConstantPad2d(pads, -math.inf), nn.MaxPool2d(pool, strides)]
    return [AvgPoolSame(pads, pool, strides, size)]


def _pair(value: Any, where: str, key: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return value[0], value[1]
    raise SpecError(f"{where}: {key} must be a positive integer or [h, w], got {value!r}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_size(params: int, where: str) -> None:
    """Refuse before torch tries to allocate (and the machine starts swapping)."""
    if params > MAX_LAYER_PARAMS:
        raise SpecError(f"{where}: {params:,} parameters in one layer is too many "
                        f"(limit {MAX_LAYER_PARAMS:,})")


def _check_keys(spec: dict, where: str) -> dict:
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in LAYER_KEYS:
        known = ", ".join(LAYER_KEYS)
        raise SpecError(f"{where}: unknown layer type {kind!r} (known: {known})")
    allowed = LAYER_KEYS[kind]
    if kind == "leaky_relu" and "negative_slope" in spec and "alpha" not in spec:
        spec = {**spec, "alpha": spec["negative_slope"]}  # Keras 3's name for it
        del spec["negative_slope"]
    unknown = sorted(set(spec) - set(allowed) - {"type"})
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} for {kind}"
                        f"{suggest(unknown[0], allowed)} (accepted: "
                        f"{', '.join(allowed) or 'none'})")
    out = {}
    for key, default in allowed.items():
        if key not in spec:
            if default is REQUIRED:
                raise SpecError(f"{where}: {kind} needs {key!r}")
            out[key] = default
            continue
        value = spec[key]
        if (default is not REQUIRED and key not in ("kernel", "strides", "pool")
                and not (isinstance(default, float) and isinstance(value, int)
                         and not isinstance(value, bool))
                and type(value) is not type(default)):
            raise SpecError(f"{where}: {key} must be of type {type(default).__name__}, "
                            f"got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{where}: {key} must be a finite number, got {value}")
        out[key] = value
    return out


def _init_kernel(weight: torch.Tensor, name: str, where: str) -> None:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    trunc = 0.87962566103423978  # std of a unit normal truncated at 2 std, as Keras uses
    if name == "glorot_uniform":
        limit = math.sqrt(6 / (fan_in + fan_out))
        nn.init.uniform_(weight, -limit, limit)
    elif name == "he_uniform":
        nn.init.uniform_(weight, -math.sqrt(6 / fan_in), math.sqrt(6 / fan_in))
    elif name == "lecun_uniform":
        nn.init.uniform_(weight, -math.sqrt(3 / fan_in), math.sqrt(3 / fan_in))
    elif name in ("glorot_normal", "he_normal", "lecun_normal"):
        var = {"glorot_normal": 2 / (fan_in + fan_out), "he_normal": 2 / fan_in,
               "lecun_normal": 1 / fan_in}[name]
        std = math.sqrt(var) / trunc
        nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)
    elif name == "random_normal":
        nn.init.normal_(weight, 0.0, 0.05)
    elif name == "random_uniform":
        nn.init.uniform_(weight, -0.05, 0.05)
    elif name != "torch":  # "torch" keeps PyTorch's own default initialisation
        raise SpecError(f"{where}: unknown kernel_initializer {name!r}")


def _activation(name: str, where: str, last: bool) -> nn.Module:
    if name not in ACTIVATIONS:
        raise SpecError(f"{where}: unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")
    if name == "softmax" and not last:
        raise SpecError(f"{where}: softmax is only supported on the last layer "
                        "(it is fused into the cross-entropy loss)")
    return ACTIVATIONS[name]()


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow 'same' padding: output ceil(size/stride), extra pixel at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _kernel_layer(p: dict, layer: nn.Module, net: Net, where: str, last: bool) -> list[nn.Module]:
    _init_kernel(layer.weight, p["kernel_initializer"], where)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    if p["l1"] < 0 or p["l2"] < 0:
        raise SpecError(f"{where}: l1 and l2 must not be negative")
    if p["l1"] or p["l2"]:
        net.penalties.append((layer.weight, float(p["l1"]), float(p["l2"])))
    if p["kernel_constraint"]:
        if p["kernel_constraint"] not in ("unit_norm", "max_norm"):
            raise SpecError(f"{where}: kernel_constraint must be unit_norm or max_norm")
        # Keras normalises over axis 0 of its kernel: the inputs of a dense kernel (in, out),
        # but only the kernel *rows* of a conv kernel (kh, kw, in, out) -> torch dim 2.
        dim = 1 if isinstance(layer, nn.Linear) else 2
        net.constraints.append((layer.weight, p["kernel_constraint"], dim))
    return [layer, _activation(p["activation"], where, last)]


def _to_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """nn.Flatten (features in channels-first order) that hands its gradient back in the
    layout its input came in. Flattening a channels-last image copies it to channels-first
    order, and the gradient came back channels-first, which sent the pool or ReLU before it
    down a mixed-layout path: avg_pool2d_backward of weil-cnn's last pool took 0.33 ms
    instead of 0.06 (2 threads; AMD EPYC AVX2). The same values, so the same training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.requires_grad and x.dim() == 4 and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            x.register_hook(_to_channels_last)
        return super().forward(x)


def _build_layer(p: dict, kind: str, shape: Shape, net: Net, where: str,
                 last: bool) -> tuple[list[nn.Module], Shape, int]:
    """Return (torch modules, output shape, forward flops per example) for one layer."""
    image = len(shape) == 3
    if kind in ("conv2d", "maxpool", "avgpool", "global_avgpool") and not image:
        raise SpecError(f"{where}: {kind} needs an image input (C, H, W), got {shape}")
    if kind == "flatten":
        return [Flatten()], (math.prod(shape),), 0
    if kind == "dense":
        if image:
            raise SpecError(f"{where}: dense needs a flat input, got {shape}; "
                            "add {type = \"flatten\"} before it")
        units = p["units"]
        if not _positive_int(units):
            raise SpecError(f"{where}: units must be a positive integer, got {units!r}")
        _check_size((shape[0] + 1) * units, where)
        layer = nn.Linear(shape[0], units, bias=p["use_bias"])
        return _kernel_layer(p, layer, net, where, last), (units,), 2 * shape[0] * units
    if kind == "conv2d":
        kh, kw = _pair(p["kernel"], where, "kernel")
        sh, sw = _pair(p["strides"], where, "strides")
        filters = p["filters"]
        if not _positive_int(filters):
            raise SpecError(f"{where}: filters must be a positive integer, got {filters!r}")
        c, h, w = shape
        _check_size((kh * kw * c + 1) * filters, where)
        modules: list[nn.Module] = []
        padding = (0, 0)
        if p["padding"] == "same":
            (t, b), (lf, r) = _same_pad(h, kh, sh), _same_pad(w, kw, sw)
            if (t, lf) == (b, r):  # the convolution pads inside its kernel: no extra copy
                padding = (t, lf)
            else:
                modules.append(nn.ZeroPad2d((lf, r, t, b)))
            h, w = h + t + b, w + lf + r
        elif p["padding"] != "valid":
            raise SpecError(f"{where}: padding must be 'valid' or 'same'")
        if kh > h or kw > w:
            raise SpecError(f"{where}: kernel {kh}x{kw} does not fit the {h}x{w} input; "
                            "use padding = \"same\" or fewer pooling layers before it")
        out = (filters, (h - kh) // sh + 1, (w - kw) // sw + 1)
        layer = nn.Conv2d(c, filters, (kh, kw), (sh, sw), padding, bias=p["use_bias"])
        modules += _kernel_layer(p, layer, net, where, last)
        return modules, out, 2 * kh * kw * c * filters * out[1] * out[2]
    if kind in ("maxpool", "avgpool"):
        (ph, pw) = _pair(p["pool"], where, "pool")
        (sh, sw) = (ph, pw) if p["strides"] is None else _pair(p["strides"], where, "strides")
        c, h, w = shape
        if p["padding"] == "same":
            out = (c, math.ceil(h / sh), math.ceil(w / sw))
        elif p["padding"] == "valid":
            if ph > h or pw > w:
                raise SpecError(f"{where}: pool {ph}x{pw} does not fit the {h}x{w} input")
            out = (c, (h - ph) // sh + 1, (w - pw) // sw + 1)
        else:
            raise SpecError(f"{where}: padding must be 'valid' or 'same'")
        if p["padding"] == "same":
            return _same_pool(kind, (ph, pw), (sh, sw), (h, w), out[1:]), out, 0
        pool = (nn.MaxPool2d((ph, pw), (sh, sw)) if kind == "maxpool"
                else nn.AvgPool2d((ph, pw), (sh, sw)))
        return [pool], out, 0
    if kind == "global_avgpool":
        return [nn.AdaptiveAvgPool2d(1), Flatten()], (shape[0],), 0
    if kind == "dropout":
        rate = p["rate"]
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise SpecError(f"{where}: dropout rate must be a number in [0, 1), got {rate!r}")
        return [nn.Dropout(float(rate))], shape, 0
    if kind == "batchnorm":
        momentum, eps = p["momentum"], p["epsilon"]
        if not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise SpecError(f"{where}: batchnorm momentum must lie in [0, 1] (Keras's: the "
                            f"share of the running statistics kept each step), got {momentum!r}")
        if not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise SpecError(f"{where}: batchnorm epsilon must be positive, got {eps!r}")
        bn = (nn.BatchNorm2d if image else nn.BatchNorm1d)(
            shape[0], eps=float(eps), momentum=1.0 - float(momentum))
        return [bn], shape, 0
    if kind == "leaky_relu":
        return [nn.LeakyReLU(float(p["alpha"]))], shape, 0
    return [_activation(kind, where, last)], shape, 0


def check_trainable(layers: list) -> None:
    """Rules for a net about to train (either engine) that a saved run, built before them,
    need not meet to load: the last layer gives probabilities or logits (sigmoid or relu
    outputs are neither, and the loss would take them for logits), and a leaky ReLU's slope
    is not negative. Keras 3 refuses both."""
    specs = [(i, spec) for i, spec in enumerate(layers or []) if isinstance(spec, dict)]
    for i, spec in specs:
        slope = spec.get("alpha", spec.get("negative_slope", 0))
        if spec.get("type") == "leaky_relu" and isinstance(slope, (int, float)) and slope < 0:
            raise SpecError(f"layer {i} (leaky_relu): alpha (the negative slope) must not be "
                            f"negative, got {slope}")
    if not specs or specs[-1][0] != len(layers) - 1:
        return
    i, last = specs[-1]
    kind = last.get("type")
    name = kind if kind in ("relu", "leaky_relu", "tanh", "sigmoid") else (
        last.get("activation", "linear") if kind in ("dense", "conv2d") else "linear")
    if isinstance(name, str) and name in ACTIVATIONS and name not in ("softmax", "linear"):
        raise SpecError(f"layer {i} ({kind}): the last layer's activation must be softmax (or "
                        f"linear: logits); {name} outputs are not class probabilities, and the "
                        "loss would take them for logits")


def build(layers: list[dict], input_shape: Shape = INPUT_SHAPE,
          num_classes: int = NUM_CLASSES) -> Net:
    """Build and shape-check a model from its layer tables (seed torch first for repeatability)."""
    if not isinstance(layers, list) or not layers:
        raise SpecError("[model] layers must be a non-empty list of layer tables")
    net = Net(nn.Sequential(), [])
    shape = input_shape
    for i, spec in enumerate(layers):
        if not isinstance(spec, dict):
            raise SpecError(f"layer {i}: must be a table like {{type = \"dense\", units = 10}}")
        kind = spec.get("type")
        known = isinstance(kind, str) and kind in LAYER_KEYS
        where = f"layer {i} ({kind})" if known else f"layer {i}"
        params = _check_keys(spec, where)
        modules, shape, flops = _build_layer(params, spec["type"], shape, net, where,
                                             last=i == len(layers) - 1)
        block = nn.Sequential(*modules)
        net.module.append(block)
        count = sum(t.numel() for t in block.parameters())
        net.rows.append(Row(f"{i}: {spec['type']}", shape, count, flops))
    if shape != (num_classes,):
        raise SpecError(f"the last layer outputs shape {shape}; {num_classes} classes need "
                        f"({num_classes},): end with {{type = \"dense\", units = {num_classes}}}")
    _pool_before_activation(net.module)
    _relu_in_place(net.module)
    return net


# Elementwise and non-decreasing: max(f(a), f(b)) = f(max(a, b)).
MONOTONE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU)


def _pool_before_activation(module: nn.Sequential) -> None:
    """A monotone activation followed by a max pool runs after the pool instead, on a quarter
    of the values: the same outputs and gradients (a window's ties can differ only where
    tanh, sigmoid or ELU saturate in float). `bench/ab.py order`, 2 threads, Intel Xeon with
    AMX, per step: LeNet-5 3.52 -> 3.39 ms, quick-cnn 5.15 -> 4.92, bodapati-task3 7.56 ->
    7.18 (docs/speed.md). The activation moves between two modules without parameters:
    weights and checkpoints are unaffected."""
    for a, b in itertools.pairwise(module):
        if (len(a) and isinstance(a[-1], MONOTONE) and len(b) == 1
                and isinstance(b[0], nn.MaxPool2d)
                and getattr(a[-1], "negative_slope", 0) >= 0):
            a[-1], b[0] = b[0], a[-1]


# Layers whose backward needs their input, never their output: a ReLU after one may overwrite it.
OUTPUT_NOT_SAVED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d,
                    nn.AvgPool2d)


def _relu_in_place(module: nn.Sequential) -> None:
    """ReLU in place where that is safe: one activation-sized buffer less to allocate and
    write per layer (`bench/ab.py relu weil-cnn`, 1 thread: 4-5% off a weil-cnn step; AMD
    EPYC AVX2, docs/speed.md). Never after a view (flatten) or an op that saves its output
    (tanh, sigmoid), where autograd would need the overwritten values."""
    flat = [m for block in module for m in block]
    for before, layer in itertools.pairwise(flat):
        if isinstance(layer, nn.ReLU) and isinstance(before, OUTPUT_NOT_SAVED):
            layer.inplace = True


def summary(net: Net) -> str:
    """A Keras-style table: layer, output shape, parameters."""
    lines = [f"{'Layer':<22}{'Output (N, C, H, W)':<20}{'Params':>12}{'MFLOPs':>10}", "-" * 64]
    for r in net.rows:
        lines.append(f"{r.name:<22}{str((None, *r.output)):<20}{r.params:>12,}"
                     f"{r.flops / 1e6:>10.2f}")
    lines += ["-" * 64,
              f"Total params: {net.params:,}   forward MFLOPs/image: {net.flops / 1e6:.2f}"]
    running = sum(b.numel() for name, b in net.module.named_buffers()
                  if name.endswith(("running_mean", "running_var")))
    if running:  # Keras's "Total params" counts them too, as non-trainable
        lines.append(f"(trainable; batch norm's running means and variances add {running:,} "
                     f"non-trainable, {net.params + running:,} as Keras counts)")
    return "\n".join(lines)


def penalty(net: Net) -> torch.Tensor | float:
    """Keras kernel regularisers: l1 * sum|w| + l2 * sum(w^2) (no 1/2), added to the loss."""
    total: torch.Tensor | float = 0.0
    for weight, l1, l2 in net.penalties:
        if l1:
            total = total + l1 * weight.abs().sum()
        if l2:
            total = total + l2 * weight.square().sum()
    return total


@torch.no_grad()
def add_penalty_grads(net: Net) -> torch.Tensor:
    """The penalty's gradient added straight to each kernel's .grad, and its value for the log.

    The same numbers as backpropagating through penalty() (d|w| = sign w, d w^2 = 2w), without
    the autograd graph, which cost a third of a small FC net's step; the value comes from two
    dot products (|w| = w . sign w), cheaper than norms. Call after backward().
    """
    total = torch.zeros((), device=net.penalties[0][0].device)
    for weight, l1, l2 in net.penalties:
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        flat = weight.reshape(-1)
        if l1:
            sign = weight.sign()
            weight.grad.add_(sign, alpha=l1)
            total.add_(torch.dot(flat, sign.reshape(-1)), alpha=l1)
        if l2:
            weight.grad.add_(weight, alpha=2 * l2)
            total.add_(torch.dot(flat, flat), alpha=l2)
    return total


@torch.no_grad()
def apply_constraints(net: Net) -> None:
    """Keras applies kernel constraints after each optimizer step."""
    for weight, kind, dim in net.constraints:
        norm = weight.norm(dim=dim, keepdim=True)
        if kind == "unit_norm":
            weight.div_(norm + 1e-7)
        else:  # max_norm with Keras's default max_value = 2
            weight.mul_(norm.clamp(max=2.0) / (norm + 1e-7))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=-1)
