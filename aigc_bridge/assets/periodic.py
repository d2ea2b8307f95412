"""Filters that treat an image as periodic, so a tileable input gives tileable outputs.

The tile modes are the generator's: ``both`` wraps x and y, ``x`` wraps x only (backdrops), ``none`` wraps
nothing. An axis that does not wrap is mirror-extended to twice its length first (a symmetric extension is
periodic), filtered the same way, and cropped back: one code path, and no wrap-around bleeding across edges
that were never meant to meet.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequest
from ..request import TILE_MODES


def wrap_axes(tile: str) -> tuple[bool, bool]:
    """(wraps along y, wraps along x) for a tile mode."""
    if tile not in TILE_MODES:
        raise InvalidRequest(f"tile must be one of {', '.join(TILE_MODES)}; got {tile!r}", "tile")
    return tile == "both", tile in ("both", "x")


def extend(image: np.ndarray, tile: str) -> np.ndarray:
    """Mirror-extend every axis that does not wrap, making the whole array periodic."""
    wrap_y, wrap_x = wrap_axes(tile)
    if not wrap_y:
        image = np.concatenate([image, image[::-1]], axis=0)
    if not wrap_x:
        image = np.concatenate([image, image[:, ::-1]], axis=1)
    return image


def crop(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return image[: shape[0], : shape[1]]


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a periodic H x W (x C) array by multiplying its spectrum: exactly periodic."""
    if sigma <= 0:
        return image.astype(np.float32)
    h, w = image.shape[:2]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    if image.ndim == 3:
        gain = gain[..., None]
    spectrum = np.fft.rfft2(image, axes=(0, 1)) * gain
    return np.fft.irfft2(spectrum, s=(h, w), axes=(0, 1)).astype(np.float32)


def gradient(height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences (d/drow, d/dcol) of a periodic array, in units per pixel."""
    d_row = (np.roll(height, -1, axis=0) - np.roll(height, 1, axis=0)) * 0.5
    d_col = (np.roll(height, -1, axis=1) - np.roll(height, 1, axis=1)) * 0.5
    return d_row.astype(np.float32), d_col.astype(np.float32)


def filtered(image: np.ndarray, tile: str, sigma: float) -> np.ndarray:
    """``blur`` for any tile mode: extend, blur, crop."""
    return crop(blur(extend(image, tile), sigma), image.shape)
