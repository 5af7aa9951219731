"""Data augmentation as whole-batch tensor operations (no per-image Python).

Works on a float batch (B, 1, H, W) in pixel units (0..255) before normalisation, so that the
zero padding of a shift or an erased patch is black background, as in the data set.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def enabled(aug: dict) -> bool:
    return any(aug[k] for k in ("flip", "translate", "rotate", "erase"))


def _uniform(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device)


def flip(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    mask = _uniform(len(x), gen, x.device) < p
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def translate(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pixels` in x and y (a zero-padded random crop)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4)
    dy = torch.randint(0, 2 * pixels + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pixels + 1, (b,), generator=gen, device=x.device)
    rows = torch.arange(h, device=x.device) + dy[:, None]  # (B, H) rows of the padded image
    cols = torch.arange(w, device=x.device) + dx[:, None]  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pixels))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images moved dx pixels right and dy down, the uncovered edge black (test-time views)."""
    h, w = x.shape[-2:]
    p = max(abs(dx), abs(dy))
    return F.pad(x, (p,) * 4)[..., p - dy:p - dy + h, p - dx:p - dx + w]


def rotate(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    angle = (_uniform(len(x), gen, x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def erase(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Random erasing: with probability p, blank one rectangle of 2-25% of the image."""
    b, _, h, w = x.shape
    area = (0.02 + 0.23 * _uniform(b, gen, x.device)) * h * w
    ratio = torch.exp((_uniform(b, gen, x.device) * 2 - 1) * math.log(3.0))
    eh = (area * ratio).sqrt().clamp(1, h)
    ew = (area / ratio).sqrt().clamp(1, w)
    top = _uniform(b, gen, x.device) * (h - eh)
    left = _uniform(b, gen, x.device) * (w - ew)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
              & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]))
    apply = (_uniform(b, gen, x.device) < p)[:, None, None]
    return x.masked_fill((inside & apply)[:, None], 0.0)


def apply(x: torch.Tensor, aug: dict, gen: torch.Generator) -> torch.Tensor:
    if aug["flip"]:
        x = flip(x, aug["flip"], gen)
    if aug["translate"]:
        x = translate(x, aug["translate"], gen)
    if aug["rotate"]:
        x = rotate(x, aug["rotate"], gen)
    if aug["erase"]:
        x = erase(x, aug["erase"], gen)
    return x
