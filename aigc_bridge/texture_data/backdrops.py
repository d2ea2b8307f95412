"""Backdrops for panoramas: skies at times of day, a starfield, overcast. RGB (H, W, 3) in [0, 1].

They wrap horizontally only (a 360-degree panorama's left and right edges meet; its top and bottom are the
zenith and the horizon, which never meet), so they are trained and sampled with circular padding on x
(tile "x"). Every horizontal feature is a function of u = x / W with period 1.
"""

from __future__ import annotations

import numpy as np

from .patterns import Canvas, periodic_noise

Rng = np.random.Generator

# kind -> (zenith RGB, horizon RGB, cloud RGB, sun RGB or None, sun height 0 = top .. 1 = bottom)
_SKIES = {
    "noon": ((0.12, 0.35, 0.85), (0.62, 0.80, 0.97), (0.97, 0.97, 1.0), (1.0, 1.0, 0.9), 0.25),
    "dawn": ((0.22, 0.28, 0.55), (0.98, 0.68, 0.58), (0.95, 0.75, 0.75), (1.0, 0.85, 0.6), 0.85),
    "sunset": ((0.20, 0.12, 0.38), (1.0, 0.48, 0.12), (0.95, 0.45, 0.35), (1.0, 0.8, 0.3), 0.9),
    "night": ((0.01, 0.01, 0.04), (0.04, 0.07, 0.16), (0.08, 0.09, 0.14), None, 0.0),
    "starfield": ((0.0, 0.0, 0.01), (0.01, 0.01, 0.03), (0.05, 0.04, 0.08), None, 0.0),
    "overcast": ((0.50, 0.52, 0.55), (0.78, 0.79, 0.80), (0.88, 0.88, 0.89), None, 0.0),
}
BACKDROPS = tuple(_SKIES)


def backdrop(rng: Rng, kind: str, c: Canvas) -> np.ndarray:
    """A sky over the canvas (its ``periods`` must be 1 vertically: only x wraps)."""
    zenith, horizon, cloud_rgb, sun_rgb, sun_height = (np.asarray(x) if isinstance(x, tuple) else x
                                                       for x in _SKIES[kind])
    h, w = c.h, c.w
    v, u = c.coords()
    t = v[..., None] ** rng.uniform(0.7, 1.4)
    image = zenith * (1 - t) + horizon * t
    if sun_rgb is not None:
        du = (np.mod(u - rng.random() + 0.5, 1.0) - 0.5) * w / h    # torus distance on x, in heights
        dv = v - sun_height - rng.uniform(-0.08, 0.08)
        glow = np.exp(-(du * du + dv * dv) / rng.uniform(0.02, 0.06))[..., None]
        image = image * (1 - glow) + np.asarray(sun_rgb) * glow
    cover = {"overcast": rng.uniform(0.6, 0.9), "starfield": 0.0, "night": rng.uniform(0.0, 0.2)}.get(
        kind, rng.uniform(0.0, 0.5))
    if cover > 0:
        noise = periodic_noise(rng, c, beta=2.5, stretch=(1.0, 2.5))
        clouds = np.clip((noise - (1.0 - 2.0 * cover)) / 1.5, 0, 1) * (1.0 - 0.5 * v)
        image = image * (1 - clouds[..., None]) + cloud_rgb * clouds[..., None]
    if kind in ("night", "starfield"):
        image = image + _stars(rng, c, density=0.04 if kind == "starfield" else 0.015)
    return np.clip(image, 0.0, 1.0)


def _stars(rng: Rng, c: Canvas, density: float) -> np.ndarray:
    period = (rng.random((c.h, c.w)) < density) * rng.uniform(0.4, 1.0, (c.h, c.w))
    v, u = c.coords()
    band = np.exp(-((v - 0.4 - 0.15 * np.sin(2 * np.pi * u)) / 0.15) ** 2)   # a faint milky way
    stars = c.tile(period) + 0.06 * band * (1 + periodic_noise(rng, c, beta=2.0) * 0.5)
    return np.repeat(stars[..., None], 3, axis=2) * np.array([0.95, 0.95, 1.0])
