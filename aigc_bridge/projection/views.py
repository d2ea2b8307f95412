"""What a camera sees of the meshes, per pixel: which surface, its depth, position, normal, facing ratio and
UV; from that, the depth image a depth ControlNet takes, how far each pixel can be trusted, and the
partially textured meshes rendered into the view.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .cameras import Camera
from .mesh import Mesh
from .raster import boxes_from_points, edge_coefficients, rasterize

DEPTH_FLOOR = 0.5   # the farthest object point's brightness; the background is 0 (TEXTure's convention)
EDGE_PX = 3         # pixels from a depth edge over which trust ramps up
EDGE_FLOOR = 0.1    # trust at a depth edge: seen, but badly, so a better view repaints it
SURFACE_PX = 2.0    # neighbours farther than this many pixel footprints off a pixel's plane are another surface


# The pixel pairs of a 2 x 2 cell of pixel centres (corners 00, 01, 10, 11 as (row, col) offsets) whose
# "same surface" bits View.links stores: top, bottom, left, right, diagonal, anti-diagonal.
CELL_PAIRS = (((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 0), (1, 0)), ((0, 1), (1, 1)), ((0, 0), (1, 1)),
              ((0, 1), (1, 0)))


@dataclass
class View:
    """Per-pixel buffers of one camera over a list of meshes; background pixels have ``mesh == -1``."""

    camera: Camera
    mesh: np.ndarray      # (H, W) int32: index into the mesh list, -1 for background
    triangle: np.ndarray  # (H, W) int32: the triangle within that mesh
    depth: np.ndarray     # (H, W) float64: distance along the view axis, inf for background
    position: np.ndarray  # (H, W, 3) float64, world space
    normal: np.ndarray    # (H, W, 3) float64, world space, the face's own (winding) normal
    facing: np.ndarray    # (H, W) float64: |cos| between the normal and the direction to the eye, 0 off-object
    uv: np.ndarray        # (H, W, 2) float64
    bary: np.ndarray      # (H, W, 3) float64: barycentrics of the pixel's point in its triangle

    @property
    def covered(self) -> np.ndarray:
        return self.mesh >= 0

    def to_eye(self, points: np.ndarray) -> np.ndarray:
        """Unit directions from world points to the eye (the view direction for an orthographic camera)."""
        if not self.camera.perspective:
            return np.broadcast_to(-self.camera.forward, points.shape)
        d = self.camera.position - points
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    @cached_property
    def planes(self) -> np.ndarray:
        """(H * W, 4) float32: each pixel's surface plane, the unit normal turned towards the eye and its
        offset (n . x = d on the plane), for the back-projection's visibility test."""
        normal = np.where(self.side[..., None], self.normal, -self.normal).reshape(-1, 3)
        offset = np.einsum("ij,ij->i", normal, self.position.reshape(-1, 3))
        return np.concatenate([normal, offset[:, None]], axis=1).astype(np.float32)

    @cached_property
    def side(self) -> np.ndarray:
        """(H, W) bool: the face a pixel shows turns its front (winding) side to the eye."""
        to_eye = self.to_eye(self.position.reshape(-1, 3)).reshape(self.position.shape)
        return np.einsum("hwc,hwc->hw", self.normal, to_eye) > 0

    @cached_property
    def pixel_links(self) -> dict[tuple[int, int], np.ndarray]:
        """``same_surface`` towards the right, down, down-right and down-left neighbours, computed once."""
        return {offset: same_surface(self, *offset) for offset in ((0, 1), (1, 0), (1, 1), (1, -1))}

    def linked(self, dy: int, dx: int) -> np.ndarray:
        """(H, W) bool: pixel (r, c) shows the same surface as pixel (r + dy, c + dx) (symmetric)."""
        if (dy, dx) in self.pixel_links:
            return self.pixel_links[(dy, dx)]
        return _shift(self.pixel_links[(-dy, -dx)], dy, dx, False)  # the pair seen from the other end

    @cached_property
    def links(self) -> np.ndarray:
        """(H + 1, W + 1) uint8: per 2 x 2 cell of pixel centres (cell (i, j) has pixel (i - 1, j - 1) at its
        corner 00), bit k is set when the pixels of CELL_PAIRS[k] show one surface (``same_surface``).
        Bilinear sampling reads it to leave out the corners across a depth edge."""
        h, w = self.mesh.shape
        cells = np.zeros((h + 1, w + 1), np.uint8)
        for bit, ((r1, c1), (r2, c2)) in enumerate(CELL_PAIRS):
            linked = np.zeros((h + 2, w + 2), bool)  # pixel (r, c) at (r + 1, c + 1)
            linked[1:-1, 1:-1] = self.linked(r2 - r1, c2 - c1)
            # cell (i, j)'s corner (r1, c1) is pixel (i - 1 + r1, j - 1 + c1), at (i + r1, j + c1) above
            cells |= linked[r1:r1 + h + 1, c1:c1 + w + 1].astype(np.uint8) << bit
        return cells


