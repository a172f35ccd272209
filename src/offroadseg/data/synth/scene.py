"""Synthetic scenes: the canvas (image, mask, depth) and the whole-image noise, haze, light and grain."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from offroadseg.data.synth.biomes import (
    _AA,
    _L8,
    BiomeSpec,
)


def _lut(values: dict[int, float] | list[float]) -> np.ndarray:
    t = np.zeros(256, np.float32)
    items = values.items() if isinstance(values, dict) else enumerate(values)
    for k, v in items:
        t[k] = v
    return t


_TEX = _lut([0.05, 0.12, 0.13, 0.12, 0.12, 0.16, 0.07, 0.14, 0.14, 0.07, 0.02])


# ---- small helpers ------------------------------------------------------------------------------
def _jit(rng: np.random.Generator, c, amount: float = 0.08) -> np.ndarray:
    """A colour with random brightness (+-amount) and a smaller per-channel hue shift."""
    f = rng.uniform(1 - amount, 1 + amount) * rng.uniform(1 - amount / 3, 1 + amount / 3, 3)
    return np.minimum(np.asarray(c, np.float32) * f.astype(np.float32), 255)


def _col(c) -> tuple[float, float, float]:
    return (
        min(max(float(c[0]), 0.0), 255.0),
        min(max(float(c[1]), 0.0), 255.0),
        min(max(float(c[2]), 0.0), 255.0),
    )


def _noise2d(
    rng: np.random.Generator, h: int, w: int, gh: int, gw: int, interp: int = cv2.INTER_CUBIC
) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a small random grid upsampled (no Python per-pixel loop)."""
    g = rng.random((max(gh, 2), max(gw, 2)), dtype=np.float32) * 2 - 1
    return cv2.resize(g, (w, h), interpolation=interp)


