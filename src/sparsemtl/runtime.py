"""Device selection, seeding, mixed precision and torchrun/DDP process context."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError


def resolve_device(name: str, local_rank: int = 0, key: str = "config key 'train.device'") -> torch.device:
    """'auto' -> the local CUDA device when available, else CPU; otherwise validate ``name``
    against the devices this machine has (``key`` names the setting in error messages)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{key}: {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{key}: {name!r} requested but this machine has {count} CUDA device(s) (0..{count - 1})")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast context for 'fp16'/'bf16', a no-op for 'none'."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class ProcessContext:
    """Where this process sits in a (possibly single-process) torchrun job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_path(self, path: Path) -> Path:
        """Rank 0's ``path`` on every process (run names carry a timestamp)."""
        if not self.distributed:
            return path
        holder = [str(path)]
        dist.broadcast_object_list(holder, src=0)
        return Path(holder[0])

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes in place (no-op when single-process)."""
        if not self.distributed:
            return tensor
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_device)
            return tensor.copy_(on_device)
        dist.all_reduce(tensor)
        return tensor


def init_process_context(device_name: str) -> tuple[ProcessContext, torch.device]:
    """Read torchrun's environment, start the process group when needed, pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessContext(rank, world_size, local_rank), device
