"""Seam metrics: does a map tile? Used by the tests and available to callers that want to warn.

A 2 x 2 tiling shows a seam when the difference across the tile border is larger than the differences
between ordinary neighbours inside the tile. ``seam_ratio`` is that quotient: about 1 for a map that
tiles, several times more for one that does not.
"""

from __future__ import annotations

import numpy as np


def tile_2x2(image: np.ndarray) -> np.ndarray:
    return np.concatenate([np.concatenate([image, image], axis=1)] * 2, axis=0)


def seam_ratio(image: np.ndarray, axis: int) -> float:
    """Mean |step| across the middle seams of a 2 x 2 tiling along ``axis`` (0 = rows meet, 1 = columns
    meet) over the mean |step| between interior neighbours along the same axis."""
    image = np.asarray(image, dtype=np.float64)
    tiled = tile_2x2(image)
    n = image.shape[axis]
    steps = np.abs(np.diff(tiled, axis=axis))
    seam = np.take(steps, n - 1, axis=axis).mean()  # between index n - 1 (end of tile 1) and n (start of tile 2)
    interior = np.delete(steps, [n - 1], axis=axis).mean()
    if interior == 0.0:
        return 0.0 if seam == 0.0 else float("inf")
    return float(seam / interior)
