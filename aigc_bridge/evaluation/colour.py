"""Colour adherence: the image's mean colour, named by the hue ranges of ``texture_data``'s prototypes.

The mean colour (not a histogram mode) because the training images are one hue whose brightness the
pattern modulates: their mean RGB is exactly the prototype's colour, so this check scores 100 % on real
data (the evaluation reports it).
"""

from __future__ import annotations

import colorsys

import numpy as np

from ..texture_data import HUE_RANGES


def colour_name(image: np.ndarray) -> str | None:
    """"black", "white", a hue name, or None (greyish, or too dark to name) for an (H, W, 3) image."""
    r, g, b = (float(c) for c in image.reshape(-1, 3).mean(axis=0))
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    if val < 0.3:
        return "black"
    if sat < 0.2:
        return "white" if val > 0.6 else None
    if sat <= 0.25:
        return None
    degrees = hue * 360.0
    for name, (lo, hi) in HUE_RANGES.items():
        if (lo <= degrees < hi) if lo < hi else (degrees >= lo or degrees < hi):
            return name
    return None
