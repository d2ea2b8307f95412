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
    # Gathers from flat arrays with np.take: several times faster than 2-D fancy indexing. An extra black
    # pixel at index H * W stands in for the corners a sample leaves out.
    flat_image = np.concatenate([image.reshape(h * w, -1).astype(np.float32),
                                 np.zeros((1, image.shape[2]), np.float32)])
    plane = view.planes

    x, y, depth = _project_columns(camera, texels.position_columns)
    cand = np.flatnonzero((depth > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h))
    x, y, depth = x[cand], y[cand], depth[cand]
    nearest = np.floor(y).astype(np.int64) * w + np.floor(x).astype(np.int64)
    # Cheap tests first: the same object there, at about the same depth (what is 5 % farther than the
    # surface the pixel shows is hidden; the exact test below decides the rest).
    near_depth = np.take(view.depth.reshape(-1), nearest)
    keep = (np.take(view.mesh.reshape(-1), nearest) == mesh_index) & (np.abs(depth - near_depth) <= 0.05 * near_depth)
    cand, x, y, depth, nearest = cand[keep], x[keep], y[keep], depth[keep], nearest[keep]

    # Visible: the pixel the point lands in shows its surface: the point is on that pixel's plane (within
    # SURFACE_PX footprints) and its face turns the same side to the eye.
    px, py, pz = (np.take(texels.position_columns[k], cand) for k in range(3))
    nx, ny, nz = (np.take(texels.normal[:, k], cand) for k in range(3))
    pixel_plane = np.take(plane, nearest, axis=0)  # unit normal turned to the eye, offset
    off_plane = np.abs(pixel_plane[:, 0] * px + pixel_plane[:, 1] * py + pixel_plane[:, 2] * pz - pixel_plane[:, 3])
    if camera.perspective:
        ex, ey, ez = camera.position.astype(np.float32)
        tx_, ty_, tz_ = ex - px, ey - py, ez - pz
        length = np.sqrt(tx_ * tx_ + ty_ * ty_ + tz_ * tz_)
    else:
        tx_, ty_, tz_ = (-camera.forward).astype(np.float32)
        length = np.float32(1.0)
    cos = (nx * tx_ + ny * ty_ + nz * tz_) / length  # the texel's facing, signed
    # Its face and the pixel's turn the same way (their normals less than 90 degrees apart).
    towards = pixel_plane[:, 0] * nx + pixel_plane[:, 1] * ny + pixel_plane[:, 2] * nz
    same_way = (towards > 0) == np.take(view.side.reshape(-1), nearest)
    visible = (off_plane <= SURFACE_PX * camera.footprint(depth)) & same_way
    cand, x, y, nearest, cos = cand[visible], x[visible], y[visible], nearest[visible], cos[visible]

    # Bilinear over the four pixel centres around the point, leaving out those across a depth edge from
    # the nearest one (View.links).
    fx, fy = x - np.float32(0.5), y - np.float32(0.5)
    col0, row0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    tx, ty = fx - col0, fy - row0
    near_corner = (ty >= 0.5).astype(np.int64) * 2 + (tx >= 0.5)  # 0: 00, 1: 01, 2: 10, 3: 11
    bits = np.take(view.links.reshape(-1), (row0 + 1) * (w + 1) + col0 + 1).astype(np.int64)
    colour = np.zeros((len(cand), flat_image.shape[1]), np.float32)
    total = np.zeros(len(cand), np.float32)
    for corner, (dr, dc) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        link = _CORNER_LINK[near_corner, corner]
        good = (link < 0) | ((bits >> np.maximum(link, 0)) & 1).astype(bool)
        wgt = np.where(good, (tx if dc else 1 - tx) * (ty if dr else 1 - ty), np.float32(0.0))
        index = np.where(good, np.clip(row0 + dr, 0, h - 1) * w + np.clip(col0 + dc, 0, w - 1), h * w)
        colour += wgt[:, None] * np.take(flat_image, index, axis=0)
        total += wgt
    colour /= np.maximum(total, np.float32(1e-12))[:, None]
    weight = np.abs(cos) * np.take(ramp.reshape(-1), nearest)
    return Sample(cand, colour.astype(np.float64), weight.astype(np.float64))


def _project_columns(camera, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image x, y and depth of world points given as (3, N) float32 columns, in float32 (a thousandth of a
    pixel at 4096 px): the first pass over every texel, before the frustum leaves the few that matter."""
    m = camera.world_to_camera.astype(np.float32)
    p0, p1, p2 = columns
    cam = [p0 * m[i, 0] + p1 * m[i, 1] + p2 * m[i, 2] + m[i, 3] for i in range(3)]
    depth = -cam[2]
    if camera.perspective:
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.float32(1.0) / depth
        x = np.float32(camera.cx) + np.float32(camera.fx) * cam[0] * inv
        y = np.float32(camera.cy) - np.float32(camera.fy) * cam[1] * inv
    else:
        x = np.float32(camera.cx) + np.float32(camera.fx) * cam[0]
        y = np.float32(camera.cy) - np.float32(camera.fy) * cam[1]
    return x, y, depth


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
