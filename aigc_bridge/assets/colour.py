"""Colour spaces: the three ids every output file is tagged with, their names in Blender, and sRGB transfer.

The ids are engine-neutral; ``BLENDER_COLOUR_SPACES`` maps them to the names ``Image.colorspace_settings``
takes, so the add-on can set the colour space (before touching pixels) straight from the provenance JSON.
"""

from __future__ import annotations

import numpy as np

SRGB = "srgb"                    # colour with the sRGB transfer function: albedo, equirect PNG, cube-face PNGs
DATA = "data"                    # numbers, not colour: normal, roughness, height, AO, ORM (never converted)
LINEAR_REC709 = "linear_rec709"  # linear-light colour, Rec.709 primaries: EXR backdrops and cube faces

COLOUR_SPACES = (SRGB, DATA, LINEAR_REC709)
BLENDER_COLOUR_SPACES = {SRGB: "sRGB", DATA: "Non-Color", LINEAR_REC709: "Linear Rec.709"}


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """The exact piecewise sRGB decode (IEC 61966-2-1)."""
    x = np.clip(image, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    x = np.clip(image, 0.0, None)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)


def luminance(linear_rgb: np.ndarray) -> np.ndarray:
    """Relative luminance Y of linear Rec.709 RGB."""
    return (linear_rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)).astype(np.float32)
