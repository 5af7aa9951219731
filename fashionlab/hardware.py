"""Which device, precision and thread count a run uses, decided from what the machine has.

bf16 autocast is several times faster than fp32 on CPUs with AMX or AVX-512-BF16, and about
13x slower on AVX2-only CPUs, so `auto` reads the CPU flags instead of guessing.
"""

from __future__ import annotations

import contextlib
import os
import platform
from functools import cache

import torch

FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@cache
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """CPU model plus the flags that decide speed, printed beside every timing."""
    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{cpu_name()} [{' '.join(shown) or 'no avx2'}], {usable_cores()} cores"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(requested: str, dev: torch.device) -> str:
    """'auto' -> bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere."""
    if requested != "auto":
        return requested
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if any(f in cpu_flags() for f in FAST_BF16_FLAGS) else "fp32"


def autocast(dev: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_threads() -> None:
    """One intra-op thread per usable core, unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(usable_cores())
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
