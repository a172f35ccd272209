"""Exponential moving average (EMA) of the trainable weights, through Lightning's ``WeightAveraging``.

Lightning's callback owns the plumbing: it validates with the averaged weights (swapping them in
for the validation epoch), saves them as the checkpoint's ``state_dict`` (the current weights go to
``current_model_state``, so ``--resume`` continues both) and copies them into the model when
training ends. What it averages is torch's :class:`~torch.optim.swa_utils.AveragedModel`, which
averages every parameter and buffer; :class:`TrainableAverage` narrows that to the trainable set
(the head, plus any backbone part being trained) and the buffers of the modules that own it (a
head's BatchNorm statistics). A frozen backbone is then never touched: averaging it would cost a
pass over all its weights every step and could only move them by rounding.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from offroadseg.errors import ConfigError

__all__ = ["EMAOfTrainable", "TrainableAverage", "check_ema_decay", "trainable_state_names"]


def check_ema_decay(decay: float) -> None:
    """Refuse a decay outside ``(0, 1)`` with the key and a fix."""
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema_decay={decay} must lie in (0, 1); fix: e.g. train.ema_decay=0.99")


def trainable_state_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the tensors an average of ``model``'s trainable part follows.

    Returns:
        ``(averaged, synced)``: trainable parameters and the floating-point buffers of the modules
        that own one (averaged); the other buffers of those modules, e.g. BatchNorm's
        ``num_batches_tracked`` counter (copied as they are: a counter has no meaningful average).
    """
    averaged, synced = [], []
    for prefix, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not any(p.requires_grad for _, p in own):
            continue
        dot = f"{prefix}." if prefix else ""
        averaged += [dot + n for n, p in own if p.requires_grad]
        for n, b in module.named_buffers(recurse=False):
            (averaged if b.is_floating_point() else synced).append(dot + n)
    return averaged, synced


class TrainableAverage(AveragedModel):
    """An :class:`AveragedModel` that averages only the trainable tensors (see the module docstring).

    The frozen tensors of the copy keep the values they were copied with, which are the model's.
    """

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.averaged_names, self.synced_names = trainable_state_names(model)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ours = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
        theirs = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        avg = [ours[n].detach() for n in self.averaged_names]
        cur = [theirs[n].detach().to(ours[n].device) for n in self.averaged_names]
        if self.n_averaged == 0 or not avg:
            for a, c in zip(avg, cur, strict=True):
                a.copy_(c)
        else:
            self.multi_avg_fn(avg, cur, self.n_averaged.to(avg[0].device))
        for n in self.synced_names:
            ours[n].detach().copy_(theirs[n].detach())
        self.n_averaged += 1


class EMAOfTrainable(WeightAveraging):
    """``WeightAveraging`` with an EMA of the trainable weights, updated after every optimizer step.

    ``ema = decay * ema + (1 - decay) * w`` after each step; the first update copies the weights
    (torch's ``get_ema_multi_avg_fn``). Over ``n`` steps the weights of the first step keep a share
    ``decay ** n``: keep it small (``train.ema_decay``).

    Args:
        decay: in ``(0, 1)``.
    """

    def __init__(self, decay: float) -> None:
        check_ema_decay(decay)
        super().__init__(use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning's setup builds a plain AveragedModel (every tensor averaged); build ours instead.
        if stage == "fit":
            self._average_model = TrainableAverage(
                pl_module, device=self._device or pl_module.device, use_buffers=True, **self._kwargs
            )
