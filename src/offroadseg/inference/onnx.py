"""ONNX export of a trained segmentor, and a predictor that runs the file with ONNX Runtime.

The ONNX file carries everything ``offroadseg predict`` needs, as JSON in the model's
``metadata_props`` under the key ``offroadseg``: the taxonomy, the input size,
normalisation, patch size, whether the spatial axes are dynamic, the eval settings
(TTA, sliding window) of the config it was trained with, and the classes excluded at export
(``excluded_classes``: their logits are masked inside the graph, so every runtime honours them).

Export uses the TorchScript-based exporter (``dynamo=False``): it needs no extra package
and handles dynamic height/width. Export-only rewrites keep the graph portable:
``AdaptiveAvgPool2d`` (the PPM head) becomes an equivalent pair of matrix products, which
the exporter supports at any input size; with ``--dynamic`` the model takes sides that are
multiples of the patch size and the predictor pads and crops around it, as the PyTorch
segmentor does internally.

Register archs (``*_reg``) resize their position table with antialiased bicubic, which the
exporter has no rule for. A fixed-size export computes the table once at the export size (a
constant in the graph, any opset); a dynamic one maps it to ONNX ``Resize`` with
``antialias=1`` (opset 18+), which ONNX Runtime computes as PyTorch does (Keys a = -0.5).
Models over 2 GB are written with ONNX's external-data format (``<file>.data`` beside it).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from offroadseg import __version__
from offroadseg.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from offroadseg.errors import ConfigError, ModelError
from offroadseg.inference.ensemble import check_same_taxonomy, mean_probabilities
from offroadseg.inference.predictor import ExcludeClasses, Predictor, TTAConfig
from offroadseg.taxonomy import taxonomy_from_dict

__all__ = [
    "ONNX_FORMAT",
    "MeanProbabilities",
    "OnnxRunner",
    "export_onnx",
    "load_onnx_predictor",
    "read_onnx_metadata",
]

META_KEY = "offroadseg"
ONNX_FORMAT = 1
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
_PIP_ONNX = 'pip install "offroadseg[onnx]"'


# ---- export ---------------------------------------------------------------------------------------
def _bin_matrix(n: Tensor | int, bins: int, dtype: torch.dtype) -> Tensor:
    """``[bins, n]`` averaging matrix of adaptive average pooling (PyTorch's bin edges)."""
    i = torch.arange(bins)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    j = torch.arange(n)
    m = ((j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])).to(dtype)
    return m / m.sum(dim=1, keepdim=True)


class MatmulAdaptiveAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d`` as ``P_h @ x @ P_w^T``: exportable at any (dynamic) input size."""

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        self.output_size = output_size if isinstance(output_size, tuple) else (output_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        oh = self.output_size[0] or h
        ow = self.output_size[1] or w
        return _bin_matrix(h, oh, x.dtype) @ x @ _bin_matrix(w, ow, x.dtype).transpose(0, 1)


def _exportable(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).cpu().eval().float()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, name, MatmulAdaptiveAvgPool2d(child.output_size))
    return model


# Register archs: first opset whose Resize has the antialias attribute.
AA_RESIZE_OPSET = 18
# ONNX protobuf files cannot exceed 2 GiB; above this many bytes of weights, use external data.
EXTERNAL_DATA_BYTES = 1_800_000_000


def has_registers(segmentor: nn.Module) -> bool:
    """Whether the backbone carries register tokens (antialiased position-table resize)."""
    return int(getattr(segmentor.backbone, "num_prefix_tokens", 1)) > 1


def _fix_position_table(segmentor: nn.Module, height: int, width: int) -> None:
    """Replace the backbone's position-table resize by its result at ``height x width`` (padded).

    The table depends only on the input size, so a fixed-size model needs it once; the graph then
    holds a constant instead of the antialiased bicubic resize no exporter rule covers.
    """
    embeddings = segmentor.backbone.model.embeddings
    hidden = embeddings.position_embeddings.shape[-1]
    p = int(segmentor.patch_size)
    tokens = torch.zeros(1, (height // p) * (width // p) + 1, hidden)
    with torch.no_grad():
        table = embeddings.interpolate_pos_encoding(tokens, height, width).detach().clone()
    embeddings.register_buffer("fixed_position_table", table, persistent=False)

    def fixed(self, embeddings_: Tensor, height_: int, width_: int) -> Tensor:
        return self.fixed_position_table

    embeddings.interpolate_pos_encoding = types.MethodType(fixed, embeddings)


def _aa_bicubic_symbolic(g, image, output_size, align_corners, scale_factors):
    """``aten::_upsample_bicubic2d_aa`` (align_corners=False) as ONNX ``Resize`` with antialias.

    PyTorch's antialiased bicubic uses Keys' a = -0.5 with weights outside the image excluded and
    renormalised, as PIL does; ONNX Resize with ``cubic_coeff_a=-0.5, exclude_outside=1,
    antialias=1`` computes the same filter.
    """
    shape = g.op("Shape", image)
    batch_channels = g.op(
        "Slice",
        shape,
        g.op("Constant", value_t=torch.tensor([0])),
        g.op("Constant", value_t=torch.tensor([2])),
    )
    sizes = g.op("Concat", batch_channels, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: int64
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op(
        "Resize",
        image,
        empty,
        empty,
        sizes,
        mode_s="cubic",
        cubic_coeff_a_f=-0.5,
        coordinate_transformation_mode_s="half_pixel",
        antialias_i=1,
        exclude_outside_i=1,
    )


_AA_REGISTERED: list[bool] = []


def _register_aa_bicubic() -> None:
    if not _AA_REGISTERED:
        torch.onnx.register_custom_op_symbolic(
            "aten::_upsample_bicubic2d_aa", _aa_bicubic_symbolic, AA_RESIZE_OPSET
        )
        _AA_REGISTERED.append(True)


class _PatchMultipleSegmentor(nn.Module):
    """Backbone + head + upsampling with no Python-side shape arithmetic (dynamic export).

    Takes sides that are multiples of the patch size; equals ``Segmentor.forward`` there.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.backbone = segmentor.backbone
        self.head = segmentor.head

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        # An image-guided head (uses_image, e.g. model.head.refine) also reads the image.
        logits = (
            self.head(features, images) if getattr(self.head, "uses_image", False) else self.head(features)
        )
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class MeanProbabilities(nn.Module):
    """Ensemble members -> the log of their mean softmax probabilities (one ONNX graph).

    The log is the logits of the mean distribution (its softmax gives the mean back), so every
    runtime and the predictor treat the ensemble's output as one model's logits. Probabilities are
    clamped at the smallest float before the log so an excluded class (probability 0) stays finite.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: Tensor) -> Tensor:
        """Normalised ``[B, 3, H, W]`` -> log mean probabilities ``[B, K, H, W]``."""
        mean = mean_probabilities([member(images) for member in self.members])
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def _member_graph(seg: nn.Module, size: tuple[int, int], *, dynamic: bool) -> nn.Module:
    """One segmentor made exportable at ``size`` (or at any patch-multiple size when ``dynamic``)."""
    model = _exportable(seg)
    if has_registers(seg) and dynamic:
        _register_aa_bicubic()
    elif has_registers(seg):
        _fix_position_table(model, *seg.padded_size(*size))
    return _PatchMultipleSegmentor(model) if dynamic else model


def _export_size(members: list, height: int | None, width: int | None) -> tuple[int, int]:
    """The graph's input size: the flags, else the members' one training size."""
    sizes = {tuple(int(s) for s in m.config.data.image_size) for m in members}
    if len(sizes) > 1 and (height is None or width is None):
        trained = ", ".join(
            f"{Path(m.path).name} {m.config.data.image_size[0]}x{m.config.data.image_size[1]}"
            for m in members
        )
        raise ConfigError(
            f"ensemble members were trained at different sizes ({trained}) and an ONNX graph has one "
            f"input size; fix: pass --height H --width W (e.g. --height {members[0].config.data.image_size[0]} "
            f"--width {members[0].config.data.image_size[1]})"
        )
    first = members[0].config.data.image_size
    return int(height or first[0]), int(width or first[1])


def export_onnx(
    loaded,
    path: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    dynamic: bool = False,
    opset: int | None = None,
    external_data: bool | None = None,
    exclude: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Write ``loaded``'s model (or ensemble) as an ONNX file with its metadata; return the metadata.

    Args:
        loaded: a :class:`~offroadseg.inference.checkpoint.LoadedModel`, or a list of them of one
            taxonomy: an ensemble, written as one graph with one input whose output is the log of
            the members' mean softmax probabilities (:class:`MeanProbabilities`).
        path: the ``.onnx`` file to write (atomically).
        height, width: the input size (default: the config's ``data.image_size``; required for an
            ensemble whose members were trained at different sizes). A fixed-size model takes
            exactly this size; a ``dynamic`` one resizes inputs to it by default.
        dynamic: make height and width dynamic (needed for multi-scale TTA).
        opset: ONNX opset version (default: 17, or 18 for register archs, whose dynamic
            export needs Resize with antialias).
        external_data: write the weights to ``<path>.data`` beside the graph (default: when
            they exceed about 1.8 GB, since an ONNX file cannot exceed 2 GiB).
        exclude: class ids masked inside the graph (no pixel, no probability); in an ensemble,
            in every member's logits before its softmax.

    Raises:
        ModelError: no onnx package, a size below the patch size, members of different patch
            sizes, or a dynamic register-arch export at an opset without antialiased Resize.
        ConfigError: ensemble members of different taxonomies, or of different training sizes
            without ``height``/``width``.
    """
    try:
        import onnx
    except ImportError:
        raise ModelError(f"ONNX export needs the onnx package; fix: {_PIP_ONNX}") from None
    from offroadseg.atomic import atomic_save

    members = list(loaded) if isinstance(loaded, list | tuple) else [loaded]
    check_same_taxonomy([m.taxonomy for m in members], [m.path for m in members])
    loaded = members[0]
    cfg = loaded.config
    seg = loaded.model
    patches = {int(m.model.patch_size) for m in members}
    if len(patches) > 1:
        raise ModelError(
            f"ensemble members have different patch sizes ({sorted(patches)}), which one ONNX graph cannot "
            f"pad for; fix: export them separately, or ensemble them with offroadseg predict instead"
        )
    p = int(seg.patch_size)
    size = _export_size(members, height, width)
    if size[0] < p or size[1] < p:
        raise ModelError(
            f"export size {size[0]}x{size[1]} is smaller than the patch size {p}; fix: use >= {p}"
        )
    registers = any(has_registers(m.model) for m in members)
    opset = int(opset or (AA_RESIZE_OPSET if registers else 17))
    if registers and dynamic and opset < AA_RESIZE_OPSET:
        raise ModelError(
            f"--dynamic export of {cfg.model.backbone.name} (register tokens) needs ONNX Resize with "
            f"antialias, which opset {opset} lacks; fix: use --opset {AA_RESIZE_OPSET} (or higher), or "
            f"export a fixed size without --dynamic"
        )
    k = loaded.taxonomy.num_classes
    graphs = [_member_graph(m.model, size, dynamic=dynamic) for m in members]
    if len(graphs) == 1:
        model = graphs[0]
    else:  # each member masked before its own softmax, as the PyTorch ensemble does
        model = MeanProbabilities([ExcludeClasses(g, exclude, k) if exclude else g for g in graphs])
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    if dynamic:
        dummy_size = tuple(-(-s // p) * p for s in size)
        axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
        }
    else:
        dummy_size = size
    if exclude:
        model = ExcludeClasses(model, exclude, k)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    external = weight_bytes > EXTERNAL_DATA_BYTES if external_data is None else bool(external_data)
    dummy = torch.zeros(1, 3, *dummy_size)
    meta = {
        "format": ONNX_FORMAT,
        "offroadseg_version": __version__,
        "taxonomy": loaded.taxonomy.to_dict(),
        "image_size": list(size),
        "train_image_size": list(cfg.data.image_size),
        "patch_size": p,
        "dynamic": bool(dynamic),
        "mean": [float(x) for x in IMAGENET_MEAN],
        "std": [float(x) for x in IMAGENET_STD],
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "eval": dict(vars(cfg.eval)),
        "model": {"backbone": cfg.model.backbone.name, "head": cfg.model.head.name},
        "source": Path(getattr(loaded, "path", "")).name,
        "ensemble": [
            {
                "source": Path(getattr(m, "path", "")).name,
                "train_image_size": list(m.config.data.image_size),
                "backbone": m.config.model.backbone.name,
                "head": m.config.model.head.name,
            }
            for m in members
        ],
        "excluded_classes": [loaded.taxonomy.names[i] for i in exclude],
        "opset": opset,
        "external_data": external,
        "precision": "fp32",
    }

    def save(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
        # Weights the exporter already moved to external files stay there (a >2 GiB proto cannot
        # be serialised); only the graph and its metadata are rewritten.
        proto = onnx.load(str(tmp), load_external_data=False)
        set_onnx_metadata(proto, meta)
        onnx.save(proto, str(tmp))

    if external:
        save_external(path, save)
    else:
        atomic_save(path, save)
    return meta


def set_onnx_metadata(proto, meta: dict[str, Any]) -> None:
    """Put (or replace) offroadseg's JSON metadata in an ONNX ``ModelProto``."""
    for index in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[index].key == META_KEY:
            del proto.metadata_props[index]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    proto.producer_name = "offroadseg"


def save_external(path: str | Path, save) -> None:
    """Write a graph whose weights go to ``<path>.data`` (ONNX external data), both atomically.

    ``save(tmp)`` writes a model file (weights inline or external) into a private folder; the
    result is re-saved with every tensor in one ``<name>.data`` file, then both files are renamed
    into place (data first, so the graph never points at a missing file).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as work:
        raw = Path(work) / "raw" / path.name
        raw.parent.mkdir()
        save(raw)
        proto = onnx.load(str(raw), load_external_data=True)
        final = Path(work) / path.name
        onnx.save(
            proto,
            str(final),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
            size_threshold=1024,
        )
        os.replace(final.with_name(f"{path.name}.data"), path.with_name(f"{path.name}.data"))
        os.replace(final, path)


# ---- runtime --------------------------------------------------------------------------------------
def _session(path: Path, *, device: str = "auto", threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError(f"running {path} needs onnxruntime; fix: {_PIP_ONNX}") from None
    available = ort.get_available_providers()
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                f"--device {device} asked for, but this onnxruntime has no CUDA provider (it has "
                f"{', '.join(available)}); fix: pip install onnxruntime-gpu, or use --device cpu"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ModelError(
            f"{path} is not a loadable ONNX model ({type(exc).__name__}: {str(exc)[:200]}); fix: re-export it "
            f"with 'offroadseg export CHECKPOINT --format onnx'"
        ) from None


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The offroadseg metadata of an ONNX file written by :func:`export_onnx`.

    Raises:
        ModelError: the file is missing, not ONNX, or carries no (or a newer) offroadseg metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist; fix: check the path")
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except ImportError:
        raise ModelError(f"reading {path} needs the onnx package; fix: {_PIP_ONNX}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common base
        raise ModelError(
            f"{path} is not a readable ONNX file ({type(exc).__name__}); fix: re-export it with "
            f"'offroadseg export CHECKPOINT --format onnx'"
        ) from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise ModelError(
            f"{path} has no offroadseg metadata (taxonomy, input size, normalisation); fix: export it with "
            f"'offroadseg export CHECKPOINT --format onnx'"
        )
    meta = json.loads(props[META_KEY])
    if meta.get("format") != ONNX_FORMAT:
        raise ModelError(
            f"{path} has offroadseg ONNX format {meta.get('format')!r} (offroadseg "
            f"{meta.get('offroadseg_version')}), this version reads {ONNX_FORMAT}; fix: re-export it"
        )
    return meta


class OnnxRunner:
    """An ONNX Runtime session as a predictor forward function (normalised NCHW -> logits).

    A dynamic model gets its input padded at the bottom/right to patch multiples (border
    pixels repeated, as the PyTorch segmentor pads) and its logits cropped back.
    """

    def __init__(self, path: str | Path, *, device: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        self.meta = read_onnx_metadata(self.path)
        self.session = _session(self.path, device=device, threads=threads)
        self.dynamic = bool(self.meta["dynamic"])
        self.patch_size = int(self.meta["patch_size"])
        self.size = (int(self.meta["image_size"][0]), int(self.meta["image_size"][1]))
        self.input_name = self.session.get_inputs()[0].name

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 ``[B, 3, H, W]`` -> float32 logits ``[B, K, H, W]``."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        h, w = images.shape[-2:]
        if not self.dynamic:
            if (h, w) != self.size:
                raise ModelError(
                    f"{self.path} takes {self.size[0]}x{self.size[1]} inputs, got {h}x{w}; fix: export with "
                    f"--dynamic or --height {h} --width {w}"
                )
            return self.session.run(None, {self.input_name: images})[0]
        p = self.patch_size
        ph, pw = -(-h // p) * p, -(-w // p) * p
        if (ph, pw) != (h, w):
            images = np.pad(images, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)), mode="edge")
        return self.session.run(None, {self.input_name: images})[0][..., :h, :w]

    def __call__(self, images: Tensor) -> Tensor:
        return torch.from_numpy(self.run(images.detach().cpu().numpy()))


def load_onnx_predictor(
    path: str | Path,
    *,
    tta: TTAConfig | None = None,
    device: str = "auto",
    batch_size: int = 4,
    threads: int | None = None,
    exclude: tuple[int, ...] = (),
) -> Predictor:
    """A :class:`Predictor` running an exported ONNX file with ONNX Runtime.

    Args:
        tta: defaults to the eval settings stored in the file.
        device: ``auto`` | ``cpu`` | ``cuda`` (needs onnxruntime-gpu).
        batch_size: windows per call in sliding-window mode.
        threads: ONNX Runtime intra-op threads (default: all cores).
        exclude: class ids to mask on top of those excluded inside the file.
    """
    runner = OnnxRunner(path, device=device, threads=threads)
    meta = runner.meta
    if tta is None:
        tta = TTAConfig.from_eval(meta.get("eval", {}))
    return Predictor(
        runner,
        taxonomy=taxonomy_from_dict(meta["taxonomy"]),
        image_size=runner.size,
        patch_size=runner.patch_size,
        tta=tta,
        device="cpu",
        batch_size=batch_size,
        mean=meta["mean"],
        std=meta["std"],
        fixed_size=None if runner.dynamic else runner.size,
        runtime="onnxruntime",
        exclude=exclude,
    )
