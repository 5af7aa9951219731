"""Optimizers with Keras's defaults, and per-step learning-rate schedules.

Keras and PyTorch differ in defaults that change results: Adam's and RMSprop's epsilon
(1e-7 vs 1e-8) and RMSprop's rho (0.9 vs 0.99). We use Keras's, since the reports used Keras.
"""

from __future__ import annotations

import math

import torch

from fashionlab.config import learning_rate

KERAS_EPSILON = 1e-7


def make_optimizer(params, train: dict) -> torch.optim.Optimizer:
    """The fused kernels (one op for all parameters) cut a small net's step time on CPU by
    ~40% (weil-fc, AMD EPYC AVX2: 30.6 -> 17.4 ms; docs/speed.md); RMSprop has none."""
    lr, wd, name = learning_rate(train), train["weight_decay"], train["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train["momentum"],
                               nesterov=train["nesterov"], weight_decay=wd, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=KERAS_EPSILON, weight_decay=wd, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, eps=KERAS_EPSILON, weight_decay=wd, fused=True)
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=KERAS_EPSILON,
                               momentum=train["momentum"], weight_decay=wd, foreach=True)


def lr_factor(step: int, total: int, train: dict, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at a given optimizer step."""
    warm = int(train["warmup_epochs"] * steps_per_epoch)
    if train["schedule"] == "onecycle":
        warm = warm or max(1, int(0.25 * total))  # rise for a quarter, then fall linearly to 0
        return step / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))
    if step < warm:
        return (step + 1) / warm
    if train["schedule"] == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return 1.0


def make_schedule(optimizer: torch.optim.Optimizer, train: dict,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = steps_per_epoch * train["epochs"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, train, steps_per_epoch))
