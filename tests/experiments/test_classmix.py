"""ClassMix on the token grid: known answers on hand-made arrays (which patch and pixel comes from
which frame, and that the labels follow), and the mixed step through a real model."""

from __future__ import annotations

import numpy as np
import torch

from offroadseg.experiments.adapt_frames import Frames, encode_frames, frame_logits
from offroadseg.experiments.classmix import (
    choose_classes,
    classmix_logits,
    mix_labels,
    mix_tokens,
    patch_mask,
    pixel_mask,
)
from offroadseg.inference.checkpoint import load_checkpoint

IGNORE = 255


def test_choose_classes_takes_half_of_the_present_rounded_up_never_ignore():
    mask = np.array([[0, 2, 2], [5, 5, IGNORE]], dtype=np.uint8)  # present: 0, 2, 5
    for seed in range(10):
        picked = choose_classes(mask, np.random.default_rng(seed), ignore_index=IGNORE)
        assert len(picked) == 2 and set(picked) <= {0, 2, 5}
    seen = {tuple(choose_classes(mask, np.random.default_rng(s), ignore_index=IGNORE)) for s in range(40)}
    assert seen == {(0, 2), (0, 5), (2, 5)}  # random, not always the same pair
    four = np.array([[1, 2, 3, 4]])
    assert len(choose_classes(four, np.random.default_rng(0), ignore_index=IGNORE)) == 2
    assert choose_classes(np.full((2, 2), IGNORE), np.random.default_rng(0), ignore_index=IGNORE).size == 0


def test_patch_mask_majority_per_patch_and_padding_not_counted():
    # 2-pixel patches; a 3 x 5 mask pads to a 2 x 3 grid (4 x 6 pixels)
    mask = np.array(
        [
            [7, 7, 7, 1, 1],
            [7, 1, 1, 1, 7],
            [1, 1, 7, 7, 7],
        ]
    )
    got = patch_mask(mask, np.array([7]), patch=2, grid=(2, 3))
    # patch (0,0): 3 of 4 pixels are 7 -> True; (0,1): 1 of 4 -> False; (0,2): 1 of 2 in-image -> True (half)
    # patch (1,0): row 2 only (1, 1) -> 0 of 2 -> False; (1,1): (7, 7) -> True; (1,2): (7) 1 of 1 -> True
    expected = np.array([[True, False, True], [False, True, True]])
    np.testing.assert_array_equal(got, expected)
    assert not patch_mask(mask, np.array([], dtype=int), patch=2, grid=(2, 3)).any()


def test_pixel_mask_repeats_each_patch_and_cuts_the_padding():
    mask = torch.tensor([[True, False, True], [False, True, False]])
    got = pixel_mask(mask, patch=2, size=(3, 5))
    expected = torch.tensor(
        [
            [True, True, False, False, True],
            [True, True, False, False, True],
            [False, False, True, True, False],
        ]
    )
    assert torch.equal(got, expected)


def test_mix_tokens_takes_masked_patches_from_the_source_and_keeps_the_target_prefix():
    # one frame, 1 prefix token, a 2 x 2 grid, 3 channels: token values say where they come from
    source = torch.full((1, 5, 3), 1.0)
    target = torch.full((1, 5, 3), 2.0)
    source[0, 0], target[0, 0] = 10.0, 20.0  # prefix tokens
    mask = torch.tensor([[[True, False], [False, True]]])  # patches 0 and 3 from the source
    mixed = mix_tokens(source, target, mask, prefix=1)
    assert mixed[0, :, 0].tolist() == [20.0, 1.0, 2.0, 2.0, 1.0]
    no_prefix = mix_tokens(source[:, 1:], target[:, 1:], mask, prefix=0)
    assert no_prefix[0, :, 0].tolist() == [1.0, 2.0, 2.0, 1.0]


def test_mix_labels_follow_the_patches_including_ignored_pseudo_labels():
    source = torch.tensor([[[3, 3, 4], [4, 4, 3]]])  # [1, 2, 3]
    target = torch.tensor([[[0, IGNORE, 1], [1, 0, IGNORE]]])
    mask = torch.tensor([[[False, True]]])  # 2-pixel patches: grid 1 x 2, the right patch from the source
    got = mix_labels(source, target, mask, patch=2)
    assert got.tolist() == [[[0, IGNORE, 4], [1, 0, 3]]]


