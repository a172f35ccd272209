"""int8 ONNX models for CPUs and robots (ONNX Runtime quantization) and a check of what it costs.

Two ways, both ONNX Runtime's own:

- ``dynamic``: int8 weights, activations quantised per batch at run time. Needs no data.
- ``static``: int8 weights and activations with ranges calibrated once on images the user gives
  (a :class:`~onnxruntime.quantization.CalibrationDataReader` feeds them, preprocessed exactly as
  ``predict`` does), written as QDQ so ONNX Runtime fuses them into int8 kernels.

:func:`compare_models` reports what int8 changes: the share of pixels whose class agrees with
the fp32 model, and with ground truth the dataset-level mIoU of both.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offroadseg.atomic import atomic_save
from offroadseg.data.datasets import resize_image
from offroadseg.data.io import read_image
from offroadseg.errors import ConfigError, ModelError

__all__ = ["QUANT_MODES", "QuantCheck", "compare_models", "quantize_onnx"]

QUANT_MODES = ("dynamic", "static")


def _calibration_reader(model_path: Path, images: Sequence[Path | np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    from offroadseg.inference.onnx import load_onnx_predictor

    predictor = load_onnx_predictor(model_path, device="cpu")
    size = predictor.image_size

    class Reader(CalibrationDataReader):
        """One preprocessed image per call, as ``predict`` feeds the model (resized, normalised).

        An array is taken as already preprocessed (float32 ``[1, 3, H, W]`` at the model's size).
        """

        def __init__(self) -> None:
            self._items = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            if item is None:
                return None
            if isinstance(item, np.ndarray):
                return {input_name: np.ascontiguousarray(item, dtype=np.float32)}
            image = resize_image(read_image(item), size)
            return {input_name: predictor.normalize([image]).numpy()}

    return Reader()


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    mode: str = "dynamic",
    calibration: Sequence[str | Path | np.ndarray] = (),
) -> dict[str, Any]:
    """Write an int8 copy of an exported fp32 ONNX model (metadata kept, ``precision`` set).

    Args:
        src: an fp32 ``.onnx`` written by :func:`~offroadseg.inference.onnx.export_onnx`.
        dst: the int8 ``.onnx`` to write (atomically).
        mode: ``static`` (needs ``calibration``) or ``dynamic``.
        calibration: image files for static calibration (a few dozen typical frames suffice), or
            inputs already preprocessed (float32 ``[1, 3, H, W]`` arrays at the model's size).

    Returns:
        The new file's offroadseg metadata.

    Raises:
        ConfigError: unknown mode, or static without calibration images.
        ModelError: the source is not an offroadseg fp32 model.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    from offroadseg.inference.onnx import read_onnx_metadata, set_onnx_metadata

    if mode not in QUANT_MODES:
        raise ConfigError(f"--quant-mode {mode!r} is not one of {', '.join(QUANT_MODES)}")
    src = Path(src)
    meta = read_onnx_metadata(src)
    if meta.get("precision", "fp32") != "fp32":
        raise ModelError(f"{src} is already {meta['precision']}; fix: quantize the fp32 export")
    if mode == "static" and not calibration:
        raise ConfigError(
            "static int8 needs calibration images; fix: pass --calibration IMAGES (a few dozen typical "
            "frames), or use --quant-mode dynamic"
        )
    meta = {**meta, "precision": "int8", "quantization": mode, "calibration_images": len(calibration)}

    def save(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            prepared = Path(work) / "prepared.onnx"
            # Shape inference and graph cleanup first: ONNX Runtime's recommended step before quantizing.
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
            if mode == "dynamic":
                quantize_dynamic(str(prepared), str(tmp), weight_type=QuantType.QInt8)
            else:
                root_log = logging.getLogger()  # per-channel notes on 1-D norm weights, one per layer
                level = root_log.level
                root_log.setLevel(logging.ERROR)
                try:
                    quantize_static(
                        str(prepared),
                        str(tmp),
                        _calibration_reader(
                            src,
                            [c if isinstance(c, np.ndarray) else Path(c) for c in calibration],
                            meta["input"],
                        ),
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax,
                    )
                finally:
                    root_log.setLevel(level)
        proto = onnx.load(str(tmp))
        set_onnx_metadata(proto, meta)
        onnx.save(proto, str(tmp))

    atomic_save(dst, save)
    return meta


@dataclass
class QuantCheck:
    """What int8 changed on a set of images."""

    images: int
    pixel_agreement: float  # share of pixels whose class id equals the fp32 model's
    miou_fp32: float | None = None  # dataset-level, with ground truth
    miou_int8: float | None = None

    @property
    def miou_change(self) -> float | None:
        if self.miou_fp32 is None or self.miou_int8 is None:
            return None
        return self.miou_int8 - self.miou_fp32


def compare_models(
    fp32: str | Path,
    int8: str | Path,
    images: Sequence[str | Path],
    *,
    labels: Sequence[str | Path | None] | None = None,
    taxonomy=None,
    progress: Callable[[int, int], None] | None = None,
) -> QuantCheck:
    """Predict ``images`` with both models; pixel agreement and, given labels, both mIoUs.

    Args:
        labels: a mask per image (None to skip one), read with ``taxonomy`` (whose ignored
            values, e.g. YCOR's void 0, are not scored).
    """
    import torch

    from offroadseg.data.io import read_label
    from offroadseg.inference.onnx import load_onnx_predictor
    from offroadseg.metrics import confusion_matrix, scores_from_confusion

    a = load_onnx_predictor(fp32, device="cpu")
    b = load_onnx_predictor(int8, device="cpu")
    k = a.taxonomy.num_classes
    same = total = 0
    cms = [torch.zeros(k, k, dtype=torch.int64), torch.zeros(k, k, dtype=torch.int64)]
    scored = 0
    for i, path in enumerate(images):
        image = read_image(path)
        pa, pb = a.predict_one(image), b.predict_one(image)
        same += int((pa == pb).sum())
        total += pa.size
        label_path = labels[i] if labels is not None else None
        if label_path is not None and taxonomy is not None:
            raw = read_label(label_path, taxonomy)
            truth = torch.from_numpy(taxonomy.encode(raw, source=str(label_path)).astype(np.int64))
            for cm, pred in zip(cms, (pa, pb), strict=True):
                cm += confusion_matrix(
                    torch.from_numpy(pred.astype(np.int64)), truth, k, ignore_index=taxonomy.ignore_index
                )
            scored += 1
        if progress:
            progress(i + 1, len(images))
    if not total:
        raise ConfigError("no images to compare the int8 model on; fix: pass --check IMAGES")
    check = QuantCheck(len(images), same / total)
    if scored:
        check.miou_fp32 = float(scores_from_confusion(cms[0]).miou)
        check.miou_int8 = float(scores_from_confusion(cms[1]).miou)
    return check
