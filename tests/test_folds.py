"""Grouped K-fold: groups never straddle folds, balance, determinism, the split file's group column."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from offroadseg.data.datasets import read_split_table
from offroadseg.data.folds import assign_folds, frame_id, gap_groups, make_folds, split_file_text
from offroadseg.errors import ConfigError, DataError

REAL_SPLIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ycor" / "split.tsv"


def test_frame_id_and_gap_groups_known_answer() -> None:
    assert frame_id("iid000839") == ("iid", 839) and frame_id("a7b12") == ("a7b", 12)
    names = ["f10", "f1", "f3", "f9", "f20", "g2"]
    # ids 1,3 (gap 2) | 9,10 (gap 6 from 3) | 20 (gap 10) ; prefix g is another sequence
    assert gap_groups(names, 5) == {"f1": "f1", "f3": "f1", "f9": "f9", "f10": "f9", "f20": "f20", "g2": "g2"}
    assert gap_groups(names, 6) == {"f1": "f1", "f3": "f1", "f9": "f1", "f10": "f1", "f20": "f20", "g2": "g2"}
    assert gap_groups(names, 1) == {"f1": "f1", "f3": "f3", "f9": "f9", "f10": "f9", "f20": "f20", "g2": "g2"}
    with pytest.raises(DataError, match="'scene' has no trailing integer id.*third column"):
        gap_groups(["scene"], 5)


@pytest.mark.parametrize("seed", range(40))
def test_random_id_sets_never_split_a_group(seed: int) -> None:
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(2000), rng.randint(20, 300)))
    names = [f"iid{i:06d}" for i in ids]
    gap = rng.randint(0, 8)
    groups = gap_groups(names, gap)
    k = min(rng.randint(2, 6), len(set(groups.values())))
    folds = make_folds(names, k, gap=gap, seed=seed)
    assert len(folds) == k
    seen: dict[str, int] = {}
    for fold in folds:
        assert set(fold.train) | set(fold.val) == set(names) and not set(fold.train) & set(fold.val)
        assert fold.val  # no empty fold
        for n in fold.val:
            assert n not in seen
            seen[n] = fold.index
    assert len(seen) == len(names)
    # neighbours within the gap always share a fold; the fold of a group is the fold of its members
    for a, b in zip(ids, ids[1:], strict=False):
        if b - a <= gap:
            assert seen[f"iid{a:06d}"] == seen[f"iid{b:06d}"]
    for n, g in groups.items():
        assert seen[n] == seen[g]


def test_balance_is_as_good_as_whole_groups_allow() -> None:
    sizes = {"a": 50, "b": 30, "c": 20, "d": 20, "e": 10, "f": 10, "g": 5, "h": 5}  # 150 frames
    fold_of = assign_folds(sizes, 3, seed=0)
    fill = [sum(s for g, s in sizes.items() if fold_of[g] == f) for f in range(3)]
    assert sorted(fill) == [50, 50, 50]
    # a group larger than a fair share gets a fold of its own
    fold_of = assign_folds({"big": 293, "x": 100, "y": 100, "z": 100, "w": 100}, 3, seed=1)
    assert sum(1 for g, f in fold_of.items() if f == fold_of["big"]) == 1


def test_assignment_is_deterministic_and_seeded() -> None:
    rng = random.Random(3)
    names = [f"f{i}" for i in sorted(rng.sample(range(1000), 200))]
    a = make_folds(names, 5, gap=3, seed=7)
    assert a == make_folds(names, 5, gap=3, seed=7)
    assert a != make_folds(names, 5, gap=3, seed=8)  # another seed deals equal groups differently


def test_more_folds_than_groups_is_one_clear_error() -> None:
    names = ["f1", "f2", "f3", "f50", "f51"]  # 2 groups at gap 5
    with pytest.raises(ConfigError, match="--folds 3 is more than the 2 groups.*fix: --folds 2 or fewer"):
        make_folds(names, 3)
    with pytest.raises(ConfigError, match="--folds must be >= 2"):
        make_folds(names, 1)


def test_group_column_overrides_ids(tmp_path: Path) -> None:
    split = tmp_path / "split.tsv"
    split.write_text("a1\ttrain\tseqA\na2\ttrain\tseqB\na3\tval\tseqA\nb9\ttrain\tseqB\nc\tval\tseqC\n")
    table = read_split_table(split)
    assert table["a1"] == ("train", "seqA") and table["c"] == ("val", "seqC")
    names = sorted(table)
    folds = make_folds(names, 3, groups={n: g for n, (_, g) in table.items()}, seed=0)
    by_group = {frozenset(f.val) for f in folds}
    assert by_group == {frozenset({"a1", "a3"}), frozenset({"a2", "b9"}), frozenset({"c"})}
    # the generic layout still reads the first two columns
    text = split_file_text(folds[0], train_split="train", val_split="val")
    assert sorted(line.split("\t")[0] for line in text.splitlines()) == names
    assert {line.split("\t")[1] for line in text.splitlines()} == {"train", "val"}


def test_partial_group_column_is_refused() -> None:
    with pytest.raises(DataError, match="gives a group to some frames but not to"):
        make_folds(["a1", "a2", "a3"], 2, groups={"a1": "s", "a2": None, "a3": "t"})


def test_real_ycor_split_gives_18_groups() -> None:
    if not REAL_SPLIT.is_file():
        pytest.skip(f"real YCOR data not present at {REAL_SPLIT}")
    names = list(read_split_table(REAL_SPLIT))
    groups = gap_groups(names, 5)
    sizes: dict[str, int] = {}
    for g in groups.values():
        sizes[g] = sizes.get(g, 0) + 1
    assert len(names) == 1001 and len(sizes) == 18 and max(sizes.values()) == 293
    folds = make_folds(names, 5, gap=5, seed=0)
    assert sorted(len(f.val) for f in folds)[-1] == 293 and sum(len(f.val) for f in folds) == 1001
