"""Images a request conditions on (init, mask, control, depth), checked from their headers alone.

Standard library only: the protocol codec and the client (bundled into Blender) check images with it before
anything decodes them. The header says the format and the size, so a 30,000 x 30,000 PNG (or a file that
only claims to be an image) is refused from its first bytes, before a decoder allocates anything; the engine
decodes what passed, within these limits.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidRequest

MAX_INPUT_BYTES = 64 * 2**20        # one encoded image
MAX_INPUT_SIDE = 8192               # pixels, each side (photos larger than a generation are scaled down)
MAX_INPUT_PIXELS = 8192 * 8192
INPUT_MIMES = ("image/png", "image/jpeg", "image/webp")
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class InputImage:
    """An encoded image (``data``), its format and size as its header states them, and its sha256.

    ``data`` is None for a record of an image (a result's effective request, provenance): enough to name the
    image, not to run again."""

    data: bytes | None = field(repr=False)
    mime: str
    width: int
    height: int
    sha256: str

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> InputImage:
        """Check ``data`` as the image field ``name`` (e.g. "init", "controls[0].image")."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidRequest(f"{name} must be image bytes, got {type(data).__name__}", name)
        data = bytes(data)
        if len(data) > MAX_INPUT_BYTES:
            raise InvalidRequest(f"{name} is {len(data):,} bytes; the limit is {MAX_INPUT_BYTES:,}", name)
        mime, width, height = image_header(data, name)
        check_size(name, width, height)
        return cls(data, mime, width, height, hashlib.sha256(data).hexdigest())

    @classmethod
    def from_path(cls, path: str | Path, name: str) -> InputImage:
        path = Path(path).expanduser()
        try:
            size = path.stat().st_size
            if size > MAX_INPUT_BYTES:
                raise InvalidRequest(f"{name} {path} is {size:,} bytes; the limit is {MAX_INPUT_BYTES:,}", name)
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"cannot read {name} {path}: {exc.strerror or exc}", name) from None
        return cls.from_bytes(data, name)

    @classmethod
    def from_record(cls, record: object, name: str) -> InputImage:
        """A record (``to_record``): what a result's effective request says of an input image."""
        if not isinstance(record, dict):
            raise InvalidRequest(f"{name} must be an image record object", name)
        sha, mime = record.get("sha256"), record.get("mime")
        width, height = record.get("width"), record.get("height")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise InvalidRequest(f"{name}.sha256 must be 64 lower-case hex digits", f"{name}.sha256")
        if mime not in INPUT_MIMES:
            raise InvalidRequest(f"{name}.mime must be one of {', '.join(INPUT_MIMES)}", f"{name}.mime")
        for key, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequest(f"{name}.{key} must be an integer", f"{name}.{key}")
        check_size(name, width, height)
        return cls(None, mime, width, height, sha)

    def to_record(self) -> dict:
        return {"sha256": self.sha256, "mime": self.mime, "width": self.width, "height": self.height}


def check_size(name: str, width: int, height: int) -> None:
    if not (1 <= width <= MAX_INPUT_SIDE and 1 <= height <= MAX_INPUT_SIDE) or width * height > MAX_INPUT_PIXELS:
        raise InvalidRequest(f"{name} is {width} x {height} pixels; input images may be at most {MAX_INPUT_SIDE} "
                             f"pixels on each side", name)


def image_header(data: bytes, name: str) -> tuple[str, int, int]:
    """(mime, width, height) from a PNG, JPEG or WebP header; anything else is refused by name."""
    try:
        if data.startswith(_PNG):
            if data[12:16] != b"IHDR":
                raise ValueError("no IHDR chunk")
            width, height = struct.unpack(">II", data[16:24])
            return "image/png", width, height
        if data.startswith(b"\xff\xd8\xff"):
            return ("image/jpeg", *_jpeg_size(data))
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return ("image/webp", *_webp_size(data))
    except (ValueError, struct.error, IndexError) as exc:
        raise InvalidRequest(f"{name} is not a readable image ({exc})", name) from None
    raise InvalidRequest(f"{name} is not a PNG, JPEG or WebP image (its first bytes are {data[:8]!r})", name)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG segments to the first start-of-frame marker, which holds the size."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("corrupt JPEG marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xDA)):  # no length: TEM, RSTn, SOI, EOI
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise ValueError("no JPEG frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("bad VP8L signature")
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise ValueError(f"unknown WebP chunk {chunk!r}")
