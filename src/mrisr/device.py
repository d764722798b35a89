"""Where networks run: CUDA when present, the CPU otherwise, and bf16 autocast on CUDA.

Training, inference and the DDP workers all choose their device here, so a
config's ``device: auto`` means the same thing everywhere.
"""

from __future__ import annotations

import torch

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (and asked for or 'auto'), CPU otherwise."""
    if requested not in DEVICES:
        raise ValueError(f"unknown device {requested!r}; allowed: {', '.join(DEVICES)}")
    if requested == "cpu" or not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("device 'cuda' was asked for but torch.cuda.is_available() is False")
        return torch.device("cpu")
    return torch.device("cuda")


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context on CPU (full float32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
