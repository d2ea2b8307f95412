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
from .views import CELL_PAIRS, SURFACE_PX, View, edge_ramp

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
    ramp = edge_ramp(view) if ramp is None else ramp
    # Gathers from flat arrays with np.take: several times faster than 2-D fancy indexing.
    flat_mesh, flat_position = view.mesh.reshape(-1), view.position.reshape(-1, 3)
    flat_normal, flat_image = view.normal.reshape(-1, 3), image.reshape(h * w, -1)

    x, y, depth = camera.project(camera.to_camera(texels.position))
    cand = np.flatnonzero((depth > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h))
    x, y, depth = x[cand], y[cand], depth[cand]
    nearest = np.floor(y).astype(np.int64) * w + np.floor(x).astype(np.int64)
    # Cheap tests first: the same object there, at about the same depth (what is 5 % farther than the
    # surface the pixel shows is hidden; the exact test below decides the rest).
    near_depth = np.take(view.depth.reshape(-1), nearest)
    same = (np.take(flat_mesh, nearest) == mesh_index) & (np.abs(depth - near_depth) <= 0.05 * near_depth)
    cand, x, y, depth, nearest = cand[same], x[same], y[same], depth[same], nearest[same]

    # Visible: the pixel the point lands in shows its surface (near its plane, facing the same way).
    position, normal = np.take(texels.position, cand, axis=0), np.take(texels.normal, cand, axis=0)
    gap = np.take(flat_position, nearest, axis=0) - position
    off_plane = np.abs(np.einsum("ij,ij->i", normal, gap))
    facing_same = np.einsum("ij,ij->i", normal, np.take(flat_normal, nearest, axis=0)) > 0
    visible = (off_plane <= SURFACE_PX * camera.footprint(depth)) & facing_same
    cand, x, y, nearest = cand[visible], x[visible], y[visible], nearest[visible]
    position, normal = position[visible], normal[visible]

    # Bilinear over the four pixel centres around the point, leaving out those across a depth edge from
    # the nearest one (View.links).
    fx, fy = x - 0.5, y - 0.5
    col0, row0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    tx, ty = fx - col0, fy - row0
    near_corner = (ty >= 0.5).astype(np.int64) * 2 + (tx >= 0.5)  # 0: 00, 1: 01, 2: 10, 3: 11
    bits = np.take(view.links.reshape(-1), (row0 + 1) * (w + 1) + col0 + 1).astype(np.int64)
    colour = np.zeros((len(cand), flat_image.shape[1]))
    total = np.zeros(len(cand))
    for corner, (dr, dc) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        wgt = (tx if dc else 1 - tx) * (ty if dr else 1 - ty)
        link = _CORNER_LINK[near_corner, corner]
        good = (link < 0) | ((bits >> np.maximum(link, 0)) & 1).astype(bool)
        r, c = np.clip(row0 + dr, 0, h - 1), np.clip(col0 + dc, 0, w - 1)
        pixel = np.take(flat_image, r * w + c, axis=0)
        wgt = np.where(good, wgt, 0.0)
        colour += np.where(good[:, None], wgt[:, None] * pixel, 0.0)  # 0 * NaN would still be NaN
        total += wgt
    colour /= np.maximum(total, 1e-12)[:, None]
    facing = np.abs(np.einsum("ij,ij->i", normal, view.to_eye(position)))
    weight = facing * np.take(ramp.reshape(-1), nearest)
    return Sample(cand, colour, weight)


# For a point whose nearest cell corner is i, the View.links bit that says corner j shows the same surface
# (-1: j is i itself).
_CORNER_LINK = np.full((4, 4), -1, np.int64)
for _bit, ((_r1, _c1), (_r2, _c2)) in enumerate(CELL_PAIRS):
    _CORNER_LINK[_r1 * 2 + _c1, _r2 * 2 + _c2] = _CORNER_LINK[_r2 * 2 + _c2, _r1 * 2 + _c1] = _bit


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
