"""360-degree backdrops: equirectangular (2:1) post-processing and equirect -> cube-map sampling.

Directions use the viewer's frame of cube maps: x right, y up, z forward, where "forward" is the centre
of the panorama (u = 0.5). Longitude lambda = 2 pi (u - 0.5) turns right as u grows, latitude
phi = pi (0.5 - v) is +90 degrees at the top row, and d = (sin lambda cos phi, sin phi, cos lambda cos phi).
The cube faces follow the OpenGL / Vulkan / KTX cube-map table (major axis, sc, tc): every face is seen
from inside the cube and upright; the top face (py) has the front at its bottom edge, the bottom face (ny)
at its top edge. A right-handed, -Z-forward engine (glTF, Godot, three.js) maps world (x, y, z) to this
frame as (x, y, -z); see docs/outputs.md.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequest

CUBE_FACES = ("px", "nx", "py", "ny", "pz", "nz")
CUBE_FACE_ALIASES = {"px": "right", "nx": "left", "py": "top", "ny": "bottom", "pz": "front", "nz": "back"}
DEFAULT_POLE_CAP_DEGREES = 30.0


def check_equirect(image: np.ndarray, field: str = "image") -> None:
    h, w = image.shape[:2]
    if w != 2 * h:
        raise InvalidRequest(f"a backdrop must be equirectangular 2:1 (width = 2 x height); got {w}x{h}", field)


# --- post-processing --------------------------------------------------------------------------------------


def close_seam_x(image: np.ndarray, band: int | None = None) -> np.ndarray:
    """Make the left and right edges meet for an image generated without x wrap.

    The jump J = left column - right column is split between both sides: a linear fade over ``band``
    columns (default width / 16) adds -J/2 at the left edge and +J/2 at the right, fading to nothing
    inside, so both edge columns become their average. A generator with tile="x" does not need this.
    """
    h, w = image.shape[:2]
    band = band or max(2, w // 16)
    jump = (image[:, :1] - image[:, -1:]).astype(np.float32)
    x = np.arange(w, dtype=np.float32)
    weight = -0.5 * np.maximum(0.0, 1.0 - x / band) + 0.5 * np.maximum(0.0, 1.0 - (w - 1 - x) / band)
    weight = weight[None, :, None] if image.ndim == 3 else weight[None, :]
    jump = jump if image.ndim == 3 else jump.reshape(h, 1)
    return (image + jump * weight).astype(np.float32)


def soften_poles(image: np.ndarray, cap_degrees: float = DEFAULT_POLE_CAP_DEGREES) -> np.ndarray:
    """Soften the polar caps, where equirectangular rows pinch to a point.

    Within ``cap_degrees`` of each pole, each row is low-passed around its circle: the Fourier component
    with k cycles per turn is scaled by exp(-(k / k_c)^2 / 2), k_c = (width / 2) cos(phi_outer), the
    finest detail the equator row can hold shrunk to the row's circumference (phi_outer = the latitude of
    the row's pole-side edge). The filtered row is blended in with a smoothstep weight, 0 at the cap's
    edge and 1 at the pole. The outermost rows thus become exactly their mean colour (k_c = 0), detail
    returns gradually towards the cap's edge, and the x wrap is untouched (the filter is periodic in x).
    """
    h, w = image.shape[:2]
    rows = np.arange(h)
    outer = np.maximum(np.abs(90.0 - (rows + 0.5) * 180.0 / h) + 90.0 / h, 0.0).clip(max=90.0)  # degrees
    start = 90.0 - cap_degrees
    t = np.clip((outer - start) / cap_degrees, 0.0, 1.0)
    blend = t * t * (3.0 - 2.0 * t)
    k = np.fft.rfftfreq(w, d=1.0 / w)[None, :]  # cycles per turn: 0 .. w / 2
    k_c = (w / 2) * np.cos(np.radians(outer))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(k == 0, 1.0, np.exp(-0.5 * (k / np.maximum(k_c, 1e-12)) ** 2))
    spectrum = np.fft.rfft(image, axis=1)
    gain = gain[..., None] if image.ndim == 3 else gain
    low = np.fft.irfft(spectrum * gain, n=w, axis=1)
    b = blend[:, None, None] if image.ndim == 3 else blend[:, None]
    return ((1.0 - b) * image + b * low).astype(np.float32)


# --- directions and sampling ------------------------------------------------------------------------------


def equirect_directions(width: int, height: int) -> np.ndarray:
    """Unit directions (H x W x 3) of the pixel centres of a width x height equirectangular image."""
    lam = 2.0 * np.pi * ((np.arange(width) + 0.5) / width - 0.5)
    phi = np.pi * (0.5 - (np.arange(height) + 0.5) / height)
    lam, phi = np.meshgrid(lam, phi)
    return np.stack([np.sin(lam) * np.cos(phi), np.sin(phi), np.cos(lam) * np.cos(phi)], axis=-1)


def sample_equirect(image: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Bilinear samples of an equirectangular image at unit ``directions`` (... x 3): wraps on x, clamps y."""
    h, w = image.shape[:2]
    d = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    lam = np.arctan2(d[..., 0], d[..., 2])
    phi = np.arcsin(np.clip(d[..., 1], -1.0, 1.0))
    x = (lam / (2.0 * np.pi) + 0.5) * w - 0.5
    y = np.clip((0.5 - phi / np.pi) * h - 0.5, 0.0, h - 1.0)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros_like(x0)
    fx, fy = x - x0, y - y0
    x0, x1 = x0 % w, (x0 + 1) % w
    y1 = np.minimum(y0 + 1, h - 1)
    if image.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def cube_face_directions(face: str, size: int) -> np.ndarray:
    """Unit directions (size x size x 3) of one face's pixel centres (OpenGL cube-map table)."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    sc, tc = np.meshgrid(c, c)  # sc along columns (s), tc along rows (t, downwards)
    one = np.ones_like(sc)
    d = {
        "px": (one, -tc, -sc),
        "nx": (-one, -tc, sc),
        "py": (sc, one, tc),
        "ny": (sc, -one, -tc),
        "pz": (sc, -tc, one),
        "nz": (-sc, -tc, -one),
    }[face]
    d = np.stack(d, axis=-1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def equirect_to_cube(image: np.ndarray, size: int | None = None) -> dict[str, np.ndarray]:
    """Six faces (default width / 4 pixels square, the equator's resolution) sampled bilinearly."""
    size = size or image.shape[1] // 4
    return {face: sample_equirect(image, cube_face_directions(face, size)) for face in CUBE_FACES}


def sample_cube(faces: dict[str, np.ndarray], directions: np.ndarray) -> np.ndarray:
    """Bilinear samples of a cube map at ``directions`` (clamped within each face), for checks and tools."""
    d = directions.reshape(-1, 3)
    ax = np.abs(d)
    major = np.argmax(ax, axis=1)
    first = next(iter(faces.values()))
    size = first.shape[0]
    out = np.zeros((d.shape[0], *first.shape[2:]), np.float32)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    table = {  # face: (mask, sc, tc, |ma|)
        "px": ((major == 0) & (x > 0), -z, -y, ax[:, 0]),
        "nx": ((major == 0) & (x <= 0), z, -y, ax[:, 0]),
        "py": ((major == 1) & (y > 0), x, z, ax[:, 1]),
        "ny": ((major == 1) & (y <= 0), x, -z, ax[:, 1]),
        "pz": ((major == 2) & (z > 0), x, -y, ax[:, 2]),
        "nz": ((major == 2) & (z <= 0), -x, -y, ax[:, 2]),
    }
    for face, (mask, sc, tc, ma) in table.items():
        if not mask.any():
            continue
        col = np.clip(((sc[mask] / ma[mask]) + 1.0) * 0.5 * size - 0.5, 0.0, size - 1.0)
        row = np.clip(((tc[mask] / ma[mask]) + 1.0) * 0.5 * size - 0.5, 0.0, size - 1.0)
        out[mask] = _bilinear(faces[face], row, col)
    return out.reshape(*directions.shape[:-1], *first.shape[2:])


def _bilinear(image: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    r0 = np.minimum(np.floor(row).astype(np.int64), max(h - 2, 0))
    c0 = np.minimum(np.floor(col).astype(np.int64), max(w - 2, 0))
    fr, fc = row - r0, col - c0
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    if image.ndim == 3:
        fr, fc = fr[:, None], fc[:, None]
    top = image[r0, c0] * (1 - fc) + image[r0, c1] * fc
    bottom = image[r1, c0] * (1 - fc) + image[r1, c1] * fc
    return top * (1 - fr) + bottom * fr
