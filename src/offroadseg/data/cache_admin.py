"""What is in the cache folder, and taking it back: the stores ``offroadseg cache`` lists and prunes.

Stores are keyed on their inputs, files' sizes and mtimes included (:mod:`offroadseg.data.cache`), so
a dataset copied again, another image size or another set of stored hidden states builds a new store
and leaves the old one behind; a frame store of 1,001 YCOR frames at 644x336 is 9.24 GiB. Nothing
removed them but ``rm``: this module lists every store under ``<root>/features`` and ``<root>/decoded``
with its size, creation and last use (the manifest's mtime, touched by each open), and prunes the
least recently used first. Converted weights (``<root>/weights``) are never touched.

A pruned store is moved out of the way atomically, then deleted, so a reader sees a whole store or
none; a run that loses its store mid-way stops with "changed during the run; run again" and rebuilds.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from offroadseg.data.cache import (
    MANIFEST,
    CacheWarning,
    folder_bytes,
    read_manifest,
    remove_tree,
    sweep_leftovers,
)

__all__ = ["KINDS", "StoreInfo", "PruneResult", "list_stores", "prune_stores"]

KINDS = ("features", "decoded")  # the store folders under the cache root


@dataclass
class StoreInfo:
    """One store folder: what it holds and when it was last used."""

    kind: str  # "features" | "decoded"
    path: Path
    bytes: int
    created: str  # from the manifest ("" when unreadable)
    last_used: float  # epoch seconds: the manifest's mtime (the folder's when there is none)
    samples: int | None
    detail: str  # grid and stored blocks (features) or image size (decoded)
    problem: str = ""  # "" for a whole store, else why it is unusable (always pruned)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        out["gib"] = round(self.bytes / 2**30, 3)
        out["last_used"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.last_used))
        return out


@dataclass
class PruneResult:
    removed: list[StoreInfo]
    kept: list[StoreInfo]
    leftover_bytes: int  # freed from partial builds of stopped runs and unfinished removals

    @property
    def freed_bytes(self) -> int:
        return sum(s.bytes for s in self.removed) + self.leftover_bytes


def _describe(kind: str, manifest: dict) -> tuple[int | None, str]:
    meta = manifest.get("meta") or {}
    arrays = manifest.get("arrays") or {}
    if kind == "features":
        grid = meta.get("grid")
        blocks = meta.get("blocks")
        parts = []
        if grid:
            parts.append(f"grid {grid[0]}x{grid[1]}")
        if blocks:
            parts.append(f"blocks {blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else f"block {blocks[0]}")
        if meta.get("views", 1) != 1:
            parts.append(f"{meta['views']} views")
        if meta.get("precision", "fp32") != "fp32":
            parts.append(meta["precision"])
        return meta.get("samples"), ", ".join(parts)
    shape = (arrays.get("images") or {}).get("shape")
    if shape and len(shape) == 4:
        return int(shape[0]), f"{shape[1]}x{shape[2]} images"
    return None, ""


def _info(kind: str, path: Path) -> StoreInfo:
    manifest_file = path / MANIFEST
    read = read_manifest(path)
    problem, manifest = (read, {}) if isinstance(read, str) else ("", read)
    last_used = (manifest_file if manifest_file.exists() else path).stat().st_mtime
    samples, detail = _describe(kind, manifest) if manifest else (None, "")
    return StoreInfo(
        kind=kind,
        path=path,
        bytes=folder_bytes(path),
        created=str(manifest.get("created", "")),
        last_used=last_used,
        samples=samples,
        detail=detail,
        problem=problem,
    )


def list_stores(root: Path) -> list[StoreInfo]:
    """Every store folder under ``root``, least recently used first (partial builds are not listed)."""
    stores = []
    for kind in KINDS:
        folder = Path(root) / kind
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith("."):
                stores.append(_info(kind, entry))
    return sorted(stores, key=lambda s: (s.last_used, str(s.path)))


def prune_stores(
    root: Path,
    *,
    older_than_days: float | None = None,
    max_bytes: int | None = None,
    remove_all: bool = False,
    dry_run: bool = False,
    now: float | None = None,
) -> PruneResult:
    """Remove stores, least recently used first, until every rule holds.

    Unusable stores (no or unreadable manifest, another format) always go; then those last used more
    than ``older_than_days`` ago; then the least recently used while the rest exceed ``max_bytes``;
    ``remove_all`` takes every store. ``dry_run`` says what would go and removes nothing. Partial builds
    left by stopped runs and unfinished removals are swept as well (not in a dry run).
    """
    now = time.time() if now is None else now
    stores = list_stores(root)
    doomed: list[StoreInfo] = []
    kept: list[StoreInfo] = []
    for s in stores:
        too_old = older_than_days is not None and now - s.last_used > older_than_days * 86400
        (doomed if remove_all or s.problem or too_old else kept).append(s)
    if max_bytes is not None:
        while kept and sum(s.bytes for s in kept) > max_bytes:
            doomed.append(kept.pop(0))  # least recently used first
    leftover = 0
    if not dry_run:
        for s in doomed:
            remove_tree(s.path)
        with warnings.catch_warnings():  # counted in the result, said once by the caller
            warnings.simplefilter("ignore", CacheWarning)
            for kind in KINDS:
                if (Path(root) / kind).is_dir():
                    leftover += sweep_leftovers(Path(root) / kind)
    return PruneResult(removed=doomed, kept=kept, leftover_bytes=leftover)