def render_view(meshes: list[Mesh], camera: Camera) -> View:
    """Rasterise every mesh into ``camera`` with one depth buffer (objects hide each other)."""
    h, w = camera.height, camera.width
    rx, ry = camera.pixel_rays()
    pixels, owners, meshes_of, weights, depths = [], [], [], [], []
    for index, mesh in enumerate(meshes):
        corners = camera.to_camera(mesh.positions)[mesh.triangles]  # (T, 3, 3), camera space
        x, y, d = camera.project(corners)
        boxes = boxes_from_points(x, y, w, h)
        if camera.perspective:
            near = 1e-9 * max(1.0, float(np.abs(corners).max()))
            behind = d <= near
            straddle = behind.any(axis=1) & ~behind.all(axis=1)
            boxes[straddle] = (0, 0, w, h)  # a triangle crossing the eye plane: test the whole image
            coef = edge_coefficients(corners, pinhole=True, ids=mesh.welded)
            volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2]))
            orientation = np.where(straddle, 0.0, np.sign(volume))  # in front: e * sign(volume) > 0 inside
            usable = ~behind.all(axis=1) & ((orientation != 0) | straddle)
        else:
            coef = edge_coefficients(corners[:, :, :2], pinhole=False, ids=mesh.welded)
            orientation = np.sign(coef[:, :, 2].sum(axis=1))  # 2D: the edge functions sum to twice the area
            usable = (d > 0).any(axis=1) & (orientation != 0)
        tris = np.flatnonzero(usable).astype(np.int32)
        frags = rasterize(coef[tris], boxes[tris], rx, ry, tris, orientation[tris])
        total = frags.weights.sum(axis=1)
        if camera.perspective:
            depth = np.take(volume, frags.triangle) / total  # where the ray (rx, ry, -1) meets the plane
            good = depth > near
        else:
            depth = np.einsum("ij,ij->i", frags.weights, np.take(d, frags.triangle, axis=0)) / total
            good = depth > 0
        pixels.append(frags.pixel[good])
        owners.append(frags.triangle[good])
        meshes_of.append(np.full(int(good.sum()), index, np.int32))
        weights.append(frags.weights[good] / total[good, None])
        depths.append(depth[good])
    pixel, triangle, mesh_id = np.concatenate(pixels), np.concatenate(owners), np.concatenate(meshes_of)
    bary, depth = np.concatenate(weights), np.concatenate(depths)

    zbuf = np.full(h * w, np.inf)
    np.minimum.at(zbuf, pixel, depth)
    win = depth <= np.take(zbuf, pixel)
    pixel, triangle, mesh_id, bary = pixel[win], triangle[win], mesh_id[win], bary[win]

    view = View(camera, np.full(h * w, -1, np.int32), np.full(h * w, -1, np.int32), zbuf,
                np.zeros((h * w, 3)), np.zeros((h * w, 3)), np.zeros(h * w), np.zeros((h * w, 2)),
                np.zeros((h * w, 3)))
    view.mesh[pixel], view.triangle[pixel], view.bary[pixel] = mesh_id, triangle, bary
    for index, mesh in enumerate(meshes):
        sel = mesh_id == index
        px, tri, lam = pixel[sel], triangle[sel], bary[sel]
        corner = np.take(mesh.triangles, tri, axis=0)
        uv = np.take(mesh.uvs, tri, axis=0)
        view.position[px] = sum(lam[:, k, None] * np.take(mesh.positions, corner[:, k], axis=0) for k in range(3))
        view.uv[px] = sum(lam[:, k, None] * uv[:, k] for k in range(3))
        view.normal[px] = np.take(mesh.normals, tri, axis=0)
    covered = view.mesh >= 0
    to_eye = view.to_eye(view.position[covered])
    view.facing[covered] = np.abs(np.einsum("ij,ij->i", view.normal[covered], to_eye))
    for name in ("mesh", "triangle", "depth", "facing"):
        setattr(view, name, getattr(view, name).reshape(h, w))
    for name in ("position", "normal", "uv", "bary"):
        setattr(view, name, getattr(view, name).reshape(h, w, -1))
    return view


