"""Distributed setup through ``torchrun`` and PyTorch's own DDP / FSDP2.

The model is single-device code; this module wraps it. ``torchrun --nproc_per_node N`` sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; without them everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from gated_attention.train.config import DistributedConfig


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: DistributedConfig, device: torch.device) -> DistInfo:
    """Initialise the process group when launched by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.strategy == "none":
        if world > 1:
            raise ValueError(
                f"launched with {world} processes but distributed.strategy = 'none'; "
                "set distributed.strategy to 'ddp' or 'fsdp'"
            )
        return DistInfo()
    if "RANK" not in os.environ:
        raise ValueError(
            f"distributed.strategy = {cfg.strategy!r} needs a torchrun launch, e.g. "
            "torchrun --nproc_per_node 2 -m gated_attention train --config FILE"
        )
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), cfg.strategy
    )


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP, or FSDP2 ``fully_shard`` on every block and then the root (torchtitan's order)."""
    if info.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if info.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    return model


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
