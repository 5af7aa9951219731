"""Optimizers with Keras's defaults and updates, and per-step learning-rate schedules.

Keras and PyTorch differ in ways that change results: Adam's and RMSprop's epsilon (1e-7 vs
1e-8), RMSprop's rho (0.9 vs 0.99) and where its epsilon goes (inside the square root in
Keras), and weight decay (Keras shrinks every optimizer's weights by lr * wd apart from the
gradient, as torch's AdamW does; torch's other optimizers add wd * w to the gradient). We
follow Keras, since the reports used Keras.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fashionlab.config import learning_rate

KERAS_EPSILON = 1e-7


def make_optimizer(params, train: dict) -> torch.optim.Optimizer:
    """The fused kernels (one op for all parameters) cut a small net's step time on CPU by
    ~40% (weil-fc, AMD EPYC AVX2: 30.6 -> 17.4 ms; docs/speed.md)."""
    lr, wd, name = learning_rate(train), train["weight_decay"], train["optimizer"]
    if name == "sgd":
        kind = DecayedSGD if wd else torch.optim.SGD
        return kind(params, lr=lr, momentum=train["momentum"], nesterov=train["nesterov"],
                    **({"decay": wd} if wd else {}), fused=True)
    if name == "adamw" or (name == "adam" and wd):  # Keras's Adam decays as AdamW does
        return torch.optim.AdamW(params, lr=lr, eps=KERAS_EPSILON, weight_decay=wd, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=KERAS_EPSILON, fused=True)
    return RMSprop(params, lr=lr, momentum=train["momentum"], decay=wd)


def _decay(group: dict) -> list[torch.Tensor]:
    """Keras's weight decay, w -= lr * wd * w, before the update; the weights it touched."""
    params = [p for p in group["params"] if p.grad is not None]
    if group["decay"] and params:
        torch._foreach_mul_(params, 1 - group["lr"] * group["decay"])
    return params


class DecayedSGD(torch.optim.SGD):
    """torch's SGD after Keras's weight decay (torch's own adds wd * w to the gradient, and
    momentum carries it on)."""

    def __init__(self, params, decay: float, **kwargs):
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            group["decay"] = decay

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            _decay(group)
        return super().step(closure)


class RMSprop(torch.optim.Optimizer):
    """Keras's RMSprop: v = rho v + (1 - rho) g^2, step lr g / sqrt(v + eps) (torch divides
    by sqrt(v) + eps, which moves a weight with gradients near 1e-4 ten times further),
    momentum on that step, weight decay as Keras's."""

    def __init__(self, params, lr: float, rho: float = 0.9, eps: float = KERAS_EPSILON,
                 momentum: float = 0.0, decay: float = 0.0):
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps, "momentum": momentum,
                                  "decay": decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = _decay(group)
            if not params:
                continue
            grads = [p.grad for p in params]
            state = [self.state[p] for p in params]
            for p, s in zip(params, state, strict=True):
                if not s:
                    s["square_avg"] = torch.zeros_like(p)
                    if group["momentum"]:
                        s["momentum_buffer"] = torch.zeros_like(p)
            square = [s["square_avg"] for s in state]
            torch._foreach_mul_(square, group["rho"])
            torch._foreach_addcmul_(square, grads, grads, value=1 - group["rho"])
            root = torch._foreach_add(square, group["eps"])
            torch._foreach_sqrt_(root)
            if group["momentum"]:
                velocity = [s["momentum_buffer"] for s in state]
                torch._foreach_mul_(velocity, group["momentum"])
                torch._foreach_addcdiv_(velocity, grads, root, value=group["lr"])
                torch._foreach_sub_(params, velocity)
            else:
                torch._foreach_addcdiv_(params, grads, root, value=-group["lr"])
        return None


def stepper(opt: torch.optim.Optimizer) -> Callable[[], None]:
    """opt.step for the hot loop. Fused Adam and AdamW with one parameter group get their
    fused kernel called straight on the optimizer's own state: Optimizer.step spends 0.1-0.3
    ms of Python per call regrouping the same tensors, 7-11% of weil-fc's step and 2-8% of
    LeNet-5's (`bench/ab.py stepper`, Intel Xeon with AMX; docs/speed.md). Same kernel, same
    arguments, so the same numbers to the bit (tests/test_train.py); state_dict, checkpoints
    and schedules see the same optimizer. The first call, and any step with a missing
    gradient, go through opt.step."""
    group = opt.param_groups[0]
    if (type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or len(opt.param_groups) > 1
            or not group["fused"] or group["amsgrad"] or group["maximize"]
            or group["capturable"] or group["differentiable"]):
        return opt.step
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    first = True

    def step() -> None:
        nonlocal first
        group = opt.param_groups[0]  # fetched each time, as is the state: a resume replaces both
        params = group["params"]
        grads = [p.grad for p in params]
        if first or any(g is None for g in grads):
            first = False
            opt.step()
            return
        state = [opt.state[p] for p in params]
        steps = [s["step"] for s in state]
        torch._foreach_add_(steps, 1)
        kernel(params, grads, [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state],
               [], steps, amsgrad=False, lr=group["lr"], beta1=group["betas"][0],
               beta2=group["betas"][1], weight_decay=group["weight_decay"], eps=group["eps"],
               maximize=False, grad_scale=None, found_inf=None)

    return step


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
