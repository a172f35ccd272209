"""Tests for the image-guided refinement head (offroadseg.models.decoders.refine)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from offroadseg.config import config_from_dict
from offroadseg.models.decoders.refine import RefineHead
from offroadseg.models.heads import create_head
from offroadseg.models.segmentor import Segmentor

K = 4
P = 14


def _refine(name: str = "conv", channels: int = 8) -> RefineHead:
    torch.manual_seed(0)
    head = create_head(name, [8], K, **({"channels": 8} if name == "conv" else {}))
    return RefineHead(head, K, patch_size=P, channels=channels)


def _inputs(b: int = 2, grid: tuple[int, int] = (3, 4), size: tuple[int, int] | None = None):
    torch.manual_seed(1)
    size = size or (grid[0] * P, grid[1] * P)
    return [torch.randn(b, 8, *grid)], torch.randn(b, 3, *size)


def test_uses_image_and_output_covers_the_padded_area_at_a_quarter() -> None:
    head = _refine()
    assert head.uses_image is True
    feats, image = _inputs()  # 42 x 56 image, grid 3 x 4
    out = head(feats, image)
    assert out.shape == (2, K, 11, 14)  # ceil(42 / 4), 56 / 4
    # An unpadded image (as the feature cache's training-size images are) gives the same grid.
    feats, image = _inputs(size=(40, 50))
    assert head(feats, image).shape == (2, K, 11, 14)


def test_unpadded_image_is_padded_like_the_segmentor_pads() -> None:
    head = _refine().eval()
    feats, image = _inputs(size=(40, 50))
    padded = F.pad(image, (0, 56 - 50, 0, 42 - 40), mode="replicate")
    with torch.no_grad():
        head.correction.weight.normal_()  # make the image matter
        torch.testing.assert_close(head(feats, image), head(feats, padded))


def test_starts_as_the_upsampled_head_then_learns_from_the_image() -> None:
    head = _refine()
    feats, image = _inputs()
    with torch.no_grad():
        coarse = head.head(feats)
        out = head(feats, image)
    torch.testing.assert_close(out, F.interpolate(coarse, size=out.shape[-2:], mode="bilinear"))
    target = torch.randint(0, K, (2, *out.shape[-2:]))
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(head(feats, image), target).backward()
        opt.step()
    assert head.stem[0].weight.grad is not None and head.stem[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        a = head(feats, image)
        b = head(feats, image.flip(-1))
    assert not torch.allclose(a, b), "the image does not change the logits"


def test_image_larger_than_the_feature_area_is_refused() -> None:
    head = _refine()
    feats, _ = _inputs()
    with pytest.raises(ValueError, match="larger than the 42x56 area"):
        head(feats, torch.randn(2, 3, 43, 56))


def test_refine_through_the_segmentor_gets_the_image() -> None:
    from offroadseg.models.factory import build_segmentor

    cfg = config_from_dict({}, ["model.backbone.name=dinov2_test", "model.head.refine=true"])
    model = build_segmentor(cfg.model, K)
    assert isinstance(model.head, RefineHead)
    with torch.no_grad():
        image = torch.randn(1, 3, 30, 44)
        out = model(image)
        assert out.shape == (1, K, 30, 44)
        feats = model.forward_features(image)
        assert torch.allclose(model.forward_head(feats, (30, 44), image=image), out)


def test_dynamic_onnx_wrapper_passes_the_image_to_an_image_guided_head() -> None:
    from offroadseg.inference.onnx import _PatchMultipleSegmentor
    from offroadseg.models.backbone import create_backbone

    backbone = create_backbone("dinov2_test", weights="random", layers=1)
    head = RefineHead(create_head("linear", backbone.out_channels, K), K, patch_size=P, channels=8)
    with torch.no_grad():
        head.correction.weight.normal_()
    seg = Segmentor(backbone, head).eval()
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        out = _PatchMultipleSegmentor(seg)(x)
        expected = F.interpolate(head(backbone(x), x), size=(28, 42), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)
