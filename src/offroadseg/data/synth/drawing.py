"""Synthetic scenes: drawing a scene far to near (sky, mountains, ground, objects by the row of their foot)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np

from offroadseg.data.synth.biomes import (
    _L8,
    BACKGROUND,
    CLUTTER,
    DRY_BUSH,
    DRY_GRASS,
    FLOWERS,
    LANDSCAPE,
    LOGS,
    LUSH,
    ROCKS,
    SKY,
    TREES,
    BiomeSpec,
)
from offroadseg.data.synth.scene import (
    _finish,
    _jit,
    _noise1d,
    _noise2d,
    _pts,
    _Scene,
    _tile_noise,
)


def _sky(sc: _Scene, rows: int) -> None:
    """Gradient and clouds, computed at a quarter of the resolution (the sky is smooth) and upsampled."""
    rng, spec, w = sc.rng, sc.spec, sc.w
    rq, wq = max(rows // 4, 2), max(w // 4, 2)
    y = np.linspace(0, rows, rq, dtype=np.float32)
    top, hor = _jit(rng, spec.sky_top, 0.08), _jit(rng, spec.sky_horizon, 0.05)
    t = (y / max(sc.y0, 1.0)).clip(0, 1) ** 0.7
    grad = top[None, :] * (1 - t[:, None]) + hor[None, :] * t[:, None]  # [rq, 3]
    sky = np.repeat(grad[:, None, :], wq, axis=1)
    cover = rng.uniform(*spec.clouds)
    if cover > 0.02:
        n = _noise2d(rng, rq, wq, max(rows // 40, 2), max(w // 60, 3)) * 0.7
        n += _noise2d(rng, rq, wq, max(rows // 12, 3), max(w // 18, 4)) * 0.3
        thr = 0.55 - cover * 0.8
        a = np.clip((n - thr) / 0.35, 0, 1)
        a *= np.clip((sc.y0 - y)[:, None] / (0.15 * sc.y0 + 1), 0, 1)
        shade = 1.0 - 0.08 * np.clip((n - thr) / 0.6, 0, 1)  # slightly grey cloud cores
        cloud = _jit(rng, (246, 246, 248), 0.02)
        sky = sky * (1 - a[..., None]) + (cloud[None, None, :] * shade[..., None]) * a[..., None]
    sky = cv2.resize(np.clip(sky, 0, 255).astype(np.uint8), (w, rows), interpolation=cv2.INTER_LINEAR)
    sc.rgb[:rows] = sky


def _mountains(sc: _Scene) -> None:
    rng, w, h = sc.rng, sc.w, sc.h
    xs = np.linspace(-2, w + 2, 96)
    height = 0.04 + 0.10 * rng.random()
    ridge = np.abs(_noise1d(rng, 96, int(rng.integers(4, 9)))) * 0.7 + _noise1d(rng, 96, 24) * 0.15 + 0.3
    ys = np.interp(xs, np.arange(w), sc.horizon) - ridge * height * h
    pts = np.concatenate([np.stack([xs, ys], 1), [[w + 2, sc.horizon.max() + 3], [-2, sc.horizon.max() + 3]]])
    col = _jit(rng, sc.spec.mountain) * 0.55 + _jit(rng, sc.spec.haze) * 0.45
    sc.poly(pts, col, BACKGROUND)
    # A lit and a shaded flank: a second, lower ridge in a slightly different tone.
    ys2 = ys + np.abs(_noise1d(rng, 96, int(rng.integers(6, 12)))) * height * h * 0.5
    pts2 = np.concatenate(
        [np.stack([xs, ys2], 1), [[w + 2, sc.horizon.max() + 3], [-2, sc.horizon.max() + 3]]]
    )
    sc.poly_rgb(pts2, col * rng.uniform(0.9, 1.05))


def _far_landscape(sc: _Scene) -> None:
    rng, spec, w, h = sc.rng, sc.spec, sc.w, sc.h
    base = sc.horizon.max() + 3
    if rng.random() < spec.p_mesas:
        for _ in range(int(rng.integers(1, 4))):
            cx = rng.uniform(-0.1, 1.1) * w
            top_w = rng.uniform(0.05, 0.25) * w
            hh = rng.uniform(0.03, 0.12) * h
            slope = rng.uniform(0.2, 0.6) * hh
            hz = sc.horizon[int(np.clip(cx, 0, w - 1))]
            col = _jit(rng, spec.mesa) * 0.75 + _jit(rng, spec.haze) * 0.25
            pts = [
                (cx - top_w / 2 - slope, base),
                (cx - top_w / 2, hz - hh),
                (cx + top_w / 2, hz - hh * rng.uniform(0.9, 1.05)),
                (cx + top_w / 2 + slope * 1.3, base),
            ]
            sc.poly(pts, col, LANDSCAPE)
            # A shaded flank away from the sun and darker bands of strata.
            side = 1 if sc.sun < 0 else -1
            flank = [
                (cx + side * top_w / 2, hz - hh),
                (cx + side * (top_w / 2 + slope * 1.2), base),
                (cx + side * top_w * 0.3, base),
            ]
            sc.poly_rgb(flank, col * 0.8)
            bands = hz - hh * rng.uniform(0.2, 0.8, int(rng.integers(1, 4)))
            segs = np.array(
                [[(cx - top_w / 2 - slope * 0.3, b), (cx + top_w / 2 + slope * 0.4, b)] for b in bands]
            )
            sc.lines(segs, col * 0.85, max(int(hh * 0.06), 1), None)
    else:
        xs = np.linspace(-2, w + 2, 64)
        amp = rng.uniform(0.005, 0.03) * h
        dune = np.abs(_noise1d(rng, 64, int(rng.integers(3, 7))))
        ys = np.interp(xs, np.arange(w), sc.horizon) - dune * amp - 1
        pts = np.concatenate([np.stack([xs, ys], 1), [[w + 2, base], [-2, base]]])
        col = _jit(rng, spec.sand) * 0.7 + _jit(rng, spec.haze) * 0.3
        sc.poly(pts, col, LANDSCAPE)


def _ground(sc: _Scene) -> None:
    """The ground plane (Landscape), textured in perspective with soil-colour patches.

    The texture is computed at half resolution (it is smooth; grain comes later) and
    written only inside the ground polygon, keeping its anti-aliased horizon edge.
    """
    rng, w, h = sc.rng, sc.w, sc.h
    xs = np.linspace(0, w - 1, 64)
    pts = np.concatenate(
        [np.stack([xs, np.interp(xs, np.arange(w), sc.horizon)], 1), [[w + 1, h + 1], [-1, h + 1]]]
    )
    sc.poly(pts, sc.pal["sand"], LANDSCAPE)
    r0 = int(min(max(math.floor(float(sc.horizon.min())) - 1, 0), h - 1))
    gh, gw = max((h - r0 + 1) // 2, 1), max((w + 1) // 2, 1)
    gy = r0 + np.arange(gh, dtype=np.float32) * ((h - r0) / gh) + 0.5
    gx = np.arange(gw, dtype=np.float32) * (w / gw) + 0.5
    d = gy[:, None] - np.interp(gx, np.arange(w), sc.horizon).astype(np.float32)[None, :]
    detail, patch = _ground_texture(rng, sc, d, gx - w / 2)
    fade = np.clip(d * (1.0 / (0.2 * (h - sc.y0) + 1)), 0.1, 1.0)
    sand = np.asarray(sc.pal["sand"], np.float32)
    soil = _jit(rng, sc.spec.soil, 0.06) - sand
    amp = rng.uniform(0.12, 0.2)
    col = sand * (1 + amp * detail * fade)[..., None] + soil * (np.clip(patch * 1.6, 0, 1) * fade)[..., None]
    col = np.maximum(col, 0)
    col = cv2.resize(cv2.convertScaleAbs(col), (w, h - r0), interpolation=cv2.INTER_LINEAR)
    inside = np.zeros((h - r0, w), np.uint8)
    cv2.fillPoly(inside, [_pts(pts - (0, r0))], 1, _L8)
    cv2.copyTo(col, inside, sc.rgb[r0:])


def _ground_texture(
    rng: np.random.Generator, sc: _Scene, d: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two noise fields laid on the ground plane (finer toward the horizon): detail and soil patches.

    A pixel ``d`` rows below the horizon and ``xs`` columns right of the centre sees
    ground at depth ~1/d, so texture coordinates are ``(xs * c / d, f * c / d)`` (a
    pinhole camera over flat ground). The texture tiles, so coordinates wrap.
    """
    n = 256
    tex = _tile_noise(rng, n, 8) * 0.4 + _tile_noise(rng, n, 32) * 0.35 + _tile_noise(rng, n, 64) * 0.25
    patch = _tile_noise(rng, 64, 4)  # soil patches: 16 texels a cell, sampled at 1/16 scale
    depth = sc.h - sc.y0
    cf = depth * depth / 3.0  # about 3 px per texel (vertically) at the bottom row
    c = cf / (0.9 * sc.w)
    inv = 1.0 / np.maximum(d, 2.0)
    u, v = xs[None, :] * (c * inv), cf * inv
    outs = []
    for src, k, m in ((tex, 1.0, n), (patch, 0.0625, 64)):
        ou, ov = (float(o) for o in rng.uniform(0, m, 2))
        mu, mv = u * k + ou, v * k + ov
        mu -= np.floor(mu * (1.0 / m)) * m  # wrap into [0, m): remap is slow far outside
        mv -= np.floor(mv * (1.0 / m)) * m
        outs.append(cv2.remap(src, mu, mv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP))
    return outs[0], outs[1]


