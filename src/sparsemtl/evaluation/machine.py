"""What a latency was measured on: timings are only comparable on the same machine and settings."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

_CPUINFO = Path("/proc/cpuinfo")


def describe_machine(device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU model, logical cores, torch threads, torch version and OS; plus the CUDA device name
    when ``device`` is a CUDA device."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "os": platform.platform(),
    }
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def format_machine(info: dict[str, Any]) -> str:
    """One line for a table header."""
    parts = [
        info["cpu"],
        f"{info['logical_cores']} logical cores",
        f"{info['torch_threads']} torch threads",
        f"torch {info['torch_version']}",
        info["os"],
    ]
    if "cuda_device" in info:
        parts.append(f"CUDA {info['cuda_device']}")
    return ", ".join(str(p) for p in parts)


def cpu_model() -> str:
    """The ``model name`` of /proc/cpuinfo (Linux), else what ``platform`` knows."""
    if _CPUINFO.is_file():
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"
