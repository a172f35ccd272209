"""Tests for offroadseg.models.heads."""

from __future__ import annotations

import pytest
import torch

from offroadseg.errors import ModelError
from offroadseg.models.heads import HEADS, ConvHead, LinearHead, PPMHead, create_head

IN_CHANNELS = [8, 16]
PYRAMID_CHANNELS = [8, 16, 8, 16]  # the 4-block decoders read one map per pyramid level
PYRAMID = {"uper", "dpt"}
K = 5
# Small widths keep the suite fast; the defaults are covered by test_default_widths.
SMALL = {
    "linear": {},
    "conv": {"channels": 16},
    "ppm": {"channels": 32},
    "uper": {"channels": 16},
    "dpt": {"channels": 16},
}


def _channels(name: str) -> list[int]:
    return PYRAMID_CHANNELS if name in PYRAMID else IN_CHANNELS


def _scale(name: str) -> int:
    """Output stride relative to the token grid: the pyramid decoders output at 4x."""
    return 4 if name in PYRAMID else 1


def _features(b: int = 2, h: int = 6, w: int = 9, channels: list[int] = IN_CHANNELS) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(b, c, h, w) for c in channels]


def _head(name: str) -> torch.nn.Module:
    return create_head(name, _channels(name), K, **SMALL[name])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_output_shape_and_backward(name: str) -> None:
    head = _head(name)
    feats = [f.requires_grad_() for f in _features(channels=_channels(name))]
    out = head(feats)
    s = _scale(name)
    assert out.shape == (2, K, 6 * s, 9 * s)
    out.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_maps_of_other_sizes_are_resized_to_the_first(name: str) -> None:
    head = _head(name).eval()
    sizes = [(6, 8), (3, 4)] * (len(_channels(name)) // 2)
    feats = [torch.randn(1, c, *hw) for c, hw in zip(_channels(name), sizes, strict=True)]
    s = _scale(name)
    assert head(feats).shape == (1, K, 6 * s, 8 * s)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_channels_last_gives_same_logits(name: str) -> None:
    head = _head(name).eval()
    feats = _features(channels=_channels(name))
    with torch.no_grad():
        ref = head(feats)
        out = head.to(memory_format=torch.channels_last)(
            [f.contiguous(memory_format=torch.channels_last) for f in feats]
        )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_one_by_one_spatial_in_eval(name: str) -> None:
    head = _head(name).eval()
    with torch.no_grad():
        out = head(_features(b=1, h=1, w=1, channels=_channels(name)))
    s = _scale(name)
    assert out.shape == (1, K, s, s)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PYRAMID))
@pytest.mark.parametrize("grid", [(17, 32), (5, 7)])
def test_pyramid_decoders_on_odd_grids(name: str, grid: tuple[int, int]) -> None:
    """The /2 level of an odd grid must come back to the right size (YCOR's grid is 17x32)."""
    head = _head(name).eval()
    with torch.no_grad():
        out = head(_features(b=1, h=grid[0], w=grid[1], channels=_channels(name)))
    assert out.shape == (1, K, 4 * grid[0], 4 * grid[1])


@pytest.mark.parametrize("name", sorted(PYRAMID))
@pytest.mark.parametrize("n", [1, 3, 5])
def test_pyramid_decoders_refuse_other_layer_counts_with_the_fix(name: str, n: int) -> None:
    with pytest.raises(ModelError, match=rf"{name}.*needs 4 backbone layers.*returns {n}.*\[2, 5, 8, 11\]"):
        create_head(name, [8] * n, K)


@pytest.mark.parametrize("name", sorted(PYRAMID))
def test_pyramid_decoders_use_every_level(name: str) -> None:
    """Each of the 4 blocks changes the logits: none is silently dropped."""
    head = _head(name).eval()
    feats = _features(b=1, channels=_channels(name))
    with torch.no_grad():
        ref = head(feats)
        for i in range(4):
            changed = [f.clone() for f in feats]
            changed[i] = changed[i] + 1.0
            assert not torch.allclose(head(changed), ref), f"map {i} is ignored"


def test_wrong_channels_raise_with_the_expected_list() -> None:
    head = LinearHead(IN_CHANNELS, K)
    with pytest.raises(ValueError, match=r"\[8, 16\].*\[8, 8\]"):
        head([torch.randn(1, 8, 2, 2), torch.randn(1, 8, 2, 2)])


def test_unknown_head_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="did you mean: ppm") as info:
        create_head("ppn", IN_CHANNELS, K)
    for name in HEADS:
        assert name in str(info.value)


def test_option_a_head_does_not_take_is_refused_with_the_ones_it_takes() -> None:
    with pytest.raises(ModelError, match=r"'linear' does not take model.head.channels=64.*no options"):
        create_head("linear", IN_CHANNELS, K, channels=64)
    with pytest.raises(ModelError, match=r"'conv' does not take model.head.dropout=0.2; it takes: channels"):
        create_head("conv", IN_CHANNELS, K, dropout=0.2)
    with pytest.raises(ModelError, match=r"it takes: channels, pool_scales, dropout"):
        create_head("uper", PYRAMID_CHANNELS, K, width=3)


def test_conv_head_width_is_the_channels_option() -> None:
    assert create_head("conv", IN_CHANNELS, K, channels=64).stem[0].out_channels == 64


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


@pytest.mark.slow
def test_pyramid_decoders_on_spread_vit_blocks_from_config() -> None:
    """``model.backbone.layers: [2, 5, 8, 11]`` on a 12-block ViT feeds the 4-level decoders end to end."""
    from offroadseg.config import config_from_dict
    from offroadseg.models.factory import build_segmentor

    cfg = config_from_dict(
        {},
        [
            "model.backbone.name=dinov2_vits14",
            "model.backbone.weights=random",
            "model.backbone.layers=[2, 5, 8, 11]",
            "model.head.name=uper",
            "model.head.channels=16",
        ],
    )
    model = build_segmentor(cfg.model, K).eval()
    assert model.backbone.layer_indices == [2, 5, 8, 11]
    assert model.backbone.out_channels == [384] * 4
    images = torch.randn(1, 3, 30, 44)
    for name in sorted(PYRAMID):
        model.head = create_head(name, model.backbone.out_channels, K, channels=16).eval()
        with torch.no_grad():
            out = model(images)
        assert out.shape == (1, K, 30, 44)


def test_pyramid_decoder_with_one_layer_is_refused_by_the_factory() -> None:
    from offroadseg.config import config_from_dict
    from offroadseg.models.factory import build_segmentor

    cfg = config_from_dict({}, ["model.backbone.name=dinov2_test", "model.head.name=uper"])
    with pytest.raises(
        ModelError, match=r"needs 4 backbone layers .* the backbone returns 1; fix: model.backbone.layers"
    ):
        build_segmentor(cfg.model, K)
