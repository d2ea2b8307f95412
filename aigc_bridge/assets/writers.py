"""Image encoders (PNG 8/16-bit, EXR) and atomic writers: a reader never sees a half-written file, and a
failure leaves nothing behind, not even when several files make one output set."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import AigcError

# EXR chromaticities of Rec.709 / sRGB primaries with a D65 white: (red x, y, green x, y, blue x, y, white x, y).
REC709_CHROMATICITIES = (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290)


def _quantise(image: np.ndarray, bit_depth: int) -> np.ndarray:
    if image.dtype == np.uint8 and bit_depth == 8:
        return image
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    top = (1 << bit_depth) - 1
    return np.round(np.clip(image, 0.0, 1.0) * top).astype(np.uint8 if bit_depth == 8 else np.uint16)


def png_bytes(image: np.ndarray, bit_depth: int = 8) -> bytes:
    """An H x W x 3 (colour) or H x W (grey) image, float in [0, 1] or uint8, as 8- or 16-bit PNG bytes.

    8-bit goes through Pillow (the bytes the sidecar has always sent); Pillow cannot write 16-bit RGB, so
    16-bit uses the small encoder below.
    """
    if bit_depth not in (8, 16):
        raise AigcError("invalid_request", f"bit_depth must be 8 or 16, got {bit_depth!r}", "bit_depth")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise AigcError("invalid_request", f"a PNG needs an H x W or H x W x 3 image, got {image.shape}", "image")
    pixels = _quantise(image, bit_depth)
    if bit_depth == 16:
        return _png16(pixels)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png16(pixels: np.ndarray) -> bytes:
    """16-bit PNG, big-endian samples, every row with the "Up" filter (a vectorised row difference)."""
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    raw = pixels.astype(">u2").reshape(height, -1).view(np.uint8)
    filtered = raw.copy()
    filtered[1:] -= raw[:-1]  # uint8 arithmetic wraps modulo 256, exactly what PNG's Up filter needs
    rows = np.concatenate([np.full((height, 1), 2, np.uint8), filtered], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def exr_bytes(image: np.ndarray, *, colour: bool = True, latlong: bool = False, half: bool | None = None) -> bytes:
    """EXR bytes (ZIP compression): RGB for H x W x 3, one "Y" channel for H x W.

    ``colour`` writes Rec.709 chromaticities, so readers know the data are linear Rec.709 colour, and
    stores half floats by default (colour from an 8-bit-deep generator needs no more, and the file is
    half the size); data (``colour=False``, e.g. height) stay float32.
    ``latlong`` adds the standard ``envmap`` attribute that marks an equirectangular environment.
    """
    try:
        import OpenEXR
    except ImportError:
        raise AigcError("missing_dependency", "writing EXR needs the openexr package (pip install openexr)",
                        "exr") from None
    header: dict = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    if colour:
        header["chromaticities"] = REC709_CHROMATICITIES
    if latlong:
        header["envmap"] = OpenEXR.ENVMAP_LATLONG
    half = colour if half is None else half
    pixels = np.ascontiguousarray(image, dtype=np.float16 if half else np.float32)
    channels = {"RGB": pixels} if pixels.ndim == 3 else {"Y": pixels}
    with OpenEXR.File(header, channels) as exr:
        try:
            buffer = io.BytesIO()
            exr.write(buffer)  # streams arrived in the 3.5 bindings (openexr PR #2412)
            return buffer.getvalue()
        except TypeError:  # older bindings take a file name only
            with tempfile.TemporaryDirectory(prefix="aigc-exr-") as folder:
                path = os.path.join(folder, "image.exr")
                exr.write(path)
                with open(path, "rb") as f:
                    return f.read()


def _unwritable(folder: Path, exc: OSError) -> AigcError:
    return AigcError("output_unwritable", f"cannot write to {folder}: {exc.strerror or exc}", "output")


def write_all_atomic(files: Sequence[tuple[str | Path, bytes]], mode: int = 0o644) -> list[Path]:
    """Write several files as one transaction: all appear, or none do.

    Every file is first written to a temporary name beside its target; only when all of them are on disk
    are they renamed into place. Any failure removes the temporary files and the files already renamed.
    ``mode`` is set before the rename (mkstemp's 0600 suits keys, not assets in a shared folder).
    """
    targets = [Path(path) for path, _ in files]
    if len(set(targets)) != len(targets):
        raise AigcError("invalid_request", "two output files would have the same name", "output")
    for path in targets:
        if path.is_dir():
            raise AigcError("output_unwritable", f"cannot write {path}: a folder of that name exists", "output")
    temps: list[str] = []
    placed: list[Path] = []
    created: list[Path] = []  # folders this call made, removed again on failure
    try:
        for path, (_, data) in zip(targets, files):
            try:
                _make_folder(path.parent, created)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            except OSError as exc:
                raise _unwritable(path.parent, exc) from None
            temps.append(tmp)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    os.fchmod(f.fileno(), mode)
            except OSError as exc:
                raise _unwritable(path.parent, exc) from None
        for path, tmp in zip(targets, temps):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _unwritable(path.parent, exc) from None
            placed.append(path)
    except BaseException:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        for path in placed:
            path.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return targets


def _make_folder(folder: Path, created: list[Path]) -> None:
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    return write_all_atomic([(path, data)], mode=mode)[0]
