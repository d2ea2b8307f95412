"""Reading an image a user hands us (``aigc-bridge upscale``): PNG or JPEG, as H x W x 3 floats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InvalidRequest

MAX_PIXELS = 4096 * 4096


def read_image(path: str | Path, field: str = "image") -> np.ndarray:
    """sRGB floats in [0, 1]; grey becomes RGB, alpha is dropped. Errors name the file and what is wrong."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path} does not exist", field)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # larger files are refused by Pillow before they are decoded
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float32) / 65535.0
                return np.repeat(pixels[..., None], 3, axis=2)
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise InvalidRequest(f"{path.name} is not an image this tool reads (PNG, JPEG): {exc}", field) from None
    return pixels
