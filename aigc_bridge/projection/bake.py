"""Back-projection: a view's image into a mesh's texture, texel by texel, with visibility and weights.

Each covered texel's surface point is projected into the view. It takes colour only if the pixel it lands
in shows that same surface (the same object, facing the same way, within SURFACE_PX pixel footprints of
the texel's plane): occluded surfaces, the back of thin parts and the background take nothing. The
colour is the bilinear sample of the pixels around it that show the same surface (so nothing bleeds in
across a silhouette), and its weight is the texel's facing ratio times the view's trust in that pixel
(low at depth edges). The texture keeps a record per texel, ``quality``: how well the colour it holds
was seen (0 = never), which is what the multi-view loop asks when it decides what to repaint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .texels import TexelMap
from .views import SURFACE_PX, View, edge_ramp

BLEND_POWER = 4  # blending views: weight ** 4, so the view that saw a texel best dominates, without seams


@dataclass
class Sample:
    """What one view says about one mesh's texels: which texels (indices into the TexelMap), their colour
    in the view's image and the weight of that observation (0..1)."""

    texel: np.ndarray
    colour: np.ndarray
    weight: np.ndarray


@dataclass
class TextureState:
    """A texture being baked: weighted colour sums and the seen-quality record, over the covered texels."""

    texels: TexelMap
    colour_sum: np.ndarray  # (N, C)
    weight_sum: np.ndarray  # (N,)
    quality: np.ndarray     # (N,) the weight of the best observation of the colour held, 0 = never seen

    @classmethod
    def empty(cls, texels: TexelMap, channels: int = 3) -> TextureState:
        n = texels.count
        return cls(texels, np.zeros((n, channels)), np.zeros(n), np.zeros(n))

    @property
    def seen(self) -> np.ndarray:
        return self.quality > 0

    def colours(self) -> np.ndarray:
        """(N, C) baked colour per texel; 0 where nothing was seen."""
        w = self.weight_sum[:, None]
        return np.divide(self.colour_sum, w, out=np.zeros_like(self.colour_sum), where=w > 0)

    def coverage(self) -> float:
        """The share of the mesh's surface area whose texels some view saw."""
        return float(self.texels.area[self.seen].sum() / self.texels.surface_area)


def sample_view(texels: TexelMap, mesh_index: int, view: View, image: np.ndarray,
                ramp: np.ndarray | None = None) -> Sample:
    """Project ``image`` (H, W, C), taken by ``view``, onto the texels of mesh ``mesh_index``."""
    camera = view.camera
    h, w = view.mesh.shape
    if ramp is None:
        ramp = edge_ramp(view)
    x, y, depth = camera.project(camera.to_camera(texels.position))
    ok = (depth > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    cand = np.flatnonzero(ok)
    x, y, depth = x[cand], y[cand], depth[cand]
    position, normal = texels.position[cand], texels.normal[cand]
    tol = SURFACE_PX * camera.footprint(depth)

    def same_surface(row: np.ndarray, col: np.ndarray) -> np.ndarray:
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        r, c = np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)
        off_plane = np.abs(np.einsum("ij,ij->i", normal, view.position[r, c] - position))
        return (inside & (view.mesh[r, c] == mesh_index) & (off_plane <= tol)
                & (np.einsum("ij,ij->i", normal, view.normal[r, c]) > 0))

    near_row, near_col = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    visible = same_surface(near_row, near_col)
    cand, x, y = cand[visible], x[visible], y[visible]
    position, normal, tol = position[visible], normal[visible], tol[visible]
    near_row, near_col = near_row[visible], near_col[visible]

    # Bilinear over the four pixel centres around the point, keeping only those on the same surface.
    fx, fy = x - 0.5, y - 0.5
    col0, row0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    tx, ty = fx - col0, fy - row0
    colour = np.zeros((len(cand), image.shape[2]))
    total = np.zeros(len(cand))
    for dr, dc, wgt in ((0, 0, (1 - tx) * (1 - ty)), (0, 1, tx * (1 - ty)), (1, 0, (1 - tx) * ty),
                        (1, 1, tx * ty)):
        r, c = row0 + dr, col0 + dc
        good = same_surface(r, c)
        wgt = np.where(good, wgt, 0.0)
        pixel = image[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)]
        colour += np.where(good[:, None], wgt[:, None] * pixel, 0.0)  # 0 * NaN would still be NaN
        total += wgt
    colour /= np.maximum(total, 1e-12)[:, None]
    facing = np.abs(np.einsum("ij,ij->i", normal, view.to_eye(position)))
    weight = facing * ramp[near_row, near_col]
    return Sample(cand, colour, weight)


def bake_view(state: TextureState, sample: Sample, *, repaint_below: float | None = None) -> int:
    """Put a view's sample into the texture; returns how many texels changed.

    Default: blend with what earlier views gave, weighted by weight ** BLEND_POWER (order-independent).
    ``repaint_below=r``: the multi-view loop's rule; a texel takes the new colour outright if it was
    never seen or was seen worse than ``r`` times this view's weight, and keeps its colour otherwise."""
    texel, weight = sample.texel, sample.weight
    strength = weight ** BLEND_POWER
    if repaint_below is None:
        state.colour_sum[texel] += strength[:, None] * sample.colour
        state.weight_sum[texel] += strength
        state.quality[texel] = np.maximum(state.quality[texel], weight)
        return int((weight > 0).sum())
    take = (state.quality[texel] < repaint_below * weight) & (weight > 0)
    texel = texel[take]
    state.colour_sum[texel] = strength[take, None] * sample.colour[take]
    state.weight_sum[texel] = strength[take]
    state.quality[texel] = weight[take]
    return int(take.sum())
