import re

import numpy as np
import pytest
from PIL import Image

from offroadseg.data.io import (
    MAX_PIXELS_ENV,
    ImageTooLargeError,
    image_size,
    read_image,
    read_label,
    write_png,
)
from offroadseg.errors import ConfigError, DataError
from offroadseg.taxonomy import load_taxonomy


def _tsv(tmp_path, rows):
    f = tmp_path / "classes.tsv"
    f.write_text("id\tname\tR\tG\tB\n" + "".join(f"{i}\t{n}\t{r}\t{g}\t{b}\n" for i, n, r, g, b in rows))
    return f


def test_uint16_mask_stays_uint16(tmp_path):
    raw = np.array([[0, 7100], [10000, 600]], dtype=np.uint16)
    write_png(tmp_path / "m.png", raw)
    out = read_label(tmp_path / "m.png", load_taxonomy("duality"))
    assert out.dtype == np.uint16 and (out == raw).all()


def test_palette_png_gives_the_index_not_the_colour(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    img.putpalette([255, 255, 255, 178, 176, 153, 128, 255, 0] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "p.png")
    tax = load_taxonomy(
        _tsv(tmp_path, [(0, "void", 255, 255, 255), (1, "trail", 178, 176, 153), (2, "grass", 128, 255, 0)])
    )
    assert read_label(tmp_path / "p.png", tax).tolist() == [[0, 1], [2, 1]]


def test_equal_channel_rgb_is_one_channel(tmp_path):
    ids = np.array([[3, 4], [10, 3]], dtype=np.uint8)
    Image.fromarray(np.stack([ids] * 3, axis=-1)).save(tmp_path / "e.png")
    tax = load_taxonomy(_tsv(tmp_path, [(3, "a", 1, 1, 1), (4, "b", 2, 2, 2), (10, "c", 3, 3, 3)]))
    assert read_label(tmp_path / "e.png", tax).tolist() == ids.tolist()


def test_colour_mask_needs_rgb_encoding(tmp_path):
    rgb = np.array([[[29, 28, 33], [32, 39, 232]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    tsv = _tsv(tmp_path, [(0, "road", 29, 28, 33), (1, "sky", 32, 39, 232)])
    with pytest.raises(DataError, match="label_encoding=rgb"):
        read_label(tmp_path / "c.png", load_taxonomy(tsv))
    tax = load_taxonomy(tsv, encoding="rgb")
    assert tax.encode(read_label(tmp_path / "c.png", tax)).tolist() == [[0, 1]]


def test_grey_levels(tmp_path):
    Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8)).save(tmp_path / "g.png")
    f = tmp_path / "orfd.tsv"
    f.write_text("value\tname\n0\tno\n128\tsky\n255\tyes\n")
    tax = load_taxonomy(f)
    assert tax.encode(read_label(tmp_path / "g.png", tax)).tolist() == [[0, 1, 2]]


def test_eight_bit_mask_for_duality_is_the_truncation_bug(tmp_path):
    Image.fromarray(np.array([[0, 100]], dtype=np.uint8)).save(tmp_path / "m8.png")
    with pytest.raises(DataError, match=r"m8\.png is 8-bit .* up to 10000"):
        read_label(tmp_path / "m8.png", load_taxonomy("duality"))


def test_truncated_file_is_reported(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 7).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.png is unreadable or truncated"):
        read_image(tmp_path / "t.png")
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(DataError, match="x.png"):
        read_image(tmp_path / "x.png")


def bomb_png(path, width: int, height: int):
    """A tiny PNG whose header claims ``width x height`` RGB pixels (its data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
    return path


def test_a_header_claiming_a_huge_size_is_one_line_with_the_fix(tmp_path, recwarn):
    bomb = bomb_png(tmp_path / "bomb.png", 100_000, 50_000)
    assert bomb.stat().st_size < 200
    for read in (read_image, image_size, lambda p: read_label(p, load_taxonomy("duality"))):
        with pytest.raises(ImageTooLargeError) as info:
            read(bomb)
        message = str(info.value)
        assert "\n" not in message and str(bomb) in message
        assert "100000x50000 = 5,000,000,000 pixels, above the limit of 200,000,000 pixels" in message
        assert f"raise the limit, e.g. {MAX_PIXELS_ENV}=5000000000 (0: no limit)" in message
        assert info.value.size == (50_000, 100_000) and info.value.limit == 200_000_000
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_the_pixel_limit_comes_from_the_environment(tmp_path, monkeypatch, recwarn):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((30, 40, 3), 9, np.uint8)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1199")
    with pytest.raises(
        ImageTooLargeError,
        match=r"small\.png is 40x30 = 1,200 pixels, above the limit of 1,199 .*=1200 \(0: no",
    ):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1200")  # the limit itself is allowed
    assert read_image(path).shape == (30, 40, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # no limit: a genuine 200 MP+ image
    assert image_size(bomb_png(tmp_path / "huge.png", 20_000, 20_000)) == (20_000, 20_000)
    for bad in ("lots", "-5", "1.5"):
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(ConfigError, match=f"{MAX_PIXELS_ENV}='{re.escape(bad)}' is not a pixel count"):
            read_image(path)
    # Pillow's own bomb check (which reads a process-wide setting) neither raises nor warns here
    monkeypatch.delenv(MAX_PIXELS_ENV)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(path).shape == (30, 40, 3)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_write_png_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    write_png(target, np.full((2, 2), 5, dtype=np.uint8))
    before = target.read_bytes()

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        write_png(target, np.zeros((2, 2), dtype=np.uint8))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Like a plain open(): 0666 minus the umask, not the 0600 of the temporary file."""
    import os
    import stat

    from offroadseg import atomic

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = tmp_path / "mask.png"
    write_png(target, np.zeros((2, 2), dtype=np.uint8))
    atomic.atomic_write_text(tmp_path / "report.txt", "x")
    want = stat.S_IMODE(os.stat(plain).st_mode)
    assert want == 0o666 & ~atomic._UMASK
    assert stat.S_IMODE(os.stat(target).st_mode) == want
    assert stat.S_IMODE(os.stat(tmp_path / "report.txt").st_mode) == want


@pytest.mark.parametrize(
    ("folder", "encoding", "expect_dtype"),
    [
        ("ycor", "value", np.uint8),
        ("umich", "value", np.uint8),
        ("orfd", "value", np.uint8),
        ("rellis", "value", np.uint8),
    ],
)
def test_real_label_encodings(shared_data, folder, encoding, expect_dtype):
    tax = load_taxonomy(shared_data / folder / "classes.tsv", encoding=encoding)
    label = sorted((shared_data / folder / "labels").iterdir())[0]
    raw = read_label(label, tax)
    assert raw.ndim == 2 and raw.dtype == expect_dtype
    ids = tax.encode(raw, source=str(label))
    assert ids.max() < tax.num_classes


def test_real_colour_labels(shared_data):
    tax = load_taxonomy(shared_data / "umich" / "classes.tsv", encoding="rgb")
    label = sorted((shared_data / "umich" / "labels_color").iterdir())[0]
    ids = tax.encode(read_label(label, tax), unknown="ignore")
    ids_by_value = load_taxonomy(shared_data / "umich" / "classes.tsv").encode(
        read_label(
            shared_data / "umich" / "labels" / label.name,
            load_taxonomy(shared_data / "umich" / "classes.tsv"),
        )
    )
    known = ids != 255
    assert known.mean() > 0.99
    assert (ids[known] == ids_by_value[known]).all()
