"""The DFT and whole-input convolutions are the same function as nn.Conv2d (values and
gradients, to float rounding), swap in only where the rule says, and train to the same numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fashionlab import config as cfg
from fashionlab import convs, models, runs
from fashionlab.train import train

CPU = torch.device("cpu")


@pytest.mark.parametrize("b, c, o, h, w, k, pad", [
    (3, 4, 5, 14, 14, (5, 5), (2, 2)),   # 'same', even transform size 16
    (2, 3, 6, 7, 7, (5, 5), (2, 2)),     # 'same', odd transform size 9
    (2, 2, 3, 9, 12, (3, 5), (1, 2)),    # rectangular image and kernel
    (2, 3, 4, 10, 10, (5, 5), (0, 0)),   # 'valid': output 6x6
    (1, 1, 2, 6, 6, (1, 1), (0, 0)),     # 1x1
])
def test_matches_conv2d_values_and_gradients(b, c, o, h, w, k, pad):
    torch.manual_seed(0)
    x = torch.randn(b, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, *k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(o, dtype=torch.float64, requires_grad=True)
    mats = convs.transforms(h, w, *k, *pad, CPU, torch.float64)
    got = convs.conv2d(x, weight, bias, mats)
    want = F.conv2d(x, weight, bias, padding=pad)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    probe = torch.randn_like(want)
    grads = torch.autograd.grad((got * probe).sum(), (x, weight, bias))
    expected = torch.autograd.grad((want * probe).sum(), (x, weight, bias))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


def test_float32_error_is_rounding_sized():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 32, 5, padding=2)
    x = torch.randn(4, 64, 14, 14)
    want = conv(x)
    convs.convert(conv, "dft", CPU, "fp32")
    err = (conv(x) - want).abs().max() / want.abs().max()
    assert 0 < err < 1e-5


def _korssjoen():
    return models.build(cfg.resolve("korssjoen-cnn-maxpool")["model"]["layers"]).module


@pytest.mark.parametrize("requested, device, precision, swapped", [
    ("auto", "cpu", "fp32", 2),    # 128->256 and 256->512 5x5; not the 1->128 first layer
    ("dft", "cpu", "fp32", 3),     # every stride-1 convolution
    ("direct", "cpu", "fp32", 0),
    ("auto", "cpu", "bf16", 0),    # bf16 would round the transforms away
    ("auto", "cuda", "fp32", 0),   # cuDNN
])
def test_which_convolutions_are_swapped(requested, device, precision, swapped):
    module = _korssjoen()
    keys = list(module.state_dict())
    assert convs.convert(module, requested, torch.device(device), precision) == swapped
    kinds = [type(m) for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert kinds.count(convs.DFTConv2d) == swapped
    assert list(module.state_dict()) == keys


@pytest.mark.parametrize("conv, auto, dft", [
    (nn.Conv2d(32, 64, 5, padding=2), 1, 1),
    (nn.Conv2d(64, 64, 3, padding=1), 0, 1),   # 3x3: oneDNN is faster
    (nn.Conv2d(16, 32, 5, padding=2), 0, 1),   # too few input channels
    (nn.Conv2d(64, 64, 5, stride=2), 0, 0),    # strided: never
])
def test_auto_rule(conv, auto, dft):
    assert convs.convert(copy.deepcopy(conv), "auto", CPU, "fp32") == auto
    assert convs.convert(conv, "dft", CPU, "fp32") == dft


CONV_CONFIG = {
    "model": {"name": "conv5", "layers": [
        {"type": "conv2d", "filters": 32, "kernel": 3, "padding": "same", "activation": "relu"},
        {"type": "maxpool"},
        {"type": "conv2d", "filters": 8, "kernel": 5, "padding": "same", "activation": "relu"},
        {"type": "maxpool"},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"}]},
    "data": {"dataset": "any", "val": "first:50"},
    "train": {"epochs": 2, "batch_size": 32, "seed": 1, "precision": "fp32"},
}


def test_trains_to_the_same_numbers(tiny_data, tmp_path):
    def fit(conv: str) -> runs.Run:
        return runs.load_run(train(copy.deepcopy(CONV_CONFIG), overrides=[f"train.conv={conv}"],
                                   data_dir=str(tiny_data), out=tmp_path, quiet=True))

    direct, auto = fit("direct"), fit("auto")
    assert (direct.info["dft_convs"], auto.info["dft_convs"]) == (0, 1)
    assert len(direct.history) == len(auto.history) == 2
    for a, b in zip(direct.history, auto.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), key
    assert direct.metrics["test_accuracy"] == auto.metrics["test_accuracy"]


@pytest.mark.parametrize("channels_last", [True, False])
def test_whole_input_conv_matches_conv2d(channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(16, 120, 5).double().to(memory_format=fmt)
    whole = copy.deepcopy(conv)
    whole.__class__ = convs.WholeInputConv2d
    x = torch.randn(4, 16, 5, 5, dtype=torch.float64).to(memory_format=fmt).requires_grad_()
    want, got = conv(x), whole(x)
    assert got.shape == want.shape == (4, 120, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(want)
    expected = torch.autograd.grad((want * probe).sum(), (x, conv.weight, conv.bias))
    grads = torch.autograd.grad((got * probe).sum(), (x, whole.weight, whole.bias))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    bigger = torch.randn(2, 16, 7, 7, dtype=torch.float64)  # not its whole input: a conv
    torch.testing.assert_close(whole(bigger), conv(bigger))


@pytest.mark.parametrize("requested, device, swapped", [
    ("auto", "cpu", 1), ("direct", "cpu", 0), ("dft", "cpu", 0), ("auto", "cuda", 0)])
def test_only_lenets_last_conv_covers_its_input(requested, device, swapped):
    net = models.build(cfg.resolve("duan-lenet5")["model"]["layers"])
    keys = list(net.module.state_dict())
    assert convs.whole_input(net, requested, torch.device(device)) == swapped
    kinds = [type(m) for m in net.module.modules() if isinstance(m, nn.Conv2d)]
    assert kinds == [nn.Conv2d, nn.Conv2d, convs.WholeInputConv2d if swapped else nn.Conv2d]
    assert list(net.module.state_dict()) == keys
    same = models.build([{"type": "conv2d", "filters": 4, "kernel": 28, "padding": "same"},
                         {"type": "flatten"}, {"type": "dense", "units": 10}])
    assert convs.whole_input(same, "auto", CPU) == 0  # padded: sees more than its kernel


def test_whole_input_conv_trains_to_the_same_numbers(tiny_data, tmp_path):
    config = copy.deepcopy(CONV_CONFIG)
    config["model"]["layers"] = [
        {"type": "conv2d", "filters": 6, "kernel": 5, "padding": "same", "activation": "tanh"},
        {"type": "maxpool"},
        {"type": "conv2d", "filters": 16, "kernel": 5, "activation": "tanh"},
        {"type": "maxpool"},
        {"type": "conv2d", "filters": 24, "kernel": 5, "activation": "tanh"},  # 5x5 -> 1x1
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"}]

    def fit(conv: str) -> runs.Run:
        return runs.load_run(train(copy.deepcopy(config), overrides=[f"train.conv={conv}"],
                                   data_dir=str(tiny_data), out=tmp_path, quiet=True))

    direct, auto = fit("direct"), fit("auto")
    assert (direct.info["matmul_convs"], auto.info["matmul_convs"]) == (0, 1)
    for a, b in zip(direct.history, auto.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), key
    assert direct.metrics["test_accuracy"] == auto.metrics["test_accuracy"]
