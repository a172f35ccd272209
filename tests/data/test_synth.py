"""Synthetic desert scenes: layout, 16-bit masks, valid values, classes, determinism, biomes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from offroadseg.data.synth import BIOMES, SynthSummary, generate_scene, write_synthetic_dataset
from offroadseg.errors import OffroadsegError
from offroadseg.taxonomy import load_taxonomy

TAX = load_taxonomy("duality")
RAW = np.array([c.values[0] for c in TAX.classes])
SMALL = (90, 160)


def test_scene_shapes_dtypes_and_valid_values():
    rgb, mask = generate_scene(np.random.default_rng(0), size=SMALL)
    assert rgb.shape == (*SMALL, 3) and rgb.dtype == np.uint8
    assert mask.shape == SMALL and mask.dtype == np.uint16
    assert set(np.unique(mask).tolist()) <= set(RAW.tolist())
    TAX.encode(mask)  # refuses unknown values


@pytest.mark.parametrize("biome", sorted(BIOMES))
def test_every_biome_gives_only_valid_values(biome):
    for i in range(3):
        _, mask = generate_scene(np.random.default_rng(i), size=(135, 240), biome=biome)
        assert np.isin(mask, RAW).all(), f"blended or unknown mask values in {biome} scene {i}"


def test_all_classes_present_across_a_small_set():
    seen: set[int] = set()
    for i in range(12):
        _, mask = generate_scene(np.random.default_rng([1, i]), size=(135, 240))
        seen |= set(np.unique(mask).tolist())
    missing = [c.name for c in TAX.classes if c.values[0] not in seen]
    assert not missing, f"classes never drawn in 12 scenes: {missing}"


def test_sky_on_top_ground_at_bottom():
    _, mask = generate_scene(np.random.default_rng(3), size=(135, 240))
    assert (mask[0] == 10000).mean() > 0.9
    assert (mask[-1] == 10000).sum() == 0


def test_same_seed_same_scene_and_different_seed_differs():
    a = generate_scene(np.random.default_rng(5), size=SMALL)
    b = generate_scene(np.random.default_rng(5), size=SMALL)
    c = generate_scene(np.random.default_rng(6), size=SMALL)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_biomes_change_image_statistics():
    means = {}
    for biome in BIOMES:
        imgs = [generate_scene(np.random.default_rng(i), size=SMALL, biome=biome)[0] for i in range(4)]
        means[biome] = np.mean([im.reshape(-1, 3).mean(0) for im in imgs], axis=0)
    names = sorted(means)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(means[a] - means[b]).max() > 5, f"{a} and {b} look alike: {means[a]} vs {means[b]}"


def test_unknown_biome_lists_valid_ones(tmp_path):
    with pytest.raises(OffroadsegError) as err:
        generate_scene(np.random.default_rng(0), size=SMALL, biome="tundra")
    for name in BIOMES:
        assert name in str(err.value)
    with pytest.raises(OffroadsegError, match="desert"):
        write_synthetic_dataset(tmp_path / "x", n_train=1, n_val=0, n_test=0, size=SMALL, test_biome="moon")


def _write(out, **kw):
    args = {"n_train": 3, "n_val": 2, "n_test": 2, "seed": 4, "size": SMALL} | kw
    return write_synthetic_dataset(out, **args)


def test_layout_names_and_16bit_masks(tmp_path):
    calls = []
    summary = _write(tmp_path / "ds", progress=lambda done, total: calls.append((done, total)))
    assert isinstance(summary, SynthSummary)
    assert summary.counts == {"train": 3, "val": 2, "test": 2}
    assert summary.biomes["train"] == "desert" and summary.biomes["test"] != "desert"
    assert calls[-1] == (7, 7) and len(calls) == 7
    assert abs(sum(summary.class_share.values()) - 1) < 1e-6
    assert summary.images_per_s > 0
    for split, n in summary.counts.items():
        imgs = sorted(p.name for p in (tmp_path / "ds" / split / "Color_Images").iterdir())
        segs = sorted(p.name for p in (tmp_path / "ds" / split / "Segmentation").iterdir())
        assert imgs == segs and len(imgs) == n and all(p.endswith(".png") for p in imgs)
        for name in imgs:
            img = Image.open(tmp_path / "ds" / split / "Color_Images" / name)
            assert img.mode == "RGB" and img.size == (SMALL[1], SMALL[0])
            mask = np.asarray(Image.open(tmp_path / "ds" / split / "Segmentation" / name))
            assert mask.dtype == np.uint16 and mask.shape == SMALL
            assert np.isin(mask, RAW).all()
    readme = (tmp_path / "ds" / "README.txt").read_text()
    assert "seed: 4" in readme and "desert" in readme and summary.biomes["test"] in readme


def test_dataset_is_reproducible_byte_for_byte(tmp_path):
    _write(tmp_path / "a")
    _write(tmp_path / "b")
    for p in sorted((tmp_path / "a").rglob("*.png")):
        q = tmp_path / "b" / p.relative_to(tmp_path / "a")
        assert p.read_bytes() == q.read_bytes(), p


def test_splits_are_independent_of_other_counts(tmp_path):
    _write(tmp_path / "a", n_train=1, n_val=1, n_test=1)
    _write(tmp_path / "b", n_train=3, n_val=2, n_test=1)
    for rel in ("val/Color_Images", "test/Segmentation"):
        (p,) = sorted((tmp_path / "a" / rel).iterdir())
        assert p.read_bytes() == (tmp_path / "b" / rel / p.name).read_bytes()


def test_non_empty_folder_refused_without_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OffroadsegError, match="--overwrite"):
        _write(out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    _write(out, n_train=2, n_val=1, n_test=1, overwrite=True)
    with pytest.raises(OffroadsegError, match="--overwrite"):
        _write(out)
    _write(out, n_train=1, n_val=1, n_test=1, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"  # only the split folders are replaced
    assert len(list((out / "train" / "Color_Images").iterdir())) == 1


def test_explicit_test_biome(tmp_path):
    s = _write(tmp_path / "ds", n_train=1, n_val=0, n_test=1, biome="canyon", test_biome="canyon")
    assert s.biomes == {"train": "canyon", "val": "canyon", "test": "canyon"}
