"""Segmentor = backbone + head, for images of any size.

A ViT backbone needs image sides that are multiples of its patch size. The segmentor
pads the image at the bottom and right to the next multiple, runs the backbone and
the head, upsamples the logits to the padded size and crops them back, so every
output pixel lines up with its input pixel (resizing would shift and blur borders).

The two halves are also callable apart (timm's ``forward_features`` /
``forward_head``), and the backbone's frozen prefix apart from the rest
(``forward_hidden`` / ``features_from_cache``), so a training run can cache what
the frozen part computes once and train the last blocks, the norm and the head from
the cache. A head with ``uses_image = True`` also gets the (padded) normalised image:
``head(features, image=image)``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg.class_ids import class_ids

__all__ = ["PAD_MODES", "Segmentor"]

PAD_MODES = ("replicate", "constant")


class Segmentor(nn.Module):
    """A backbone (``patch_size``, ``out_channels``, ``forward -> list[Tensor]``) and a head.

    Args:
        backbone: Maps ``[B, 3, H, W]`` (``H``, ``W`` multiples of ``patch_size``) to
            ``list[[B, C_i, H/p, W/p]]``.
        head: Maps that list to logits ``[B, K, H/p, W/p]``.
        pad_mode: ``"replicate"`` repeats the last row/column (the padded strip looks
            like the border, so border tokens are less disturbed); ``"constant"`` pads
            with zeros, i.e. the dataset mean colour on normalised images.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, pad_mode: str = "replicate") -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.backbone = backbone
        self.head = head
        self.patch_size = int(backbone.patch_size)
        self.pad_mode = pad_mode

    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone parameter is trainable."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> Segmentor:
        """Set train/eval mode, keeping a frozen backbone in eval mode.

        A frozen backbone must not update norm statistics or apply dropout while the
        head trains.
        """
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()
        return self

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size ``(H, W)`` is padded to: each side rounded up to a multiple of the patch."""
        p = self.patch_size
        return -(-height // p) * p, -(-width // p) * p

    def _pad(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) == (h, w):
            return images
        # F.pad order is (left, right, top, bottom): pad bottom/right only so the
        # original pixels keep their coordinates and the crop is a plain slice.
        return F.pad(images, (0, pw - w, 0, ph - h), mode=self.pad_mode)

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Pad ``images`` and run the backbone.

        Runs under ``torch.no_grad()`` when the backbone has no trainable parameter,
        which saves the activation memory of a frozen ViT.

        Args:
            images: ``[B, 3, H, W]`` normalised images, any ``H``, ``W``.

        Returns:
            Feature maps ``[B, C_i, ceil(H/p), ceil(W/p)]``.
        """
        padded = self._pad(images)
        ctx = torch.no_grad() if self.backbone_frozen else contextlib.nullcontext()
        with ctx:
            return list(self.backbone(padded))

    @property
    def uses_image(self) -> bool:
        """True when the head also reads the image (an image-guided refinement head)."""
        return bool(getattr(self.head, "uses_image", False))

    def forward_hidden(self, images: Tensor, indices: list[int]) -> dict[int, Tensor]:
        """Pad ``images`` and return the backbone's pre-norm hidden states (what the feature cache stores).

        Args:
            images: ``[B, 3, H, W]`` normalised images, any ``H``, ``W``.
            indices: hidden-state indices in ``0..L`` (0: embeddings output, i: output of block i-1).

        Returns:
            ``{index: [B, P + h * w, C]}``, see :meth:`DinoBackbone.hidden_states`.
        """
        return self.backbone.hidden_states(self._pad(images), indices)

    def features_from_cache(
        self, tokens: Tensor | None, early: list[Tensor], size: tuple[int, int]
    ) -> list[Tensor]:
        """Feature maps from cached prefix outputs: runs the trained blocks and the final norm.

        Args:
            tokens: ``[B, P + h * w, C]`` entering block ``cache_start``, or None when it is ``L``
                (see :meth:`DinoBackbone.forward_prefix`).
            early: pre-norm patch tokens ``[B, h * w, C]`` per early returned block.
            size: ``(H, W)`` of the (unpadded) images the cache was computed from.

        Returns:
            Feature maps ``[B, C_i, h, w]``, as :meth:`forward_features` returns them.
        """
        ph, pw = self.padded_size(int(size[0]), int(size[1]))
        return list(
            self.backbone.forward_suffix(tokens, early, (ph // self.patch_size, pw // self.patch_size))
        )

    def forward_head(
        self, features: list[Tensor], out_size: tuple[int, int], image: Tensor | None = None
    ) -> Tensor:
        """Run the head and bring its logits to ``out_size``.

        The padded size is recovered from the feature size (``h * p``, ``w * p``). When
        ``out_size`` pads to exactly that size, the logits are upsampled to the padded
        size and cropped, which makes ``forward(x)`` equal to
        ``forward_head(forward_features(x), x.shape[-2:])`` bit for bit. Any other
        ``out_size`` (e.g. the original resolution of cached, resized images) gets a
        plain bilinear resize.

        Args:
            features: Maps ``[B, C_i, h, w]`` as returned by :meth:`forward_features`.
            out_size: ``(H, W)`` of the wanted logits.
            image: ``[B, 3, H', W']`` normalised image for a head that ``uses_image`` (padded here
                to ``h * p, w * p`` unless it already is); ignored by other heads.

        Returns:
            Logits ``[B, K, H, W]``.
        """
        if self.uses_image:
            if image is None:
                raise ValueError(f"head {type(self.head).__name__} uses the image: pass image=")
            logits = self.head(features, image=self._pad(image))
        else:
            logits = self.head(features)
        fh, fw = features[0].shape[-2:]
        padded = (fh * self.patch_size, fw * self.patch_size)
        out_h, out_w = int(out_size[0]), int(out_size[1])
        if self.padded_size(out_h, out_w) == padded:
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
            return logits[..., :out_h, :out_w]
        return F.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, K, H, W]`` for normalised images ``[B, 3, H, W]`` of any size."""
        h, w = images.shape[-2:]
        return self.forward_head(
            self.forward_features(images), (h, w), image=images if self.uses_image else None
        )

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Class ids ``[B, H, W]`` (int64) for normalised images ``[B, 3, H, W]``.

        Runs in eval mode and restores the previous mode afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            return class_ids(self(images))
        finally:
            self.train(was_training)
