"""Large convolutions through the frequency domain, computed with matrix multiplies.

A stride-1 convolution is a pointwise product of spectra, so its cost per pair of channels
falls from k*k multiply-adds per pixel to one complex multiply per frequency: for report
002's 5x5 convolutions at 14x14 and 7x7, 144 and 45 frequencies replace 196 x 25 and 49 x 25
multiply-adds. The transforms are small dense DFT matrices applied with matmuls (torch.fft
was slower than these on every layer of bench/convs.py), sized
to the smallest transform without wrap-around, H + pad. Outputs and gradients equal
nn.Conv2d's to float rounding (tests/test_convs.py), so runs, checkpoints and exports do
not know which algorithm trained them.

Measured against oneDNN's direct convolution, AMD EPYC AVX2, 2 threads, forward + backward
at batch 32: about 2x on each of report 002's two big convolutions (`bench/convs.py`), and
report 002's CNN step 518 -> 302 ms (`bench/ab.py conv korssjoen-cnn-maxpool --threads 2`;
docs/speed.md).
3x3 kernels and thin layers were slower this way, so `train.conv = "auto"` leaves them to
oneDNN, as it does on GPUs and under bf16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# bench/convs.py (docs/bench/convs.md): 3x3 kernels ran at 0.73-0.96x of oneDNN, 5x5 at
# 6 -> 16 channels 0.59x, at 16 -> 32 and 32 -> 64 about 1.1x, from 128 channels 2.3-4.1x.
MIN_KERNEL_AREA = 25
MIN_IN_CHANNELS = 32


def _dft(rows: torch.Tensor, cols: torch.Tensor, n: int, sign: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of exp(sign 2 pi i rows cols / n), in float64."""
    a = sign * 2 * math.pi * torch.outer(rows.double(), cols.double()) / n
    return torch.cos(a), torch.sin(a)