# ---- the objects ----------------------------------------------------------------------------------
def _rock(sc: _Scene, x: float, y: float, s: float) -> None:
    rng = sc.rng
    big = 2.2 if rng.random() < 0.1 else 1.0
    r = max(s * sc.h * rng.uniform(0.015, 0.06) * sc.spec.rock_scale * big, 1.0)
    rx, ry = r * rng.uniform(1.0, 1.8), r * rng.uniform(0.55, 1.0)
    cy = y - ry * 0.55
    n = int(rng.integers(6, 10))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.75, 1.0, n)
    px = x + rx * rad * np.cos(ang)
    py = cy - ry * rad * np.sin(ang)
    py = np.where(py > cy, cy + (py - cy) * 0.55, py)  # a flatter foot
    pts = np.stack([px, py], 1)
    sc.cast(x, y, rx * 2, ry * 1.2, 0.4)
    base = _jit(rng, sc.pal["rock"], 0.12)
    sc.poly(pts, base * 0.6, ROCKS)
    c = np.array([x, cy])
    for k, (f, g) in enumerate(((0.85, 0.9), (0.55, 1.12))):
        shift = np.array([sc.sun * 0.07 * rx, -0.09 * ry]) * (k + 1)  # stays inside the outline
        sc.poly_rgb((pts - c) * f + c + shift, np.minimum(base * g + 6 * k, 255))
    if r > 6 and rng.random() < 0.5:  # a crack
        a = rng.uniform(0, np.pi)
        crack = [[(x - rx * 0.5 * math.cos(a), cy - ry * 0.4 * math.sin(a)), (x + rx * 0.3, cy + ry * 0.1)]]
        sc.lines(crack, base * 0.45, 1, None)


