"""Input images (init, mask) decoded and brought to the generation size (docs/conditioning.md).

The request carries encoded bytes whose header was already checked (``aigc_bridge.input_image``); here Pillow
decodes them within the same limits (``Image.MAX_IMAGE_PIXELS`` too, in case a header lies) and every failure
becomes an error that names the field. The resize rule is one function, ``fit_to``: scale to cover the
requested size, centre-crop the overflow (Lanczos-3, wrapping the axes the request tiles), and say what it did.
"""

from __future__ import annotations

import io
import math

import numpy as np

from ..errors import InvalidRequest
from ..input_image import MAX_INPUT_PIXELS, InputImage


def decode(image: InputImage, field: str, grey: bool = False) -> np.ndarray:
    """H x W x 3 (or H x W with ``grey``) float32 in [0, 1]; alpha is dropped, a grey image becomes RGB."""
    from PIL import Image, UnidentifiedImageError

    if image.data is None:
        raise InvalidRequest(f"{field} is a record of an image, not the image itself", field)
    Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            if (opened.width, opened.height) != (image.width, image.height):
                raise InvalidRequest(f"{field} decodes to {opened.width} x {opened.height} pixels, but its header "
                                     f"says {image.width} x {image.height}", field)
            opened.load()
            if opened.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(opened, dtype=np.float32) / 65535.0
                return pixels if grey else np.repeat(pixels[..., None], 3, axis=2)
            converted = opened.convert("L" if grey else "RGB")
            return np.asarray(converted, dtype=np.float32) / np.float32(255.0)
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"{field} is not a readable image ({image.mime}, {image.width} x {image.height}): "
                             f"{exc}", field) from None


def default_size(image_w: int, image_h: int, native: tuple[int, int], multiple: int,
                 width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """The generation size for an init of ``image_w`` x ``image_h`` when the request leaves it out: the init's
    aspect at the model's native area (``native`` = (height, width)), each side rounded to the size multiple;
    a side the request gives is kept and the other follows the aspect."""
    def rounded(value: float) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    aspect = image_w / image_h
    if width and height:
        return width, height
    if width:
        return width, rounded(width / aspect)
    if height:
        return rounded(height * aspect), height
    area = native[0] * native[1]
    return rounded(math.sqrt(area * aspect)), rounded(math.sqrt(area / aspect))


def fit_to(pixels: np.ndarray, width: int, height: int, tile: str = "none") -> tuple[np.ndarray, str | None]:
    """``pixels`` at ``width`` x ``height`` by cover-and-centre-crop, and a note of what was done (None when the
    size already matched). Axes that ``tile`` wraps are resampled as periodic."""
    from ..assets.resize import resize

    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels, None
    scale = max(width / w, height / h)
    cover_w, cover_h = max(width, round(w * scale)), max(height, round(h * scale))
    resized = np.clip(resize(pixels, cover_w, cover_h, tile), 0.0, 1.0)
    x0, y0 = (cover_w - width) // 2, (cover_h - height) // 2
    out = resized[y0:y0 + height, x0:x0 + width]
    cropped = (cover_w, cover_h) != (width, height)
    crop = f", centre-cropped {cover_w - width} x {cover_h - height} px" if cropped else ""
    return np.ascontiguousarray(out, dtype=np.float32), (f"resized {w}x{h} -> {cover_w}x{cover_h}{crop} to "
                                                         f"{width}x{height} (Lanczos-3, tile={tile})")


def blur_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """A Gaussian blur of ``radius`` pixels on the 8-bit mask, as diffusers' ``mask_processor.blur`` (Pillow):
    pixels beyond its reach stay exactly 0, so they are still pasted back exactly."""
    if radius <= 0:
        return mask
    from PIL import Image, ImageFilter

    image = Image.fromarray(np.round(mask * 255.0).astype(np.uint8), mode="L")
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / np.float32(255.0)
