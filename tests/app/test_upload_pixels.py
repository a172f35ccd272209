"""An upload above the server's pixel limit (a decompression bomb) is one line naming the upload."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from offroadseg.app.service import AppLimits, read_upload
from offroadseg.data.io import MAX_PIXELS_ENV
from offroadseg.errors import DataError


def test_upload_above_the_pixel_limit_names_the_upload_and_the_fix(tmp_path, monkeypatch, recwarn):
    path = tmp_path / "upload-1234.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(DataError) as info:
        read_upload(path, AppLimits(), name="photo.png")
    message = str(info.value)
    assert message.startswith("photo.png is 40x30 = 1,200 pixels, above the server's limit of 1,000 pixels")
    assert MAX_PIXELS_ENV in message and str(tmp_path) not in message and "\n" not in message
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setenv(MAX_PIXELS_ENV, "1200")
    assert read_upload(path, AppLimits(), name="photo.png").shape == (30, 40, 3)
