"""Where converted weights live: the cache directory, and safetensors files written atomically."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from offroadseg.atomic import atomic_save
from offroadseg.paths import cache_dir  # re-exported: the one home is offroadseg.paths

__all__ = ["cache_dir", "read_cached_state", "write_cached_state"]


def read_cached_state(path: Path, expected: Mapping[str, str]) -> dict[str, torch.Tensor] | None:
    """The tensors of a cached safetensors file, or None when absent, stale or unreadable.

    Args:
        path: the ``.safetensors`` file.
        expected: metadata entries the file must carry (e.g. the source's sha256); any mismatch
            means the file is stale.
    """
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if any(meta.get(key) != value for key, value in expected.items()):
                return None
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # a truncated or foreign file: rebuild it
        warnings.warn(f"ignoring unreadable weights cache {path} ({e}); rebuilding it", stacklevel=2)
        return None


def write_cached_state(path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``state`` as safetensors with ``metadata``; a concurrent reader sees old or whole new."""
    from safetensors.torch import save_file

    atomic_save(
        path,
        lambda tmp: save_file(
            {k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=dict(metadata)
        ),
    )
