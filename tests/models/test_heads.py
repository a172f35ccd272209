"""Tests for offroadseg.models.heads."""

from __future__ import annotations

import pytest
import torch

from offroadseg.errors import ModelError
from offroadseg.models.heads import HEADS, ConvHead, LinearHead, PPMHead, create_head

IN_CHANNELS = [8, 16]
K = 5
# Small widths keep the suite fast; the defaults are covered by test_default_widths.
SMALL = {"linear": {}, "conv": {"hidden_channels": 16}, "ppm": {"channels": 32}}


def _features(b: int = 2, h: int = 6, w: int = 9) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(b, 8, h, w), torch.randn(b, 16, h, w)]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_output_shape_and_backward(name: str) -> None:
    head = create_head(name, IN_CHANNELS, K, **SMALL[name])
    feats = [f.requires_grad_() for f in _features()]
    out = head(feats)
    assert out.shape == (2, K, 6, 9)
    out.sum().backward()
    assert all(f.grad is not None for f in feats)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_maps_of_other_sizes_are_resized_to_the_first(name: str) -> None:
    head = create_head(name, IN_CHANNELS, K, **SMALL[name]).eval()
    feats = [torch.randn(1, 8, 6, 8), torch.randn(1, 16, 3, 4)]
    assert head(feats).shape == (1, K, 6, 8)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_channels_last_gives_same_logits(name: str) -> None:
    head = create_head(name, IN_CHANNELS, K, **SMALL[name]).eval()
    feats = _features()
    with torch.no_grad():
        ref = head(feats)
        out = head.to(memory_format=torch.channels_last)(
            [f.contiguous(memory_format=torch.channels_last) for f in feats]
        )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_one_by_one_spatial_in_eval(name: str) -> None:
    head = create_head(name, IN_CHANNELS, K, **SMALL[name]).eval()
    with torch.no_grad():
        out = head(_features(b=1, h=1, w=1))
    assert out.shape == (1, K, 1, 1)
    assert torch.isfinite(out).all()


def test_wrong_channels_raise_with_the_expected_list() -> None:
    head = LinearHead(IN_CHANNELS, K)
    with pytest.raises(ValueError, match=r"\[8, 16\].*\[8, 8\]"):
        head([torch.randn(1, 8, 2, 2), torch.randn(1, 8, 2, 2)])


def test_unknown_head_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="did you mean: ppm") as info:
        create_head("ppn", IN_CHANNELS, K)
    for name in HEADS:
        assert name in str(info.value)


def test_none_kwargs_are_dropped() -> None:
    head = create_head("ppm", IN_CHANNELS, K, channels=None, dropout=None)
    assert isinstance(head, PPMHead)
    assert head.classifier.in_channels == 256


def test_default_widths_match_reference() -> None:
    conv = ConvHead([384], 10)
    assert conv.stem[0].out_channels == 128 and conv.stem[0].kernel_size == (7, 7)
    assert conv.block[0].groups == 128
    ppm = PPMHead([768], 10)
    assert ppm.pool_scales == (1, 2, 3, 6)
    assert [b[1][0].out_channels for b in ppm.ppm] == [64] * 4
    assert [b[0].dilation for b in ppm.context] == [(1, 1), (2, 2), (4, 4)]
    assert ppm.fuse[0].in_channels == 3 * 256
    assert all(m.num_groups == 32 for m in ppm.modules() if isinstance(m, torch.nn.GroupNorm))
