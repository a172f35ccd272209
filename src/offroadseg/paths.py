"""Where offroadseg keeps files of its own: the cache folder (converted weights, decoded data, features).

The lowest layer: the data caches and the weights loader both resolve the folder here, so neither
imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$OFFROADSEG_CACHE_DIR`` or the user cache dir (e.g. ``~/.cache/offroadseg``)."""
    env = os.environ.get("OFFROADSEG_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs  # noqa: PLC0415 (only when no folder is set)

    return Path(platformdirs.user_cache_dir("offroadseg"))
