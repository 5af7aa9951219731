"""Will this run fit? Checked before the run folder exists, so a refusal leaves nothing behind.

An hour-long run that dies at epoch 9 for want of disk or memory loses the hour; a rough
estimate up front costs nothing. Both estimates err on the large side: checkpoints are
written beside the previous one (atomic replace), and backward is counted as twice the
forward activations.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fashionlab.errors import UserError
from fashionlab.models import INPUT_SHAPE, Net

SLACK = 16 * 2**20  # run.json, history, config, file-system overhead
SLOTS = {"sgd": 0, "adam": 2, "adamw": 2, "rmsprop": 1}  # optimizer tensors per weight


@dataclass
class Estimate:
    disk: int  # bytes the run folder may need at its peak
    memory: int  # bytes for weights, optimizer, a training batch's activations
    batch_memory: int  # of which the activations of the largest batch


def estimate(net: Net, config: dict, n_test: int = 10000) -> Estimate:
    """Bytes of disk and memory a run needs, from the model's shapes and the config."""
    train = config["train"]
    state = sum(t.numel() * t.element_size() for t in net.module.state_dict().values())
    slots = SLOTS[train["optimizer"]] + (train["momentum"] > 0 and train["optimizer"] != "adam")
    copies = 1 + slots + (train["ema"] > 0) + (train["patience"] > 0)  # what a checkpoint holds
    checkpoint = state * copies
    disk = 2 * checkpoint + state + n_test * 10 * 2 + SLACK  # old + new checkpoint, weights
    per_example = 4 * (math.prod(INPUT_SHAPE) + sum(math.prod(r.output) for r in net.rows))
    batch = max(3 * train["batch_size"], train["eval_batch_size"]) * per_example
    return Estimate(disk, state * (copies + 1) + batch + SLACK, batch)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation, or None when the system does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check(net: Net, config: dict, out: Path, device: torch.device, n_test: int = 10000) -> None:
    """Refuse, in one line, a run whose folder cannot be written or which cannot fit."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"output folder {out} is not writable ({e.strerror or e})") from None
    need = estimate(net, config, n_test)
    free = free_disk(out)
    if need.disk > free:
        raise UserError(f"not enough disk space in {out}: the run needs about "
                        f"{_size(need.disk)} for its checkpoints, {_size(free)} free")
    have = available_memory(device)
    if have is not None and need.memory > have:
        raise UserError(f"not enough memory: this model with batch_size "
                        f"{config['train']['batch_size']} needs about {_size(need.memory)}, "
                        f"{_size(have)} available (lower train.batch_size or "
                        "train.eval_batch_size, or use a smaller model)")
