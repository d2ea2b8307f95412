"""Atomic image writers: a reader never sees a half-written file, and a failure leaves nothing behind."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import AigcError


def png_bytes(image: np.ndarray) -> bytes:
    """An H x W x 3 float image in [0, 1] (or uint8) as 8-bit PNG bytes."""
    from PIL import Image

    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise AigcError("output_unwritable", f"cannot write to {path.parent}: {exc.strerror}", "output") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