def _block(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """A complex matrix as a real one acting on (real part; imaginary part) stacked."""
    return torch.cat([torch.cat([re, -im], 1), torch.cat([im, re], 1)], 0)


def transforms(h: int, w: int, kh: int, kw: int, ph: int, pw: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """The DFT matrices of one layer: input rows, input columns, kernel, inverse rows and
    inverse columns. Columns use the real-input half spectrum (w + pw) // 2 + 1."""
    n, m = h + ph, w + pw  # transform sizes: the smallest with no wrap-around
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    rows, cols = torch.arange(n), torch.arange(m // 2 + 1)
    in_cols = torch.cat(_dft(torch.arange(w), cols, m, -1), 1)  # (w, 2 mf): re | im
    in_rows = _block(*_dft(rows, torch.arange(h), n, -1))  # (2n, 2h)
    # The kernel is correlated, not convolved: conjugate transform. Frequencies f = (row, col).
    (hr, hi), (wr, wi) = _dft(rows, torch.arange(kh), n, 1), _dft(cols, torch.arange(kw), m, 1)
    kernel = torch.stack([torch.kron(hr, wr) - torch.kron(hi, wi),
                          torch.kron(hr, wi) + torch.kron(hi, wr)])  # (2, F, kh kw)
    out_rows = _block(*_dft(torch.arange(ho) - ph, rows, n, 1)) / n  # (2ho, 2n), shifted by pad
    weight = torch.full((len(cols),), 2.0, dtype=torch.float64)  # the half spectrum counts twice,
    weight[0] = 1  # except the zero frequency
    if m % 2 == 0:
        weight[-1] = 1  # and Nyquist
    cr, ci = _dft(torch.arange(wo) - pw, cols, m, 1)
    out_cols = torch.stack([cr * weight, -ci * weight]) / m  # (2, wo, mf): real part only
    return tuple(t.to(device, dtype).contiguous()
                 for t in (in_cols, in_rows, kernel, out_rows, out_cols))


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           mats: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=(ph, pw)) at stride 1, through `transforms(...)`."""
    in_cols, in_rows, kernel, out_rows, out_cols = mats
    b, c, h, _ = x.shape
    o, _, kh, kw = weight.shape
    n, mf, ho = in_rows.shape[0] // 2, in_cols.shape[1] // 2, out_rows.shape[0] // 2
    x1 = (x @ in_cols).view(b, c, h, 2, mf)
    xr, xi = torch.einsum("nsh,bchsg->ngbc", in_rows.view(2 * n, 2, h), x1).reshape(
        2, n * mf, b, c)
    wt = weight.reshape(o * c, kh * kw).T  # a view, no copy of the weight
    wr, wi = ((k @ wt).view(-1, o, c).transpose(1, 2) for k in kernel)  # (F, c, o) views
    yr = torch.baddbmm(torch.bmm(xr, wr), -xi, wi)  # the complex product, per frequency
    yi = torch.baddbmm(torch.bmm(xr, wi), xi, wr)
    y = (out_rows @ torch.stack([yr, yi]).view(2 * n, -1)).view(2, ho, mf, b, o)
    y = torch.einsum("swg,shgbo->bohw", out_cols, y)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class DFTConv2d(nn.Conv2d):
    """nn.Conv2d with the same parameters, computed by `conv2d` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[2], x.shape[3], x.device, x.dtype)
        mats = self._mats.get(key)
        if mats is None:
            mats = self._mats[key] = transforms(*key[:2], *self.kernel_size, *self.padding,
                                                x.device, x.dtype)
        return conv2d(x, self.weight, self.bias, mats)


class WholeInputConv2d(nn.Conv2d):
    """A convolution whose kernel covers its whole input is a dense layer: one matmul.

    LeNet-5's last convolution (16 channels of 5x5 -> 120) is one. oneDNN ran it, forward and
    backward, in ~0.36 ms of a ~4-5 ms step on an AMX Xeon; as a matmul the whole training step
    was 6-13% faster (`bench/ab.py whole duan-lenet5`, docs/speed.md). Same parameters, same
    layout; outputs equal nn.Conv2d's to float rounding (tests/test_convs.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.kernel_size:
            return super().forward(x)
        b, o = x.shape[0], self.out_channels
        rows = x.permute(0, 2, 3, 1).reshape(b, -1)  # a view when x is channels-last
        w = self.weight.permute(0, 2, 3, 1).reshape(o, -1)
        return nn.functional.linear(rows, w, self.bias).view(b, o, 1, 1)


def whole_input(net, requested: str, device: torch.device) -> int:
    """Re-class, in place, the convolutions of a models.Net whose kernel covers their whole
    (unpadded) input as WholeInputConv2d; return how many. 'auto' on CPU only (cuDNN was not
    measured); 'direct' and 'dft' leave them alone."""
    from fashionlab.models import INPUT_SHAPE

    if requested != "auto" or device.type != "cpu":
        return 0
    chosen = []
    inputs = [INPUT_SHAPE] + [r.output for r in net.rows[:-1]]
    for block, shape in zip(net.module, inputs, strict=True):
        m = block[0] if len(block) else None  # a padded conv's block starts with its padding
        if (type(m) is nn.Conv2d and m.padding == (0, 0) and m.dilation == (1, 1)
                and m.groups == 1 and tuple(shape[1:]) == m.kernel_size):
            chosen.append(m)
    for conv in chosen:
        conv.__class__ = WholeInputConv2d
    return len(chosen)


def suits(conv: nn.Conv2d, requested: str) -> bool:
    """'dft': wherever the frequency domain computes the same thing (stride 1, no dilation
    or groups); 'auto': where it also measured faster; 'direct': never."""
    possible = (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))
    if requested != "auto":
        return possible and requested == "dft"
    return (possible and math.prod(conv.kernel_size) >= MIN_KERNEL_AREA
            and conv.in_channels >= MIN_IN_CHANNELS)


def convert(module: nn.Module, requested: str, device: torch.device, precision: str) -> int:
    """Re-class the suitable convolutions of `module` as DFTConv2d, in place: the same
    objects and parameters, so state dicts, optimizers and checkpoints are unchanged; return
    how many. 'auto' only acts for fp32 on CPU: cuDNN and bf16 kernels are fast already,
    and a bf16 DFT would lose most of its 8 mantissa bits to the transform sums."""
    if requested == "auto" and (device.type, precision) != ("cpu", "fp32"):
        return 0
    chosen = [m for m in module.modules() if type(m) is nn.Conv2d and suits(m, requested)]
    for conv in chosen:
        conv.__class__ = DFTConv2d
        conv._mats = {}
    return len(chosen)
