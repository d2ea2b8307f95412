"""Diversity, on images as the runtime returns them ((H, W, 3) floats in [0, 1])."""

from __future__ import annotations

import itertools

import numpy as np


def pairwise_distance(images: list[np.ndarray]) -> list[float]:
    """Mean absolute pixel difference of every pair (images of one prompt, different seeds)."""
    return [float(np.abs(a - b).mean()) for a, b in itertools.combinations(images, 2)]
