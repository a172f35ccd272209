"""Synthetic scenes: the class ids, the biomes (colours, counts, weather) and the raw label values."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from offroadseg.errors import ConfigError, close_matches
from offroadseg.taxonomy import load_taxonomy

RGB = tuple[int, int, int]

# Train ids in the order of load_taxonomy("duality").
BACKGROUND, TREES, LUSH, DRY_GRASS, DRY_BUSH, CLUTTER, FLOWERS, LOGS, ROCKS, LANDSCAPE, SKY = range(11)
_TAX = load_taxonomy("duality")
_RAW_LUT = np.zeros(256, np.uint16)  # train id -> raw value (a cv2.LUT table)
_RAW_LUT[: _TAX.num_classes] = [c.values[0] for c in _TAX.classes]
assert _TAX.num_classes == 11 and _RAW_LUT[SKY] == 10000 and _RAW_LUT[LANDSCAPE] == 7100

SPLITS = ("train", "val", "test")
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}
_AA = cv2.LINE_AA
_L8 = cv2.LINE_8


@dataclass(frozen=True)
class BiomeSpec:
    """Palette, object densities and light of one kind of desert.

    Colours are RGB. Counts are ``(low, high)`` per image (inclusive), independent of
    the image size; probabilities are per image.
    """

    name: str
    description: str
    sand: RGB
    soil: RGB  # second ground colour, mixed in low-frequency patches
    rock: RGB
    mesa: RGB
    mountain: RGB
    sky_top: RGB
    sky_horizon: RGB
    haze: RGB
    grass: RGB
    lush: RGB
    dry_bush: RGB
    canopy: RGB
    trunk: RGB
    wood: RGB
    rocks: tuple[int, int]
    lush_bushes: tuple[int, int]
    dry_bushes: tuple[int, int]
    trees: tuple[int, int]
    grass_patches: tuple[int, int]
    tufts: tuple[int, int]
    clutter: tuple[int, int]
    flowers: tuple[int, int]
    p_logs: float
    p_flowers: float
    p_mountains: float
    p_mesas: float
    p_cactus: float
    clouds: tuple[float, float]  # cloud cover range, 0..1
    haze_strength: tuple[float, float]
    brightness: tuple[float, float]
    sun_elevation: tuple[float, float]  # degrees; low sun -> warm light, long shadows
    rock_scale: float = 1.0
    grain: float = 3.0


BIOMES: dict[str, BiomeSpec] = {
    "desert": BiomeSpec(
        name="desert",
        description="pale tan sand, sparse dry grass and bushes, scattered rocks, high sun, light haze",
        sand=(196, 163, 124),
        soil=(172, 128, 92),
        rock=(150, 128, 108),
        mesa=(186, 150, 118),
        mountain=(132, 136, 150),
        sky_top=(92, 142, 206),
        sky_horizon=(196, 214, 232),
        haze=(214, 212, 210),
        grass=(168, 140, 88),
        lush=(78, 104, 46),
        dry_bush=(110, 84, 58),
        canopy=(88, 102, 56),
        trunk=(92, 74, 58),
        wood=(142, 118, 94),
        rocks=(6, 14),
        lush_bushes=(0, 3),
        dry_bushes=(3, 8),
        trees=(0, 2),
        grass_patches=(4, 10),
        tufts=(12, 30),
        clutter=(8, 18),
        flowers=(1, 4),
        p_logs=0.4,
        p_flowers=0.45,
        p_mountains=0.6,
        p_mesas=0.25,
        p_cactus=0.3,
        clouds=(0.0, 0.5),
        haze_strength=(0.25, 0.45),
        brightness=(0.95, 1.1),
        sun_elevation=(35.0, 70.0),
    ),
    "canyon": BiomeSpec(
        name="canyon",
        description="red-orange soil and sandstone, mesas, many rocks, little vegetation, low warm sun",
        sand=(184, 112, 72),
        soil=(150, 82, 54),
        rock=(160, 88, 62),
        mesa=(170, 96, 66),
        mountain=(140, 110, 120),
        sky_top=(58, 112, 196),
        sky_horizon=(180, 196, 220),
        haze=(206, 182, 168),
        grass=(176, 140, 84),
        lush=(70, 96, 52),
        dry_bush=(96, 70, 50),
        canopy=(82, 96, 60),
        trunk=(84, 62, 50),
        wood=(130, 104, 84),
        rocks=(12, 24),
        lush_bushes=(0, 2),
        dry_bushes=(2, 6),
        trees=(0, 1),
        grass_patches=(1, 5),
        tufts=(3, 10),
        clutter=(10, 22),
        flowers=(1, 3),
        p_logs=0.3,
        p_flowers=0.35,
        p_mountains=0.4,
        p_mesas=0.85,
        p_cactus=0.2,
        clouds=(0.0, 0.3),
        haze_strength=(0.15, 0.35),
        brightness=(0.9, 1.05),
        sun_elevation=(12.0, 35.0),
        rock_scale=1.3,
    ),
    "scrubland": BiomeSpec(
        name="scrubland",
        description="grey-brown soil, dense dry grass, shrubs and trees, flowers, hazy overcast light",
        sand=(160, 146, 122),
        soil=(128, 112, 90),
        rock=(128, 124, 118),
        mesa=(150, 140, 124),
        mountain=(120, 130, 140),
        sky_top=(136, 160, 190),
        sky_horizon=(208, 214, 220),
        haze=(200, 204, 206),
        grass=(178, 156, 104),
        lush=(66, 98, 48),
        dry_bush=(104, 88, 66),
        canopy=(70, 92, 52),
        trunk=(80, 70, 60),
        wood=(120, 108, 92),
        rocks=(3, 9),
        lush_bushes=(2, 7),
        dry_bushes=(4, 10),
        trees=(1, 4),
        grass_patches=(5, 10),
        tufts=(10, 22),
        clutter=(6, 14),
        flowers=(2, 6),
        p_logs=0.5,
        p_flowers=0.7,
        p_mountains=0.7,
        p_mesas=0.05,
        p_cactus=0.05,
        clouds=(0.35, 0.85),
        haze_strength=(0.35, 0.6),
        brightness=(0.82, 0.98),
        sun_elevation=(40.0, 80.0),
        rock_scale=0.9,
    ),
}


# Per-class strength of texture and grain (a 256-entry table for cv2.LUT over train ids).


def _biome(name: str) -> BiomeSpec:
    if name not in BIOMES:
        raise ConfigError(
            f"unknown biome {name!r}{close_matches(str(name), list(BIOMES))}; valid biomes: {', '.join(BIOMES)}"
        )
    return BIOMES[name]
