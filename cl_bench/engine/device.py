"""Where and how the numbers are computed: the device (`device=`), the precision of the forward passes
(`precision=`) and the device-dependent model options."""

from __future__ import annotations

import contextlib

import torch
from omegaconf import DictConfig

PRECISIONS = ("auto", "fp32", "bf16")


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether forward passes run under bf16 autocast: `auto` on CUDA only, `bf16` everywhere."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def forward_autocast(precision: str, device: torch.device) -> torch.autocast | contextlib.nullcontext:
    """The autocast context of the training and evaluation forward passes; in fp32 a null context
    (entering even a disabled torch.autocast costs ~6 µs, at every training step)."""
    if not uses_bf16(precision, device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def device_model_options(model: DictConfig, device: torch.device) -> dict:
    """Model options given as `auto`, resolved for `device`: `channels_last` on CUDA only."""
    return {"channels_last": device.type == "cuda"} if model.get("channels_last") == "auto" else {}


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name}: no CUDA device is available here; use device=auto or device=cpu")
    return device


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"
