"""A PBR set from a generated albedo: height, normal, roughness, ambient occlusion, metallic and glTF ORM.

A non-learned, unit-testable baseline (see shared/notes/assets.md section 6). Every filter is periodic
(``periodic.py``), so the maps of a tileable albedo tile too; for an albedo that does not tile, axes are
mirror-extended instead, which keeps edges free of wrap-around artefacts.

Conventions: the height is the surface z at each pixel, in [0, 1] times ``depth`` x (tile width); the
normal of z = h(u, v) with u right and v *up* is (-dh/du, -dh/dv, 1). Image rows go down, so with
r = row, c = column: n = normalise(-s dh/dc, +s dh/dr, 1), s = depth x width. That is OpenGL / glTF /
Blender (+Y, green up); DirectX (-Y) flips green.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest
from .colour import linear_to_srgb, luminance, srgb_to_linear
from .periodic import blur, crop, extend, gradient

NORMAL_CONVENTIONS = ("opengl", "directx")
DEFAULT_DEPTH = 0.02  # relief depth as a fraction of the tile width: 2 cm on a 1 m tile


@dataclass(frozen=True)
class PbrMaps:
    """The data maps of one albedo, float32 in [0, 1], all of the albedo's size."""

    height: np.ndarray     # H x W
    normal: np.ndarray     # H x W x 3, encoded as n * 0.5 + 0.5 in ``convention``
    roughness: np.ndarray  # H x W
    ao: np.ndarray         # H x W, 1 = fully lit
    metallic: np.ndarray   # H x W, zeros: a generated albedo says nothing about metal
    convention: str

    @property
    def orm(self) -> np.ndarray:
        """glTF packing: R occlusion, G roughness, B metallic."""
        return pack_orm(self.ao, self.roughness, self.metallic)


def check_convention(convention: str) -> str:
    if convention not in NORMAL_CONVENTIONS:
        raise InvalidRequest(f"normal_convention must be opengl or directx; got {convention!r}", "normal_convention")
    return convention


def pack_orm(ao: np.ndarray, roughness: np.ndarray, metallic: np.ndarray) -> np.ndarray:
    return np.stack([ao, roughness, metallic], axis=-1).astype(np.float32)


def pbr_maps(albedo: np.ndarray, *, tile: str = "both", normal_convention: str = "opengl",
             depth: float = DEFAULT_DEPTH) -> PbrMaps:
    """All maps for an H x W x 3 sRGB albedo in [0, 1]; ``tile`` says which axes wrap."""
    check_convention(normal_convention)
    luma = linear_to_srgb(luminance(srgb_to_linear(albedo)))  # perceptual lightness: better spread than Y
    height = height_from_luma(luma, tile)
    roughness = roughness_from_luma(luma, tile)
    return PbrMaps(height=height, normal=normal_from_height(height, tile=tile, depth=depth,
                                                            convention=normal_convention),
                   roughness=roughness, ao=ambient_occlusion(height, tile), metallic=np.zeros_like(height),
                   convention=normal_convention)


def height_from_luma(luma: np.ndarray, tile: str) -> np.ndarray:
    """Bright = high. A high-pass (Gaussian sigma = width / 4) drops the light gradients baked into the
    albedo; a light blur tames pixel noise; 1st..99th percentiles are stretched to [0, 1]."""
    width = luma.shape[1]
    ext = extend(luma, tile)
    detail = ext - blur(ext, width / 4)
    detail = blur(detail, max(0.5, width / 1024))
    lo, hi = np.percentile(detail, [1.0, 99.0])
    if hi - lo < 1e-6:
        return np.full(luma.shape, 0.5, np.float32)
    return crop(np.clip((detail - lo) / (hi - lo), 0.0, 1.0), luma.shape).astype(np.float32)


def normal_vectors(height: np.ndarray, *, tile: str = "both", depth: float = DEFAULT_DEPTH) -> np.ndarray:
    """Unit OpenGL (+Y) normals, H x W x 3 in [-1, 1], from central differences (wrapping as ``tile`` says)."""
    width = height.shape[1]
    d_row, d_col = gradient(extend(height.astype(np.float32), tile))
    scale = depth * width
    n = np.stack([-scale * d_col, scale * d_row, np.ones_like(d_col)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return crop(n, height.shape).astype(np.float32)


def normal_from_height(height: np.ndarray, *, tile: str = "both", depth: float = DEFAULT_DEPTH,
                       convention: str = "opengl") -> np.ndarray:
    """The encoded normal map (n * 0.5 + 0.5); DirectX flips the green channel."""
    n = normal_vectors(height, tile=tile, depth=depth)
    if check_convention(convention) == "directx":
        n[..., 1] *= -1.0
    return (n * 0.5 + 0.5).astype(np.float32)


def roughness_from_luma(luma: np.ndarray, tile: str) -> np.ndarray:
    """Heuristic: rougher where the albedo is busy (local contrast) and dark, smoother where plain and
    bright; centred on 0.6, clipped to [0.15, 1]. A starting point for artists, not a measurement."""
    width = luma.shape[1]
    sigma = max(1.0, width / 64)
    ext = extend(luma, tile)
    detail = ext - blur(ext, sigma)
    contrast = np.sqrt(np.maximum(blur(detail**2, sigma), 0.0))
    rough = 0.6 + 0.12 * _z(contrast) - 0.12 * _z(ext)
    return crop(np.clip(rough, 0.15, 1.0), luma.shape).astype(np.float32)


def ambient_occlusion(height: np.ndarray, tile: str) -> np.ndarray:
    """Cavity AO: how far a pixel sits below its neighbourhood's mean height, at three scales
    (sigma = width / 128, / 32, / 8, weights 0.5, 0.3, 0.2); ao = 1 - 2 x cavity, clipped to [0, 1]."""
    width = height.shape[1]
    ext = extend(height.astype(np.float32), tile)
    cavity = np.zeros_like(ext)
    for fraction, weight in ((1 / 128, 0.5), (1 / 32, 0.3), (1 / 8, 0.2)):
        cavity += weight * np.maximum(blur(ext, max(1.0, width * fraction)) - ext, 0.0)
    return crop(np.clip(1.0 - 2.0 * cavity, 0.0, 1.0), height.shape).astype(np.float32)


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-6)
