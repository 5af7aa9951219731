"""Data-parallel training over several processes, GPUs or machines, launched by torchrun.

    torchrun --nproc-per-node 2 -m fashionlab train weil-fc --distributed

Every rank loads the whole data set, draws the same seeded permutation each epoch and trains
on its slice of every global batch (train.batch_size images split across the ranks).
DistributedDataParallel averages the gradients, so N ranks take the steps one process takes
with the same batch. Rank 0 alone writes the run folder; loss and accuracy are summed over
the ranks, so the history is the global one, and the finiteness check is too, so a
divergence stops every rank at the same step.

Batch norm: on GPUs, SyncBatchNorm normalises with the global batch's statistics, as one
process would. torch's SyncBatchNorm runs only on GPUs, so on CPU each rank normalises with
its own slice's statistics (as Horovod and Keras's MirroredStrategy do by default) and the
running averages are averaged over the ranks after every epoch, so every rank evaluates the
same model.
"""

from __future__ import annotations

import atexit
import os

import torch
from torch import distributed as dist
from torch import nn

from fashionlab import hardware
from fashionlab.errors import UserError


def setup() -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; return (rank, world)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UserError("--distributed needs torchrun, e.g. torchrun --nproc-per-node 2 "
                        "-m fashionlab train RECIPE --distributed")
    if not dist.is_initialized():
        gpu = hardware.device().type == "cuda"
        if gpu:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            if per_node > torch.cuda.device_count():
                raise UserError(f"torchrun started {per_node} processes on this node but it "
                                f"has {torch.cuda.device_count()} GPU(s): one process per GPU "
                                "(--nproc-per-node), or FASHIONLAB_DEVICE=cpu to use the CPU")
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if gpu else "gloo")
        atexit.register(cleanup)
    return rank_world()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def check_shards(n: int, batch: int) -> None:
    """Every rank needs images in every step: an empty slice would average in a NaN."""
    world = rank_world()[1]
    last = n % batch or batch
    if world > 1 and min(batch, last) < world:
        raise UserError(f"{world} ranks need at least {world} images per batch; batch size "
                        f"{batch} over {n} images leaves a last batch of {last}")


def wrap(module: nn.Module, dev: torch.device) -> nn.Module:
    """The module to call in training: DDP over `module` (itself when alone).

    `module` keeps its parameters, so optimizer, EMA, checkpoints and weights files see the
    plain module and its plain state-dict keys."""
    if rank_world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if dev.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(module)  # replaces children in place
        return DistributedDataParallel(module, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(module, forward_sync_buffers=False)  # averaged per epoch


def sum_(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place."""
    if rank_world()[1] > 1:
        for t in tensors:
            dist.all_reduce(t)


def finite(t: torch.Tensor) -> bool:
    """True when `t` is finite on every rank: all ranks get the same answer."""
    if rank_world()[1] > 1:
        t = t.detach().clone()
        dist.all_reduce(t)
    return bool(torch.isfinite(t))


def stopping(signum: int | None, dev: torch.device) -> int | None:
    """The signal any rank has caught, agreed by all (one all-reduce): a rank that stopped a
    step before the others would leave them waiting in a collective."""
    flag = torch.tensor([signum or 0], dtype=torch.int64, device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def average_buffers(module: nn.Module) -> None:
    """Average float buffers (batch-norm running statistics) over the ranks."""
    world = rank_world()[1]
    if world > 1:
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(world)
