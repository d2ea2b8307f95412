"""Sizes engines want: the one way a generated image reaches its output size (``fit``: an upscaler when one is
at hand, then resampling), power-of-two resampling that keeps the wrap, and the box mip chain engines build.

Resampling is Lanczos-3 (Pillow, float32 per channel) on a copy padded with the image's own wrapped
pixels, cropped by Pillow's ``box`` argument: every output pixel sees the neighbours it would see in an
endless tiling, so the result is exactly periodic (a shifted input gives the shifted output). Axes that do
not wrap are padded symmetrically instead.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from ..errors import InvalidRequest
from .periodic import wrap_axes


class Upscaler(Protocol):
    """What ``fit`` needs of an upscaler (``aigc_bridge.upscale.Upscaler`` is one): assets never load models."""

    scale: int
    name: str

    def __call__(self, image: np.ndarray, tile: str = "none") -> np.ndarray: ...


def fit(image: np.ndarray, width: int | None, height: int | None, tile: str = "both",
        upscaler: Upscaler | None = None) -> tuple[np.ndarray, list[str]]:
    """``image`` at ``width`` x ``height``, and what was done (for the provenance JSON).

    An enlargement goes through ``upscaler`` once when one is given (it adds detail; resampling only
    interpolates), then Lanczos-3 covers the rest of the way up or down: x4 to 2048 then down to 1024 is
    sharper than resampling x2. ``width`` None means the upscaler's own scale. Both keep the wrap of ``tile``.
    """
    h, w = image.shape[:2]
    notes: list[str] = []
    if width is None or height is None:
        if upscaler is None:
            return image, notes
        width, height = w * upscaler.scale, h * upscaler.scale
    if upscaler is not None and (width > w or height > h):
        image = upscaler(image, tile)
        notes.append(f"upscaled {w}x{h} -> {image.shape[1]}x{image.shape[0]} ({upscaler.name}, "
                     f"x{upscaler.scale}, tile={tile})")
    ih, iw = image.shape[:2]
    if (ih, iw) != (height, width):
        image = resize(image, width, height, tile)
        notes.append(f"resampled {iw}x{ih} -> {width}x{height} (Lanczos-3, tile={tile})")
    return image, notes


def resize(image: np.ndarray, width: int, height: int, tile: str = "both") -> np.ndarray:
    """Resample an H x W (x C) float image to ``height`` x ``width``, wrapping the axes ``tile`` wraps."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32)
    wrap_y, wrap_x = wrap_axes(tile)
    # Lanczos-3 reaches 3 source pixels when enlarging and 3 x (shrink factor) when reducing; +2 for rounding.
    pad_y = int(math.ceil(3 * max(1.0, h / height))) + 2
    pad_x = int(math.ceil(3 * max(1.0, w / width))) + 2
    padded = _pad_edges(image, pad_y, pad_x, wrap_y, wrap_x)  # np.pad repeats as often as needed
    box = (pad_x, pad_y, pad_x + w, pad_y + h)
    channels = padded[..., None] if padded.ndim == 2 else padded
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c], np.float32), mode="F")
                      .resize((width, height), Image.LANCZOS, box=box))
           for c in range(channels.shape[2])]
    result = np.stack(out, axis=-1)
    return result[..., 0] if image.ndim == 2 else result


def _pad_edges(image: np.ndarray, pad_y: int, pad_x: int, wrap_y: bool, wrap_x: bool) -> np.ndarray:
    extra = [(0, 0)] * (image.ndim - 2)
    out = np.pad(image, [(pad_y, pad_y), (0, 0), *extra], mode="wrap" if wrap_y else "symmetric")
    return np.pad(out, [(0, 0), (pad_x, pad_x), *extra], mode="wrap" if wrap_x else "symmetric")


def box_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each aligned ``factor`` x ``factor`` block of an (H, W, ...) image: the image as a render
    ``factor`` times smaller sees it (periodic in, periodic out)."""
    h, w = image.shape[:2]
    return image.reshape(h // factor, factor, w // factor, factor, *image.shape[2:]).mean(axis=(1, 3))


def mip_chain(image: np.ndarray) -> list[np.ndarray]:
    """Level 0 and every 2 x 2 box-filtered level down to 1 pixel on the short side, as GPUs build them.

    A box filter over aligned 2 x 2 blocks of an even-sized periodic image is itself periodic, which is
    why power-of-two sizes keep their seams invisible at every level; an odd level would misalign.
    """
    levels = [image.astype(np.float32)]
    while min(levels[-1].shape[:2]) > 1:
        prev = levels[-1]
        h, w = prev.shape[:2]
        if h % 2 or w % 2:
            raise InvalidRequest(f"a {w}x{h} mip level cannot be halved; use power-of-two sizes", "target_size")
        levels.append(box_reduce(prev, 2))
    return levels
