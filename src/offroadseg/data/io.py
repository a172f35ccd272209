"""Reading images and label masks in every encoding users bring; PNG writes (atomic, via offroadseg.atomic).

Labels are read with Pillow because it keeps what is on disk: a palette PNG gives its
indices (not colours), a 16-bit PNG stays uint16, an 8-bit grey PNG stays 8-bit. That
is what lets :func:`read_label` catch the classic truncation bug (a Duality mask
saved as 8-bit loses 7100 and 10000).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from offroadseg.atomic import atomic_save
from offroadseg.errors import ConfigError, DataError
from offroadseg.taxonomy import Taxonomy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


MAX_PIXELS_ENV = "OFFROADSEG_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 200_000_000  # 200 megapixels: ~600 MB decoded as RGB


class ImageTooLargeError(DataError):
    """An image whose header claims more pixels than :func:`max_image_pixels` (a decompression bomb?)."""

    def __init__(self, message: str, *, size: tuple[int, int], limit: int):
        super().__init__(message)
        self.size = size  # (H, W) from the header
        self.limit = limit


def max_image_pixels() -> int:
    """The largest image (width x height) the readers decode: ``$OFFROADSEG_MAX_IMAGE_PIXELS`` (0: none).

    Raises:
        ConfigError: the variable is set to something other than a pixel count.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value.is_integer()):
        raise ConfigError(
            f"environment variable {MAX_PIXELS_ENV}={raw!r} is not a pixel count; fix: e.g. "
            f"{MAX_PIXELS_ENV}={DEFAULT_MAX_PIXELS} (0: no limit), or unset it"
        )
    return int(value)


def check_pixels(path: str | Path, size: tuple[int, int], what: str = "image") -> None:
    """Refuse an image of ``size`` (H, W) above :func:`max_image_pixels`, in one line with the fix.

    Raises:
        ImageTooLargeError: too many pixels.
    """
    h, w = size
    limit = max_image_pixels()
    if limit and h * w > limit:
        raise ImageTooLargeError(
            f"{what} file {path} is {w}x{h} = {h * w:,} pixels, above the limit of {limit:,} pixels "
            f"that guards against decompression bombs; fix: if the file is "
            f"genuine, raise the limit, e.g. {MAX_PIXELS_ENV}={_round_up(h * w)} (0: no limit)",
            size=(h, w),
            limit=limit,
        )


def _round_up(pixels: int) -> int:
    step = 10 ** max(len(str(pixels)) - 2, 0)  # two significant digits
    return -(-pixels // step) * step


def _open(path: Path, what: str, *, decode: bool = True) -> Image.Image:
    """The one place images are opened: header read, pixel limit checked, then (``decode``) decoded."""
    # The pixel limit is ours (one line, an environment variable to raise it): Pillow's own check
    # would otherwise raise its DecompressionBombError (or warn) before ours could name the fix.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            check_pixels(path, (img.height, img.width), what)
            if decode:
                img.load()  # decode now so a truncated file fails here, not later in a worker
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist; fix: check the path") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{what} file {path} is unreadable or truncated ({exc}); fix: re-export it or remove it "
            f"(and its pair) from the dataset"
        ) from None
    return img


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as uint8 [H, W, 3].

    Raises:
        DataError: missing, unreadable or truncated; ImageTooLargeError above :func:`max_image_pixels`.
    """
    img = _open(Path(path), "image")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file, read from its header only (the pixel limit applies, see :func:`read_image`)."""
    img = _open(Path(path), "image", decode=False)
    return img.height, img.width


def read_label(path: str | Path, taxonomy: Taxonomy) -> np.ndarray:
    """A label mask in its raw encoding, as the taxonomy expects it.

    Handles raw integers at any bit depth (uint16 stays uint16), palette-index PNGs
    (the index, not the colour), 3-channel PNGs whose channels are equal (one channel),
    colour-coded RGB (kept [H, W, 3] for an ``rgb`` taxonomy) and grey levels.

    Returns:
        [H, W] integer array, or uint8 [H, W, 3] for a colour-coded taxonomy.
    """
    path = Path(path)
    img = _open(path, "mask")
    mode = img.mode
    if mode in ("RGBA", "LA"):
        img = img.convert(mode[:-1])
        mode = img.mode
    arr = np.asarray(img)
    if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)
    if taxonomy.encoding == "rgb":
        if arr.ndim == 3:
            return arr[..., :3]
        if mode == "P":
            return np.asarray(img.convert("RGB"))
        raise DataError(
            f"mask file {path} is single-channel ({mode}) but taxonomy {taxonomy.name!r} is colour-coded; "
            f"fix: set data.label_encoding=value (or use colour masks)"
        )
    if arr.ndim == 3:
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            arr = arr[..., 0]
        else:
            raise DataError(
                f"mask file {path} is colour-coded RGB but taxonomy {taxonomy.name!r} holds raw values; "
                f"fix: set data.label_encoding=rgb with a taxonomy that lists each class's colour"
            )
    if arr.dtype.itemsize == 1 and taxonomy.max_value > 255:
        raise DataError(
            f"mask file {path} is 8-bit but taxonomy {taxonomy.name!r} has values up to "
            f"{taxonomy.max_value}, which 8 bits cannot hold (values above 255 were truncated when it "
            f"was saved, e.g. by a reader that converts to 8-bit); fix: use the original 16-bit masks"
        )
    return arr


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 [H, W] / [H, W, 3] or uint16 [H, W] as PNG, atomically.

    uint16 stays 16-bit on disk (mode ``I;16``), so raw Duality values survive.
    """
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError(f"uint16 PNG must be single-channel, got shape {array.shape}")
        img = Image.fromarray(array)  # mode I;16: the values stay 16-bit on disk
    elif array.dtype == np.uint8:
        img = Image.fromarray(array)
    else:
        raise ValueError(f"write_png takes uint8 or uint16, got {array.dtype}")
    atomic_save(path, lambda tmp: img.save(tmp, format="PNG"))
