import shutil

import numpy as np
import pytest
from PIL import Image

from offroadseg.config import DataConfig
from offroadseg.data.datasets import (
    SegmentationDataset,
    collate,
    list_samples,
    resize_mask,
    taxonomy_for,
    val_in_train,
)
from offroadseg.data.io import write_png
from offroadseg.errors import DataError


def _copy(toy_root, tmp_path):
    return shutil.copytree(toy_root, tmp_path / "data")


def test_duality_layout_pairs_by_name(toy_root):
    samples = list_samples(DataConfig(root=str(toy_root)), "train")
    assert len(samples) == 6
    assert all(s.image.stem == s.label.stem for s in samples)
    assert samples[0].label.parent.name == "Segmentation"


def test_dataset_items_and_nearest_resize(toy_root):
    cfg = DataConfig(root=str(toy_root))
    tax = taxonomy_for(cfg)
    ds = SegmentationDataset(list_samples(cfg, "val"), tax, image_size=(28, 42), full_res=True)
    item = ds[0]
    assert item["image"].shape == (3, 28, 42)
    assert item["mask"].shape == (28, 42)
    assert item["full_mask"].shape == (56, 84)
    assert set(item["mask"].unique().tolist()) <= set(item["full_mask"].unique().tolist())
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 28, 42) and batch["full_mask"].shape == (2, 56, 84)


def test_resize_mask_never_invents_ids():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[:, 5:] = 10
    out = resize_mask(mask, (7, 13))
    assert set(np.unique(out)) == {0, 10}


def test_missing_mask(toy_root, tmp_path):
    root = _copy(toy_root, tmp_path)
    victim = sorted((root / "train" / "Segmentation").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"has no mask: expected .*{victim.name}"):
        list_samples(DataConfig(root=str(root)), "train")


def test_size_mismatch(toy_root, tmp_path):
    root = _copy(toy_root, tmp_path)
    victim = sorted((root / "val" / "Segmentation").iterdir())[0]
    write_png(victim, np.zeros((20, 20), dtype=np.uint16))
    cfg = DataConfig(root=str(root))
    ds = SegmentationDataset(list_samples(cfg, "val"), taxonomy_for(cfg), image_size=(28, 42))
    with pytest.raises(DataError, match=r"is 20x20 but image .* is 84x56"):
        ds[0]


def test_empty_split(toy_root, tmp_path):
    root = _copy(toy_root, tmp_path)
    for p in (root / "val" / "Color_Images").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="split 'val' is empty"):
        list_samples(DataConfig(root=str(root)), "val")


def test_missing_split_names_the_folder(toy_root):
    with pytest.raises(DataError, match="split 'nope' not found"):
        list_samples(DataConfig(root=str(toy_root)), "nope")


def test_generic_layout_with_split_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "labs").mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"f{i}.jpg")
        Image.fromarray(np.full((28, 28), i % 2, dtype=np.uint8)).save(tmp_path / "labs" / f"f{i}.png")
    (tmp_path / "split.tsv").write_text("f0\ttrain\nf1\ttrain\nf2\tval\nf3\ttrain\n")
    (tmp_path / "classes.tsv").write_text("id\tname\n0\ta\n1\tb\n")
    cfg = DataConfig(
        root=str(tmp_path),
        layout="generic",
        image_dir="imgs",
        label_dir="labs",
        split_file="split.tsv",
        taxonomy="classes.tsv",
    )
    assert [s.name for s in list_samples(cfg, "train")] == ["f0", "f1", "f3"]
    assert [s.name for s in list_samples(cfg, "val")] == ["f2"]
    assert taxonomy_for(cfg).names == ["a", "b"]


def test_ycor_loads_from_config_without_conversion(shared_data):
    cfg = DataConfig(
        root=str(shared_data / "ycor"),
        layout="generic",
        split_file="split.tsv",
        taxonomy="classes.tsv",
        ignore_values=[0],
    )
    train, val = list_samples(cfg, "train"), list_samples(cfg, "val")
    assert (len(train), len(val)) == (931, 70)
    tax = taxonomy_for(cfg)
    assert tax.num_classes == 8 and tax.names[0] == "smooth_trail"
    ds = SegmentationDataset(val[:2], tax, image_size=(238, 448), full_res=True)
    item = ds[0]
    assert item["full_mask"].shape == (544, 1024)
    assert set(item["full_mask"].unique().tolist()) <= set(range(8)) | {255}


def test_a_split_union_lists_both_splits_once(toy_root):
    cfg = DataConfig(root=str(toy_root), layout="duality")
    train, val = list_samples(cfg, "train"), list_samples(cfg, "val")
    both = list_samples(cfg, "train+val")
    assert [s.image for s in both] == [s.image for s in train + val]
    assert val_in_train(DataConfig(train_split="train+val")) and not val_in_train(DataConfig())
    with pytest.raises(DataError, match="empty part"):
        list_samples(cfg, "train+")


def test_a_split_union_refuses_two_images_of_one_name(toy_root, tmp_path):
    root = _copy(toy_root, tmp_path)
    cfg = DataConfig(root=str(root), layout="duality")
    name = list_samples(cfg, "val")[0].name
    src = list_samples(cfg, "train")[0]
    shutil.copy(src.image, src.image.with_name(name + src.image.suffix))
    shutil.copy(src.label, src.label.with_name(name + src.label.suffix))
    with pytest.raises(DataError, match=f"two images are named '{name}'"):
        list_samples(cfg, "train+val")
