"""Batched inference with a built model, and loading a trained model back from its run folder.

Shared by the training loop (validation and test), `evaluate`, `predict`, `export` and `serve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fashionlab import augment, data, hardware, models, runs
from fashionlab import config as cfg
from fashionlab.errors import RunError


@dataclass
class Trained:
    """A model rebuilt from a run folder, ready to predict."""

    net: models.Net
    config: dict
    run: runs.Run
    device: torch.device
    precision: str
    channels_last: bool = False

    @property
    def classes(self) -> tuple[str, ...]:
        return data.class_names(self.config["data"])

    def logits(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 28, 28) in 0..255 -> float32 logits (N, 10) on the CPU."""
        x = torch.as_tensor(images)
        return logits(self.net.module, x, self.config, self.device, self.precision,
                      self.channels_last).cpu()

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return models.probabilities(self.logits(images)).numpy()


def as_input(x: torch.Tensor, config: dict, channels_last: bool) -> torch.Tensor:
    """uint8 or pixel-valued (N, 28, 28) or (N, 1, 28, 28) -> normalised float (N, 1, 28, 28)."""
    a, b = data.normalizer(config["data"]["normalize"])
    x = x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    x = x * a + b
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def views(pixels: torch.Tensor, config: dict) -> list[torch.Tensor]:
    """The test-time views a recipe asks for, in pixel units: the image, its copies moved
    `tta_shift` pixels each of four ways, and the mirror image of each if `tta_flip`."""
    n = config["train"]["tta_shift"]
    out = [pixels]
    if n:
        out += [augment.shift(pixels, dx, dy) for dx, dy in ((n, 0), (-n, 0), (0, n), (0, -n))]
    if config["train"]["tta_flip"]:
        out += [v.flip(-1) for v in out]
    return out


def averaged_logits(module: nn.Module, pixels: torch.Tensor, config: dict,
                    channels_last: bool) -> torch.Tensor:
    """Float32 logits averaged over the views; one view is the plain forward pass."""
    z = [module(as_input(v, config, channels_last)).float() for v in views(pixels, config)]
    return sum(z[1:], z[0]) / len(z)


@torch.no_grad()
def logits(module: nn.Module, images: torch.Tensor, config: dict, device: torch.device,
           precision: str, channels_last: bool = False) -> torch.Tensor:
    """Logits for every image, in batches, in eval mode, averaged over the test-time views."""
    was_training = module.training
    module.eval()
    out = []
    batch = config["train"]["eval_batch_size"]
    try:
        for i in range(0, len(images), batch):
            with hardware.autocast(device, precision):
                out.append(averaged_logits(module, images[i:i + batch].to(device), config,
                                           channels_last))
    finally:
        module.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10, device=device)


def loss_and_accuracy(z: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(z) == 0:
        return float("nan"), float("nan")
    loss = F.cross_entropy(z, labels).item()
    return loss, (z.argmax(1) == labels).sum().item() / len(labels)


def load_weights(module: nn.Module, weights: dict[str, np.ndarray], where: str) -> None:
    state = module.state_dict()
    if set(state) != set(weights):
        missing = sorted(set(state) - set(weights))
        extra = sorted(set(weights) - set(state))
        raise RunError(f"{where}: weights do not fit the model "
                       f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for key, value in weights.items():
        if tuple(state[key].shape) != value.shape:
            raise RunError(f"{where}: weight {key} has shape {value.shape}, "
                           f"the model needs {tuple(state[key].shape)}")
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})


def load_trained(path: str | Path, precision: str = "auto") -> Trained:
    """Rebuild a finished run's model and load its final weights."""
    run = runs.load_run(path)
    if run.info.get("engine") == "scikit-learn":
        raise RunError(f"{run.path} is a scikit-learn baseline: it has test predictions for "
                       "compare and report, but no network to evaluate, predict or export")
    config = cfg.resolve(run.config)
    net = models.build(config["model"]["layers"])
    load_weights(net.module, run.weights(), str(run.path / "model.safetensors"))
    device = hardware.device()
    channels_last = hardware.use_channels_last(config["train"]["channels_last"], net.is_conv)
    net.module.to(device).eval()
    if channels_last:
        net.module.to(memory_format=torch.channels_last)
    if precision == "auto":
        precision = scoring_precision(run.info.get("precision"), device)
    precision = hardware.resolve_precision(precision, device, net.conv_flops)
    return Trained(net, config, run, device, precision, channels_last)


def scoring_precision(trained_in: str | None, device: torch.device) -> str:
    """'auto' for scoring a run: the precision it trained in, so that evaluate gives its
    metrics.json figure; bf16 only where this CPU (or a GPU) does it natively, since emulated
    bf16 is many times slower than fp32 (a few predictions may then move)."""
    if trained_in == "fp32" or (trained_in == "bf16" and hardware.native_bf16(device)):
        return trained_in
    return "auto"
