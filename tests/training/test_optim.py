"""Optimizer parameter groups: known LRs per depth, only trainable parameters, the schedule scales all."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from offroadseg.models.backbone import create_backbone
from offroadseg.models.segmentor import Segmentor
from offroadseg.training.optim import param_groups
from offroadseg.training.schedule import lr_factor

pytestmark = pytest.mark.filterwarnings("ignore::offroadseg.models.weights.RandomWeightsWarning")


def _model(k: int) -> Segmentor:
    backbone = create_backbone("dinov2_test")  # L = 2 blocks
    backbone.train_last(k)
    return Segmentor(backbone, nn.Conv2d(48, 3, 1))


def test_known_group_lrs_with_layer_decay():
    groups = param_groups(_model(2), lr=1.0, backbone_lr_mult=0.1, layer_decay=0.5, weight_decay=0.01)
    lrs = {g["name"]: g["lr"] for g in groups}
    # L = 2: block 1 -> 0.1, block 0 -> 0.1 * 0.5, embeddings -> 0.1 * 0.25, norm -> 0.1
    assert lrs == pytest.approx(
        {
            "head": 1.0,
            "backbone.layernorm": 0.1,
            "backbone.block1": 0.1,
            "backbone.block0": 0.05,
            "backbone.embeddings": 0.025,
        }
    )
    assert all(g["weight_decay"] == 0.01 for g in groups)


def test_only_trainable_parameters_each_once():
    model = _model(1)
    groups = param_groups(model, lr=0.01, backbone_lr_mult=0.1)
    assert [g["name"] for g in groups] == ["head", "backbone.layernorm", "backbone.block1"]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    assert [g["name"] for g in param_groups(_model(0), lr=0.01)] == ["head"]


def test_schedule_scales_every_group():
    model = _model(2)
    groups = param_groups(model, lr=0.1, backbone_lr_mult=0.1, layer_decay=0.5)
    opt = torch.optim.SGD(groups, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps=10, warmup_steps=2, schedule="cosine")
    )
    for step in range(6):
        factor = lr_factor(step, total_steps=10, warmup_steps=2, schedule="cosine")
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(0.1 * g["lr_scale"] * factor)
        opt.step()
        sched.step()


def test_bad_decay_refused():
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(_model(1), lr=0.1, layer_decay=0.0)
