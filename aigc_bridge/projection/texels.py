"""The mesh rasterised into its own UV map: for every texel the triangles cover, the surface point it holds.

Texel (row, col) of an S x S texture has its centre at u = (col + 0.5) / S, v = 1 - (row + 0.5) / S
(top row first, v up). Where UV triangles overlap (mirrored halves sharing an island, stacked UVs), a
texel can only hold one surface point: the lowest-numbered triangle keeps it, and the others show the
same texels; that is said in a warning with the share of the surface it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import InvalidRequest
from .mesh import Mesh
from .raster import boxes_from_points, edge_coefficients, rasterize

MIN_TEXTURE, MAX_TEXTURE = 16, 4096


@dataclass
class TexelMap:
    """The covered texels of one mesh's S x S texture, as flat arrays over those N texels."""

    size: int
    index: np.ndarray     # (N,) int64: row * size + col
    triangle: np.ndarray  # (N,) int32
    bary: np.ndarray      # (N, 3) float32: barycentrics in that triangle
    position: np.ndarray  # (N, 3) float32: the surface point, world space
    normal: np.ndarray    # (N, 3) float32: the face normal
    area: np.ndarray      # (N,) float64: the surface area the texel stands for
    surface_area: float   # of the whole mesh (faces too small to hold a texel count as uncovered)
    warnings: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.index)

    @cached_property
    def position_columns(self) -> np.ndarray:
        """(3, N) float32: the positions by coordinate, each contiguous (projecting millions of texels is
        several times faster on columns than through a (N, 3) @ (3, 3) product)."""
        return np.ascontiguousarray(self.position.T, np.float32)

    def mask(self) -> np.ndarray:
        """(S, S) bool: texels that hold a surface point."""
        out = np.zeros(self.size * self.size, bool)
        out[self.index] = True
        return out.reshape(self.size, self.size)

    def image(self, values: np.ndarray, fill: object = 0.0) -> np.ndarray:
        """Per-texel ``values`` (N, ...) scattered into an (S, S, ...) image; uncovered texels get ``fill``."""
        out = np.empty((self.size * self.size, *values.shape[1:]), values.dtype)
        out[...] = fill
        out[self.index] = values
        return out.reshape(self.size, self.size, *values.shape[1:])

    def gather(self, image: np.ndarray) -> np.ndarray:
        """The inverse of ``image``: an (S, S, ...) image's values at the covered texels."""
        return image.reshape(self.size * self.size, *image.shape[2:])[self.index]


def check_texture_size(size: object, field: str = "texture_size") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size & (size - 1) or \
            not MIN_TEXTURE <= size <= MAX_TEXTURE:
        sizes = ", ".join(str(1 << k) for k in range(MIN_TEXTURE.bit_length() - 1, MAX_TEXTURE.bit_length()))
        raise InvalidRequest(f"{field} must be a power of two ({sizes}) so that mipmaps halve cleanly; "
                             f"got {size!r}", field)
    return int(size)


def texel_map(mesh: Mesh, size: int) -> TexelMap:
    """Rasterise ``mesh`` into its UV map at ``size`` x ``size``."""
    size = check_texture_size(size)
    uv = mesh.uvs
    x, y = uv[..., 0] * size, (1.0 - uv[..., 1]) * size
    boxes = boxes_from_points(x, y, size, size)
    coef = edge_coefficients(uv, pinhole=False)
    centres = (np.arange(size) + 0.5) / size
    orientation = np.sign(coef[:, :, 2].sum(axis=1))  # the edge functions sum to twice the signed UV area
    faces = np.flatnonzero(orientation != 0).astype(np.int32)  # faces without UV area hold no texel
    frags = rasterize(coef[faces], boxes[faces], centres, 1.0 - centres, faces, orientation[faces])

    notes = []
    if np.bincount(frags.pixel, minlength=size * size).max(initial=0) > 1:  # overlapping UVs
        owner = np.full(size * size, np.iinfo(np.int32).max, np.int32)
        np.minimum.at(owner, frags.pixel, frags.triangle)
        win = frags.triangle == owner[frags.pixel]
        shared = np.union1d(np.unique(frags.triangle[~win]), np.unique(owner[frags.pixel[~win]]))
        share = float(mesh.areas[shared].sum() / mesh.areas.sum())
        notes.append(f"mesh {mesh.name!r}: {len(shared):,} faces ({share:.1%} of the surface) overlap others in "
                     "the UV map (mirrored or stacked UVs): each shared texel is baked from one of them and "
                     "the others show the same colours; unwrap without overlaps (e.g. Smart UV Project) for a "
                     "texture of their own")
        pixel, triangle, weights = frags.pixel[win], frags.triangle[win], frags.weights[win]
    else:
        pixel, triangle, weights = frags.pixel, frags.triangle, frags.weights
    bary = weights / weights.sum(axis=1, keepdims=True)
    corner = np.take(mesh.triangles, triangle, axis=0)
    position = np.zeros((len(triangle), 3))
    for k in range(3):  # np.take: row gathers several times faster than fancy indexing
        position += bary[:, k, None] * np.take(mesh.positions, corner[:, k], axis=0)
    area = mesh.areas
    per_triangle = np.bincount(triangle, minlength=len(area))
    texel_area = np.take(area / np.maximum(per_triangle, 1), triangle)
    return TexelMap(size, pixel, triangle, bary.astype(np.float32), position.astype(np.float32),
                    np.take(mesh.normals, triangle, axis=0).astype(np.float32), texel_area,
                    float(area.sum()), tuple(notes))
