"""Grouped K-fold assignment for cross-validation: pure functions over frame names.

Frames of a video sequence a few ids apart are near duplicates; a fold that validates on a
frame whose neighbour it trained on measures memory, not generalisation. So frames are first
grouped, then whole groups are dealt to folds:

- **gap groups** (default): frames are ordered by the trailing integer of their name within
  the same prefix (``iid000839`` -> prefix ``iid``, id 839); a run of ids whose consecutive gaps
  are at most ``gap`` is one group. On YCOR (1001 frames) ``gap=5`` gives 18 groups, the largest
  293 frames.
- **explicit groups**: a third column of the split file (``<name>\\t<split>\\t<group>``) names
  each frame's group and overrides the ids.

Groups go to folds largest first, each to the fold with the fewest frames so far (the
longest-processing-time rule), which balances frame counts as well as whole groups allow.
``seed`` orders groups of equal size and folds of equal count, so the assignment is
deterministic for a seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from offroadseg.errors import ConfigError, DataError

__all__ = ["Fold", "assign_folds", "frame_id", "gap_groups", "make_folds", "split_file_text"]

_TRAILING_INT = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class Fold:
    """One fold: the frames it validates on (whole groups) and the frames it trains on (the rest)."""

    index: int  # 0-based
    train: tuple[str, ...]
    val: tuple[str, ...]
    val_groups: tuple[str, ...]


def frame_id(name: str) -> tuple[str, int]:
    """``"iid000839"`` -> ``("iid", 839)``: the name's prefix and trailing integer.

    Raises:
        DataError: the name does not end in digits.
    """
    m = _TRAILING_INT.match(name)
    if m is None:
        raise DataError(
            f"frame {name!r} has no trailing integer id to group neighbouring frames by; fix: add a third "
            f"column '<group>' to the split file (lines '<name>\\t<split>\\t<group>')"
        )
    return m.group(1), int(m.group(2))


def gap_groups(names: Sequence[str], gap: int) -> dict[str, str]:
    """Each name's group: runs of ids (same prefix) whose consecutive gaps are ``<= gap``.

    Returns:
        ``{name: group}``; a group is named after its first frame (``"iid000839"``).
    """
    if gap < 0:
        raise ConfigError(f"--gap must be >= 0, got {gap}; fix: e.g. --gap 5")
    keyed = sorted((frame_id(n), n) for n in names)
    groups: dict[str, str] = {}
    prev: tuple[str, int] | None = None
    current = ""
    for (prefix, i), name in keyed:
        if prev is None or prefix != prev[0] or i - prev[1] > gap:
            current = name
        groups[name] = current
        prev = (prefix, i)
    return groups


def assign_folds(group_sizes: Mapping[str, int], k: int, *, seed: int = 0) -> dict[str, int]:
    """Deal whole groups to ``k`` folds, balancing frame counts (deterministic for a seed).

    Args:
        group_sizes: frames per group.
        k: number of folds, ``2 <= k <= len(group_sizes)``.
        seed: orders equal-size groups and breaks ties between equally full folds.

    Returns:
        ``{group: fold index}``; every fold gets at least one group.

    Raises:
        ConfigError: ``k < 2`` or more folds than groups.
    """
    if k < 2:
        raise ConfigError(f"--folds must be >= 2, got {k}; fix: e.g. --folds 5")
    if k > len(group_sizes):
        raise ConfigError(
            f"--folds {k} is more than the {len(group_sizes)} group{'s' if len(group_sizes) != 1 else ''} of "
            f"neighbouring frames, so a fold would "
            f"be empty; fix: --folds {len(group_sizes)} or fewer, or a smaller --gap (more, smaller groups)"
        )
    rng = random.Random(seed)
    names = sorted(group_sizes)
    rng.shuffle(names)
    names.sort(key=lambda g: -group_sizes[g])  # stable: equal sizes keep the seeded order
    fill = [0] * k
    tie = list(range(k))
    rng.shuffle(tie)
    out = {}
    for g in names:
        fold = min(range(k), key=lambda f: (fill[f], tie[f]))
        out[g] = fold
        fill[fold] += group_sizes[g]
    return out


def make_folds(
    names: Sequence[str],
    k: int,
    *,
    gap: int = 5,
    seed: int = 0,
    groups: Mapping[str, str | None] | None = None,
) -> list[Fold]:
    """Grouped K-fold over ``names``.

    Args:
        names: the frames (train and val of the dataset), unique.
        k: number of folds.
        gap: the id gap that still joins two frames into one group (ignored with ``groups``).
        seed: see :func:`assign_folds`.
        groups: explicit ``{name: group}`` (the split file's third column); used when every name
            has one.

    Returns:
        ``k`` folds; each name is in exactly one fold's ``val``, and a group never straddles folds.
    """
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if list(names).count(n) > 1})[:5]
        raise DataError(f"frame names must be unique for cross-validation; repeated: {dup}")
    explicit = groups is not None and all(groups.get(n) for n in names)
    if groups is not None and not explicit and any(groups.get(n) for n in names):
        missing = [n for n in names if not groups.get(n)][:5]
        raise DataError(
            f"the split file gives a group to some frames but not to {missing}...; fix: give every line a "
            f"third column '<group>' or none"
        )
    group_of = {n: str(groups[n]) for n in names} if explicit else gap_groups(names, gap)
    sizes: dict[str, int] = {}
    for g in group_of.values():
        sizes[g] = sizes.get(g, 0) + 1
    fold_of = assign_folds(sizes, k, seed=seed)
    folds = []
    for f in range(k):
        val = tuple(n for n in names if fold_of[group_of[n]] == f)
        train = tuple(n for n in names if fold_of[group_of[n]] != f)
        val_groups = tuple(sorted(g for g, fold in fold_of.items() if fold == f))
        folds.append(Fold(f, train, val, val_groups))
    return folds


def split_file_text(fold: Fold, *, train_split: str = "train", val_split: str = "val") -> str:
    """The fold as a generic-layout split file: ``<name>\\t<train_split|val_split>`` lines."""
    lines = [f"{n}\t{train_split}" for n in fold.train] + [f"{n}\t{val_split}" for n in fold.val]
    return "\n".join(sorted(lines)) + "\n"
