"""The app's logic without a server: upload checks, shares, scores, browsing, model loading."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

from offroadseg.app.browse import SplitBrowser, read_per_image_csv
from offroadseg.app.server import check_port
from offroadseg.app.service import (
    AppLimits,
    class_shares,
    difference_map,
    image_scores,
    load_models,
    read_upload,
)
from offroadseg.errors import ConfigError, DataError, ModelError
from offroadseg.taxonomy import load_taxonomy


def _png(path, h=10, w=20):
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
    return path


def test_read_upload_accepts_an_image(tmp_path):
    img = read_upload(_png(tmp_path / "a.png", 12, 34), AppLimits())
    assert img.shape == (12, 34, 3) and img.dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello", "notes.txt is not an image file"),
        ("fake.png", b"this is not a png at all", "fake.png is not a readable image"),
    ],
)
def test_read_upload_refuses_non_images(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_upload(path, AppLimits())


def test_read_upload_refuses_truncated_file(tmp_path):
    full = _png(tmp_path / "full.png", 64, 64)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.png is truncated or corrupt"):
        read_upload(cut, AppLimits())


def test_read_upload_refuses_too_many_megapixels_and_bytes(tmp_path):
    big = _png(tmp_path / "big.png", 1000, 1500)  # 1.5 MP
    with pytest.raises(
        DataError, match=r"1500x1000 = 1\.5 megapixels, above the 1 MP limit.*--max-megapixels"
    ):
        read_upload(big, AppLimits(max_megapixels=1.0))
    with pytest.raises(DataError, match="above the 0.001 MiB upload limit"):
        read_upload(big, AppLimits(max_upload_mb=0.001))


def test_limits_must_be_positive():
    with pytest.raises(DataError, match="--concurrency 0 must be positive"):
        AppLimits(concurrency=0)


def test_class_shares_known_answer():
    ids = np.array([[0, 0, 1, 255], [2, 0, 1, 255]], dtype=np.uint8)
    np.testing.assert_allclose(class_shares(ids, 3), [3 / 6, 2 / 6, 1 / 6])
    np.testing.assert_array_equal(class_shares(np.full((2, 2), 255, np.uint8), 3), [0, 0, 0])


def test_difference_map_known_answer():
    image = np.full((2, 2, 3), 100, np.uint8)
    a = np.array([[0, 1], [2, 3]], np.uint8)
    b = np.array([[0, 1], [2, 0]], np.uint8)
    out, share = difference_map(image, a, b)
    assert share == 0.25
    assert tuple(out[1, 1]) == (255, 0, 255)
    assert tuple(out[0, 0]) == (35, 35, 35)


def test_image_scores_known_answer():
    tax = load_taxonomy("duality")
    truth = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1]], np.uint8)
    s = image_scores(pred, truth, tax)
    assert s["per_class_iou"]["Background"] == pytest.approx(1 / 2)
    assert s["per_class_iou"]["Trees"] == pytest.approx(2 / 3)
    assert s["per_class_dice"]["Trees"] == pytest.approx(4 / 5)
    assert s["per_class_iou"]["Sky"] is None
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_second_checkpoint_with_another_taxonomy_is_refused(app_checkpoint, other_taxonomy_checkpoint):
    with pytest.raises(ModelError) as err:
        load_models(app_checkpoint, other_taxonomy_checkpoint, device="cpu")
    msg = str(err.value)
    assert "600=Flowers" in msg and "600=Cacti" in msg and "fix:" in msg


def test_unloadable_checkpoint_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="bad.ckpt"):
        load_models(bad)


def test_port_in_use_names_the_port_and_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(
            ConfigError, match=rf"port {port} on 127.0.0.1 is already in use.*--port {port + 1}"
        ):
            check_port("127.0.0.1", port)
    assert check_port("127.0.0.1", 0) > 0


# ---- browsing -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(app_checkpoint):
    return load_models(app_checkpoint, device="cpu")


@pytest.fixture
def browser(models, app_data):
    return SplitBrowser(models.data_config, app_data, "val", models.taxonomy)


def test_browser_lists_the_split_and_refuses_other_names(browser, app_data):
    assert browser.names == [f"val_{i:04d}" for i in range(4)]
    for bad in (
        "../train/Color_Images/train_0000",
        str(app_data / "train" / "Color_Images" / "train_0000.png"),
    ):
        with pytest.raises(DataError, match="is not an image of split 'val'"):
            browser.load(bad)
    image, truth = browser.load("val_0001")
    assert image.shape[:2] == truth.shape == (56, 84)


def test_browser_per_class_index(browser, models):
    tax = models.taxonomy
    # The toy set draws Background, Dry Grass, Landscape and Sky in every image, nothing else.
    for present in ("Background", "Dry Grass", "Landscape", "Sky"):
        assert browser.with_class(present) == browser.names
    assert browser.with_class("Logs") == []
    assert browser.with_class(None) == browser.names
    with pytest.raises(DataError, match="class 'Lava' is not in taxonomy"):
        browser.with_class("Lava")
    assert tax.names[9] == "Landscape"


def test_random_picks_are_seeded(browser, models, app_data):
    picks = [browser.random_pick(browser.names, step) for step in range(8)]
    again = SplitBrowser(models.data_config, app_data, "val", models.taxonomy, seed=0)
    assert picks == [again.random_pick(again.names, step) for step in range(8)]
    assert set(picks) <= set(browser.names) and len(set(picks)) > 1
    other = SplitBrowser(models.data_config, app_data, "val", models.taxonomy, seed=1)
    assert picks != [other.random_pick(other.names, step) for step in range(8)]


def test_ranking_is_predict_gt_per_image_csv(browser, models, app_data, tmp_path):
    from offroadseg.inference.outputs import OutputWriter, predict_files

    predictor = models.predictor("A", models.default_tta)
    assert browser.rank_of("val_0000") is None
    ranking = browser.ranking(predictor)
    out = tmp_path / "pred"
    predict_files(
        predictor,
        sorted((app_data / "val" / "Color_Images").iterdir()),
        OutputWriter(out, models.taxonomy),
        gt_dir=app_data / "val" / "Segmentation",
    )
    expected = read_per_image_csv(out / "per_image.csv")
    assert ranking == expected
    worst = expected[0]
    assert browser.rank_of(worst["name"]) == (1, 4, worst["miou"])
    mious = [r["miou"] for r in ranking]
    assert mious == sorted(mious)
    # --scores gives the same ranking without predicting.
    from_csv = SplitBrowser(
        models.data_config, app_data, "val", models.taxonomy, scores_csv=out / "per_image.csv"
    )
    assert from_csv.ranking_ready and from_csv.rank_of(worst["name"]) == (1, 4, worst["miou"])


def test_scores_csv_is_checked(models, app_data, tmp_path):
    bad = tmp_path / "per_image.csv"
    bad.write_text("image,score\na,1\n")
    with pytest.raises(DataError, match="not name and miou"):
        SplitBrowser(models.data_config, app_data, "val", models.taxonomy, scores_csv=bad)
    other = tmp_path / "other.csv"
    other.write_text("name,miou,pixel_accuracy\nzzz,0.5,0.9\n")
    with pytest.raises(DataError, match="names none of the 4 images"):
        SplitBrowser(models.data_config, app_data, "val", models.taxonomy, scores_csv=other)


# ---- deployment priors ---------------------------------------------------------------------------
def test_excluded_classes_get_no_pixel_per_request(models, browser):
    """The exclusion is per call: the shared predictor serves the next request unchanged."""
    from offroadseg.app.service import predict_image

    image, truth = browser.load("val_0001")
    plain = predict_image(models, "val_0001", image, tta="none", truth=truth)
    ids = plain.ids["A"]
    top = int(np.bincount(ids.ravel()).argmax())  # the class the model paints most
    name = models.taxonomy.names[top]
    masked = predict_image(models, "val_0001", image, tta="none", exclude=[name])
    assert masked.exclude == (name,)
    assert not (masked.ids["A"] == top).any()
    # pixels where another class already won keep their label: only the excluded class's pixels move
    kept = ids != top
    assert np.array_equal(masked.ids["A"][kept], ids[kept])
    again = predict_image(models, "val_0001", image, tta="none")
    assert np.array_equal(again.ids["A"], ids)
    with pytest.raises(ConfigError, match="unknown class 'Lava'"):
        predict_image(models, "val_0001", image, tta="none", exclude=["Lava"])