def depth_image(view: View, floor: float = DEPTH_FLOOR) -> np.ndarray:
    """(H, W) float32 in [0, 1] as depth ControlNets take it: near = bright. Inverse depth (what MiDaS, the
    estimator those ControlNets were trained on, predicts) normalised over the objects' pixels to
    [floor, 1], so the objects use the full range whatever their distance; the background is 0.
    An orthographic view has no perspective, so its plain depth is normalised instead."""
    out = np.zeros(view.depth.shape, np.float32)
    covered = view.covered
    if not covered.any():
        return out
    value = 1.0 / view.depth[covered] if view.camera.perspective else -view.depth[covered]
    lo, hi = float(value.min()), float(value.max())
    scaled = (value - lo) / (hi - lo) if hi > lo else np.ones_like(value)
    out[covered] = floor + (1.0 - floor) * scaled
    return out


def same_surface(view: View, dy: int, dx: int) -> np.ndarray:
    """(H, W) bool: pixel (r, c) and pixel (r + dy, c + dx) show one surface: the same object, each within
    SURFACE_PX pixel footprints of the other's plane, facing the same way. Creases pass; silhouettes,
    occlusions and the two sides of a thin part do not."""
    covered = view.covered
    other = _shift(covered, dy, dx, False)
    ok = covered & other & (view.mesh == _shift(view.mesh, dy, dx, -1))
    tol = SURFACE_PX * view.camera.footprint(np.where(covered, view.depth, 0.0))
    other_pos, other_normal = _shift(view.position, dy, dx, 0.0), _shift(view.normal, dy, dx, 0.0)
    gap = other_pos - view.position
    ok &= np.abs(np.einsum("hwc,hwc->hw", view.normal, gap)) <= tol
    ok &= np.abs(np.einsum("hwc,hwc->hw", other_normal, gap)) <= _shift(tol, dy, dx, 0.0)
    ok &= np.einsum("hwc,hwc->hw", view.normal, other_normal) > 0
    return ok


def surface_edges(view: View) -> np.ndarray:
    """(H, W) bool: object pixels next to the background or to another surface (a depth edge)."""
    edge = np.zeros(view.mesh.shape, bool)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        edge |= ~view.linked(dy, dx)
    return edge & view.covered


def edge_ramp(view: View, edge_px: int = EDGE_PX, floor: float = EDGE_FLOOR) -> np.ndarray:
    """(H, W) 0..1: how far a pixel's colour can be trusted to belong to its surface, from ``floor`` at a
    depth edge (generated images are soft there, and a pixel may show either side) to 1 at ``edge_px``
    pixels inside. Creases are not edges; background pixels are 0."""
    distance = np.where(surface_edges(view), 0.0, np.inf)
    for _ in range(edge_px):  # chessboard distance to the nearest edge, up to edge_px
        grown = distance.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    grown = np.minimum(grown, _shift(distance, dy, dx, np.inf) + 1.0)
        distance = grown
    ramp = floor + (1.0 - floor) * np.clip(distance / edge_px, 0.0, 1.0)
    return np.where(view.covered, ramp, 0.0)


def trust(view: View, ramp: np.ndarray | None = None) -> np.ndarray:
    """(H, W) the weight a pixel's colour would get when baked: facing ratio times the edge ramp."""
    return view.facing * (edge_ramp(view) if ramp is None else ramp)


def render_textures(view: View, textures: list[np.ndarray | None], background: object = 0.5) -> np.ndarray:
    """The meshes as the view sees them with their textures ((S, S, C) arrays, top row first, sampled
    bilinearly and repeating like Blender's default image extension); a mesh with ``None`` and the
    background get ``background``."""
    channels = next((t.shape[2] for t in textures if t is not None), 3)
    h, w = view.mesh.shape
    out = np.empty((h, w, channels), np.float32)
    out[...] = np.asarray(background, np.float32)
    for index, texture in enumerate(textures):
        if texture is None:
            continue
        sel = view.mesh == index
        out[sel] = sample_bilinear(texture, view.uv[sel])
    return out


def sample_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """``texture`` (S, S, C) at UVs (N, 2), v up, wrapping."""
    size_y, size_x = texture.shape[:2]
    x = uv[:, 0] * size_x - 0.5
    y = (1.0 - uv[:, 1]) * size_y - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = (x0 + 1) % size_x, (y0 + 1) % size_y
    x0, y0 = x0 % size_x, y0 % size_y
    return ((texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx) * (1 - fy)
            + (texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx) * fy)


def _shift(a: np.ndarray, dy: int, dx: int, fill: object) -> np.ndarray:
    """``a`` moved so that out[y, x] = a[y + dy, x + dx]; outside the image: ``fill``."""
    out = np.empty_like(a)
    out[...] = fill
    h, w = a.shape[:2]
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[yd, xd] = a[ys, xs]
    return out