def _lush_bush(sc: _Scene, x: float, y: float, s: float) -> None:
    rng = sc.rng
    big = max(s * sc.h * rng.uniform(0.035, 0.1), 1.5)
    sc.cast(x, y, big * 2, big * 1.4, 0.35)
    base = _jit(rng, sc.pal["lush"], 0.12)
    k = int(rng.integers(4, 9))
    bx = x + rng.uniform(-0.8, 0.8, k) * big
    by = y - big * rng.uniform(0.3, 1.1, k)
    br = big * rng.uniform(0.35, 0.6, k)
    shade = rng.uniform(0.7, 0.9, k)
    light = np.minimum(base * 1.25 + 8, 255)
    for i in np.argsort(by):  # higher (farther) blobs first, lower ones in front
        sc.ellipse((bx[i], by[i]), (br[i], br[i] * 0.9), 0, base * shade[i], LUSH)
        sc.ellipse(
            (bx[i] + sc.sun * br[i] * 0.25, by[i] - br[i] * 0.25), (br[i] * 0.6, br[i] * 0.5), 0, light, None
        )
    if big > 8:  # leaf speckles
        m = int(min(big * 3, 80))
        p = np.stack([x + rng.uniform(-1.1, 1.1, m) * big, y - big * rng.uniform(0.1, 1.4, m)], 1)
        sc.lines(np.stack([p, p + (1, 0)], 1), np.minimum(base * 1.6 + 12, 255), 1, None)
        sc.lines(np.stack([p + (1, 2), p + (2, 2)], 1), base * 0.55, 1, None)


