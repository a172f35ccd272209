"""The running app, called over HTTP with gradio_client on a free localhost port."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import scene
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from offroadseg.app.server import start_app  # noqa: E402
from offroadseg.app.service import AppLimits, load_models  # noqa: E402
from offroadseg.data.io import read_label  # noqa: E402


@pytest.fixture(scope="module")
def models(app_checkpoint, tmp_path_factory):
    # B is a copy of A: the side-by-side path runs, and the two must agree everywhere.
    b = tmp_path_factory.mktemp("b") / "b.ckpt"
    shutil.copy(app_checkpoint, b)
    return load_models(app_checkpoint, b, device="cpu")


@pytest.fixture(scope="module")
def app(models, app_data):
    running = start_app(models, limits=AppLimits(max_megapixels=0.05), data=app_data, split="val", port=0)
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    return Client(app.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def _save(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path)
    return path


def _segment(client: Client, path: Path, alpha: float = 0.5):
    return client.predict([handle_file(str(path))], "none", alpha, api_name="/segment")


def _mask_ids(files, taxonomy, suffix: str = "_A"):
    mask = next(Path(f) for f in files if Path(f).name.endswith(f"_mask{suffix}.png"))
    raw = read_label(mask, taxonomy)
    return raw, taxonomy.encode(raw)


def test_binds_to_localhost_by_default(app):
    assert app.host == "127.0.0.1" and app.url.startswith("http://127.0.0.1:")


def test_segment_returns_mask_in_dataset_encoding(client, models, tmp_path):
    image = scene(1)
    out = _segment(client, _save(tmp_path / "scene.png", image))
    shown, overlay_a, color_a, overlay_b, diff, legend, info, files = out
    tax = models.taxonomy
    raw, ids = _mask_ids(files, tax)
    assert raw.dtype == np.uint16 and raw.shape == image.shape[:2]  # Duality: uint16 raw values
    assert set(np.unique(raw)) <= {c.values[0] for c in tax.classes}
    expected = models.predictor("A", "none").predict_one(image)
    np.testing.assert_array_equal(ids, expected)
    shown = np.asarray(Image.open(color_a).convert("RGB"))
    np.testing.assert_array_equal(shown, tax.colorize(expected))
    assert np.asarray(Image.open(overlay_a)).shape[:2] == image.shape[:2]
    assert "scene.png: 90x60, TTA none" in info and " ms" in info
    assert "differ on 0.00 % of the pixels" in info  # B is A's copy
    shares = [round(100 * float((expected == i).mean()), 2) for i in range(tax.num_classes)]
    for name, share in zip(tax.names, shares, strict=True):
        assert f"<td>{name}</td><td>{share:.2f} %</td>" in legend


def test_segment_excludes_the_chosen_classes(client, models, tmp_path):
    image = scene(1)
    path = _save(tmp_path / "scene.png", image)
    tax = models.taxonomy
    plain = models.predictor("A", "none").predict_one(image)
    top = int(np.bincount(plain.ravel()).argmax())
    out = client.predict([handle_file(str(path))], "none", 0.5, [tax.names[top]], api_name="/segment")
    info, files = out[6], out[7]
    _, ids = _mask_ids(files, tax)
    assert not (ids == top).any()
    np.testing.assert_array_equal(ids, models.predictor("A", "none").predict_one(image, exclude=[top]))
    assert f"excluded: {tax.names[top]}" in info
    with pytest.raises(AppError, match="names every class: at least one must stay"):
        client.predict([handle_file(str(path))], "none", 0.5, tax.names, api_name="/segment")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello", "Invalid file type"),
        ("fake.png", b"this is not a png", "fake.png is not a readable image"),
    ],
)
def test_non_images_are_refused_with_a_message(client, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AppError, match=message):
        _segment(client, path)


def test_too_large_image_is_refused_with_a_message(client, tmp_path):
    big = _save(tmp_path / "big.png", np.zeros((300, 400, 3), np.uint8))  # 0.12 MP > 0.05 MP
    with pytest.raises(AppError, match=r"big.png is 400x300 = 0.1 megapixels, above the 0.05 MP limit"):
        _segment(client, big)


def test_concurrent_requests_do_not_mix(app, models, tmp_path):
    from offroadseg.inference.outputs import overlay

    predictor, tax = models.predictor("A", "none"), models.taxonomy
    # Two images of different sizes and content: a mixed-up answer shows in the mask's size,
    # the overlay's pixels and the name in the latency line.
    images = {f"img{i}.png": scene(10 + i, size=(56 + 14 * i, 84)) for i in range(2)}
    expected = {n: predictor.predict_one(im) for n, im in images.items()}
    overlays = {n: overlay(im, tax.colorize(expected[n]), 0.5) for n, im in images.items()}
    assert not np.array_equal(*[o[:56] for o in overlays.values()])
    clients = [Client(app.url, verbose=False, download_files=str(tmp_path / f"c{i}")) for i in range(2)]
    paths = {n: _save(tmp_path / n, im) for n, im in images.items()}
    jobs = [
        c.submit([handle_file(str(paths[n]))], "none", 0.5, api_name="/segment")
        for c, n in zip(clients, images, strict=True)
    ]
    answers = [j.result(timeout=120) for j in jobs]
    for n, answer in zip(images, answers, strict=True):
        _, ids = _mask_ids(answer[-1], tax)
        np.testing.assert_array_equal(ids, expected[n])
        np.testing.assert_array_equal(np.asarray(Image.open(answer[1]).convert("RGB")), overlays[n])
        assert answer[-2].startswith(f"{n}:")


def test_browse_shows_truth_scores_and_rank(client, models, app_data):
    from offroadseg.app.service import image_scores
    from offroadseg.data.datasets import Sample, load_pair

    update = client.predict("Sky", api_name="/filter_class")  # every toy image holds Sky
    assert [c[0] for c in update["choices"]] == [f"val_{i:04d}" for i in range(4)]
    gt, pred_a, pred_b, diff, table, chart, summary, files = client.predict(
        "val_0002", "none", 0.5, api_name="/show_sample"
    )
    assert "rank not computed yet" in summary
    tax = models.taxonomy
    sample = Sample(
        "val_0002", app_data / "val/Color_Images/val_0002.png", app_data / "val/Segmentation/val_0002.png"
    )
    image, truth = load_pair(sample, tax)
    pred = models.predictor("A", "none").predict_one(image)
    expected = image_scores(pred, truth, tax)
    col = table["headers"].index("IoU A")
    for row in table["data"]:
        want = expected["per_class_iou"][row[0]]
        assert (
            (row[col] is None or np.isnan(row[col]))
            if want is None
            else row[col] == pytest.approx(want, abs=1e-4)
        )
    assert f"A: mIoU {expected['miou']:.4f}" in summary
    bars = {(r[0], r[2]): r[1] for r in chart["data"]}
    assert bars[("Sky (A)", "A")] == pytest.approx(expected["per_class_iou"]["Sky"])
    assert len(bars) == len(chart["data"])  # one bar per class and model, never stacked
    _, ids = _mask_ids(files, tax)
    np.testing.assert_array_equal(ids, pred)
    ranked = client.predict("val_0002", api_name="/rank_split")
    assert "val_0002: rank " in ranked and " of 4 in split 'val', worst first" in ranked
    assert client.predict("Logs", api_name="/filter_class")["choices"] == []  # no toy image holds Logs


def test_browser_paths_never_reach_the_filesystem(app, client):
    # Gradio refuses a value outside the list; the browser refuses any name it did not list.
    with pytest.raises(AppError, match="not in the list of choices|is not an image of split 'val'"):
        client.predict("../../../../etc/passwd", "none", 0.5, api_name="/show_sample")
    for route in ("gradio_api/file=/etc/passwd", "file=/etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(app.url + route, timeout=10)
        assert err.value.code in (403, 404)


def test_old_download_folders_are_pruned(tmp_path):
    import os

    from offroadseg.app.ui import prune_older_than

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    os.utime(old, (0, 0))
    prune_older_than(tmp_path, 600)
    assert not old.exists() and new.exists()


def test_no_sample_chosen_shows_a_note_not_an_error(app):
    out = app.ui.show_sample("", "none", 0.5)
    assert out[6].startswith("no image chosen") and out[0] is None
