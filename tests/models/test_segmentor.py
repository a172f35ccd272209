"""Tests for offroadseg.models.segmentor, with a tiny fake backbone."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from offroadseg.models.heads import LinearHead, PPMHead
from offroadseg.models.segmentor import Segmentor

K = 4


class FakeBackbone(nn.Module):
    """Patch-14 strided conv returning two maps; BatchNorm + Dropout make eval mode observable."""

    patch_size = 14
    out_channels = [8, 6]
    is_random = True

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, kernel_size=14, stride=14)
        self.norm = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.second = nn.Conv2d(8, 6, kernel_size=1)

    def forward(self, images: Tensor) -> list[Tensor]:
        h, w = images.shape[-2:]
        assert h % 14 == 0 and w % 14 == 0, "segmentor must pad to the patch size"
        x = self.drop(self.norm(self.embed(images)))
        return [x, self.second(x)]

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()


def _model(frozen: bool = True, head: nn.Module | None = None) -> Segmentor:
    torch.manual_seed(0)
    backbone = FakeBackbone()
    if frozen:
        backbone.freeze()
    return Segmentor(backbone, head or LinearHead(backbone.out_channels, K))


def test_odd_size_gives_logits_of_that_size() -> None:
    model = _model().eval()
    assert model.patch_size == 14
    out = model(torch.randn(2, 3, 50, 61))
    assert out.shape == (2, K, 50, 61)


def test_forward_equals_forward_head_of_forward_features() -> None:
    model = _model(head=PPMHead([8, 6], K, channels=16)).eval()
    for size, grid in [((50, 61), (4, 5)), ((28, 42), (2, 3))]:
        x = torch.randn(1, 3, *size)
        feats = model.forward_features(x)
        assert feats[0].shape[-2:] == grid
        assert torch.equal(model(x), model.forward_head(feats, size))


def test_forward_head_resizes_to_other_sizes() -> None:
    model = _model().eval()
    feats = model.forward_features(torch.randn(1, 3, 28, 28))
    assert model.forward_head(feats, (60, 90)).shape == (1, K, 60, 90)


def test_frozen_backbone_stays_eval_and_gets_no_grad() -> None:
    model = _model(frozen=True)
    model.train()
    assert model.training and model.head.training
    assert not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())
    feats = model.forward_features(torch.randn(2, 3, 28, 28))
    assert not feats[0].requires_grad
    model(torch.randn(2, 3, 28, 28)).sum().backward()
    assert model.head.classifier.weight.grad is not None


def test_trainable_backbone_trains() -> None:
    model = _model(frozen=False).train()
    assert model.backbone.training
    model(torch.randn(2, 3, 30, 30)).sum().backward()
    assert model.backbone.embed.weight.grad is not None


def test_predict_returns_ids_and_restores_mode() -> None:
    model = _model().train()
    ids = model.predict(torch.randn(2, 3, 33, 47))
    assert ids.shape == (2, 33, 47) and ids.dtype == torch.int64
    assert ids.min() >= 0 and ids.max() < K
    assert model.training and not model.backbone.training


def test_constant_padding_mode() -> None:
    model = Segmentor(FakeBackbone(), LinearHead([8, 6], K), pad_mode="constant").eval()
    assert model(torch.randn(1, 3, 15, 15)).shape == (1, K, 15, 15)
