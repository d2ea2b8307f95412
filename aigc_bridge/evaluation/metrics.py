"""Tileability and diversity, on images as the runtime returns them ((H, W, 3) floats in [0, 1])."""

from __future__ import annotations

import itertools

import numpy as np


def seam_ratio(image: np.ndarray, axis: int) -> float:
    """Mean difference across the wrap-around seam (last column/row next to the first, as in a 2x2 tiling)
    over the mean difference between neighbouring columns/rows inside the image. About 1 for an image that
    tiles; well above 1 when the tiling shows a seam."""
    a = np.moveaxis(image, axis, 0)
    seam = np.abs(a[0] - a[-1]).mean()
    interior = np.abs(a[1:] - a[:-1]).mean()
    return float(seam / max(interior, 1e-6))


def pairwise_distance(images: list[np.ndarray]) -> list[float]:
    """Mean absolute pixel difference of every pair (images of one prompt, different seeds)."""
    return [float(np.abs(a - b).mean()) for a, b in itertools.combinations(images, 2)]