def test_classmix_logits_equal_the_model_on_the_mixed_tokens(ppm_checkpoint, adapt_toy_root):
    """The mixed step's logits are the model's logits on tokens whose pasted patches are the source's:
    with a patch mask of all True they equal the source frame's own logits, with all False the
    target's (whose prefix tokens the mixed frame keeps); the labels are then the source masks or the
    pseudo-labels."""
    from offroadseg.data.io import read_image, read_label

    loaded = load_checkpoint(ppm_checkpoint)
    model, tax = loaded.model.eval(), loaded.taxonomy
    names = sorted((adapt_toy_root / "val" / "Color_Images").iterdir())[:2]
    images = np.stack([read_image(p) for p in names])
    masks = np.stack(
        [tax.encode(read_label(adapt_toy_root / "val" / "Segmentation" / p.name, tax)) for p in names]
    ).astype(np.uint8)
    source = Frames(["s0", "s1"], images, masks)
    target = Frames(["t0", "t1"], images[::-1].copy())
    cpu = torch.device("cpu")
    encode_frames(model, source, device=cpu)
    encode_frames(model, target, device=cpu)
    prefix = model.backbone.num_prefix_tokens
    assert target.tokens is not None and prefix > 0  # the trained block reads the prefix tokens too
    target.tokens[:, :prefix] = source.tokens[:, :prefix]  # the prefix stays the target's: make it equal
    pseudo = torch.full(masks.shape, 1, dtype=torch.long)

    class Fixed:  # every class chosen -> every patch pasted; no class -> nothing pasted
        def __init__(self, every: bool):
            self.every = every

        def choice(self, present, size, replace):
            return present if self.every else present[:0]

    with torch.no_grad():
        logits, labels = classmix_logits(
            model, source, [0, 1], target, [0, 1], pseudo, [False, True], Fixed(True),
            ignore_index=IGNORE, device=cpu,
        )  # fmt: skip
        own = torch.cat(
            [
                frame_logits(model, source, [0], False, device=cpu),
                frame_logits(model, source, [1], True, device=cpu),
            ]
        )
        assert torch.allclose(logits, own, atol=1e-5)
        assert torch.equal(labels, torch.from_numpy(masks).long())
        logits, labels = classmix_logits(
            model, source, [0, 1], target, [1, 0], pseudo, [False, False], Fixed(False),
            ignore_index=IGNORE, device=cpu,
        )  # fmt: skip
        assert torch.allclose(logits, frame_logits(model, target, [1, 0], False, device=cpu), atol=1e-5)
        assert torch.equal(labels, pseudo)
        # fewer source frames than target frames: the source frames are reused in turn
        _, labels = classmix_logits(
            model, source, [1], target, [0, 1], pseudo, [False, False], Fixed(True),
            ignore_index=IGNORE, device=cpu,
        )  # fmt: skip
        assert torch.equal(labels, torch.from_numpy(masks[[1, 1]]).long())


def test_adapt_with_classmix_trains_and_records_the_setting(ppm_checkpoint, adapt_toy_root, tmp_path):
    import yaml

    from offroadseg.cli import main
    from offroadseg.experiments.adapt_settings import parse_settings

    assert parse_settings(["adapt.classmix=true"]).classmix is True
    assert parse_settings([]).classmix is False
    out = tmp_path / "mixed"
    target = adapt_toy_root / "test" / "Color_Images"
    argv = ["adapt", str(ppm_checkpoint), str(target), "classmix=true", "rounds=1", "steps=2", "batch_size=2"]
    assert main([*argv, "gallery=1", "--out", str(out)]) == 0
    assert yaml.safe_load((out / "adapt.yaml").read_text())["classmix"] is True
    before = load_checkpoint(ppm_checkpoint).model.state_dict()
    after = load_checkpoint(out / "checkpoints" / "last.ckpt").model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
