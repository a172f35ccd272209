"""Which torch device a run uses: the one resolver for ``--device`` flags and ``train.accelerator``."""

from __future__ import annotations

import torch

from offroadseg.errors import ConfigError

__all__ = ["accelerator_device", "pick_device"]


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is refused."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but no CUDA GPU is visible; fix: use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not valid; fix: use auto, cpu or cuda") from None


def accelerator_device(accelerator: str) -> torch.device:
    """The device of a ``train.accelerator`` (auto | cpu | gpu): CUDA unless ``cpu`` or no GPU is visible.

    Unlike :func:`pick_device`, ``gpu`` without a GPU falls back to the CPU: this names the
    device for reports and helpers, and Lightning itself refuses such a run.
    """
    return pick_device("cpu" if accelerator == "cpu" else "auto")
