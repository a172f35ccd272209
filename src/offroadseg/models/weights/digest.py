"""One fingerprint for a set of weights: the sha256 of names, shapes and raw bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

__all__ = ["state_digest"]


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over ``state``'s entries in name order (name, shape and bytes of each tensor).

    Identical weights give the same digest whatever device or order they came in; any changed
    value, shape or name changes it.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        t = tensor.detach().cpu().contiguous()
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