def _dry_bush(sc: _Scene, x: float, y: float, s: float) -> None:
    rng = sc.rng
    r = max(s * sc.h * rng.uniform(0.04, 0.12), 2.0)
    sc.cast(x, y, r * 1.6, r, 0.25)
    base = _jit(rng, sc.pal["dry_bush"], 0.12)
    thick = max(int(round(r / 22)), 1)
    n = int(np.clip(r * 1.5, 10, 70))
    a = rng.uniform(-np.pi * 0.95, -np.pi * 0.05, n)
    ln = r * rng.uniform(0.5, 1.0, n)
    bx = x + rng.uniform(-0.15, 0.15, n) * r
    mx, my = bx + np.cos(a) * ln * 0.5, y + np.sin(a) * ln * 0.5
    a2 = a + rng.uniform(-0.5, 0.5, n)
    ex, ey = mx + np.cos(a2) * ln * 0.5, my + np.sin(a2) * ln * 0.5
    twigs = np.stack([np.stack([bx, np.full(n, y)], 1), np.stack([mx, my], 1), np.stack([ex, ey], 1)], 1)
    a3 = a2 + rng.choice([-1, 1], n) * rng.uniform(0.4, 0.9, n)
    side = np.stack(
        [np.stack([mx, my], 1), np.stack([mx + np.cos(a3) * ln * 0.3, my + np.sin(a3) * ln * 0.3], 1)], 1
    )
    side = side[rng.random(n) < 0.5]
    g1, g2 = rng.integers(0, 3, n), rng.integers(0, 3, len(side))
    for g, f in enumerate((0.7, 1.0, 1.3)):
        c = np.minimum(base * f, 255)
        sc.lines(twigs[g1 == g], c, thick, DRY_BUSH)
        sc.lines(side[g2 == g], c, max(thick - 1, 1), DRY_BUSH)
    if rng.random() < 0.6:  # a few dead leaf clumps
        k = int(rng.integers(2, 7))
        aa, dd = rng.uniform(-np.pi, 0, k), r * rng.uniform(0.3, 0.8, k)
        for i in range(k):
            sc.ellipse(
                (x + math.cos(aa[i]) * dd[i], y + math.sin(aa[i]) * dd[i]),
                (r * 0.12, r * 0.08),
                0,
                base * 0.8,
                DRY_BUSH,
            )


