"""Decoders that read several ViT blocks (UPerNet, DPT) and the image-guided refinement.

They follow the head contract of :mod:`offroadseg.models.heads` (``list[Tensor[B, C_i, h, w]]``
in, logits out) and are registered there, in :data:`~offroadseg.models.heads.HEADS`.
"""