def _tile_noise(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Tileable smooth noise [n, n] in about [-1, 1] (k must divide n): a k x k grid, padded
    by wrap-around so the cubic kernel sees the other side, upsampled and cropped."""
    g = np.pad(rng.random((k, k), dtype=np.float32) * 2 - 1, 2, mode="wrap")
    c = n // k
    big = cv2.resize(g, ((k + 4) * c, (k + 4) * c), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[2 * c : 2 * c + n, 2 * c : 2 * c + n])


def _noise1d(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    g = rng.random((1, max(k, 2)), dtype=np.float32) * 2 - 1
    return cv2.resize(g, (n, 1), interpolation=cv2.INTER_CUBIC)[0]


def _pts(a) -> np.ndarray:
    return np.round(np.asarray(a, np.float64)).astype(np.int32).reshape(-1, 1, 2)


@dataclass
class _Scene:
    rng: np.random.Generator
    spec: BiomeSpec
    h: int
    w: int
    rgb: np.ndarray
    ids: np.ndarray
    horizon: np.ndarray  # horizon row per column (float)
    y0: float
    sun: float  # horizontal light direction in [-1, 1]; positive: light from the right
    shadow_len: float
    pal: dict[str, np.ndarray] = field(default_factory=dict)

    def scale(self, x: float, y: float) -> float:
        """Perspective scale of something standing at (x, y): ~0 at the horizon, 1 at the bottom."""
        xi = int(min(max(x, 0), self.w - 1))
        return max((y - self.horizon[xi]) / max(self.h - self.y0, 1.0), 0.004)

    # Drawing in both layers: anti-aliased colour, 8-connected ids.
    def poly(self, pts, color, cls: int) -> None:
        p = _pts(pts)
        cv2.fillPoly(self.rgb, [p], _col(color), _AA)
        cv2.fillPoly(self.ids, [p], cls, _L8)

    def poly_rgb(self, pts, color) -> None:
        cv2.fillPoly(self.rgb, [_pts(pts)], _col(color), _AA)

    def ellipse(self, c, axes, angle, color, cls: int | None) -> None:
        c = (round(c[0]), round(c[1]))
        axes = (max(round(axes[0]), 0), max(round(axes[1]), 0))
        cv2.ellipse(self.rgb, c, axes, float(angle), 0, 360, _col(color), -1, _AA)
        if cls is not None:
            cv2.ellipse(self.ids, c, axes, float(angle), 0, 360, cls, -1, _L8)

    def lines(self, segs, color, thick: int, cls: int | None) -> None:
        """Open polylines: ``segs`` is an array [N, K, 2] (N lines of K points)."""
        if len(segs) == 0:
            return
        p = list(np.round(np.asarray(segs, np.float64)).astype(np.int32))
        cv2.polylines(self.rgb, p, False, _col(color), thick, _AA)
        if cls is not None:
            cv2.polylines(self.ids, p, False, cls, thick, _L8)

    def shadow(self, cx: float, cy: float, ax: float, ay: float, strength: float = 0.35) -> None:
        """Darken an elliptic patch of what is already drawn (colour only; a shadow is no class)."""
        ax, ay = max(ax, 1.0), max(ay, 1.0)
        x0, x1 = int(max(cx - ax - 2, 0)), int(min(cx + ax + 3, self.w))
        y0, y1 = int(max(cy - ay - 2, 0)), int(min(cy + ay + 3, self.h))
        if x1 <= x0 or y1 <= y0:
            return
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.ellipse(m, (round(cx - x0), round(cy - y0)), (round(ax), round(ay)), 0, 0, 360, 255, -1, _AA)
        roi = self.rgb[y0:y1, x0:x1]
        f = 1.0 - (strength / 255.0) * m.astype(np.float32)
        roi[:] = (roi * f[..., None]).astype(np.uint8)

    def cast(self, x: float, y: float, width: float, height: float, strength: float = 0.35) -> None:
        """The ground shadow of an upright object of ``width`` x ``height`` standing at (x, y)."""
        off = -self.sun * height * 0.5 * self.shadow_len
        self.shadow(x + off * 0.6, y, width * 0.5 + abs(off) * 0.6, max(width * 0.12, 1.0), strength)


# ---- the far layers -------------------------------------------------------------------------------

_GRAIN_SIZE = 1280
_grain_cache: list[np.ndarray] = []


def _grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Per-pixel uniform noise in [-0.5, 0.5): a random window of a fixed noise tile (cheap
    and still deterministic), or fresh noise for images larger than the tile."""
    if h > _GRAIN_SIZE // 2 or w > _GRAIN_SIZE // 2:
        return rng.random((h, w), dtype=np.float32) - np.float32(0.5)
    if not _grain_cache:
        tile = np.random.default_rng(20240611).random((_GRAIN_SIZE, _GRAIN_SIZE), dtype=np.float32)
        _grain_cache.append(tile - np.float32(0.5))
    y, x = (int(v) for v in rng.integers(0, _GRAIN_SIZE // 2, 2))
    return _grain_cache[0][y : y + h, x : x + w]


def _finish(sc: _Scene, elev: float) -> np.ndarray:
    """Per-class texture, haze, light and grain in a few whole-image operations:
    ``out = rgb * (1 + tex[class] * noise) * (1 - haze) * gain + haze * haze_colour * gain``."""
    rng, spec, h, w, ids = sc.rng, sc.spec, sc.h, sc.w, sc.ids
    # Haze: distant things fade into the haze colour. It is smooth, so it is computed on a
    # coarse grid and upsampled; above the horizon it is 0 (far layers are drawn hazy).
    qh, qw = max(h // 8, 2), max(w // 8, 2)
    qy = np.linspace(0, h - 1, qh, dtype=np.float32)
    qx = np.linspace(0, w - 1, qw, dtype=np.float32)
    d = qy[:, None] - np.interp(qx, np.arange(w), sc.horizon).astype(np.float32)[None, :]
    f = (rng.uniform(*spec.haze_strength) * np.exp(-d / (0.12 * (h - sc.y0) + 1)) * (d > 0)).astype(
        np.float32
    )
    haze = _jit(rng, spec.haze, 0.04)
    # Light: brightness and colour temperature (a low sun is warmer).
    warm = float(np.clip((45 - elev) / 40, 0, 1))
    gain = rng.uniform(*spec.brightness) * np.array([1 + 0.06 * warm, 1.0, 1 - 0.08 * warm])
    gain = gain * rng.uniform(0.96, 1.04, 3)
    add = cv2.resize(
        (f[..., None] * (haze * gain)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
    )
    keep = cv2.resize(1.0 - f, (w, h), interpolation=cv2.INTER_LINEAR)
    # Texture and grain: multiplicative noise whose strength depends on the class.
    noise = _noise2d(rng, h, w, max(h // 8, 2), max(w // 8, 2), cv2.INTER_LINEAR)
    noise += _grain(rng, h, w)
    mod = cv2.LUT(ids, _TEX)
    mod *= noise
    mod += 1.0
    mod *= keep
    mod3 = cv2.merge([mod * np.float32(g) for g in gain])
    img = cv2.multiply(sc.rgb, mod3, dtype=cv2.CV_32F)
    img = cv2.add(img, add)
    return cv2.convertScaleAbs(img)  # saturates to uint8 (all values are >= 0)


# ---- public API -----------------------------------------------------------------------------------
