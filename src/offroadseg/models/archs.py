"""The DINOv2 architectures offroadseg can build: transformers config, registers, default weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import transformers
from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["ARCHS", "ArchSpec"]


@dataclass(frozen=True)
class ArchSpec:
    """One DINOv2 architecture: transformers config kwargs and where its weights live by default."""

    config: Mapping[str, Any]  # kwargs of Dinov2Config / Dinov2WithRegistersConfig
    hf_id: str | None  # default Hugging Face id; None for test archs, which default to random weights
    registers: bool = False  # 4 register tokens: Dinov2WithRegistersModel

    @property
    def model_class(self) -> type[PreTrainedModel]:
        return transformers.Dinov2WithRegistersModel if self.registers else transformers.Dinov2Model

    @property
    def default_weights(self) -> str:
        return self.hf_id or "random"

    def make_config(self, **overrides: Any) -> PretrainedConfig:
        config_class = transformers.Dinov2WithRegistersConfig if self.registers else transformers.Dinov2Config
        return config_class(**{**self.config, **overrides})


def _spec(hidden: int, layers: int, heads: int, hf_id: str | None, *, registers: bool = False, **kw: Any):
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,  # Meta's position table: 37x37 patches
        "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6,
        **kw,
    }
    if registers:
        config["num_register_tokens"] = 4
    return ArchSpec(config=config, hf_id=hf_id, registers=registers)


_SIZES = {
    "s": (384, 12, 6, "small", {}),
    "b": (768, 12, 12, "base", {}),
    "l": (1024, 24, 16, "large", {}),
    "g": (1536, 40, 24, "giant", {"use_swiglu_ffn": True}),
}

ARCHS: dict[str, ArchSpec] = {}
for _letter, (_hidden, _layers, _heads, _size, _kw) in _SIZES.items():
    ARCHS[f"dinov2_vit{_letter}14"] = _spec(_hidden, _layers, _heads, f"facebook/dinov2-{_size}", **_kw)
    ARCHS[f"dinov2_vit{_letter}14_reg"] = _spec(
        _hidden, _layers, _heads, f"facebook/dinov2-with-registers-{_size}", registers=True, **_kw
    )
# Tiny archs for tests: a 4x4 position table, so any other input size exercises interpolation.
ARCHS["dinov2_test"] = _spec(48, 2, 3, None, image_size=56)
ARCHS["dinov2_test_reg"] = _spec(48, 2, 3, None, image_size=56, registers=True)
del _letter, _hidden, _layers, _heads, _size, _kw
