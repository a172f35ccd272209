"""Load a Hub-named DINOv2 state dict into the installed transformers model, checking every key."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from offroadseg.errors import ModelError
from offroadseg.models.archs import ARCHS

__all__ = ["build_with_state"]

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


def build_with_state(arch: str, state: Mapping[str, torch.Tensor], *, origin: str) -> PreTrainedModel:
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
