"""Sharpness: how much high-frequency energy an image has, next to real data of the same specs.

Measured on luminance, as the energy (mean square) of the part of the spectrum above ``cutoff`` cycles per
image. With the cutoff at the Nyquist frequency of the small image (16 cycles for a 32 px source), anything a
resampler adds is nearly nothing there, and real 128 px renders have their edges and grain there: the ratio
generated / real says how much of real data's fine detail an upscaled image carries (1 = as much).
"""

from __future__ import annotations

import numpy as np


def high_frequency_energy(image: np.ndarray, cutoff: float) -> float:
    """Mean square of the luminance's spectral components above ``cutoff`` cycles per image (either axis's
    count, by radius), for an (H, W, 3) image in [0, 1]; periodic, so a tileable image has no edge to count."""
    lum = np.asarray(image, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])
    h, w = lum.shape
    spectrum = np.fft.fft2(lum) / (h * w)
    fy = np.fft.fftfreq(h)[:, None] * h
    fx = np.fft.fftfreq(w)[None, :] * w
    mask = np.sqrt(fy * fy + fx * fx) > cutoff
    return float(np.sum(np.abs(spectrum[mask]) ** 2))


def sharpness_ratio(images: list[np.ndarray], references: list[np.ndarray], cutoff: float) -> float:
    """Mean high-frequency energy of ``images`` over that of ``references`` (real images of the same specs)."""
    real = np.mean([high_frequency_energy(x, cutoff) for x in references])
    return float(np.mean([high_frequency_energy(x, cutoff) for x in images]) / max(real, 1e-12))


def block_ratio(images: list[np.ndarray], cell: int) -> float:
    """Mean luminance step across the borders of ``cell`` x ``cell`` blocks over the mean step within them (both
    axes, periodic). An upscaler that paints each input pixel as a block steps at the borders: a ratio well above
    real data's (about 1.3 at 128 px for 4 px cells). The wrap is a border too, so this is what a seam ratio
    above real data's means for an exactly periodic upscaled image."""
    border, inside = [], []
    for image in images:
        lum = np.asarray(image, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])
        for axis in (0, 1):
            step = np.abs(np.roll(lum, -1, axis=axis) - lum).mean(axis=1 - axis)  # step after each row / column
            at_border = (np.arange(step.size) % cell) == cell - 1
            border.append(step[at_border].mean())
            inside.append(step[~at_border].mean())
    return float(np.mean(border) / max(np.mean(inside), 1e-12))
