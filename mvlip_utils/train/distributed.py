"""Several GPUs (or CPU processes) through torchrun: the process group and what training needs from it; every
helper is a no-op in a plain one-process run. ``torchrun --nproc_per_node=2 -m mvlip_utils.train ...``

Equivalence with one process (tests/test_distributed.py): ``batch_size`` is the global batch; the batches are
the single process's loader's (``global_batches``), each rank training on its contiguous slice
(``rank_slices``). ``ClipLoss(local_loss=False, gather_with_grad=True)`` gives every rank the global-batch
loss; the gather's backward (x world_size) and DDP's all-reduce (/ world_size) give one process's gradient;
``wrap_ddp`` makes BatchNorm ``SyncBatchNorm`` (on GPUs), so batch statistics are the global batch's.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info() -> DistInfo:
    """Rank, world size and local rank of this process (0, 1, 0 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def init_from_env(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Start the process group from torchrun's environment when WORLD_SIZE > 1 (idempotent): NCCL when
    ``device`` (the run's setting) resolves to CUDA, else gloo; each process pinned to its GPU."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return info()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                               f"visible; use torchrun --nproc_per_node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    return info()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if info().enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (e.g. writes a dataset), then the others."""
    if not info().is_main:
        barrier()
    yield
    if info().is_main:
        barrier()


def all_reduce_mean(value: float) -> float:
    """The mean of a number over ranks (the number itself for one process)."""
    if not info().enabled:
        return float(value)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / info().world_size


def all_reduce_grads_(parameters: Sequence[nn.Parameter]) -> None:
    """Average over ranks the gradients of ``parameters`` outside the DDP module, as DDP does inside it."""
    if not info().enabled:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info().world_size)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info().enabled:
        return obj
    box = [obj if info().is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_batch_size(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ValueError(f"parameter batch_size={global_batch} (the global batch) is not divisible by the "
                         f"number of processes ({world_size}); pick a batch size that is")
    return global_batch // world_size


def global_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """The batches of sample indices that the single-process training loader forms for ``seed``."""
    from ..data.folders import make_loader

    loader = make_loader(range(n), batch_size, shuffle=True, drop_last=True, num_workers=0, seed=seed)
    return [batch.tolist() for batch in loader]


def rank_slices(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """For each global batch, this rank's contiguous slice of it (a DataLoader's ``batch_sampler``)."""
    local = len(batches[0]) // world_size if batches else 0  # every batch is full (drop_last)
    return [batch[rank * local:(rank + 1) * local] for batch in batches]


def wrap_ddp(module: nn.Module, device: str) -> nn.Module:
    """DDP around ``module``; on CUDA its BatchNorm layers become SyncBatchNorm first (in place)."""
    from torch.nn.parallel import DistributedDataParallel

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if has_bn and str(device).startswith("cuda"):
        nn.SyncBatchNorm.convert_sync_batchnorm(module)  # replaces the children in place
    elif has_bn:
        logging.getLogger("mvlip_utils.distributed").warning(
            "BatchNorm layers under DDP on the CPU: SyncBatchNorm needs GPUs, so batch statistics are per "
            "rank (local batch) and the run is not identical to one process")
    device_ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=device_ids)