def _tree(sc: _Scene, x: float, y: float, s: float) -> None:
    rng = sc.rng
    ht = max(s * sc.h * rng.uniform(0.2, 0.5), 4.0)
    if rng.random() < sc.spec.p_cactus:
        # Saguaro-like cactus: a thick green column with arms.
        col = _jit(rng, (96, 116, 70), 0.1)
        t = max(int(ht * 0.12), 2)
        sc.cast(x, y, t * 2.5, ht, 0.35)
        segs = [[(x, y), (x, y), (x, y - ht)]]
        for side in rng.choice([-1, 1], int(rng.integers(1, 3)), replace=False):
            ay = y - ht * rng.uniform(0.35, 0.6)
            ax = x + side * ht * 0.2
            segs.append([(x, ay), (ax, ay), (ax, ay - ht * rng.uniform(0.2, 0.35))])
        segs_a = np.array(segs)
        sc.lines(segs_a, col * 0.8, t, TREES)
        sc.lines(segs_a + (sc.sun * t * 0.2, 0), np.minimum(col * 1.15, 255), max(t // 3, 1), None)
        return
    trunk = _jit(rng, sc.pal["trunk"], 0.1)
    canopy = _jit(rng, sc.pal["canopy"], 0.12)
    t = max(int(ht * 0.05), 1)
    sc.cast(x, y, ht * 0.9, ht, 0.4)
    tx = x + rng.uniform(-0.1, 0.1) * ht
    ty = y - ht * rng.uniform(0.35, 0.55)
    nb = int(rng.integers(2, 5))
    br = np.stack(
        [
            np.tile([tx, ty], (nb, 1)),
            np.stack([tx + rng.uniform(-0.35, 0.35, nb) * ht, ty - rng.uniform(0.15, 0.35, nb) * ht], 1),
        ],
        1,
    )
    sc.lines(np.array([[(x, y), (tx, ty)]]), trunk, t, TREES)
    sc.lines(br, trunk * 0.85, max(t * 2 // 3, 1), TREES)
    cy = y - ht * 0.72
    k = int(rng.integers(5, 11))
    bx = x + rng.uniform(-0.4, 0.4, k) * ht
    by = cy + rng.uniform(-0.2, 0.15, k) * ht
    rr = ht * rng.uniform(0.12, 0.22, k)
    for i in range(k):
        sc.ellipse((bx[i], by[i]), (rr[i], rr[i] * 0.65), 0, canopy * 0.75, TREES)
    light = np.minimum(canopy * 1.15, 255)
    for i in range(k):
        sc.ellipse(
            (bx[i] + sc.sun * rr[i] * 0.2, by[i] - rr[i] * 0.2), (rr[i] * 0.6, rr[i] * 0.35), 0, light, None
        )
    if ht > 30:  # foliage speckles
        m = int(min(ht * 2, 150))
        i = rng.integers(0, k, m)
        p = np.stack(
            [bx[i] + rng.uniform(-0.9, 0.9, m) * rr[i], by[i] + rng.uniform(-0.6, 0.6, m) * rr[i]], 1
        )
        sc.lines(np.stack([p, p + (1, 0)], 1), canopy * 0.55, 1, None)


def _log(sc: _Scene, x: float, y: float, s: float) -> None:
    rng = sc.rng
    ln = max(s * sc.h * rng.uniform(0.12, 0.3), 3.0)
    t = max(ln * rng.uniform(0.08, 0.15), 1.5)
    ang = rng.uniform(-25, 25)
    cx, cy = x, y - t * 0.5
    sc.shadow(cx - sc.sun * t * 0.6, y + t * 0.1, ln * 0.55, t * 0.45, 0.4)
    wood = _jit(rng, sc.pal["wood"], 0.12)
    box = cv2.boxPoints(((cx, cy), (ln, t), ang))
    sc.poly(box, wood * 0.65, LOGS)
    a = math.radians(ang)
    ux, uy = math.cos(a), math.sin(a)
    nx, ny = uy, -ux  # the upward normal (image y grows downward)
    top = cv2.boxPoints(((cx + nx * t * 0.18, cy + ny * t * 0.18), (ln * 0.98, t * 0.45), ang))
    sc.poly_rgb(top, np.minimum(wood * 1.05, 255))
    nbark = int(np.clip(ln / 12, 2, 8))
    o = rng.uniform(-0.35, 0.35, nbark) * t
    along = np.sort(rng.uniform(-0.45, 0.45, (nbark, 2)) * ln, axis=1)
    bark = np.stack(
        [np.stack([cx + ux * along[:, j] + nx * o, cy + uy * along[:, j] + ny * o], 1) for j in (0, 1)], 1
    )
    sc.lines(bark, wood * 0.45, 1, None)
    end = (cx + ux * ln * 0.5, cy + uy * ln * 0.5)
    sc.ellipse(end, (t * 0.22, t * 0.5), ang, np.minimum(wood * 1.25 + 10, 255), LOGS)
    sc.ellipse(end, (t * 0.1, t * 0.25), ang, wood * 0.9, None)


def _grass_patch(sc: _Scene, x: float, y: float, s: float, tufts_only: bool = False) -> None:
    rng = sc.rng
    base = _jit(rng, sc.pal["grass"], 0.1)
    if tufts_only:
        rx, ry, k = s * sc.h * 0.03 + 1, s * sc.h * 0.012 + 1, int(rng.integers(1, 4))
    else:
        rx = max(s * sc.h * rng.uniform(0.12, 0.5), 3.0)
        ry = rx * rng.uniform(0.12, 0.3)
        n = int(rng.integers(7, 12))
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 0.5)
        rad = rng.uniform(0.7, 1.0, n)
        under = np.stack([x + rx * rad * np.cos(ang), y + ry * rad * np.sin(ang)], 1)
        ground = np.asarray(sc.pal["sand"], np.float32)
        sc.poly(under, ground * 0.3 + base * 0.5, DRY_GRASS)
        k = int(np.clip(rx * ry / 16, 3, 90))
    bl = max(s * sc.h * rng.uniform(0.03, 0.07), 2.0)
    thick = max(int(round(bl / 25)), 1)
    per = rng.integers(4, 10, k)
    tx = np.repeat(x + rng.uniform(-0.9, 0.9, k) * rx, per)
    ty = np.repeat(y + rng.uniform(-0.7, 0.7, k) * ry, per)
    nb = len(tx)
    a = -np.pi / 2 + rng.uniform(-0.75, 0.75, nb)
    ll = bl * rng.uniform(0.4, 1.0, nb)
    blades = np.stack([np.stack([tx, ty], 1), np.stack([tx + np.cos(a) * ll, ty + np.sin(a) * ll], 1)], 1)
    g = rng.integers(0, 3, nb)
    for gi, f in enumerate((0.72, 1.0, 1.25)):
        sc.lines(blades[g == gi], np.minimum(base * f, 255), thick, DRY_GRASS)


def _clutter(sc: _Scene, x: float, y: float, s: float) -> None:
    rng = sc.rng
    spread = s * sc.h * rng.uniform(0.03, 0.1) + 2
    base = _jit(rng, sc.pal["rock"], 0.15)
    wood = _jit(rng, sc.pal["wood"]) * 0.7
    n = int(rng.integers(5, 18))
    px, py = x + rng.uniform(-1, 1, n) * spread, y + rng.uniform(-0.3, 0.3, n) * spread
    r = s * sc.h * rng.uniform(0.002, 0.008, n) + 0.5
    asp, rot, tone, woody = (
        rng.uniform(1, 1.8, n),
        rng.uniform(0, 180, n),
        rng.uniform(0.6, 1.3, n),
        rng.random(n) > 0.7,
    )
    for i in range(n):
        sc.ellipse(
            (px[i], py[i]), (r[i] * asp[i], r[i]), rot[i], wood if woody[i] else base * tone[i], CLUTTER
        )
    if rng.random() < 0.5:  # twigs and debris
        m = int(rng.integers(2, 6))
        qx, qy = x + rng.uniform(-1, 1, m) * spread, y + rng.uniform(-0.3, 0.3, m) * spread
        ln, a = s * sc.h * rng.uniform(0.005, 0.02, m) + 1, rng.uniform(0, np.pi, m)
        tw = np.stack(
            [np.stack([qx, qy], 1), np.stack([qx + np.cos(a) * ln, qy + np.sin(a) * ln * 0.4], 1)], 1
        )
        sc.lines(tw, _jit(rng, sc.pal["trunk"]) * 0.8, 1, CLUTTER)


_FLOWER_COLOURS = (
    (236, 206, 40),
    (226, 80, 150),
    (150, 90, 200),
    (244, 240, 232),
    (240, 130, 40),
    (220, 50, 60),
)


def _flowers(sc: _Scene, x: float, y: float, s: float) -> None:
    rng = sc.rng
    spread = s * sc.h * rng.uniform(0.02, 0.06) + 1.5
    col = _jit(rng, _FLOWER_COLOURS[int(rng.integers(0, len(_FLOWER_COLOURS)))], 0.08)
    stem_col = _jit(rng, (84, 110, 56), 0.1)
    r = max(s * sc.h * rng.uniform(0.003, 0.007), 0.6)
    n = int(rng.integers(5, 20))
    px, py = x + rng.uniform(-1, 1, n) * spread, y + rng.uniform(-0.35, 0.35, n) * spread
    ln = s * sc.h * rng.uniform(0.005, 0.02, n)
    hx, hy = px + rng.uniform(-0.3, 0.3, n) * ln, py - ln
    sc.lines(np.stack([np.stack([px, py], 1), np.stack([hx, hy], 1)], 1), stem_col, 1, FLOWERS)
    tone = rng.uniform(0.85, 1.05, n)
    for i in range(n):
        sc.ellipse((hx[i], hy[i]), (r * 1.2, r), 0, col * tone[i], FLOWERS)
        if r > 2.5:
            sc.ellipse((hx[i], hy[i]), (r * 0.35, r * 0.35), 0, (200, 160, 40), None)


# ---- the whole scene ------------------------------------------------------------------------------
def _counts(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _render(rng: np.random.Generator, h: int, w: int, spec: BiomeSpec) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 [H, W, 3] and train ids uint8 [H, W]."""
    y0 = h * rng.uniform(0.3, 0.52)
    roll = math.tan(math.radians(rng.uniform(-2.5, 2.5)))
    hills = _noise1d(rng, w, int(rng.integers(2, 6))) * rng.uniform(0.0, 0.03) * h
    horizon = (y0 + roll * (np.arange(w, dtype=np.float32) - w / 2) + hills).astype(np.float32)
    sun = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.0))
    elev = rng.uniform(*spec.sun_elevation)
    sc = _Scene(
        rng=rng,
        spec=spec,
        h=h,
        w=w,
        rgb=np.empty((h, w, 3), np.uint8),
        ids=np.full((h, w), SKY, np.uint8),
        horizon=horizon,
        y0=float(y0),
        sun=sun,
        shadow_len=float(np.clip(1.0 / math.tan(math.radians(elev)), 0.3, 3.0)),
    )
    for key in ("sand", "rock", "grass", "lush", "dry_bush", "canopy", "trunk", "wood"):
        sc.pal[key] = _jit(rng, getattr(spec, key), 0.07)

    sky_rows = int(min(h, math.ceil(horizon.max()) + 4))
    _sky(sc, sky_rows)
    if rng.random() < spec.p_mountains:
        _mountains(sc)
    _far_landscape(sc)
    _ground(sc)

    # Objects stand on ground points; far ones are more numerous (perspective). They are
    # drawn in order of the row of their foot, so nearer things occlude farther ones.
    items: list[tuple[float, int, Callable, float, float, float]] = []

    def place(fn: Callable, n: int, power: float = 1.6, margin: float = 0.08) -> None:
        xs = rng.uniform(-margin, 1 + margin, n) * w
        ts = 0.02 + 0.98 * rng.random(n) ** power
        for x, t in zip(xs, ts, strict=True):
            hz = float(horizon[int(np.clip(x, 0, w - 1))])
            y = hz + t * (h - hz) * 1.05
            items.append((y, len(items), fn, float(x), y, sc.scale(x, y)))

    place(_grass_patch, _counts(rng, spec.grass_patches), power=1.3)
    place(partial(_grass_patch, tufts_only=True), _counts(rng, spec.tufts), power=1.4)
    place(_clutter, _counts(rng, spec.clutter), power=1.3)
    if rng.random() < spec.p_flowers:
        place(_flowers, _counts(rng, spec.flowers), power=1.1)
    place(_rock, _counts(rng, spec.rocks))
    if rng.random() < spec.p_logs:
        place(_log, int(rng.integers(1, 3)), power=1.0)
    place(_dry_bush, _counts(rng, spec.dry_bushes), power=1.4)
    place(_lush_bush, _counts(rng, spec.lush_bushes), power=1.4)
    place(_tree, _counts(rng, spec.trees), power=1.9)
    items.sort(key=lambda it: (it[0], it[1]))
    for _, _, fn, x, y, s in items:
        fn(sc, x, y, s)

    return _finish(sc, elev), sc.ids
