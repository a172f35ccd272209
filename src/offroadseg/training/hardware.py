"""What the run's hardware allows: precision, device count and matmul settings.

One home for the questions "does this config run on this machine, and how fast":
``train.precision: auto`` picks bf16 autocast where the GPU has bf16 units, fp16 autocast
on older CUDA GPUs; on a CPU, bf16 autocast where the CPU computes bf16 natively and the trained part is
heavy enough to gain (:func:`heavy_training`), else fp32. The frozen backbone pass (feature-store build)
follows training on a GPU and runs in bf16 on a CPU with native bf16 (``backbone_precision``);
``train.devices`` beyond the GPUs that exist is refused before any work; TF32 is enabled for the fp32
matmuls that stay outside autocast.
"""

from __future__ import annotations

import torch

from offroadseg.config import ModelConfig
from offroadseg.errors import ConfigError
from offroadseg.machine import cpu_pass_precision

__all__ = [
    "PRECISIONS",
    "backbone_precision",
    "check_devices",
    "enable_tf32",
    "heavy_training",
    "on_cuda",
    "resolve_precision",
]

# Config spelling -> Lightning's. "auto" and its alias "amp" are resolved by the hardware.
PRECISIONS = {
    "32": "32-true",
    "32-true": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
}


def on_cuda(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting trains on a CUDA GPU on this machine."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _bf16_on_gpu() -> bool:
    try:  # torch >= 2.3 tells emulated bf16 (slow, pre-Ampere) from real bf16 units
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return bool(torch.cuda.is_bf16_supported())


def heavy_training(model: ModelConfig) -> bool:
    """Whether the trained part is heavy enough for bf16 autocast to pay on a CPU with native bf16.

    Measured on a 2-core AMX-BF16 Xeon (docs/benchmarks.md, "bf16 autocast training on a CPU"): with 2+
    adapted ViT blocks, or the DPT or UPerNet head, the matmuls and convolutions dominate and bf16
    autocast trains 1.7-2.5x faster per step (1.37x per epoch for 3 blocks under a linear head); one
    adapted block under a linear head was ~10 % slower per epoch (casts and bf16 element-wise ops
    dominate), so lighter models stay fp32. On a Zen 4 EPYC (AVX512-BF16, no AMX) the steps gain about
    as much: 1.4x for one or three blocks under a linear head, 2.1-2.4x with UPerNet or DPT
    (docs/benchmarks.md, "The same on a CPU with AVX512-BF16 but no AMX").
    """
    backbone = model.backbone
    return backbone.train_blocks >= 2 or not backbone.frozen or model.head.name in ("dpt", "uper")


def resolve_precision(
    precision: str,
    accelerator: str,
    *,
    model: ModelConfig | None = None,
    cpu_flags: set[str] | list[str] | None = None,
) -> str:
    """Config ``train.precision`` -> Lightning precision for this machine.

    ``auto`` (and ``amp``, kept as its alias: the reference's "AMP" switch): ``bf16-mixed``
    on a GPU with bf16 units (Ampere and later; no loss scaling needed), else ``16-mixed``
    on CUDA. On a CPU: ``bf16-mixed`` where the CPU computes bf16 natively (AVX512-BF16 / AMX-BF16)
    and ``model``'s trained part is heavy (:func:`heavy_training`), else ``32-true`` (emulated bf16,
    or a light model, is slower than fp32). Explicit ``16`` needs CUDA; explicit ``bf16`` runs anywhere.

    Args:
        model: the model config (None: treated as light, i.e. fp32 on a CPU under ``auto``).
        cpu_flags: the CPU's flags (default: this machine's; tests pass an AVX2-only or a bf16 CPU).
    """
    cuda = on_cuda(accelerator)
    key = str(precision)
    if key in ("auto", "amp"):
        if not cuda:
            if model is None or not heavy_training(model):
                return "32-true"
            # native bf16 on this CPU: what the frozen pass decides by too
            return "bf16-mixed" if cpu_pass_precision(key, cpu_flags) == "bf16" else "32-true"
        return "bf16-mixed" if _bf16_on_gpu() else "16-mixed"
    if key not in PRECISIONS:
        raise ConfigError(
            f"train.precision={precision!r} is not valid; choose one of: auto, 32, bf16, 16 "
            f"(auto: bf16 or fp16 autocast on a GPU; on a CPU bf16 where it is native and pays, else fp32)"
        )
    value = PRECISIONS[key]
    if value == "16-mixed" and not cuda:
        raise ConfigError(
            "train.precision=16 (fp16 autocast) needs a CUDA GPU; fix: use train.precision=auto, bf16 or 32 on CPU"
        )
    return value


def backbone_precision(
    precision: str, accelerator: str, *, cpu_flags: set[str] | list[str] | None = None
) -> str:
    """The frozen backbone pass's precision (``fp32`` | ``bf16`` | ``fp16``) for ``train.precision``.

    On CUDA the one training uses (:func:`resolve_precision`). On the CPU the frozen pass runs in bf16
    when the CPU computes bf16 natively, whatever the trained part (it is all matmuls)
    (AVX512-BF16 / AMX-BF16; :func:`offroadseg.machine.cpu_pass_precision`); the feature store keeps
    fp16 either way.

    Args:
        cpu_flags: the CPU's flags (default: this machine's; tests pass an AVX2-only or a bf16 CPU).
    """
    if on_cuda(accelerator):
        return {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(
            resolve_precision(precision, accelerator), "fp32"
        )
    resolve_precision(precision, accelerator)  # the same clear error for a bad value
    return cpu_pass_precision(precision, cpu_flags)


def _requested_count(devices) -> int | None:
    """How many devices ``train.devices`` asks for (None: auto / all)."""
    if devices in (None, "auto", -1, "-1"):
        return None
    if isinstance(devices, bool):
        raise ConfigError(
            f"train.devices={devices!r} is not valid; fix: auto, a count (2) or a list of ids ([0, 1])"
        )
    if isinstance(devices, int):
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip().rstrip(",")
        if text.isdigit():
            return int(text)
        parts = [p.strip() for p in text.split(",")]
        if parts and all(p.isdigit() for p in parts):
            return len(parts)
    raise ConfigError(
        f"train.devices={devices!r} is not valid; fix: auto, a count (2) or a list of ids ([0, 1])"
    )


def _requested_ids(devices) -> list[int]:
    if isinstance(devices, (list, tuple)):
        return [int(d) for d in devices]
    if isinstance(devices, str) and "," in devices:
        return [int(p) for p in devices.split(",") if p.strip()]
    return []


def check_devices(accelerator: str, devices) -> None:
    """Refuse ``train.devices`` that this machine does not have (one clear line, before any work).

    CPU "devices" are processes (DDP on CPU), so any count runs; GPUs must exist.
    """
    count = _requested_count(devices)
    if count is not None and count < 1:
        raise ConfigError(f"train.devices={devices!r} must be >= 1 (or auto); fix: train.devices=1")
    if accelerator in ("gpu", "cuda"):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have == 0:
            raise ConfigError(
                f"train.accelerator={accelerator} but no CUDA GPU is visible on this machine; "
                "fix: train.accelerator=auto (or cpu)"
            )
    elif not on_cuda(accelerator):
        return
    else:
        have = torch.cuda.device_count()
    if count is not None and count > have:
        raise ConfigError(
            f"train.devices={devices!r} asks for {count} GPUs but this machine has {have}; "
            f"fix: train.devices={have} (or auto)"
        )
    bad = [i for i in _requested_ids(devices) if i >= have]
    if bad:
        raise ConfigError(
            f"train.devices={devices!r}: GPU ids {bad} do not exist (this machine has {have}: 0..{have - 1}); "
            "fix: list existing ids or use auto"
        )


def enable_tf32() -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions on CUDA (Ampere and later).

    Mixed precision covers most of the step, but the loss, the metrics and anything outside
    autocast stay fp32; TF32 keeps a 10-bit mantissa there, ample for training.
    """
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
