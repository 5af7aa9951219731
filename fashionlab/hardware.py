"""Which device, precision and thread count a run uses, decided from what the machine has.

bf16 autocast is several times faster than fp32 on CPUs with AMX or AVX-512-BF16, and about
13x slower on AVX2-only CPUs, so `auto` reads the CPU flags instead of guessing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import time
from functools import cache
from typing import TYPE_CHECKING

from fashionlab.errors import UserError

if TYPE_CHECKING:
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
    text = f"{cpu_name()} [{' '.join(shown) or 'no avx2'}], {usable_cores()} cores"
    if "torch" not in sys.modules:  # the NumPy engine never imports torch
        return text
    threads = sys.modules["torch"].get_num_threads()
    return f"{text}, {threads} thread{'s' * (threads > 1)}"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


DEVICES = ("auto", "cpu", "cuda")


def device() -> torch.device:
    """The GPU when one is visible, else the CPU; $FASHIONLAB_DEVICE (auto, cpu, cuda) chooses,
    so a GPU machine can still run the CPU path, and every command agrees on the choice."""
    import torch

    wanted = os.environ.get("FASHIONLAB_DEVICE", "auto") or "auto"
    if wanted not in DEVICES:
        raise UserError(f"FASHIONLAB_DEVICE={wanted!r} is not one of {', '.join(DEVICES)}")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for (--device or FASHIONLAB_DEVICE) but "
                        f"PyTorch {torch.__version__} sees no CUDA GPU")
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


BF16_MIN_CONV_FLOPS = 1_000_000


def resolve_precision(requested: str, dev: torch.device, conv_flops: int) -> str:
    """'auto' -> bf16 on CPUs with native bf16 for nets whose convolutions do at least
    BF16_MIN_CONV_FLOPS per image (forward), fp32 elsewhere.

    bf16 wins time in the convolutions' arithmetic and loses it in the casts autocast adds per
    layer and in elementwise ops and pools that run slower on bf16 tensors. On an AMX Xeon,
    training steps interleaved in one process (docs/speed.md): LeNet-5 (0.81 MFLOPs of
    convolution per image) was 6-23% faster in fp32; quick-cnn (1.31) and weil-cnn (1.78)
    4-17% faster in bf16, the bigger conv nets 1.3-1.9x; every FC recipe was as fast or faster
    in fp32 (batch-32 matmuls of a few hundred features are too small for AMX). On an AMD
    EPYC with AVX-512-BF16 and no AMX the conv nets split the same way, by smaller margins
    (LeNet-5 3% faster in fp32, weil-cnn 3% and quick-cnn 23% faster in bf16, the big nets
    1.5-1.9x); of the FC recipes only report 002's trained faster in bf16 there (1.2x an
    epoch), too little to give that class a rule of its own.
    On CUDA too: these nets are small enough that a step is bound by kernel launches, and
    autocast adds a cast kernel per layer, so on an H200 a training step under bf16 took as
    long as TF32's or up to 1.4x longer for every recipe timed (docs/speed.md, bench/gpu.py).
    `--precision bf16` is there for nets big enough to gain from it."""
    if requested != "auto":
        return requested
    if dev.type == "cuda" or conv_flops < BF16_MIN_CONV_FLOPS:
        return "fp32"
    return "bf16" if native_bf16(dev) else "fp32"


def native_bf16(dev: torch.device) -> bool:
    """A GPU, or a CPU with AMX or AVX-512-BF16: elsewhere bf16 is emulated, ~13x slower."""
    return dev.type == "cuda" or any(f in cpu_flags() for f in FAST_BF16_FLAGS)


def use_channels_last(requested: str, is_conv: bool) -> bool:
    """'auto' -> on for conv nets: channels-last measured 1.2-1.6x faster per training step
    for every conv recipe on AVX2 (docs/speed.md), and oneDNN's AMX/bf16 kernels and cuDNN's
    tensor-core kernels prefer that layout too. Nets without convolutions have no layout."""
    return is_conv and requested != "off"


def autocast(dev: torch.device, precision: str) -> contextlib.AbstractContextManager:
    import torch

    if precision == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def others_running(looks: int = 5, gap: float = 0.01) -> int | None:
    """Runnable threads of other processes right now: the fewest of a few looks at the kernel's
    count (Linux /proc/loadavg), so one passing process is not taken for a busy machine.
    None where there is no such count."""
    counts = []
    try:
        for i in range(looks):
            if i:
                time.sleep(gap)
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)  # minus this one
    except (OSError, ValueError, IndexError):
        return None
    return max(0, min(counts))


@cache
def thread_count() -> int:
    """One intra-op thread per core that no other process is using, at least one.

    Every op ends at an OpenMP barrier; when other processes keep the cores busy, one of our
    threads is often descheduled and the other waits a whole time slice for it. Measured on
    AMD EPYC (AVX2, 2 cores) at load average 16: a batch-32 step took 10-17x longer with 2
    threads than with 1 (docs/speed.md). The kernel's count of runnable threads says what is
    busy now; the 1-minute load average, used only where that count is missing, still reads
    about 2 for a minute after a 2-core job ends, which made the next run on the idle machine
    take one thread. Decided once per process, before we add work of our own.
    """
    cores = usable_cores()
    others = others_running()
    return threads_by_load_average(cores) if others is None else max(1, cores - others)


def fewer_threads_note(threads: int, cores: int) -> str | None:
    """The line to print when thread_count left cores unused: the choice holds for the whole
    run, so a run started beside a command of a few seconds trains to the end at one thread
    (an 18-minute `best` took 66 s epochs instead of 37 on the 2-core AMX Xeon)."""
    if "OMP_NUM_THREADS" in os.environ or threads >= cores:
        return None
    return (f"using {threads} of {cores} cores: other processes were running when this run "
            f"started (set OMP_NUM_THREADS={cores} to use them all)")


def threads_by_load_average(cores: int) -> int:
    """The rule where the kernel gives no count: one thread once the 1-minute load average
    reaches the core count, else one per core."""
    return 1 if cores > 1 and os.getloadavg()[0] >= cores else cores


@cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed activation buffers instead of returning them to the kernel.

    By default glibc maps each large block (an activation or gradient of a few MB) fresh from
    the kernel and unmaps it on free, so every step page-faults its tensors in again: that made
    ReLU and its backward a third of weil-cnn's step. With blocks up to 32 MB kept in the heap
    a weil-cnn step went from 97.9 to 41.1 ms (AMD EPYC AVX2, 1 thread; docs/speed.md).
    Linux/glibc only; the user's MALLOC_MMAP_THRESHOLD_ wins.
    """
    if platform.system() != "Linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 1 << 30))  # mmap, trim
    except (OSError, AttributeError):
        return False


def configure_threads() -> None:
    """Set the intra-op thread count (thread_count), unless the user set OMP_NUM_THREADS;
    keep freed memory (keep_freed_memory); allow TF32 on CUDA.

    Denormals are not flushed: that is process-wide state that would change every float
    computation of the caller too (docs/speed.md).
    """
    import torch

    keep_freed_memory()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(thread_count())
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
