"""Procedural synthetic desert scenes, written in the exact Duality dataset layout.

A scene is drawn far to near so nearer things occlude farther ones: a sky gradient
with clouds (Sky), a distant hazy mountain range (Background: the dataset's
catch-all, used here only for the far silhouette), dunes or mesas on the horizon and
the ground plane (Landscape), then every upright or flat object sorted by the image
row of its foot: dry-grass patches and tufts, ground clutter, flowers, rocks, logs,
dry bushes, lush bushes and trees. Object size follows the distance to the horizon
(perspective). Colour and shape are drawn with OpenCV (anti-aliased in the image,
8-connected in the mask, so the mask never holds a blended value); texture, haze,
light and grain are a handful of whole-image numpy operations on cheap upsampled
noise, which keeps a 960x540 scene well under 100 ms on one core.

Every image's generator is derived from ``(seed, split, index)``, so a set is
reproducible byte for byte and its splits are independent. The test split is drawn
from a different biome than training by default, as the challenge's real difficulty
is an unseen desert.
"""

from offroadseg.data.synth.biomes import BIOMES, SPLITS, BiomeSpec
from offroadseg.data.synth.writing import SynthSummary, generate_scene, write_synthetic_dataset

__all__ = [
    "BIOMES",
    "SPLITS",
    "BiomeSpec",
    "SynthSummary",
    "generate_scene",
    "write_synthetic_dataset",
]
