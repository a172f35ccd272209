"""OpenVINO: an exported ONNX graph as an OpenVINO IR (``.xml`` + ``.bin``), run on the CPU in fp32,
bf16 or int8 (NNCF post-training quantization calibrated on frames).

OpenVINO is an optional extra (``pip install 'offroadseg[openvino]'``), imported only inside these
functions. On a CPU with bf16, OpenVINO computes in bf16 unless told otherwise, so fp32 here asks for
``f32`` explicitly (``INFERENCE_PRECISION_HINT``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from offroadseg.errors import ConfigError, ModelError

__all__ = [
    "OV_PRECISIONS",
    "PIP_OPENVINO",
    "OpenVinoRunner",
    "load_openvino_predictor",
    "onnx_to_openvino",
    "openvino_available",
    "quantize_openvino",
    "require_openvino",
    "write_openvino_ir",
]

PIP_OPENVINO = "pip install 'offroadseg[openvino]'"
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
META_KEY = "offroadseg"


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def require_openvino(what: str = "this"):
    """The ``openvino`` module, or a one-line :class:`ModelError` naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise ModelError(f"{what} needs OpenVINO, which is not installed; fix: {PIP_OPENVINO}") from None
    return openvino


def onnx_to_openvino(onnx_path: str | Path):
    """An ``openvino.Model`` converted from an ONNX file (its offroadseg metadata kept in ``rt_info``)."""
    ov = require_openvino(f"converting {onnx_path} to OpenVINO")
    from offroadseg.inference.onnx import read_onnx_metadata

    meta = read_onnx_metadata(onnx_path)
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(json.dumps(meta), [META_KEY])
    return model


def quantize_openvino(model, calibration: Sequence[np.ndarray]):
    """int8 copy of an ``openvino.Model`` by NNCF post-training quantization.

    Args:
        model: an fp32 ``openvino.Model`` (see :func:`onnx_to_openvino`).
        calibration: normalised float32 ``[1, 3, H, W]`` inputs at the model's size.

    Raises:
        ModelError: NNCF is not installed.
        ConfigError: no calibration inputs.
    """
    if not calibration:
        raise ConfigError("OpenVINO int8 needs calibration frames; fix: give a few typical images")
    try:
        import nncf
    except ImportError:
        raise ModelError(f"OpenVINO int8 needs NNCF, which is not installed; fix: {PIP_OPENVINO}") from None
    dataset = nncf.Dataset([np.ascontiguousarray(x, dtype=np.float32) for x in calibration])
    try:
        # transformer mode keeps softmax/layer norm in float, as NNCF advises for ViTs
        return nncf.quantize(
            model, dataset, subset_size=len(calibration), model_type=nncf.ModelType.TRANSFORMER
        )
    except nncf.InternalError:
        # some heads (PPM's concatenated pyramid) have scale groups transformer mode cannot unify
        return nncf.quantize(model, dataset, subset_size=len(calibration))


def write_openvino_ir(model, xml_path: str | Path) -> None:
    """Write ``model`` as ``xml_path`` + its ``.bin``, atomically: both appear complete or not at all.

    The pair is written into a temporary folder beside the target, then the ``.bin`` and last the
    ``.xml`` (the file a reader opens) are renamed into place.
    """
    ov = require_openvino(f"writing {xml_path}")
    xml_path = Path(xml_path)
    if xml_path.suffix.lower() != ".xml":
        raise ConfigError(
            f"--out {xml_path}: an OpenVINO IR is a .xml file (its weights go to .bin beside it)"
        )
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".offroadseg-ir-", dir=xml_path.parent) as work:
        tmp_xml = Path(work) / xml_path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp_xml, xml_path)


class OpenVinoRunner:
    """A compiled OpenVINO model as a predictor forward function (normalised NCHW -> logits), on the CPU.

    Args:
        model: an ``openvino.Model`` or a path to an ``.xml`` IR / ``.onnx`` file.
        precision: ``fp32`` or ``bf16`` (the CPU plugin's inference precision; an int8 model runs its
            quantized layers in int8 either way).
        threads: inference threads (default: OpenVINO's choice).
    """

    def __init__(self, model: Any, *, precision: str = "fp32", threads: int | None = None) -> None:
        ov = require_openvino("running an OpenVINO model")
        if precision not in OV_PRECISIONS:
            raise ConfigError(f"OpenVINO precision {precision!r} is not one of {', '.join(OV_PRECISIONS)}")
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.compiled = core.compile_model(
            model if not isinstance(model, str | Path) else str(model), "CPU", config
        )
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 ``[B, 3, H, W]`` -> float32 logits ``[B, K, H, W]``."""
        result = self.request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)

    def __call__(self, images: Tensor) -> Tensor:
        return torch.from_numpy(self.run(images.detach().cpu().numpy()))


def read_openvino_metadata(xml_path: str | Path) -> tuple[Any, dict]:
    """An IR written by ``export --format openvino`` and its offroadseg metadata (taxonomy, size, norm).

    Raises:
        ModelError: the file is not an OpenVINO IR or was not written by offroadseg.
    """
    ov = require_openvino(f"reading {xml_path}")
    xml_path = Path(xml_path)
    if not xml_path.is_file() or not xml_path.with_suffix(".bin").is_file():
        raise ModelError(
            f"{xml_path}: an OpenVINO model needs the .xml and its .bin beside it; fix: export again with "
            f"offroadseg export CKPT --format openvino --out {xml_path.name}"
        )
    try:
        model = ov.Core().read_model(str(xml_path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO's parse errors have no common type
        last = [line.strip() for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
        raise ModelError(
            f"{xml_path} is not a readable OpenVINO IR ({last[0][:120]}); fix: export it with "
            f"offroadseg export CKPT --format openvino"
        ) from None
    if not model.has_rt_info([META_KEY]):
        raise ModelError(
            f"{xml_path} has no offroadseg metadata (taxonomy, input size); fix: export it with "
            f"offroadseg export CKPT --format openvino"
        )
    return model, json.loads(model.get_rt_info([META_KEY]).astype(str))


def load_openvino_predictor(
    path: str | Path,
    *,
    tta=None,
    precision: str = "fp32",
    batch_size: int = 4,
    threads: int | None = None,
    exclude: tuple[int, ...] = (),
    ir: tuple[Any, dict] | None = None,
):
    """A :class:`~offroadseg.inference.predictor.Predictor` running an exported OpenVINO IR on the CPU.

    Args:
        ir: ``(model, metadata)`` of ``path`` already read by :func:`read_openvino_metadata` (not read again).
    """
    from offroadseg.inference.predictor import Predictor, TTAConfig
    from offroadseg.taxonomy import taxonomy_from_dict

    model, meta = ir or read_openvino_metadata(path)
    size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
    return Predictor(
        OpenVinoRunner(model, precision=precision, threads=threads),
        taxonomy=taxonomy_from_dict(meta["taxonomy"]),
        image_size=size,
        patch_size=int(meta["patch_size"]),
        tta=tta or TTAConfig.from_eval(meta.get("eval", {})),
        device="cpu",
        batch_size=batch_size,
        mean=meta["mean"],
        std=meta["std"],
        fixed_size=None if meta.get("dynamic") else size,
        runtime="openvino",
        exclude=exclude,
        precision=precision,
    )
