"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest

from offroadseg.models.segmentor import Segmentor


@pytest.fixture
def backbone_calls(monkeypatch) -> list[int]:
    """Counts the images that go through the backbone's cacheable part (the feature-cache builds)."""
    calls = [0]
    real = Segmentor.forward_hidden

    def counting(self, images, indices):
        calls[0] += len(images)
        return real(self, images, indices)

    monkeypatch.setattr(Segmentor, "forward_hidden", counting)
    return calls
