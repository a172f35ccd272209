"""Predictor: uint8 images at their own size -> class scores and ids at that size.

One code path serves every runtime: a :class:`Predictor` wraps a *forward function*
(normalised ``[B, 3, h, w]`` -> logits ``[B, K, h, w]``), and owns everything around it:
resizing to the model's ``data.image_size`` (area when shrinking, as in training) or
sliding windows, test-time augmentation, upsampling to the input size and argmax. The
PyTorch model and the ONNX Runtime session (:mod:`offroadseg.inference.onnx`) differ only
in that function, so their outputs can be compared pixel for pixel.

TTA: ``flip`` averages the softmax probabilities of the image and its horizontal mirror
(mirrored back); ``scales`` averages them over resized copies (each side a multiple of the
patch size); ``flip+scales`` does both. Without TTA the logits themselves are upsampled,
exactly as ``offroadseg evaluate`` does.

Excluded classes (``--exclude-classes``, classes known to be absent where the model is
deployed) have their logits set to :data:`EXCLUDED_LOGIT` on every network output, before
upsampling, softmax, TTA averaging and argmax: they get no pixel and no probability, and the
other classes keep their logits (the argmax only changes where an excluded class won).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg.class_ids import class_ids
from offroadseg.data.datasets import IMAGENET_MEAN, IMAGENET_STD, resize_image
from offroadseg.devices import pick_device
from offroadseg.errors import ConfigError, close_matches
from offroadseg.inference.sliding import ForwardFn, sliding_logits
from offroadseg.machine import cpu_pass_precision
from offroadseg.models.precision import frozen_pass
from offroadseg.taxonomy import Taxonomy

__all__ = [
    "EXCLUDED_LOGIT",
    "TTA_MODES",
    "ExcludeClasses",
    "Predictor",
    "TTAConfig",
    "mask_excluded",
    "parse_excluded_classes",
    "pick_device",
    "torch_forward",
]

TTA_MODES = ("none", "flip", "scales", "flip+scales")
# The logit of an excluded class: softmax gives it exactly 0 in float32 and argmax never picks it
# next to real logits; finite (not -inf) so bilinear upsampling never computes 0 * inf = NaN.
EXCLUDED_LOGIT = -1.0e4


def parse_excluded_classes(text: str | Sequence[str] | None, taxonomy: Taxonomy) -> tuple[int, ...]:
    """``"puddle,sky"`` (or a list of names) -> sorted class ids, checked against the taxonomy.

    Names match the taxonomy's class names exactly, or ignoring case and ``_``/space.

    Raises:
        ConfigError: an unknown name (the valid names listed), or every class excluded.
    """
    if text is None:
        return ()
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    valid = list(taxonomy.names)

    def key(name: str) -> str:
        return name.lower().replace("_", " ").replace("-", " ")

    by_key = {key(n): i for i, n in enumerate(valid)}
    ids = set()
    for name in names:
        index = valid.index(name) if name in valid else by_key.get(key(name))
        if index is None:
            raise ConfigError(
                f"--exclude-classes: unknown class {name!r}{close_matches(name, valid)}; "
                f"valid names: {', '.join(valid)}"
            )
        ids.add(index)
    if len(ids) >= len(valid):
        raise ConfigError("--exclude-classes names every class: at least one must stay; fix: name fewer")
    return tuple(sorted(ids))


def mask_excluded(logits: Tensor, exclude: Sequence[int]) -> Tensor:
    """Logits ``[B, K, H, W]`` with the ``exclude`` channels set to :data:`EXCLUDED_LOGIT` (a copy)."""
    if not exclude:
        return logits
    out = logits.clone()
    out[:, list(exclude)] = EXCLUDED_LOGIT
    return out


class ExcludeClasses(nn.Module):
    """A model whose excluded-class logits are masked inside its graph (for ONNX export).

    A constant ``[1, K, 1, 1]`` keep-mask selects the model's logit for kept classes and
    :data:`EXCLUDED_LOGIT` for excluded ones (one ``Where`` node in ONNX): kept logits pass
    unchanged, and any runtime applies the exclusion without knowing about it.
    """

    def __init__(self, model: nn.Module, exclude: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.exclude = tuple(int(i) for i in exclude)
        keep = torch.ones(num_classes, dtype=torch.bool)
        keep[list(self.exclude)] = False
        self.register_buffer("keep", keep.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """Normalised ``[B, 3, H, W]`` -> masked logits ``[B, K, H, W]``."""
        logits = self.model(images)
        return torch.where(self.keep, logits, torch.full_like(logits, EXCLUDED_LOGIT))


@dataclass(frozen=True)
class TTAConfig:
    """Test-time augmentation and tiling, as in the config's ``eval`` section."""

    tta: str = "none"  # none | flip | scales | flip+scales
    scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    sliding_window: bool = False
    window_overlap: float = 0.33

    def __post_init__(self) -> None:
        if self.tta not in TTA_MODES:
            raise ConfigError(f"tta {self.tta!r} is not valid; choose one of: {', '.join(TTA_MODES)}")
        if "scales" in self.tta and (not self.scales or any(s <= 0 for s in self.scales)):
            raise ConfigError(
                f"TTA scales {list(self.scales)} must be positive numbers; fix: e.g. --scales 0.75,1,1.25"
            )
        if not 0.0 <= self.window_overlap < 1.0:
            raise ConfigError(
                f"window overlap {self.window_overlap} must be in [0, 1); fix: e.g. --overlap 0.33"
            )

    @classmethod
    def from_eval(cls, settings: Any, **overrides: Any) -> TTAConfig:
        """The TTA settings of a config's ``eval`` section.

        Args:
            settings: an :class:`~offroadseg.config.EvalConfig` or its dict (e.g. the ``eval``
                metadata of an ONNX file); missing keys take this class's defaults.
            overrides: field values that win over ``settings`` (CLI flags); None means "not given".
        """
        get = settings.get if isinstance(settings, Mapping) else lambda key, d: getattr(settings, key, d)
        values = {f.name: get(f.name, f.default) for f in dataclasses.fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(
            tta=values["tta"],
            scales=tuple(values["scales"]),
            sliding_window=bool(values["sliding_window"]),
            window_overlap=float(values["window_overlap"]),
        )

    @property
    def views(self) -> list[tuple[float, bool]]:
        """(scale, hflip) of every pass."""
        scales = list(self.scales) if "scales" in self.tta else [1.0]
        flips = [False, True] if "flip" in self.tta else [False]
        return [(s, f) for s in scales for f in flips]


def torch_forward(model: torch.nn.Module, device: torch.device, precision: str = "fp32") -> ForwardFn:
    """A forward function running ``model`` on ``device`` in inference mode (fp32 logits).

    ``precision``: of the backbone (``fp32`` | ``bf16`` | ``fp16``; see
    :func:`offroadseg.models.precision.frozen_pass`, which leaves ``model`` itself untouched).
    """
    model, amp = frozen_pass(model, precision, device.type)

    def forward(images: Tensor) -> Tensor:
        with torch.inference_mode(), amp:
            return model(images.to(device, non_blocking=True)).float()

    return forward


class Predictor:
    """Class scores and ids for batches of uint8 RGB images of any size.

    Args:
        forward: normalised ``[B, 3, h, w]`` -> logits ``[B, K, h, w]``.
        taxonomy: the model's taxonomy (names, colours, encoding of the masks it writes).
        image_size: ``(H, W)`` the network was trained at (``data.image_size``).
        patch_size: scaled TTA sizes are rounded to multiples of it.
        tta: augmentation and tiling settings.
        device: where upsampling and averaging run (the forward's output device).
        batch_size: windows per forward call in sliding-window mode.
        mean, std: per-channel normalisation of ``[0, 1]`` RGB.
        fixed_size: the only input size ``forward`` accepts (a static ONNX model), or None.
        runtime: a short name for reports (``pytorch``, ``onnxruntime``).
        precision: of the backbone in ``forward`` (``fp32`` | ``bf16`` | ``fp16``), for reports.
        exclude: class ids that get no pixel (see :func:`parse_excluded_classes`).
    """

    def __init__(
        self,
        forward: ForwardFn,
        *,
        taxonomy: Taxonomy,
        image_size: Sequence[int],
        patch_size: int = 14,
        tta: TTAConfig | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 4,
        mean: Sequence[float] = tuple(IMAGENET_MEAN),
        std: Sequence[float] = tuple(IMAGENET_STD),
        fixed_size: tuple[int, int] | None = None,
        runtime: str = "pytorch",
        exclude: Sequence[int] = (),
        precision: str = "fp32",
    ) -> None:
        self.forward = forward
        self.taxonomy = taxonomy
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.patch_size = int(patch_size)
        self.tta = tta or TTAConfig()
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.fixed_size = fixed_size
        self.runtime = runtime
        self.precision = precision
        self.exclude = tuple(int(i) for i in exclude)
        if fixed_size is not None and any(s != 1.0 for s, _ in self.tta.views):
            raise ConfigError(
                f"this model was exported for a fixed {fixed_size[0]}x{fixed_size[1]} input, but TTA "
                f"'{self.tta.tta}' needs other sizes; fix: export it with --dynamic or use --tta flip/none"
            )

    @classmethod
    def from_loaded(
        cls,
        loaded,
        *,
        tta: TTAConfig | None = None,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        exclude: Sequence[int] = (),
    ) -> Predictor:
        """A predictor for a :class:`~offroadseg.inference.checkpoint.LoadedModel`.

        Args:
            tta: defaults to the checkpoint config's ``eval`` section.
            device: ``auto`` | ``cpu`` | ``cuda``.
            batch_size: windows per forward call (default ``eval.batch_size``).
            exclude: class ids that get no pixel.
        """
        ev = loaded.config.eval
        if tta is None:
            tta = TTAConfig.from_eval(ev)
        dev = pick_device(device)
        model = loaded.model.to(dev).eval()
        # bf16 on a CPU that has it natively when the config's train.precision is auto; fp32 on CUDA
        precision = cpu_pass_precision(loaded.config.train.precision) if dev.type == "cpu" else "fp32"
        return cls(
            torch_forward(model, dev, precision),
            taxonomy=loaded.taxonomy,
            image_size=loaded.config.data.image_size,
            patch_size=model.patch_size,
            tta=tta,
            device=dev,
            batch_size=batch_size or ev.batch_size,
            exclude=exclude,
            precision=precision,
        )

    # ---- building blocks -------------------------------------------------------------------
    def normalize(self, images: Sequence[np.ndarray]) -> Tensor:
        """uint8 ``[H, W, 3]`` images of one size -> float32 ``[B, 3, H, W]`` (CPU)."""
        batch = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
        batch = (batch - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))

    def scaled_size(self, scale: float) -> tuple[int, int]:
        """The network input size for a TTA scale (the training size at scale 1)."""
        if scale == 1.0:
            return self.image_size
        p = self.patch_size
        return tuple(max(p, int(round(s * scale / p)) * p) for s in self.image_size)  # type: ignore[return-value]

    def uses_sliding(self, height: int, width: int) -> bool:
        """Whether an image of this size is tiled (sliding window on and the image is larger)."""
        return self.tta.sliding_window and (height > self.image_size[0] or width > self.image_size[1])

    def _run(self, x: Tensor, flip: bool, sliding: bool, exclude: Sequence[int]) -> Tensor:
        if flip:
            x = x.flip(-1)
        if sliding:
            out = sliding_logits(
                self.forward,
                x,
                window=self.image_size,
                overlap=self.tta.window_overlap,
                batch_size=self.batch_size,
            )
        else:
            out = self.forward(x).float()
        out = mask_excluded(out, exclude)  # before upsampling, softmax and TTA averaging
        return out.flip(-1) if flip else out

    # ---- public API ------------------------------------------------------------------------
    def scores(self, images: Sequence[np.ndarray], *, exclude: Sequence[int] | None = None) -> list[Tensor]:
        """Per-image class scores ``[K, H, W]`` at each image's own size.

        Logits without TTA; mean softmax probabilities over the TTA views otherwise.

        Args:
            images: uint8 RGB ``[H, W, 3]`` arrays, sizes may differ.
            exclude: class ids that get no pixel in this call (default: the predictor's own
                ``exclude``); one predictor can serve requests that exclude different classes.
        """
        exclude = self.exclude if exclude is None else tuple(int(i) for i in exclude)
        views = self.tta.views
        average = len(views) > 1
        out: list[Tensor | None] = [None] * len(images)
        sizes = [tuple(im.shape[:2]) for im in images]
        resized = [i for i, (h, w) in enumerate(sizes) if not self.uses_sliding(h, w)]
        tiled = [i for i in range(len(images)) if i not in resized]
        for scale, flip in views:
            passes: list[tuple[list[int], Tensor]] = []
            if resized:
                size = self.scaled_size(scale)
                x = self.normalize([resize_image(images[i], size) for i in resized])
                passes.append((resized, self._run(x, flip, sliding=False, exclude=exclude)))
            for i in tiled:
                h, w = sizes[i]
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                x = self.normalize([resize_image(images[i], size)])
                passes.append(([i], self._run(x, flip, sliding=True, exclude=exclude)))
            for indices, logits in passes:
                for j, i in enumerate(indices):
                    up = logits[j : j + 1]
                    if tuple(up.shape[-2:]) != sizes[i]:
                        up = F.interpolate(up, size=sizes[i], mode="bilinear", align_corners=False)
                    if average:
                        up = up.softmax(dim=1)
                    out[i] = up[0] if out[i] is None else out[i] + up[0]
        return [o / len(views) if average else o for o in out]  # type: ignore[operator]

    def predict(
        self, images: Sequence[np.ndarray], *, exclude: Sequence[int] | None = None
    ) -> list[np.ndarray]:
        """Class ids, uint8 ``[H, W]`` per image, at each image's own size (``exclude``: as in :meth:`scores`)."""
        return [
            class_ids(s, dim=0).to(torch.uint8).cpu().numpy() for s in self.scores(images, exclude=exclude)
        ]

    def predict_one(self, image: np.ndarray, *, exclude: Sequence[int] | None = None) -> np.ndarray:
        """Class ids of one uint8 RGB image (``exclude``: as in :meth:`scores`)."""
        return self.predict([image], exclude=exclude)[0]
