"""Training augmentations on image and mask together (albumentations).

Geometric transforms fill the area they uncover with ``ignore_index`` in the mask, so
the loss never learns invented "Background" at the borders.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from offroadseg.config import AugmentConfig  # noqa: E402


def build_train_transform(aug: AugmentConfig, *, ignore_index: int = 255) -> A.Compose | None:
    """The reference's augmentations, each with its probability; None when all are off."""
    steps: list = []
    if aug.hflip > 0:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    if aug.vflip > 0:
        steps.append(A.VerticalFlip(p=aug.vflip))
    if aug.shift_scale_rotate > 0:
        steps.append(
            A.Affine(
                translate_percent=(-0.0625, 0.0625),
                scale=(0.9, 1.1),
                rotate=(-15, 15),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
                p=aug.shift_scale_rotate,
            )
        )
    if aug.blur > 0:
        steps.append(A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MedianBlur(blur_limit=5)], p=aug.blur))
    if aug.brightness_contrast > 0:
        steps.append(A.RandomBrightnessContrast(p=aug.brightness_contrast))
    if aug.hue_saturation > 0:
        steps.append(A.HueSaturationValue(p=aug.hue_saturation))
    if aug.shadow > 0:
        steps.append(A.RandomShadow(p=aug.shadow))
    if aug.clahe > 0:
        steps.append(A.CLAHE(p=aug.clahe))
    if not steps:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # albumentations' update-check chatter
        return A.Compose(steps)


def photometric_or_geometric(aug: AugmentConfig) -> list[str]:
    """Names of enabled augmentations that a frozen-feature cache cannot reproduce exactly."""
    return [
        name
        for name in (
            "vflip",
            "shift_scale_rotate",
            "blur",
            "brightness_contrast",
            "hue_saturation",
            "shadow",
            "clahe",
        )
        if getattr(aug, name) > 0
    ]
